"""The run gate: whether a remediation may run now, and its place while it runs.

A fix that does not hold must not turn into a restart loop on someone's laptop, and
two fixes must not fight over the machine: per key a cooldown and an attempt budget
per window (Monit's "N restarts within M cycles"), one run at a time, and a global cap
on concurrent runs. The clock is injected (any monotonic seconds), so the rules are
tested without waiting.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable

_MAX_STARTS = 128  # remembered run starts per key (attempt budgets are at most 100)


class AlreadyRunning(RuntimeError):
    """:meth:`RunGate.slot` was entered for a key that is already running."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"{key} is already running")


class RunGate:
    """Decides whether a remediation may run now, and holds its place while it runs.

    Keys are any strings; the agent uses ``"<remediation id>:<check id>"``, so budgets
    are per (remediation, check) on this host. Per key: at most one run at a time,
    ``cooldown_s`` seconds between the end of one run and the start of the next, and at
    most ``max_attempts`` starts within any ``window_s`` seconds (Monit's "N restarts
    within M cycles"; once it is used up the incident path takes over). Globally: at most
    ``max_concurrent`` runs at once; extra runs wait for a slot. ``clock`` returns
    seconds and only needs to be monotonic.

    Use :meth:`check` then enter :meth:`slot` without awaiting in between::

        if (reason := gate.check(key, remediation.cooldown_s)) is None:
            async with gate.slot(key):
                result = await run_script(...)
    """

    def __init__(
        self, max_concurrent: int = 2, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1 (got {max_concurrent!r})")
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrent)
        self._running: set[str] = set()
        self._last_run: dict[str, float] = {}
        self._starts: dict[str, collections.deque[float]] = {}

    def check(
        self,
        key: str,
        cooldown_s: float,
        *,
        max_attempts: int | None = None,
        window_s: float = 0.0,
    ) -> str | None:
        """``None`` when ``key`` may run now, else why not (``"cooldown: 42s left"``,
        ``"attempts: 3 of 3 used in the last 3600s"``)."""
        if key in self._running:
            return "already running"
        now = self._clock()
        last = self._last_run.get(key)
        if last is not None:
            left = last + cooldown_s - now
            if left > 0:
                return f"cooldown: {math.ceil(left)}s left"
        if max_attempts is not None:
            starts = self._starts.get(key, ())
            recent = [t for t in starts if now - t < window_s]
            if len(recent) >= max_attempts:
                wait = math.ceil(recent[0] + window_s - now)
                return (
                    f"attempts: {len(recent)} of {max_attempts} used in the last "
                    f"{window_s:g}s (next in {wait}s)"
                )
        return None

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        """Hold a global slot for ``key``; its cooldown starts when the block exits.

        ``key`` counts as running from the moment of entry, also while it waits for a
        slot, so a second trigger is refused rather than queued. Raises
        :class:`AlreadyRunning` if ``key`` is already inside a slot. A run cancelled while
        still waiting never ran, so it starts no cooldown and uses no attempt.
        """
        if key in self._running:
            raise AlreadyRunning(key)
        self._running.add(key)
        try:
            async with self._slots:
                starts = self._starts.setdefault(key, collections.deque(maxlen=_MAX_STARTS))
                starts.append(self._clock())
                try:
                    yield
                finally:
                    self._last_run[key] = self._clock()
        finally:
            self._running.discard(key)
