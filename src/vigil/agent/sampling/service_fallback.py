"""Whether a service runs when the service manager cannot say (no systemd, no such unit).

Configured per service in ``sampler.services`` (see
:class:`~vigil.agent.sampler_config.ServiceFallback`), the way Monit checks a process:

- ``pidfile``: the pid written there is a live process that is not a zombie;
- ``process``: some process has exactly this name (zombies do not count);
- ``sysv``: ``service <name> status`` exits 0 (running) or 3 (stopped, per the LSB
  init-script spec); any other status, or no ``service`` program, is unknown.

Each answer is a :class:`~vigil.agent.svc.ServiceState` (``active`` ``None`` with a
reason when it cannot be told), so a check on the series never reads a silent ok.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import psutil

from vigil.agent.sampler_config import ServiceFallback
from vigil.agent.svc import ServiceState

LSB_RUNNING, LSB_STOPPED = 0, 3
MAX_PIDFILE_BYTES = 64


def fallback_state(
    fallback: ServiceFallback,
    *,
    ps: Any = psutil,
    timeout_s: float = 5.0,
    which: Callable[..., str | None] = shutil.which,
    run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
) -> ServiceState:
    """The state of ``fallback.name`` told by its fallback; never raises."""
    if fallback.pidfile is not None:
        return _by_pidfile(fallback, ps)
    if fallback.process is not None:
        return _by_process_name(fallback.process, ps)
    return _by_sysv(fallback.name, timeout_s, which, run)


def _alive(proc: Any, ps: Any) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != ps.STATUS_ZOMBIE)
    except (ps.NoSuchProcess, ps.ZombieProcess):
        return False


def _by_pidfile(fallback: ServiceFallback, ps: Any) -> ServiceState:
    pidfile = fallback.pidfile
    try:
        with open(pidfile, "rb") as f:  # type: ignore[arg-type]
            text = f.read(MAX_PIDFILE_BYTES).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return ServiceState(False, f"no pidfile {pidfile}")
    except OSError as exc:
        return ServiceState(None, f"cannot read pidfile {pidfile}: {exc.strerror}")
    if not text.isdigit() or int(text) <= 0:
        return ServiceState(None, f"pidfile {pidfile} holds no pid: {text[:20]!r}")
    pid = int(text)
    try:
        proc = ps.Process(pid)
    except ps.NoSuchProcess:
        return ServiceState(False, f"pid {pid} from {pidfile} is not running")
    except ps.AccessDenied:
        return ServiceState(None, f"access denied to pid {pid}")
    if not _alive(proc, ps):
        return ServiceState(False, f"pid {pid} from {pidfile} is not running")
    return ServiceState(True, f"running (pid {pid})")


def _by_process_name(name: str, ps: Any) -> ServiceState:
    for proc in ps.process_iter(["name"]):
        if proc.info.get("name") == name and _alive(proc, ps):
            return ServiceState(True, f"running (pid {proc.pid})")
    return ServiceState(False, f"no process named {name}")


def _by_sysv(
    name: str,
    timeout_s: float,
    which: Callable[..., str | None],
    run: Callable[..., subprocess.CompletedProcess[bytes]],
) -> ServiceState:
    service = which("service") or which("service", path="/usr/sbin:/sbin")
    if service is None:
        return ServiceState(None, "no `service` program for the sysv fallback")
    try:
        done = run(
            [service, name, "status"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout_s,
            check=False,
            env={**os.environ, "LC_ALL": "C", "SYSTEMCTL_SKIP_REDIRECT": "1"},
        )
    except subprocess.TimeoutExpired:
        return ServiceState(None, f"`service {name} status` timed out after {timeout_s:g}s")
    except OSError as exc:
        return ServiceState(None, f"cannot run service: {exc.strerror}")
    if done.returncode == LSB_RUNNING:
        return ServiceState(True, "running (service status 0)")
    if done.returncode == LSB_STOPPED:
        return ServiceState(False, "stopped (service status 3)")
    return ServiceState(None, f"`service {name} status` exited {done.returncode}")
