"""A test-side stand-in for systemd's service supervision — NOT systemd.

This machine (and CI) has no systemd as PID 1, so the tests cannot let real systemd
restart the agent. :class:`NotifySupervisor` implements the part of systemd's semantics
that the agent relies on, as documented in ``sd_notify(3)`` and ``systemd.service(5)``:

- it binds a notify socket and starts the program with ``NOTIFY_SOCKET`` and, when a
  watchdog is asked for, ``WATCHDOG_USEC`` (like ``WatchdogSec=``);
- ``READY=1`` marks a start as up; ``WATCHDOG=1`` resets the watchdog timer, which runs
  from the spawn; once no ping came for the watchdog interval the process gets SIGABRT
  (systemd's watchdog signal) and counts as failed;
- ``Restart=on-failure``: a process that exits non-zero or by a signal is started again
  ``restart_s`` later (``RestartSec=``); a clean exit (0) is not restarted.

Every start is kept as a :class:`Start` (pid, times, messages, how it ended) for the test
to assert on. Everything is bounded: :meth:`NotifySupervisor.run` takes a time limit and
a start limit, and :meth:`NotifySupervisor.close` kills whatever still runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Start:
    """One start of the supervised program (monotonic times)."""

    pid: int
    log: Path
    spawned: float
    ready: float | None = None
    pings: list[float] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    ended: float | None = None
    exit_code: int | None = None  # negative: killed by that signal
    watchdog_killed: bool = False


class NotifySupervisor:
    """Supervise ``argv`` like a ``Type=notify``, ``Restart=on-failure`` unit would.

    ``watchdog_s`` (``None``: no watchdog) is ``WatchdogSec=``; ``env_for(n)`` gives extra
    environment for the ``n``-th start (0-based), e.g. a fault only the first start has.
    Logs go to ``folder/start-<n>.log``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        folder: Path,
        *,
        watchdog_s: float | None = None,
        restart_s: float = 0.2,
        env_for: Callable[[int], dict[str, str]] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.folder = folder
        self.watchdog_s = watchdog_s
        self.restart_s = restart_s
        self.env_for = env_for or (lambda n: {})
        self.cwd = cwd
        self.starts: list[Start] = []
        self._proc: subprocess.Popen[bytes] | None = None
        # sun_path is ~108 bytes: a short folder under /tmp, not pytest's tmp_path.
        self._sock_dir = tempfile.mkdtemp(prefix="vigil-sup-", dir="/tmp")
        self.socket_path = f"{self._sock_dir}/notify"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.socket_path)
        self._sock.settimeout(0.05)
        self._restart_at: float | None = time.monotonic()

    @property
    def current(self) -> Start | None:
        return self.starts[-1] if self.starts else None

    def _spawn(self) -> None:
        n = len(self.starts)
        env = {**os.environ, "NOTIFY_SOCKET": self.socket_path, **self.env_for(n)}
        if self.watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(int(self.watchdog_s * 1_000_000))
        log = self.folder / f"start-{n}.log"
        with log.open("wb") as stderr:
            self._proc = subprocess.Popen(
                self.argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=self.cwd
            )
        self.starts.append(Start(self._proc.pid, log, time.monotonic()))
        self._restart_at = None

    def run(
        self,
        seconds: float,
        *,
        max_starts: int = 20,
        until: Callable[[NotifySupervisor], bool] | None = None,
    ) -> None:
        """Supervise for at most ``seconds``, at most ``max_starts`` starts in all, or
        until ``until(self)`` is true (checked after every event)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            now = time.monotonic()
            if self._proc is None and self._restart_at is not None and now >= self._restart_at:
                if len(self.starts) >= max_starts:
                    return
                self._spawn()
            self._receive()
            self._check_watchdog()
            self._reap()
            if until is not None and until(self):
                return

    def _receive(self) -> None:
        try:
            data = self._sock.recv(4096)
        except TimeoutError:
            return
        start = self.current
        if start is None or self._proc is None:
            return
        now = time.monotonic()
        for line in data.decode("utf-8", "replace").split("\n"):
            start.messages.append(line)
            if line == "READY=1" and start.ready is None:
                start.ready = now
            elif line == "WATCHDOG=1":
                start.pings.append(now)

    def _check_watchdog(self) -> None:
        start, proc = self.current, self._proc
        if self.watchdog_s is None or start is None or proc is None or start.watchdog_killed:
            return
        last = start.pings[-1] if start.pings else start.spawned
        if time.monotonic() - last > self.watchdog_s:
            start.watchdog_killed = True
            proc.send_signal(signal.SIGABRT)  # what systemd sends on a watchdog timeout

    def _reap(self) -> None:
        proc, start = self._proc, self.current
        if proc is None or start is None or proc.poll() is None:
            return
        start.ended = time.monotonic()
        start.exit_code = proc.returncode
        self._proc = None
        if proc.returncode != 0:  # Restart=on-failure
            self._restart_at = start.ended + self.restart_s

    def stop_current(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM the running start (``systemctl stop``) and wait for it; its exit code."""
        proc, start = self._proc, self.current
        if proc is None or start is None:
            return None
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        start.ended, start.exit_code = time.monotonic(), proc.returncode
        self._proc = None
        self._restart_at = None  # a stop is not a failure: no restart
        return proc.returncode

    def start_again(self) -> None:
        """Start the program now (``systemctl start``)."""
        if self._proc is None:
            self._restart_at = time.monotonic()

    def close(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None
        self._sock.close()
        shutil.rmtree(self._sock_dir, ignore_errors=True)
