"""Reads that need not run on every sample, cached between reads.

Sensors and the battery change slowly and cost more than a ``/proc`` read; the CPU count
and the boot time change only with a CPU hot-plug, a reboot or a wall-clock step (the
boot time is derived from the wall clock). :class:`SlowReads` runs such a read at most
once per period and hands out the cached items in between.
"""

from __future__ import annotations

from collections.abc import Callable

from vigil.agent.sampling.series import Item

RARE_S = 600.0
"""Seconds between re-reads of the CPU count, the boot time and (where the kernel says
when it changes) the mount table, so a sample cycle need not pay for them every
``slow_interval``."""


class SlowReads:
    """Per-key cache of slow reads on the monotonic ``clock``.

    ``reasons`` is the sampler's ``{series or source: why unknown}`` map, shared: the
    reason a read left under its key is restored whenever the cached items are handed
    out, since the sampler clears a source's reason before reading it.
    """

    def __init__(
        self, clock: Callable[[], float], reasons: dict[str, str], default_period_s: float
    ) -> None:
        self._clock = clock
        self._reasons = reasons
        self._default_period_s = default_period_s
        self._cache: dict[str, tuple[float, list[Item], str | None]] = {}

    def every(
        self, key: str, read: Callable[[], list[Item]], period_s: float | None = None
    ) -> list[Item]:
        """``read()`` at most once per ``period_s`` (default, and at least, the default
        period: ``slow_interval``); the cached items in between."""
        now = self._clock()
        cached = self._cache.get(key)
        period = (
            self._default_period_s if period_s is None else max(period_s, self._default_period_s)
        )
        if cached is not None and now - cached[0] < period:
            if cached[2] is not None:
                self._reasons[key] = cached[2]
            return cached[1]
        items = read()
        self._cache[key] = (now, items, self._reasons.get(key))
        return items

    def due(self, key: str, now: float, period_s: float | None = None) -> bool:
        """Whether :meth:`every` with ``period_s`` (default: the default period) would read
        ``key`` at ``now``."""
        cached = self._cache.get(key)
        period = (
            self._default_period_s if period_s is None else max(period_s, self._default_period_s)
        )
        return cached is None or now - cached[0] >= period

    def forget(self, key: str) -> None:
        """Drop ``key``'s cached read, so the next :meth:`every` reads it anew."""
        self._cache.pop(key, None)
