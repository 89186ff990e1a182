"""Starting the agent again in a given release: ``execve`` on POSIX, the service host on
Windows.

On Linux and macOS the agent replaces itself (``os.execve``: same PID, so systemd,
launchd and ``sd_notify`` see one process). Windows has no ``execve``: Python's spawns a
new process and exits, and the service manager, which watches the first PID, loses
track. There the Windows service host (the pywin32 module ``vigil-agent service install``
writes, :func:`vigil.agent.svc.install.windows_service`) owns the agent's process, and
relaunching is a protocol between the two:

1. The host starts the agent with :data:`REQUEST_ENV` naming a request file beside the
   service module (as trusted as the module itself: both are the host's).
2. The agent that needs another release writes the release's folder and serial there
   (:func:`write_request`) and exits with :data:`RELAUNCH_EXIT_CODE`.
3. The host reads and deletes the request and starts the agent again with that release's
   environment (:func:`release_environment`, the same one ``execve`` gets); a missing or
   unreadable request means the base install. :func:`run_host` is that loop, bounded:
   more than :data:`MAX_RELAUNCHES` relaunches within :data:`RELAUNCH_WINDOW_S` end it
   with a failure, so the service manager's recovery (restart with back-off) takes over.

An agent started on Windows without the host (``vigil-agent run`` in a console) runs
the release as a child and exits with its status. Stdlib-only and small, like
:mod:`~vigil.agent.update.launch`: a bad release cannot replace it. The Windows half has
not run on Windows in this project's CI; :func:`run_host` is tested with real processes
on Linux.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, Protocol

log = logging.getLogger("vigil.agent.update")

# Set in the environment of the re-executed agent: the serial of the release it runs.
RELEASE_ENV = "VIGIL_AGENT_RELEASE"
# Set by the Windows service host: the file where the agent writes its relaunch request.
REQUEST_ENV = "VIGIL_AGENT_RELAUNCH_REQUEST"
# The agent's exit status meaning "start me again as the request says". Distinct from
# 0 (stopped), 1 (crashed) and 2 (bad config); EX_TEMPFAIL's value.
RELAUNCH_EXIT_CODE = 75
# An update takes two relaunches (into the base, whose launch step picks the release);
# a loop of them is a fault: after this many within the window the host gives up.
MAX_RELAUNCHES = 10
RELAUNCH_WINDOW_S = 600.0


def release_environment(
    environ: Mapping[str, str], folder: Path | None, serial: int
) -> dict[str, str]:
    """``environ`` for an agent running the release in ``folder`` (``PYTHONPATH`` ahead of
    the base install, :data:`RELEASE_ENV` its serial), or the base install (``None``:
    both removed, so its launch step runs again)."""
    env = {k: v for k, v in environ.items() if k not in (RELEASE_ENV, "PYTHONPATH", REQUEST_ENV)}
    if folder is not None:
        env["PYTHONPATH"] = str(folder)
        env[RELEASE_ENV] = str(serial)
    return env


def write_request(path: Path, folder: Path | None, serial: int) -> None:
    """Ask the host for ``folder`` (``None``: the base install); atomic (rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(
        json.dumps({"folder": None if folder is None else str(folder), "serial": serial}),
        encoding="utf-8",
    )
    os.replace(tmp, path)


def take_request(path: Path) -> tuple[Path | None, int]:
    """The (folder, serial) the agent asked for, and the request deleted; the base install
    (``None``, 0) when there is none or it cannot be read (the base always works)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        folder, serial = data["folder"], data["serial"]
        if not (folder is None or isinstance(folder, str)) or not isinstance(serial, int):
            raise ValueError(f"bad request {data!r}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log.error("unreadable relaunch request %s (%s): relaunching the base", path, exc)
        return None, 0
    finally:
        path.unlink(missing_ok=True)
    return (None if folder is None else Path(folder)), serial


def _python_argv(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "vigil.agent", *argv]


def _execve(argv: Sequence[str], env: dict[str, str], folder: Path | None, serial: int) -> NoReturn:
    os.execve(sys.executable, _python_argv(argv), env)


def _ask_host(
    argv: Sequence[str], env: dict[str, str], folder: Path | None, serial: int
) -> NoReturn:
    request = os.environ.get(REQUEST_ENV)
    if request:
        try:
            write_request(Path(request), folder, serial)
        except OSError as exc:
            log.error(
                "cannot write the relaunch request %s (%s): running it as a child", request, exc
            )
        else:
            sys.exit(RELAUNCH_EXIT_CODE)
    # No service host (a console run): the new agent runs as our child; its status is ours.
    sys.exit(subprocess.call(_python_argv(argv), env=env))


def relaunch(
    argv: Sequence[str], environ: Mapping[str, str], folder: Path | None, serial: int
) -> NoReturn:
    """Run ``python -m vigil.agent ARGV`` in the release in ``folder`` (``None``: the base
    install) instead of this process: ``execve`` on POSIX, the service host on Windows."""
    env = release_environment(environ, folder, serial)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    _replace(argv, env, folder, serial)


_replace = _execve if os.name == "posix" else _ask_host


class HostedProcess(Protocol):
    """What :func:`run_host` needs of a started agent (a :class:`subprocess.Popen`)."""

    def wait(self) -> int: ...

    def terminate(self) -> None: ...


def run_host(
    argv: Sequence[str],
    request: Path,
    *,
    environ: Mapping[str, str],
    start: Callable[[Sequence[str], dict[str, str]], HostedProcess],
    stopping: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
    note: Callable[[str], None] = log.info,
) -> int:
    """The Windows service host's loop: start ``argv`` (the agent's full command line)
    with ``environ`` and :data:`REQUEST_ENV` = ``request``, wait, and start it again in
    the requested release while it exits with :data:`RELAUNCH_EXIT_CODE`.

    Returns 0 when ``stopping()`` (the service is being stopped) or the agent stopped
    cleanly, else the agent's exit status (the host then fails, and the service
    manager's recovery applies); also when relaunches exceed :data:`MAX_RELAUNCHES`
    within :data:`RELAUNCH_WINDOW_S`. A stop that comes while a new agent is starting
    terminates it. ``note`` reports each relaunch (the Windows event log in the host).
    """
    env = dict(environ)  # the first start: the service's own environment
    relaunches: list[float] = []
    while not stopping():
        request.unlink(missing_ok=True)  # a stale request must not steer this start
        proc = start(list(argv), {**env, REQUEST_ENV: str(request)})
        if stopping():  # the stop raced the start: the stopper saw the previous process
            proc.terminate()
        code = proc.wait()
        if stopping():
            return 0
        if code != RELAUNCH_EXIT_CODE:
            return code
        now = clock()
        relaunches = [t for t in relaunches if now - t < RELAUNCH_WINDOW_S] + [now]
        if len(relaunches) > MAX_RELAUNCHES:
            window = f"{RELAUNCH_WINDOW_S:.0f} s"
            note(f"vigil-agent asked for {len(relaunches)} relaunches in {window}: giving up")
            return code
        folder, serial = take_request(request)
        note(f"vigil-agent relaunching into {folder or 'the base install'}")
        env = release_environment(environ, folder, serial)
    return 0
