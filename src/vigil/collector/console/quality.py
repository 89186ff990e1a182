"""The service-quality figures, cached: they scan a period's incidents (grouped in SQL,
seconds on a million rows), so a page view must not compute them every time.

One entry per period length; an entry older than :data:`QUALITY_TTL_S` is recomputed
on the next view (on the storage thread), a single computation at a time per period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from vigil.collector.desk.console import Quality

QUALITY_TTL_S = 60.0  # seconds a computed page stays served


class QualityCache:
    """Quality figures per period (days), each reused for ``ttl_s`` seconds of the
    monotonic clock."""

    def __init__(self, ttl_s: float = QUALITY_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[int, tuple[float, Quality]] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def get(self, days: int, compute: Callable[[], Awaitable[Quality]]) -> Quality:
        """The cached figures for ``days``, or ``await compute()`` when stale or absent."""
        lock = self._locks.setdefault(days, asyncio.Lock())
        async with lock:  # concurrent views of a stale page wait for one computation
            entry = self._entries.get(days)
            if entry is not None and time.monotonic() - entry[0] < self.ttl_s:
                return entry[1]
            value = await compute()
            self._entries[days] = (time.monotonic(), value)
            return value

    def clear(self) -> None:
        """Forget every entry (after a console write that changes the figures)."""
        self._entries.clear()
