"""Run one bounded process tree: the agent's only way of starting a program.

Admin-written scripts and Nagios plugins run with the agent's privileges (often root or
LocalSystem) on people's machines, so every run here is bounded: an argv list and never
a shell, a minimal clean environment (:func:`child_env`), stdin from the null device,
its own session (POSIX) or Job Object (Windows), a hard timeout that stops the whole
tree, and an output excerpt whose memory use is bounded by the cap whatever the child
prints.

The platform split is psutil's: :mod:`._posix` or :mod:`._windows` is picked once at
import, and this module is the one public API over it (:func:`run_bounded`,
:func:`child_env`, :func:`resolve_user`, :func:`resolve_console_user`,
:func:`privileged`, :func:`may_switch_user`). Each platform module starts a
:class:`~vigil.agent.exec.child.Child`; :func:`supervise` bounds every kind the same way.

Known limits: on POSIX a grandchild that starts its own session (``setsid``, double
fork) leaves the process group and cannot be killed by it; containing that needs
cgroups. On Windows every descendant stays in the child's Job Object (breakaway is not
allowed), but that code has not run on Windows in this project's CI (see
:mod:`._windows`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vigil.agent.exec.capture import HeadTail
from vigil.agent.exec.child import Child
from vigil.agent.exec.logons import ConsoleUser

if os.name == "posix":
    from vigil.agent.exec import _posix as _impl
else:
    from vigil.agent.exec import _windows as _impl

KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL of the process group (POSIX)
_DRAIN_S = 1.0  # how long to wait for the output pipe's EOF once the group is dead
_REAP_S = 5.0  # how long to wait for the killed child to be reaped
_READ_CHUNK = 64 * 1024

NEUTRAL_CWD: str | None = _impl.NEUTRAL_CWD
"""A working folder that always exists (``/`` on POSIX; ``None``, the agent's, elsewhere)."""
EXEC_BIT_MATTERS: bool = _impl.EXEC_BIT_MATTERS
"""Whether a program needs its executable bit to be started directly (POSIX)."""
PRIVILEGED_ACCOUNT: str = _impl.PRIVILEGED_ACCOUNT
"""The account :func:`may_switch_user` needs: ``root`` (POSIX), ``LocalSystem`` (Windows)."""


@dataclass(frozen=True, slots=True)
class BoundedRun:
    """What one :func:`run_bounded` run did.

    ``exit_code`` is the child's exit status, ``None`` when it was killed on timeout; a
    negative value ``-N`` means the child was killed by signal ``N`` (not by us).
    ``output`` is the captured output decoded as UTF-8 (bad bytes replaced); when
    ``truncated`` it is the head and tail joined by a ``...[truncated N bytes]...`` line,
    the whole at most ``output_cap_bytes`` characters. ``duration_s`` is wall-clock
    seconds from just before the spawn to the end of the clean-up (group stopped, child
    reaped, output drained), so it can exceed ``timeout_s`` by up to :data:`KILL_GRACE_S`
    plus the reap and drain waits.
    """

    exit_code: int | None
    output: str
    truncated: bool
    timed_out: bool
    duration_s: float


@dataclass(frozen=True, slots=True)
class RunAs:
    """How to start a child as another user: spawn arguments and the environment it gets
    (``HOME``, ``USER``, ``LOGNAME`` on POSIX; the user's own environment block on
    Windows). ``console_session`` (Windows only) is the session whose user's token the
    child is started with. :data:`SELF` is the agent's own user."""

    spawn_kwargs: Mapping[str, object]
    env: Mapping[str, str]
    console_session: int | None = None


SELF = RunAs({}, {})


def privileged() -> bool:
    """Whether the agent runs as root (always False on Windows), which makes the
    root-only refusals of :mod:`~vigil.agent.exec.vetting` apply."""
    return _impl.privileged()


def may_switch_user() -> bool:
    """Whether the agent may start children as another user: root on POSIX, LocalSystem
    on Windows (``WTSQueryUserToken`` needs it)."""
    return _impl.may_switch_user()


def resolve_console_user(found: ConsoleUser) -> RunAs:
    """How to start a child as ``found``, the user at the console
    (:func:`~vigil.agent.exec.console.console_user`).

    POSIX: as :func:`resolve_user` for their name, plus their desktop session's
    variables (:func:`~vigil.agent.exec.logons.session_env`). Windows: with a token of
    their console session (``found.session``) and their own environment block
    (``CreateEnvironmentBlock``). Raises :class:`ValueError` or :class:`OSError` saying
    why not (no such user, not root or LocalSystem, the user logged off meanwhile).
    """
    kwargs, env, session = _impl.console_user(found)
    return RunAs(kwargs, env, session)


def resolve_user(run_as: str | None) -> RunAs:
    """What starting a child as ``run_as`` takes (``None``: the agent's own user).

    Another user needs root unless it names the agent's own user; the child then gets
    that user's uid, gid, supplementary groups and ``HOME``, ``USER`` and ``LOGNAME``.
    Raises :class:`ValueError` saying why not (no such user, not root, not POSIX).
    """
    if run_as is None:
        return SELF
    kwargs, env = _impl.user(run_as)
    return RunAs(kwargs, env)


def child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    """The minimal child environment plus ``extra`` (which wins); a fresh dict.

    POSIX: ``PATH`` (the system folders only), ``LANG=C.UTF-8`` and the agent's ``HOME``;
    Windows also keeps the few system variables programs need (``SYSTEMROOT`` ...).
    Nothing else of the agent's environment leaks through. Raises :class:`ValueError`
    for an empty name, a name with ``=`` or a NUL byte, or a value with a NUL byte.
    """
    base = _impl.base_env()
    for name, value in (extra or {}).items():
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"bad environment variable name {name!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {name} contains a NUL byte")
        # Windows names are case-insensitive: a ``Path`` replaces the base's ``PATH``.
        _impl.set_env(base, name, value)
    return base


async def run_bounded(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    timeout_s: float,
    output_cap_bytes: int,
    merge_stderr: bool = True,
    settle_s: float | None = None,
    run_as: RunAs = SELF,
) -> BoundedRun:
    """Run ``argv`` as a bounded process tree and return what it did; owns its whole lifecycle.

    ``argv[0]`` is executed directly (no shell) with exactly ``env`` as its environment
    (build it with :func:`child_env`; nothing of the agent's own is inherited), in
    ``cwd`` (``None``: the agent's), stdin from the null device, in its own session
    (POSIX) or its own Job Object and process group (Windows). stdout is captured, head
    and tail within ``output_cap_bytes`` characters, memory O(cap) whatever the child
    prints; stderr goes to the same pipe when ``merge_stderr``, else to the null device.

    Once the child has run ``timeout_s`` seconds its process group gets SIGTERM, then
    SIGKILL :data:`KILL_GRACE_S` seconds later. The group is stopped the same way also
    after a normal exit, so background leftovers never outlive the run (nor hold the
    pipe open); with ``settle_s`` set, the pipe first gets up to that many seconds to
    reach EOF after a normal exit, so output already written is not lost to the kill.
    The child is always reaped (no zombies). Cancelling the call SIGKILLs the group
    before the cancellation propagates. On Windows there is no catchable stop request
    for a windowless child: SIGTERM and SIGKILL both terminate the whole Job Object.

    ``run_as`` (from :func:`resolve_user` or :func:`resolve_console_user`) starts the
    child as another user; its environment is not added here (merge ``run_as.env`` into
    ``env``). A Windows console user's child is started with their token
    (``CreateProcessAsUserW``) and read through a pipe, under the same bounds.

    Raises :class:`OSError` or :class:`ValueError` when the child cannot be started
    (missing program, ``ENOEXEC``, ``EACCES``, a NUL byte in an argument, an empty
    ``argv``); nothing is left to clean up then. Any other outcome is a result.
    Caveat: on POSIX a grandchild that starts its own session escapes the group (see
    the module docstring).
    """
    if not argv:
        raise ValueError("empty command")
    started = time.monotonic()
    child: Child
    if run_as.console_session is not None:
        child = await _impl.spawn_in_session(
            argv, env=env, cwd=cwd, merge_stderr=merge_stderr, session=run_as.console_session
        )
    else:
        child = await _impl.spawn(
            argv, env=env, cwd=cwd, merge_stderr=merge_stderr, spawn_kwargs=run_as.spawn_kwargs
        )
    capture = HeadTail(output_cap_bytes)
    try:
        timed_out = await supervise(child, capture, timeout_s=timeout_s, settle_s=settle_s)
    finally:
        child.close()

    output, truncated = capture.result()
    return BoundedRun(
        exit_code=None if timed_out else child.returncode,
        output=output,
        truncated=truncated,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
    )


async def supervise(
    child: Child, capture: HeadTail, *, timeout_s: float, settle_s: float | None = None
) -> bool:
    """Read ``child``'s output into ``capture`` until it is done; True if it timed out.

    The one supervision of every kind of child (see :func:`run_bounded` for the rules):
    after ``timeout_s`` seconds, or after a normal exit (``settle_s``: how long the pipe
    may take to reach EOF first), the tree is stopped (:func:`_stop_group`); a cancelled
    call kills the tree before the cancellation propagates; the output reader never
    outlives the call. ``child.close()`` is the caller's.
    """
    reader = asyncio.create_task(_pump(child.stdout, capture))
    stopped = False
    try:
        timed_out = not await _exited(child, timeout_s)
        if not timed_out and settle_s is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), settle_s)
        # Also after a normal exit: background children the program left behind must not
        # outlive the run (they would hold the output pipe open and escape the timeout).
        await _stop_group(child, reader)
        stopped = True
    finally:
        if not stopped:  # cancelled mid-run: never leave the tree behind
            child.signal_tree(_impl.SIGKILL)
        if not reader.done():
            reader.cancel()
            child.abort_output()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return timed_out


async def _stop_group(child: Child, reader: asyncio.Task[None]) -> None:
    """SIGTERM the group, give it the grace period, SIGKILL it, reap the child, drain output.

    "Gone" is judged by the child having exited and the output pipe reaching EOF (every
    member that still holds it has exited). Polling the group with ``killpg(pgid, 0)``
    would be fooled by zombies where PID 1 does not reap orphans, as in many containers.
    """
    child.signal_tree(signal.SIGTERM)
    started = time.monotonic()
    if await _exited(child, KILL_GRACE_S):
        with contextlib.suppress(TimeoutError):
            left = KILL_GRACE_S - (time.monotonic() - started)
            await asyncio.wait_for(asyncio.shield(reader), max(0.0, left))
    child.signal_tree(_impl.SIGKILL)
    await _exited(child, _REAP_S)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reader), _DRAIN_S)


async def _exited(child: Child, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the child itself to exit; True if it did.

    Not ``proc.wait()``: asyncio's also waits for every output pipe to close, so a
    background grandchild holding stdout would make a finished script look hung
    (python/cpython#119710). ``returncode`` is set as soon as the child is reaped, so
    poll it, backing off from 1 ms to 50 ms.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while child.returncode is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)
    return True


async def _pump(stream: asyncio.StreamReader, capture: HeadTail) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        capture.feed(chunk)
