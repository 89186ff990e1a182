"""Windows side of :mod:`vigil.agent.exec.process`: process groups and a kept environment.

Imported only on Windows, by :mod:`~vigil.agent.exec.process` alone. Only the direct
child is terminated: containing a whole tree needs a Job Object (not done yet).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

# Windows has no SIGKILL; ``Process.kill`` is TerminateProcess either way.
SIGKILL = signal.SIGTERM
NEUTRAL_CWD: str | None = None  # the agent's own working folder
EXEC_BIT_MATTERS = False
# Windows programs misbehave without these, and they carry no user-controlled content.
_ENV_KEEP = ("SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "TEMP", "TMP", "PATH")


def base_env() -> dict[str, str]:
    """The few system variables programs need, ``LANG=C.UTF-8`` and the agent's ``HOME``."""
    base = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    return base | {"LANG": "C.UTF-8", "HOME": os.path.expanduser("~")}


def session_kwargs() -> dict[str, object]:
    """Spawn arguments that put the child in a process group of its own."""
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}


def signal_tree(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Terminate (SIGTERM) or kill the child itself; its descendants are not reached."""
    try:
        if proc.returncode is None and sig == signal.SIGTERM:
            proc.terminate()
        elif proc.returncode is None:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def privileged() -> bool:
    """Always False: the root-only refusals have no Windows equivalent yet."""
    return False


def user(run_as: str) -> tuple[dict[str, object], dict[str, str]]:
    """Running as another user is not supported here: always ValueError."""
    raise ValueError(f"run_as {run_as!r} is not supported on this platform")
