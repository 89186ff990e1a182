"""Run one bounded process tree: the agent's only way of starting a program.

Admin-written scripts and Nagios plugins run with the agent's privileges (often root)
on people's machines, so every run here is bounded: an argv list and never a shell, a
minimal clean environment (:func:`child_env`), stdin from the null device, its own
session (POSIX) or process group (Windows), a hard timeout that stops the whole group,
and an output excerpt whose memory use is bounded by the cap whatever the child prints.

The platform split is psutil's: :mod:`._posix` or :mod:`._windows` is picked once at
import, and this module is the one public API over it (:func:`run_bounded`,
:func:`child_env`, :func:`resolve_user`, :func:`privileged`).

Known limits: a grandchild that starts its own session (``setsid``, double fork) leaves
the process group and cannot be killed by it; containing that needs cgroups (Linux) or
Job Objects (Windows). On Windows only the direct child is terminated for now.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vigil.agent.exec.capture import HeadTail

if os.name == "posix":
    from vigil.agent.exec import _posix as _impl
else:
    from vigil.agent.exec import _windows as _impl

KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL of the process group
_DRAIN_S = 1.0  # how long to wait for the output pipe's EOF once the group is dead
_REAP_S = 5.0  # how long to wait for the killed child to be reaped
_READ_CHUNK = 64 * 1024

NEUTRAL_CWD: str | None = _impl.NEUTRAL_CWD
"""A working folder that always exists (``/`` on POSIX; ``None``, the agent's, elsewhere)."""
EXEC_BIT_MATTERS: bool = _impl.EXEC_BIT_MATTERS
"""Whether a program needs its executable bit to be started directly (POSIX)."""


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
    (``HOME``, ``USER``, ``LOGNAME``). :data:`SELF` is the agent's own user."""

    spawn_kwargs: Mapping[str, object]
    env: Mapping[str, str]


SELF = RunAs({}, {})


def privileged() -> bool:
    """Whether the agent runs as root (always False on Windows), which makes the
    root-only refusals of :mod:`~vigil.agent.exec.vetting` apply."""
    return _impl.privileged()


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
        base[name] = value
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
    (POSIX) or process group (Windows). stdout is captured, head and tail within
    ``output_cap_bytes`` characters, memory O(cap) whatever the child prints; stderr
    goes to the same pipe when ``merge_stderr``, else to the null device.

    Once the child has run ``timeout_s`` seconds its process group gets SIGTERM, then
    SIGKILL :data:`KILL_GRACE_S` seconds later. The group is stopped the same way also
    after a normal exit, so background leftovers never outlive the run (nor hold the
    pipe open); with ``settle_s`` set, the pipe first gets up to that many seconds to
    reach EOF after a normal exit, so output already written is not lost to the kill.
    The child is always reaped (no zombies). Cancelling the call SIGKILLs the group
    before the cancellation propagates.

    ``run_as`` (from :func:`resolve_user`) starts the child as another user; its
    environment is not added here (merge ``run_as.env`` into ``env``).

    Raises :class:`OSError` or :class:`ValueError` when the child cannot be started
    (missing program, ``ENOEXEC``, ``EACCES``, a NUL byte in an argument, an empty
    ``argv``); nothing is left to clean up then. Any other outcome is a result.
    Caveat: a grandchild that starts its own session escapes the group (see the module
    docstring), and on Windows only the direct child is terminated.
    """
    if not argv:
        raise ValueError("empty command")
    started = time.monotonic()
    proc = await _spawn(
        asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.DEVNULL,
            env=dict(env),
            cwd=cwd,
            **_impl.session_kwargs(),
            **run_as.spawn_kwargs,
        )
    )

    capture = HeadTail(output_cap_bytes)
    assert proc.stdout is not None
    reader = asyncio.create_task(_pump(proc.stdout, capture))
    stopped = False
    try:
        timed_out = not await _exited(proc, timeout_s)
        if not timed_out and settle_s is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), settle_s)
        # Also after a normal exit: background children the program left behind must not
        # outlive the run (they would hold the output pipe open and escape the timeout).
        await _stop_group(proc, reader)
        stopped = True
    finally:
        if not stopped:  # cancelled mid-run: never leave the tree behind
            _impl.signal_tree(proc, _impl.SIGKILL)
        if not reader.done():
            reader.cancel()
            # asyncio's Process has no public close(); without this a pipe still held by
            # a grandchild that escaped the group would keep the transport open.
            proc._transport.close()  # type: ignore[attr-defined]
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    output, truncated = capture.result()
    return BoundedRun(
        exit_code=None if timed_out else proc.returncode,
        output=output,
        truncated=truncated,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
    )


async def _spawn(
    starting: Coroutine[Any, Any, asyncio.subprocess.Process],
) -> asyncio.subprocess.Process:
    """Await ``starting`` (a ``create_subprocess_exec``); a cancellation meanwhile kills
    the whole group before it propagates.

    The child runs from the fork on, while asyncio still connects its pipes; cancelled
    in that window, asyncio's own clean-up kills only the direct child, so a background
    grandchild the script had already started would outlive the run. Shielding the start
    lets it finish, and the group is then killed like any other cancelled run.
    """
    spawn = asyncio.ensure_future(starting)
    try:
        return await asyncio.shield(spawn)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            proc = await spawn
            _impl.signal_tree(proc, _impl.SIGKILL)
            proc._transport.close()  # type: ignore[attr-defined]  # see run_bounded
        raise


async def _stop_group(proc: asyncio.subprocess.Process, reader: asyncio.Task[None]) -> None:
    """SIGTERM the group, give it the grace period, SIGKILL it, reap the child, drain output.

    "Gone" is judged by the child having exited and the output pipe reaching EOF (every
    member that still holds it has exited). Polling the group with ``killpg(pgid, 0)``
    would be fooled by zombies where PID 1 does not reap orphans, as in many containers.
    """
    _impl.signal_tree(proc, signal.SIGTERM)
    started = time.monotonic()
    if await _exited(proc, KILL_GRACE_S):
        with contextlib.suppress(TimeoutError):
            left = KILL_GRACE_S - (time.monotonic() - started)
            await asyncio.wait_for(asyncio.shield(reader), max(0.0, left))
    _impl.signal_tree(proc, _impl.SIGKILL)
    await _exited(proc, _REAP_S)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reader), _DRAIN_S)


async def _exited(proc: asyncio.subprocess.Process, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the child itself to exit; True if it did.

    Not ``proc.wait()``: asyncio's also waits for every output pipe to close, so a
    background grandchild holding stdout would make a finished script look hung
    (python/cpython#119710). ``returncode`` is set as soon as the child is reaped, so
    poll it, backing off from 1 ms to 50 ms.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while proc.returncode is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)
    return True


async def _pump(stream: asyncio.StreamReader, capture: HeadTail) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        capture.feed(chunk)
