"""POSIX side of :mod:`vigil.agent.exec.process`: sessions, process-group signals, users.

Imported only on POSIX systems, by :mod:`~vigil.agent.exec.process` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence

from vigil.agent.exec.child import SubprocessChild, start_subprocess
from vigil.agent.exec.logons import ConsoleUser, session_env

SIGKILL = signal.SIGKILL
# Where a child with no working folder of its own runs: somewhere that always exists.
NEUTRAL_CWD: str | None = "/"
# Only POSIX has the executable bit; elsewhere the file type decides.
EXEC_BIT_MATTERS = True
# The account that may run children as other users (:func:`may_switch_user`).
PRIVILEGED_ACCOUNT = "root"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_env() -> dict[str, str]:
    """``PATH`` (the system folders only), ``LANG=C.UTF-8`` and the agent's ``HOME``."""
    return {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": os.path.expanduser("~")}


def set_env(env: dict[str, str], name: str, value: str) -> None:
    """``env[name] = value`` (POSIX names are case-sensitive)."""
    env[name] = value


class GroupChild(SubprocessChild):
    """A child that leads its own session: its process group is its tree."""

    def signal_tree(self, sig: int) -> None:
        """Send ``sig`` to the child's whole process group."""
        # The child is the group leader (own session), so its pid is the group id. The
        # group id stays reserved while any member lives, so it cannot be recycled under
        # us; once all members are gone the kill is a harmless ESRCH.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    merge_stderr: bool,
    spawn_kwargs: Mapping[str, object],
) -> GroupChild:
    """Start ``argv`` as the leader of its own session (and so of its own group).

    A cancellation while the start is still under way kills the whole group before it
    propagates: the child runs from the fork on while asyncio still connects its pipes,
    and asyncio's own clean-up in that window kills only the direct child, so a
    background grandchild already started would outlive the run. The start is shielded
    so it can finish, then the group is killed like any other cancelled run's.
    """
    starting = asyncio.ensure_future(
        start_subprocess(
            argv,
            env=env,
            cwd=cwd,
            merge_stderr=merge_stderr,
            start_new_session=True,
            **spawn_kwargs,
        )
    )
    try:
        return GroupChild(await asyncio.shield(starting))
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            child = GroupChild(await starting)
            child.signal_tree(SIGKILL)
            child.abort_output()
        raise


async def spawn_in_session(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    merge_stderr: bool,
    session: int,
) -> GroupChild:
    """Never on POSIX: the console user is a uid (:func:`console_user`), not a session."""
    raise ValueError("console sessions are a Windows notion; POSIX switches uid instead")


def privileged() -> bool:
    """Whether the agent runs as root."""
    return os.geteuid() == 0


def may_switch_user() -> bool:
    """Root may start children as any user."""
    return privileged()


def console_user(
    found: ConsoleUser,
) -> tuple[dict[str, object], dict[str, str], int | None]:
    """(spawn kwargs, environment, no session) to run as ``found``: their uid, groups and
    ``HOME``/``USER``/``LOGNAME``, plus their desktop session's variables."""
    kwargs, env = user(found.name)
    uid = kwargs.get("user")
    env |= session_env(found, uid if isinstance(uid, int) else os.geteuid())
    return kwargs, env, None


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
