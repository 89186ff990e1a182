"""POSIX side of :mod:`vigil.agent.exec.process`: sessions, process-group signals, users.

Imported only on POSIX systems, by :mod:`~vigil.agent.exec.process` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

SIGKILL = signal.SIGKILL
# Where a child with no working folder of its own runs: somewhere that always exists.
NEUTRAL_CWD: str | None = "/"
# Only POSIX has the executable bit; elsewhere the file type decides.
EXEC_BIT_MATTERS = True
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_env() -> dict[str, str]:
    """``PATH`` (the system folders only), ``LANG=C.UTF-8`` and the agent's ``HOME``."""
    return {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": os.path.expanduser("~")}


def session_kwargs() -> dict[str, object]:
    """Spawn arguments that make the child the leader of its own session and group."""
    return {"start_new_session": True}


def signal_tree(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Send ``sig`` to the child's whole process group."""
    # The child is the group leader (own session), so its pid is the group id. The group
    # id stays reserved while any member lives, so it cannot be recycled under us; once
    # all members are gone the kill is a harmless ESRCH.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def privileged() -> bool:
    """Whether the agent runs as root."""
    return os.geteuid() == 0


def user(run_as: str) -> tuple[dict[str, object], dict[str, str]]:
    """(spawn kwargs, environment) to run as ``run_as``; ValueError says why not."""
    import pwd  # only when a manifest asks for another user

    try:
        pw = pwd.getpwnam(run_as)
    except KeyError:
        raise ValueError(f"run_as: no such user {run_as!r}") from None
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    if pw.pw_uid == os.geteuid():
        return {}, env
    if os.geteuid() != 0:
        raise ValueError(f"cannot run as {run_as!r}: the agent is not running as root")
    groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}, env
