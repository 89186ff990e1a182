"""``service.active[...]`` where systemd cannot tell, through the per-service fallbacks.

Runs ``vigil-agent check --json`` as a process (twice: the service up, then killed)
against real processes: one whose pid is in a pidfile, one found by its process name (a
copy of ``sleep`` under a name of its own). These names are no systemd units, so on a
machine with systemd they are ``not-found`` and on one without it (a container) there is
no answer at all: either way the fallback decides. A service without a fallback stays
``unknown`` with the reason, never ok.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = "vigilworker"  # at most 15 characters: Linux keeps that much of a process name
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux processes")


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]]:
    """A ``sleep`` with its pid in ``legacyd.pid`` and a ``vigilworker`` process."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    worker_exe = tmp_path / WORKER
    shutil.copy(sleep, worker_exe)
    legacy = subprocess.Popen([sleep, "60"])
    worker = subprocess.Popen([str(worker_exe), "60"])
    (tmp_path / "legacyd.pid").write_text(f"{legacy.pid}\n")
    try:
        yield legacy, worker
    finally:
        for proc in (legacy, worker):
            proc.kill()
            proc.wait(5)


def check(tmp_path: Path) -> dict[str, dict[str, object]]:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "collector: {url: 'http://127.0.0.1:9', token: t}\n"
        "sampler:\n  services:\n"
        "    - {name: legacyd, pidfile: legacyd.pid}\n"
        f"    - {{name: worker, process: {WORKER}}}\n"
        "    - vigil-no-such-unit\n"
        "checks:\n"
        "  - {id: legacyd, metric: 'service.active[legacyd]', op: '<', critical: 1}\n"
        "  - {id: worker, metric: 'service.active[worker]', op: '<', critical: 1}\n"
        "  - {id: plain, metric: 'service.active[vigil-no-such-unit]', op: '<', critical: 1}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "vigil.agent", "--config", str(config), "check", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.stdout, done.stderr
    return {r["check"]: r for r in json.loads(done.stdout)["checks"]}


def test_fallbacks_tell_running_from_stopped_without_systemd(
    tmp_path: Path, daemons: tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]
) -> None:
    up = check(tmp_path)
    assert (up["legacyd"]["state"], up["worker"]["state"]) == ("ok", "ok")
    assert up["plain"]["state"] == "unknown" and up["plain"]["detail"]

    for proc in daemons:
        proc.kill()
        proc.wait(5)

    down = check(tmp_path)
    assert (down["legacyd"]["state"], down["worker"]["state"]) == ("critical", "critical")
    assert (down["legacyd"]["value"], down["worker"]["value"]) == (0, 0)
