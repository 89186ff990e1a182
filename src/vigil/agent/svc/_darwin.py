"""launchd jobs via ``launchctl list <label>`` (argv, no shell, bounded)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from vigil.agent.svc._common import ServiceState

_PID = re.compile(r'"PID"\s*=\s*(\d+);')


def service_states(names: Sequence[str], *, timeout_s: float) -> dict[str, ServiceState]:
    """A loaded job with a ``PID`` is running; loaded without one is stopped."""
    out: dict[str, ServiceState] = {}
    for name in names:
        try:
            done = subprocess.run(
                ["/bin/launchctl", "list", name],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            out[name] = ServiceState(None, f"launchctl timed out after {timeout_s:g}s")
            continue
        except OSError as exc:
            out[name] = ServiceState(None, f"cannot run launchctl: {exc.strerror}")
            continue
        out[name] = parse_list(name, done.returncode, done.stdout.decode("utf-8", "replace"))
    return out


def parse_list(name: str, returncode: int, text: str) -> ServiceState:
    """Interpret ``launchctl list <label>``: exit 0 means loaded; a PID means running."""
    if returncode != 0:
        return ServiceState(None, f"no launchd job {name}")
    match = _PID.search(text)
    return (
        ServiceState(True, f"running (pid {match.group(1)})")
        if match
        else ServiceState(False, "loaded, not running")
    )
