"""systemd units via one ``systemctl show`` call for all units (one fork per sample)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from vigil.agent.svc._common import ServiceState

_PROPERTIES = "Id,LoadState,ActiveState,SubState"
_OUTPUT_CAP = 256 * 1024


def service_states(names: Sequence[str], *, timeout_s: float) -> dict[str, ServiceState]:
    """Run ``systemctl show`` (argv, no shell, bounded in time and output) and parse it."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return {n: ServiceState(None, "systemctl not found (not a systemd system)") for n in names}
    argv = [systemctl, "show", "--no-pager", f"--property={_PROPERTIES}", "--", *names]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
            env={"LANG": "C", "PATH": "/usr/bin:/bin", "SYSTEMD_PAGER": ""},
        )
    except subprocess.TimeoutExpired:
        return {n: ServiceState(None, f"systemctl timed out after {timeout_s:g}s") for n in names}
    except OSError as exc:
        return {n: ServiceState(None, f"cannot run systemctl: {exc.strerror}") for n in names}
    text = done.stdout[:_OUTPUT_CAP].decode("utf-8", errors="replace")
    if done.returncode != 0 and not text.strip():
        err = done.stderr[:200].decode("utf-8", errors="replace").strip()
        return {n: ServiceState(None, f"systemctl failed: {err or done.returncode}") for n in names}
    return parse_show(text, names)


def parse_show(text: str, names: Sequence[str]) -> dict[str, ServiceState]:
    """Parse ``systemctl show`` output: one ``Key=value`` block per unit, in argv order.

    A unit systemd does not know has ``LoadState=not-found`` and is unknown (a typo in
    the config must not read as "stopped"). Missing blocks are unknown too.
    """
    blocks = [b for b in text.split("\n\n") if b.strip()]
    out: dict[str, ServiceState] = {}
    for i, name in enumerate(names):
        if i >= len(blocks):
            out[name] = ServiceState(None, "no answer from systemctl")
            continue
        props = dict(line.split("=", 1) for line in blocks[i].splitlines() if "=" in line)
        load, active, sub = (props.get(k, "") for k in ("LoadState", "ActiveState", "SubState"))
        if load in ("not-found", "bad-setting", "error", "masked") or not active:
            out[name] = ServiceState(None, f"unit {name}: LoadState={load or '?'}")
            continue
        out[name] = ServiceState(active in ("active", "reloading"), f"{active} ({sub})")
    return out
