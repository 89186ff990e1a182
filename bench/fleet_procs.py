"""Process and collector plumbing of ``bench/fleet.py``: reaping, stopping, the API.

:class:`Reaper` reaps every child of the (subreaper) benchmark as it exits, so a killed
fault process never lingers as a zombie; :func:`terminate` and :func:`kill_named` stop
what was started, bounded in time; :func:`start_collector` starts a collector on an
ephemeral loopback port and :class:`Api` reads its API with the admin token.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.detect_to_fix import kill_and_reap  # noqa: E402

AGENT_TOKEN = "fleet-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "fleet-admin-token-0123456789abcdef0123456789abcdef"


# --------------------------------------------------------------------------- processes


class Reaper:
    """Reaps this process's children as they exit: the ones it started (through their
    ``Popen``) and the orphans a subreaper inherits (a restarted service or application),
    so a killed process never lingers as a zombie. Every 10 ms, until :meth:`stop`."""

    def __init__(self) -> None:
        self.popens: dict[int, subprocess.Popen[Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def track(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self.popens[proc.pid] = proc
        return proc

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            for _ in range(100):  # bounded per tick
                try:
                    # Peek (WNOWAIT) so a Popen's own status goes to its Popen.
                    got = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    break
                if got is None or got.si_pid == 0:
                    break
                if (popen := self.popens.get(got.si_pid)) is not None:
                    popen.poll()
                else:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(got.si_pid, 0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def terminate(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def kill_named(names: set[str], deadline_s: float = 5.0) -> None:
    """SIGKILL every process whose name (``/proc/PID/comm``) is in ``names``: the ones the
    fixes started, which this script did not start itself."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = False
        for pid_s in os.listdir("/proc"):
            if not pid_s.isdigit():
                continue
            try:
                comm = Path(f"/proc/{pid_s}/comm").read_text().strip()
            except OSError:
                continue
            if comm in names:
                found = True
                kill_and_reap(int(pid_s))
        if not found:
            return
        time.sleep(0.05)


# --------------------------------------------------------------------------- collector API


class Api:
    """The collector's read API with the admin token."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def all(self, path: str, key: str) -> list[dict[str, Any]]:
        """Every item of a list endpoint (pages of 1000 following ``next``, at most 20)."""
        out: list[dict[str, Any]] = []
        sep = "&" if "?" in path else "?"
        url: str | None = f"{path}{sep}limit=1000"
        for _ in range(20):
            if url is None:
                break
            reply = self.get(url)
            out += reply[key]
            url = reply["next"]
        return out


def start_collector(
    folder: Path, reaper: Reaper, correlation_window_s: float
) -> tuple[subprocess.Popen[str], Api]:
    """A collector in ``folder`` (SQLite, its log ``collector.log``), once it listens."""
    config = folder / "collector.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "storage": {"sqlite_path": str(folder / "collector.db")},
                "auth": {"agent_tokens": [AGENT_TOKEN], "admin_tokens": [ADMIN_TOKEN]},
                "incidents": {"correlation": {"window": f"{correlation_window_s:g}s"}},
            }
        )
    )
    proc = reaper.track(
        subprocess.Popen(
            [sys.executable, "-m", "vigil.collector", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=(folder / "collector.log").open("w"),
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the collector prints one line once it listens
    if "listening on " not in line:
        terminate(proc)
        raise RuntimeError(f"collector did not start: {(folder / 'collector.log').read_text()}")
    return proc, Api(line.split("listening on ", 1)[1].strip())
