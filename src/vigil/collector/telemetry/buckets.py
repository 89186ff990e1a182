"""Fleet aggregates as plain data: histogram buckets, per-host distributions, liveness
and the agents' own footprint.

Updated incrementally by :class:`~collector.telemetry.aggregates.Aggregates` as reports
commit, so a scrape costs O(buckets), not O(hosts). No Prometheus types here: the
exposition (``collector/metrics.py``) reads these and builds metric families.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sortedcontainers import SortedList

# An agent whose clock differs from the collector's by more than this is clock-skewed:
# five minutes is Kerberos' default tolerance, past which logins on the host start to fail.
CLOCK_SKEW_LIMIT_S = 300.0

# Upper bounds (seconds) of the ingest latency histogram: one durable SQLite commit is
# typically 1-20 ms with fsync; the tail shows a slow disk or a busy storage thread.
INGEST_BUCKETS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
# Time to restore service (seconds), from minutes to a week: the DORA buckets of interest
# are "under an hour", "under a day" and "under a week".
RESTORE_BUCKETS_S: tuple[float, ...] = (
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    86400.0,
    259200.0,
    604800.0,
)
# Remediation script run time (seconds): most fixes take well under a minute; the agent's
# default timeout caps the rest.
RUN_BUCKETS_S: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
# Agent CPU use in cores (CPU seconds per second): the agent aims at well under 1 %.
AGENT_CPU_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
# Agent resident memory (bytes), 16 MiB to 1 GiB.
AGENT_RSS_BUCKETS: tuple[float, ...] = tuple(
    float(mib * 2**20) for mib in (16, 24, 32, 48, 64, 96, 128, 256, 512, 1024)
)
# |agent clock - collector clock| (seconds); CLOCK_SKEW_LIMIT_S must be one of these.
CLOCK_OFFSET_BUCKETS_S: tuple[float, ...] = (1.0, 5.0, 30.0, 60.0, CLOCK_SKEW_LIMIT_S, 3600.0)

# Values are clamped to +/- this before they are bucketed or summed: the wire admits any
# finite measured value (a plugin may report 1e300), and a value past this would turn a
# histogram's sum into infinity or overflow the whole-millionths sum of a distribution
# (1e12 * 1e6 stays an exact integer well inside a float's range). No real duration,
# offset, CPU rate or RSS comes near it.
CLAMP = 1e12

# The wire series the agents' footprint is read from (agent/sampler.py).
AGENT_CPU_SERIES = "agent.cpu_seconds_total"
AGENT_RSS_SERIES = "agent.rss_bytes"


@dataclass(slots=True)
class BucketCounts:
    """A histogram as plain data: non-cumulative counts per upper bound, plus ``+Inf``.

    ``counts[i]`` counts values ``<= bounds[i]`` (and above the previous bound);
    ``counts[-1]`` counts values above the last bound. ``total`` is the sum of the values.
    """

    bounds: tuple[float, ...]
    counts: list[int]
    total: float = 0.0

    @classmethod
    def empty(cls, bounds: tuple[float, ...]) -> BucketCounts:
        return cls(bounds, [0] * (len(bounds) + 1))

    def observe(self, value: float) -> None:
        """Count one value (same unit as the bounds), clamped to +/- :data:`CLAMP`; a
        NaN is ignored (it has no bucket)."""
        if value != value:  # NaN
            return
        value = clamp(value)
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: BucketCounts) -> None:
        """Add another histogram with the same bounds into this one."""
        if other.bounds != self.bounds:
            raise ValueError("cannot add histograms with different bounds")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    def copy(self) -> BucketCounts:
        return BucketCounts(self.bounds, list(self.counts), self.total)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``[(le, cumulative count)]`` as Prometheus buckets, ending with ``+Inf``."""
        les = [_le(b) for b in self.bounds] + ["+Inf"]
        return list(zip(les, itertools.accumulate(self.counts), strict=True))


class FleetDistribution:
    """How one current value (per host) is distributed across the fleet, kept incrementally.

    :meth:`set` moves a host from its old bucket to its new one, so reading the
    distribution costs O(buckets) however many hosts there are. Not thread-safe: the
    desk updates it under the aggregates' lock.
    """

    __slots__ = ("_hist", "_total_micros", "_where")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._hist = BucketCounts.empty(bounds)
        # The sum in whole millionths: adding and taking away floats would drift with
        # every update (and the sum would depend on the order hosts were seen), while an
        # integer sum is exact, so aggregates reloaded from storage report the very same figure.
        self._total_micros = 0
        self._where: dict[str, tuple[int, int]] = {}

    def set(self, host: str, value: float) -> None:
        """Record ``value`` as the host's current value, clamped to +/- :data:`CLAMP` (a
        non-finite one is ignored)."""
        # Called three times per report (clock skew, agent CPU and RSS): the steps of
        # clamp() and discard() inline, ~40 % of the cost (issue #17).
        if not math.isfinite(value):
            return
        value = -CLAMP if value < -CLAMP else CLAMP if value > CLAMP else value
        counts = self._hist.counts
        index = bisect.bisect_left(self._hist.bounds, value)
        micros = round(value * 1e6)
        old = self._where.get(host)
        if old is not None:
            counts[old[0]] -= 1
            micros_delta = micros - old[1]
        else:
            micros_delta = micros
        counts[index] += 1
        self._total_micros += micros_delta
        self._where[host] = (index, micros)

    def load(self, values: Iterable[tuple[str, float]]) -> None:
        """Bulk :meth:`set` of ``(host, value)`` pairs into an empty distribution (start-up:
        one pass with no per-host discard, ~3x cheaper at 100,000 hosts)."""
        if self._where:
            raise ValueError("load() fills an empty distribution; use set() to update")
        bounds, counts, where = self._hist.bounds, self._hist.counts, self._where
        bisect_left, isfinite = bisect.bisect_left, math.isfinite
        total = 0
        for host, value in values:
            if not isfinite(value):
                continue
            value = -CLAMP if value < -CLAMP else CLAMP if value > CLAMP else value
            index = bisect_left(bounds, value)
            micros = round(value * 1e6)
            old = where.get(host)
            if old is not None:  # a host twice: the last value wins, as with set()
                counts[old[0]] -= 1
                total -= old[1]
            counts[index] += 1
            total += micros
            where[host] = (index, micros)
        self._total_micros = total

    def discard(self, host: str) -> None:
        """Forget the host (a host that goes away leaves nothing behind)."""
        old = self._where.pop(host, None)
        if old is not None:
            self._hist.counts[old[0]] -= 1
            self._total_micros -= old[1]

    def __len__(self) -> int:
        return len(self._where)

    def snapshot(self) -> BucketCounts:
        """A copy of the current distribution (its sum exact to a millionth)."""
        copy = self._hist.copy()
        copy.total = self._total_micros / 1e6
        return copy


@dataclass(frozen=True, slots=True)
class LivenessView:
    """A copy of a :class:`LivenessIndex`, answering "how many hosts are up at ``now``".

    ``ttl_deadlines``: sorted ``last_seen + ttl`` of hosts that announced a heartbeat TTL;
    ``no_ttl_seen``: sorted ``last_seen`` of hosts that never did (Unix seconds; never
    silent, kept apart so a host that announces a TTL later moves over).
    """

    ttl_deadlines: list[float] = field(default_factory=list)
    no_ttl_seen: list[float] = field(default_factory=list)

    @property
    def hosts(self) -> int:
        return len(self.ttl_deadlines) + len(self.no_ttl_seen)

    def count_up(self, now: float, grace_s: float) -> int:
        """Hosts up at ``now``; the same rule as :func:`agents_by_state`, in O(log hosts)."""
        with_ttl = len(self.ttl_deadlines) - bisect.bisect_left(self.ttl_deadlines, now - grace_s)
        return with_ttl + len(self.no_ttl_seen)


class LivenessIndex:
    """Every host's liveness deadline in sorted containers, updated per report.

    An update removes the host's old key and adds its new one, each O(log hosts)
    (``sortedcontainers.SortedList``: ~2.5 us at 100,000 hosts, where a plain sorted list
    paid a memmove proportional to the fleet, ~12 us; issue #17); :meth:`view` copies
    the keys into two lists of floats. Not thread-safe: the desk updates it under its lock.
    """

    __slots__ = ("_key", "_with_ttl", "_without")

    def __init__(self) -> None:
        self._key: dict[str, tuple[bool, float]] = {}
        self._with_ttl: SortedList = SortedList()
        self._without: SortedList = SortedList()

    def load(self, hosts: Iterable[tuple[str, float, float | None]]) -> None:
        """Bulk-load ``(host, last_seen, ttl or None)`` in O(n log n) (at start-up)."""
        for host, seen, ttl in hosts:
            self._key[host] = (ttl is not None, seen if ttl is None else seen + ttl)
        self._with_ttl = SortedList(k for has_ttl, k in self._key.values() if has_ttl)
        self._without = SortedList(k for has_ttl, k in self._key.values() if not has_ttl)

    def update(self, host: str, last_seen: float, ttl: float | None) -> None:
        """Set the host's last report time and announced heartbeat TTL (seconds)."""
        old = self._key.get(host)
        if old is not None:  # discard()'s step inline: once per report (issue #17)
            (self._with_ttl if old[0] else self._without).remove(old[1])
        new = (ttl is not None, last_seen if ttl is None else last_seen + ttl)
        (self._with_ttl if new[0] else self._without).add(new[1])
        self._key[host] = new

    def discard(self, host: str) -> None:
        old = self._key.pop(host, None)
        if old is not None:
            # Equal keys of different hosts are interchangeable: removing any one is right.
            (self._with_ttl if old[0] else self._without).remove(old[1])

    def view(self) -> LivenessView:
        return LivenessView(list(self._with_ttl), list(self._without))


def cpu_rate(previous: tuple[float, float] | None, current: tuple[float, float]) -> float | None:
    """CPU seconds per second between two ``(time, cpu_seconds_total)`` samples.

    ``None`` when there is no earlier sample, time did not advance, or the total went
    down (the agent restarted and its counter began again).
    """
    if previous is None:
        return None
    dt = current[0] - previous[0]
    used = current[1] - previous[1]
    if dt <= 0 or used < 0:
        return None
    return used / dt


class AgentFootprint:
    """The agents' own CPU use and RSS as fleet distributions (never a series per host).

    Fed with each metrics summary an agent sends (:data:`AGENT_CPU_SERIES`,
    :data:`AGENT_RSS_SERIES`); the CPU rate needs two summaries from the same agent run.
    A summary older than the newest one seen for that host (a late retry) is ignored.
    """

    __slots__ = ("_last", "cpu", "rss")

    def __init__(self) -> None:
        self.cpu = FleetDistribution(AGENT_CPU_BUCKETS)
        self.rss = FleetDistribution(AGENT_RSS_BUCKETS)
        # host -> (agent time, cpu_seconds_total or NaN) of the newest summary seen
        self._last: dict[str, tuple[float, float]] = {}

    def update(self, host: str, at: float, values: Mapping[str, float]) -> None:
        """Apply one metrics summary taken at ``at`` (agent clock, Unix seconds)."""
        last = self._last.get(host)
        if last is not None and at <= last[0]:
            return
        rss = values.get(AGENT_RSS_SERIES)
        if rss is not None:
            self.rss.set(host, rss)
        total = values.get(AGENT_CPU_SERIES)
        if total is not None:
            previous = None if last is None or math.isnan(last[1]) else last
            rate = cpu_rate(previous, (at, total))
            if rate is not None:
                self.cpu.set(host, rate)
        self._last[host] = (at, math.nan if total is None else total)

    def discard(self, host: str) -> None:
        self.cpu.discard(host)
        self.rss.discard(host)
        self._last.pop(host, None)


def clamp(value: float) -> float:
    """``value`` limited to +/- :data:`CLAMP` (infinities too)."""
    return -CLAMP if value < -CLAMP else CLAMP if value > CLAMP else value


def _le(bound: float) -> str:
    # floatToGoString-style, as prometheus_client renders `le` itself: 1.0, 0.25, 1e+06
    return repr(float(bound))
