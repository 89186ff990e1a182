"""One started child as :func:`~vigil.agent.exec.process.run_bounded` supervises it.

A :class:`Child` is whatever the platform module started: an asyncio subprocess in its
own session (POSIX), the same in a Job Object (Windows), or a process started with
another user's token and read through a pipe (Windows ``logged_on_user``). The
supervision (timeout, grace period, kill, reap, output drain) is written once against
this small interface, so every kind of child gets the same guarantees.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class Child(Protocol):
    """A started child: its exit status, its output stream and how to stop its tree."""

    @property
    def returncode(self) -> int | None:
        """The exit status once the child itself has exited (and been reaped), else None."""
        ...

    @property
    def stdout(self) -> asyncio.StreamReader:
        """The child's captured output (stdout, and stderr when merged)."""
        ...

    def signal_tree(self, sig: int) -> None:
        """Ask (SIGTERM) or force (the platform's SIGKILL) the whole tree to stop.
        Never raises for a tree that is already gone."""
        ...

    def abort_output(self) -> None:
        """Stop reading the output pipe even if a member that escaped still holds it."""
        ...

    def close(self) -> None:
        """Release what the child holds (OS handles); called once, at the very end."""
        ...


class SubprocessChild:
    """An asyncio subprocess: the base of the platforms' children (``signal_tree`` is
    theirs: a process group on POSIX, a Job Object on Windows)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.proc.stdout is not None  # always spawned with stdout=PIPE
        return self.proc.stdout

    def abort_output(self) -> None:
        # asyncio's Process has no public close(); without this a pipe still held by a
        # grandchild that escaped the tree would keep the transport open.
        self.proc._transport.close()  # type: ignore[attr-defined]

    def close(self) -> None:
        """Nothing to release: asyncio owns the process and pipe handles."""


async def start_subprocess(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    merge_stderr: bool,
    **spawn_kwargs: Any,
) -> asyncio.subprocess.Process:
    """``argv`` started by asyncio: no shell, exactly ``env``, stdin from the null device,
    stdout to a pipe (stderr too when ``merge_stderr``, else the null device), plus the
    platform's ``spawn_kwargs`` (session, user, creation flags)."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.DEVNULL,
        env=dict(env),
        cwd=cwd,
        **spawn_kwargs,
    )
