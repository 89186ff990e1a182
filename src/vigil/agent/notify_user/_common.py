"""The notifier shape shared by the platform modules, and the process runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("vigil.agent.notify_user")

# A notifier that has not returned in this long is killed (seconds): notify-send and
# osascript return at once; a toast's PowerShell takes a second or two to start.
NOTIFY_TIMEOUT_S = 15.0
# Characters of a notification's title and body (long text is cut, not wrapped).
MAX_TITLE_CHARS = 80
MAX_BODY_CHARS = 400


@dataclass(frozen=True, slots=True)
class Notification:
    """What to show: ``title`` and ``body`` (plain text) and ``url`` to open."""

    title: str
    body: str
    url: str

    def bounded(self) -> Notification:
        """The same, cut to the platform-safe lengths, with control characters removed."""
        return Notification(_clean(self.title, MAX_TITLE_CHARS), _clean(self.body, MAX_BODY_CHARS),
                            _clean(self.url, 2000))  # fmt: skip


class Notifier(Protocol):
    """Shows notifications. :meth:`show` returns None once shown, else why not."""

    def unavailable(self) -> str | None:
        """Why nothing can be shown here (no tool, no graphical session), or None."""

    async def show(self, note: Notification) -> str | None:
        """Show ``note``; None when shown, else a short reason."""


ArgvFn = Callable[[Notification], list[str]]
EnvFn = Callable[[Notification], Mapping[str, str]]


class CommandNotifier:
    """A :class:`Notifier` that runs one program per notification: ``argv(note)`` is its
    argument vector, ``env(note)`` extra environment variables, ``unavailable()`` why it
    cannot run here. The process gets no stdin, its output is discarded, and it is killed
    after ``timeout_s``."""

    def __init__(
        self,
        argv: ArgvFn,
        unavailable: Callable[[], str | None],
        env: EnvFn = lambda note: {},
        *,
        timeout_s: float = NOTIFY_TIMEOUT_S,
    ) -> None:
        self._argv = argv
        self._unavailable = unavailable
        self._env = env
        self._timeout_s = timeout_s

    def unavailable(self) -> str | None:
        return self._unavailable()

    async def show(self, note: Notification) -> str | None:
        why = self._unavailable()
        if why is not None:
            return why
        note = note.bounded()
        argv = self._argv(note)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env={**os.environ, **self._env(note)},
            )
        except OSError as exc:
            return f"cannot run {Path(argv[0]).name}: {exc.strerror or exc}"
        try:
            code = await asyncio.wait_for(proc.wait(), self._timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return f"{Path(argv[0]).name} timed out"
        return None if code == 0 else f"{Path(argv[0]).name} exited {code}"


def command_notifier(
    command: Sequence[str], *, timeout_s: float = NOTIFY_TIMEOUT_S
) -> CommandNotifier:
    """A notifier running ``command`` with the title, body and URL appended as three
    more arguments (``surveys.notifier`` in the agent config: a site's own tool)."""
    program = command[0]

    def unavailable() -> str | None:
        found = shutil.which(program)
        return None if found else f"notifier {program!r} not found"

    return CommandNotifier(
        lambda note: [*command, note.title, note.body, note.url], unavailable, timeout_s=timeout_s
    )


def _clean(text: str, limit: int) -> str:
    kept = "".join(ch if ch.isprintable() else " " for ch in text)
    return kept if len(kept) <= limit else kept[: limit - 1] + "…"
