"""Prometheus metrics rendered from state at scrape time by one custom Collector.

:class:`VigilCollector` builds fresh metric families from the store's
:meth:`~collector.store.SqliteStore.metrics_snapshot` and the in-memory
:class:`RequestCounters` on every scrape, so a host or check that disappears leaves no
stale series, and handlers never mutate gauges. It is registered on the app's explicit
``CollectorRegistry`` (never the global one), so two apps in one process share nothing.

Cheap at fleet scale: the store keeps every fleet-wide figure incrementally (the
structures below: :class:`BucketCounts`, :class:`FleetDistribution`,
:class:`LivenessIndex`, :class:`AgentFootprint`), so a scrape costs O(buckets + label
values), not O(hosts). 100 000 hosts render in a few milliseconds (see
``bench/metrics_scrape.py``).

Label cardinality is bounded on purpose: fleet-wide figures are histograms across hosts,
never a series per host. Per-host series (``vigil_host_*``) exist only when
``metrics.per_host_series`` is switched on, for at most ``metrics.max_host_series`` hosts;
the rest fold into one ``host="_overflow"`` series. Every metric is listed, with its
meaning and labels, in ``docs/metrics.md``.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from vigil import __version__
from vigil.collector.incidents import is_silent

if TYPE_CHECKING:
    from vigil.collector.store import MetricsSnapshot

# Why an ingest is refused; fixed so the label set stays bounded.
REJECT_REASONS: tuple[str, ...] = ("unauthorized", "too_large", "bad_gzip", "invalid", "overloaded")

# Priorities always rendered (at zero when nothing has them) so dashboards and alert rules
# see a series, not an absent one; a priority outside this set is rendered as it comes.
PRIORITIES: tuple[str, ...] = ("P1", "P2", "P3", "P4")
# Problem kinds (shared/DESIGN.md): a key that keeps coming back, and one check failing on
# many hosts at once.
PROBLEM_KINDS: tuple[str, ...] = ("recurring", "fleet")
# The service label of a check the service catalog does not map (yet).
NO_SERVICE = "none"
# The label value that stands for every host past the per-host cap.
OVERFLOW_HOST = "_overflow"
# At most this many values of a `check` or `remediation` label in one family; the rest
# fold into OTHER_LABEL. Admins name checks and remediations, so a real fleet stays far
# below; the cap keeps an agent that invents names (a bug, or a stolen token) from
# exploding Prometheus's series count.
MAX_LABEL_VALUES = 500
OTHER_LABEL = "_other"

# An agent whose clock differs from the collector's by more than this is clock-skewed:
# five minutes is Kerberos' default tolerance, past which logins on the host start to fail.
CLOCK_SKEW_LIMIT_S = 300.0

# Upper bounds (seconds) of the ingest latency histogram: one durable SQLite commit is
# typically 1-20 ms with fsync; the tail shows a slow disk or a busy store thread.
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

# The wire series the agents' footprint is read from (agent/sampler.py).
AGENT_CPU_SERIES = "agent.cpu_seconds_total"
AGENT_RSS_SERIES = "agent.rss_bytes"


# --------------------------------------------------------------------------- aggregates


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
        """Count one value (same unit as the bounds)."""
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
    store updates it under its lock.
    """

    __slots__ = ("_hist", "_total_micros", "_where")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._hist = BucketCounts.empty(bounds)
        # The sum in whole millionths: adding and taking away floats would drift with
        # every update (and the sum would depend on the order hosts were seen), while an
        # integer sum is exact, so a reloaded store reports the very same figure.
        self._total_micros = 0
        self._where: dict[str, tuple[int, int]] = {}

    def set(self, host: str, value: float) -> None:
        """Record ``value`` as the host's current value (a non-finite one is ignored)."""
        if not math.isfinite(value):
            return
        self.discard(host)
        index = bisect.bisect_left(self._hist.bounds, value)
        micros = round(value * 1e6)
        self._hist.counts[index] += 1
        self._total_micros += micros
        self._where[host] = (index, micros)

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
    """Every host's liveness deadline in sorted lists, updated per report.

    An update is a bisect plus a list insert/delete (a memmove: microseconds at 100 000
    hosts); :meth:`view` copies two lists of floats. Not thread-safe: the store updates it
    under its lock.
    """

    __slots__ = ("_key", "_with_ttl", "_without")

    def __init__(self) -> None:
        self._key: dict[str, tuple[bool, float]] = {}
        self._with_ttl: list[float] = []
        self._without: list[float] = []

    def load(self, hosts: Iterable[tuple[str, float, float | None]]) -> None:
        """Bulk-load ``(host, last_seen, ttl or None)`` in O(n log n) (at store open)."""
        for host, seen, ttl in hosts:
            self._key[host] = (ttl is not None, seen if ttl is None else seen + ttl)
        self._with_ttl = sorted(k for has_ttl, k in self._key.values() if has_ttl)
        self._without = sorted(k for has_ttl, k in self._key.values() if not has_ttl)

    def update(self, host: str, last_seen: float, ttl: float | None) -> None:
        """Set the host's last report time and announced heartbeat TTL (seconds)."""
        self.discard(host)
        new = (ttl is not None, last_seen if ttl is None else last_seen + ttl)
        bisect.insort(self._with_ttl if new[0] else self._without, new[1])
        self._key[host] = new

    def discard(self, host: str) -> None:
        old = self._key.pop(host, None)
        if old is not None:
            keys = self._with_ttl if old[0] else self._without
            # Equal keys of different hosts are interchangeable: removing any one is right.
            del keys[bisect.bisect_left(keys, old[1])]

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


# --------------------------------------------------------------------------- request counters


@dataclass
class RequestCounters:
    """Request-level counts the store does not see: rejected reports and ingest latency.

    Mutated on the event loop and read by :class:`VigilCollector` from the store thread,
    hence the lock; read through :meth:`copy` for a consistent view.
    """

    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    # Non-cumulative counts per bucket of INGEST_BUCKETS_S, plus a last one for +Inf.
    ingest_buckets: list[int] = field(default_factory=lambda: [0] * (len(INGEST_BUCKETS_S) + 1))
    ingest_sum_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def reject(self, reason: str) -> None:
        """Count one refused report; ``reason`` must be one of :data:`REJECT_REASONS`."""
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}, expected one of {REJECT_REASONS}")
        with self._lock:
            self.rejected[reason] += 1

    def observe_ingest(self, seconds: float) -> None:
        """Record how long one accepted report took from body read to durable commit."""
        index = bisect.bisect_left(INGEST_BUCKETS_S, seconds)
        with self._lock:
            self.ingest_buckets[index] += 1
            self.ingest_sum_s += seconds

    def copy(self) -> RequestCounters:
        """A consistent copy, safe to read while requests keep counting."""
        with self._lock:
            return RequestCounters(
                rejected=dict(self.rejected),
                ingest_buckets=list(self.ingest_buckets),
                ingest_sum_s=self.ingest_sum_s,
            )


# --------------------------------------------------------------------------- pure helpers


def agents_by_state(
    last_seen: Mapping[str, float],
    ttl: Mapping[str, float],
    *,
    now: float,
    grace_s: float,
) -> tuple[int, int]:
    """Count hosts ``(up, silent)`` at ``now`` (all times in epoch seconds).

    The incident engine's rule (:func:`collector.incidents.is_silent`), so /metrics and the
    incidents agree: a host is up while ``last_seen + ttl + grace_s >= now``, where ``ttl``
    is the heartbeat TTL it last announced; a host that never announced a TTL made no
    promise and is never silent. This is the reference rule; :meth:`LivenessView.count_up`
    computes the same count from sorted deadlines.
    """
    up = sum(not is_silent(seen, ttl.get(host), grace_s, now) for host, seen in last_seen.items())
    return up, len(last_seen) - up


def fleet_states(hosts: int, up: int, sleeping: int) -> dict[str, int]:
    """``{"up", "silent", "sleeping"}`` counts: hosts that are not up are sleeping when
    known to be asleep (at most ``hosts - up`` of them), else silent."""
    down = max(hosts - up, 0)
    asleep = min(max(sleeping, 0), down)
    return {"up": up, "silent": down - asleep, "sleeping": asleep}


def with_priorities(by_priority: Mapping[str, float]) -> list[tuple[str, float]]:
    """Every priority of :data:`PRIORITIES` (zero when absent) plus any other present."""
    extra = sorted(set(by_priority) - set(PRIORITIES))
    return [(p, by_priority.get(p, 0)) for p in (*PRIORITIES, *extra)]


def open_by_priority_and_service(
    open_incidents: Mapping[tuple[str, str], int], check_service: Mapping[str, str]
) -> dict[tuple[str, str], int]:
    """Open incident counts keyed ``(priority, check)`` regrouped by ``(priority, service)``;
    every priority of :data:`PRIORITIES` appears (service :data:`NO_SERVICE`, zero) so the
    series exist before the first incident."""
    out: dict[tuple[str, str], int] = {(p, NO_SERVICE): 0 for p in PRIORITIES}
    for (priority, check), n in open_incidents.items():
        key = (priority, check_service.get(check, NO_SERVICE))
        out[key] = out.get(key, 0) + n
    return out


def cap_label(
    samples: Mapping[tuple[str, ...], float], position: int, limit: int = MAX_LABEL_VALUES
) -> dict[tuple[str, ...], float]:
    """Bound the distinct values of the label at ``position`` to ``limit``.

    Keeps the values with the largest totals (ties by name) and folds the others into
    :data:`OTHER_LABEL`, summing their samples, so no count is lost. Unchanged below the
    limit.
    """
    totals: dict[str, float] = {}
    for key, value in samples.items():
        totals[key[position]] = totals.get(key[position], 0) + value
    if len(totals) <= limit:
        return dict(samples)
    kept = set(sorted(totals, key=lambda name: (-totals[name], name))[:limit])
    out: dict[tuple[str, ...], float] = {}
    for key, value in samples.items():
        if key[position] not in kept:
            key = (*key[:position], OTHER_LABEL, *key[position + 1 :])
        out[key] = out.get(key, 0) + value
    return out


def cap_histograms(
    by_name: Mapping[str, BucketCounts], limit: int = MAX_LABEL_VALUES
) -> dict[str, BucketCounts]:
    """:func:`cap_label` for histograms keyed by one label: the most-observed ``limit``
    names are kept, the others are added together under :data:`OTHER_LABEL`."""
    if len(by_name) <= limit:
        return dict(by_name)
    ranked = sorted(by_name, key=lambda name: (-by_name[name].count, name))
    out = {name: by_name[name] for name in ranked[:limit]}
    other = by_name[ranked[limit]].copy()
    for name in ranked[limit + 1 :]:
        other.add(by_name[name])
    out[OTHER_LABEL] = other
    return out


def host_series(
    hosts: Iterable[tuple[str, str, float]], overflow: tuple[int, float | None]
) -> list[tuple[tuple[str, str], float]]:
    """Per-host ``((agent_id, hostname), last_seen)`` rows, plus one overflow row.

    ``overflow`` is ``(hosts past the cap, oldest last_seen among them)``; its row uses
    :data:`OVERFLOW_HOST` for both labels and the *oldest* time, so an alert on a stale
    host still fires for a host that has no series of its own.
    """
    rows = [((agent_id, hostname), seen) for agent_id, hostname, seen in hosts]
    folded, oldest = overflow
    if folded and oldest is not None:
        rows.append(((OVERFLOW_HOST, OVERFLOW_HOST), oldest))
    return rows


# --------------------------------------------------------------------------- the collector


class VigilCollector:
    """A ``prometheus_client`` custom collector for one collector app.

    ``snapshot(host_series=N, host_maps=False)`` returns the store's current
    :class:`~collector.store.MetricsSnapshot` with up to N hosts itemized and without the
    O(hosts) per-host maps (it must not do I/O: it runs on every scrape); ``counters``
    holds request-level counts; ``clock`` gives epoch seconds for agent liveness;
    ``heartbeat_grace_s`` is the silence tolerated past a heartbeat TTL.
    ``per_host_series`` switches the ``vigil_host_*`` series on, for at most
    ``max_host_series`` hosts. ``service_of(check)`` names the catalog service a check
    belongs to (``None``: no service, labelled ``none``).
    """

    def __init__(
        self,
        snapshot: Callable[..., MetricsSnapshot],
        counters: RequestCounters,
        *,
        heartbeat_grace_s: float,
        clock: Callable[[], float] = time.time,
        version: str = __version__,
        per_host_series: bool = False,
        max_host_series: int = 1000,
        service_of: Callable[[str], str | None] = lambda check: None,
    ) -> None:
        self._snapshot = snapshot
        self._counters = counters
        self._grace_s = heartbeat_grace_s
        self._clock = clock
        self._version = version
        self._host_series = max_host_series if per_host_series else 0
        self._service_of = service_of

    def describe(self) -> list[Metric]:
        # Empty on purpose: registering must not call the store (which may not be open
        # yet), and names are unique by construction.
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot(host_series=self._host_series, host_maps=False)
        counters = self._counters.copy()
        now = self._clock()
        yield from _build_info(self._version)
        yield from _fleet(snap, counters, now, self._grace_s)
        services = {
            check: self._service_of(check) or NO_SERVICE
            for check in {c for _, c in snap.incidents_open} | set(snap.checks_failing)
        }
        yield from _checks_and_incidents(snap, services)
        yield from _remediations(snap)
        yield from _footprint(snap)
        if self._host_series:
            yield from _hosts(snap)


def _build_info(version: str) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "vigil_build_info", "Vigil collector build; always 1.", labels=["version"]
    )
    info.add_metric([version], 1)
    yield info


def _fleet(
    snap: MetricsSnapshot, counters: RequestCounters, now: float, grace_s: float
) -> Iterator[Metric]:
    up = snap.liveness.count_up(now, grace_s)
    expected = snap.liveness_silence_expected
    asleep = expected.hosts - expected.count_up(now, grace_s)
    states = fleet_states(snap.liveness.hosts, up, asleep)
    yield _labelled(
        GaugeMetricFamily(
            "vigil_agents",
            "Known agents by state: up; sleeping (known asleep, not an outage); silent"
            " (past heartbeat TTL plus grace).",
            labels=["state"],
        ),
        [((state,), n) for state, n in states.items()],
    )
    skew = snap.clock_offsets
    within = sum(skew.counts[: skew.bounds.index(CLOCK_SKEW_LIMIT_S) + 1])
    yield GaugeMetricFamily(
        "vigil_agents_clock_skewed",
        f"Agents whose clock differs from the collector's by more than {CLOCK_SKEW_LIMIT_S:g} s"
        " at their last report.",
        value=skew.count - within,
    )
    offsets = GaugeHistogramMetricFamily(
        "vigil_agent_clock_offset_seconds",
        "Agents by |agent clock - collector clock| at their last report (includes network delay).",
    )
    offsets.add_metric([], skew.cumulative(), gsum_value=skew.total)
    yield offsets

    yield _counter(
        "vigil_reports_accepted", "Reports committed to the store.", snap.reports_accepted_total
    )
    yield _counter(
        "vigil_reports_duplicate",
        "Reports acknowledged again without effect (batch_id already stored).",
        snap.reports_duplicate_total,
    )
    yield _labelled(
        CounterMetricFamily(
            "vigil_reports_rejected", "Reports refused, by reason.", labels=["reason"]
        ),
        [((reason,), n) for reason, n in counters.rejected.items()],
    )
    yield _counter(
        "vigil_events_ingested", "Events stored from accepted reports.", snap.events_total
    )
    latency = HistogramMetricFamily(
        "vigil_ingest_duration_seconds",
        "Time from a report's body being read to its durable commit.",
    )
    ingest = BucketCounts(INGEST_BUCKETS_S, counters.ingest_buckets, counters.ingest_sum_s)
    latency.add_metric([], ingest.cumulative(), sum_value=ingest.total)
    yield latency


def _checks_and_incidents(snap: MetricsSnapshot, service: Mapping[str, str]) -> Iterator[Metric]:
    yield _labelled(
        GaugeMetricFamily(
            "vigil_checks_failing",
            "Hosts whose latest result for a check is critical, by check and service.",
            labels=["check", "service"],
        ),
        sorted(
            cap_label(
                {
                    (check, service.get(check, NO_SERVICE)): n
                    for check, n in snap.checks_failing.items()
                },
                0,
            ).items()
        ),
    )
    yield _labelled(
        GaugeMetricFamily(
            "vigil_incidents_open",
            "Open incidents by priority and service.",
            labels=["priority", "service"],
        ),
        sorted(open_by_priority_and_service(snap.incidents_open, service).items()),
    )
    yield _labelled(
        GaugeMetricFamily(
            "vigil_incidents_open_by_check",
            "Open incidents by check (the top-problems view).",
            labels=["check"],
        ),
        sorted(cap_label(_sum_by_check(snap.incidents_open), 0).items()),
    )
    yield _labelled(
        GaugeMetricFamily(
            "vigil_incidents_acknowledged",
            "Open incidents a person has acknowledged, by priority.",
            labels=["priority"],
        ),
        [((p,), n) for p, n in with_priorities(snap.incidents_acknowledged)],
    )
    yield _counter("vigil_incidents_opened", "Incidents opened.", snap.incidents_opened_total)
    yield _counter("vigil_incidents_resolved", "Incidents resolved.", snap.incidents_resolved_total)
    yield _counter(
        "vigil_incidents_prevented",
        "Failures fixed and verified by a remediation before an incident was raised.",
        snap.incidents_prevented_total,
    )
    yield _labelled(
        GaugeMetricFamily(
            "vigil_incidents_past_sla",
            "Open incidents past their SLA deadline (SLA breached), by priority.",
            labels=["priority"],
        ),
        [((p,), n) for p, n in with_priorities(snap.incidents_past_sla)],
    )
    restore = HistogramMetricFamily(
        "vigil_incident_time_to_restore_seconds",
        "Time from an incident opening to its resolution (DORA time to restore service),"
        " by priority.",
        labels=["priority"],
    )
    for priority in (p for p, _ in with_priorities(snap.time_to_restore)):
        hist = snap.time_to_restore.get(priority) or BucketCounts.empty(RESTORE_BUCKETS_S)
        restore.add_metric([priority], hist.cumulative(), sum_value=hist.total)
    yield restore
    yield _labelled(
        GaugeMetricFamily(
            "vigil_problems_open",
            "Open problems (root cause not fixed) by kind: recurring key, or fleet-wide.",
            labels=["kind"],
        ),
        [
            ((kind,), snap.problems_open.get(kind, 0))
            for kind in (*PROBLEM_KINDS, *sorted(set(snap.problems_open) - set(PROBLEM_KINDS)))
        ],
    )


def _remediations(snap: MetricsSnapshot) -> Iterator[Metric]:
    yield _labelled(
        CounterMetricFamily(
            "vigil_remediation_runs",
            "Remediation runs reported by agents, by remediation and outcome.",
            labels=["remediation", "outcome"],
        ),
        sorted(cap_label(snap.remediation_runs, 0).items()),
    )
    durations = HistogramMetricFamily(
        "vigil_remediation_duration_seconds",
        "Run time of remediation scripts, by remediation.",
        labels=["remediation"],
    )
    for name, hist in sorted(cap_histograms(snap.remediation_durations).items()):
        durations.add_metric([name], hist.cumulative(), sum_value=hist.total)
    yield durations
    yield GaugeMetricFamily(
        "vigil_remediations_paused",
        "Remediations paused fleet-wide by the blast-radius guard.",
        value=len(snap.remediations_paused),
    )


def _footprint(snap: MetricsSnapshot) -> Iterator[Metric]:
    cpu = GaugeHistogramMetricFamily(
        "vigil_agent_cpu_usage_ratio",
        "Agents by their own CPU use between their last two metrics summaries, in cores"
        " (CPU seconds per second).",
    )
    cpu.add_metric([], snap.agent_cpu.cumulative(), gsum_value=snap.agent_cpu.total)
    yield cpu
    rss = GaugeHistogramMetricFamily(
        "vigil_agent_resident_memory_bytes",
        "Agents by their own resident memory at their last metrics summary.",
    )
    rss.add_metric([], snap.agent_rss.cumulative(), gsum_value=snap.agent_rss.total)
    yield rss


def _hosts(snap: MetricsSnapshot) -> Iterator[Metric]:
    yield _labelled(
        GaugeMetricFamily(
            "vigil_host_last_seen_timestamp_seconds",
            "When the collector last received a report from the host (collector clock)."
            f' Hosts past metrics.max_host_series share host="{OVERFLOW_HOST}", with the'
            " oldest time among them.",
            labels=["agent_id", "host"],
        ),
        host_series(snap.host_detail, snap.host_overflow),
    )
    yield GaugeMetricFamily(
        "vigil_host_series_overflow_hosts",
        "Hosts without per-host series of their own (past metrics.max_host_series).",
        value=snap.host_overflow[0],
    )


def _sum_by_check(open_incidents: Mapping[tuple[str, str], int]) -> dict[tuple[str], int]:
    out: dict[tuple[str], int] = {}
    for (_, check), n in open_incidents.items():
        out[(check,)] = out.get((check,), 0) + n
    return out


def _le(bound: float) -> str:
    # floatToGoString-style, as prometheus_client renders `le` itself: 1.0, 0.25, 1e+06
    return repr(float(bound))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(
    family: GaugeMetricFamily | CounterMetricFamily,
    samples: Iterable[tuple[tuple[str, ...], float]],
) -> GaugeMetricFamily | CounterMetricFamily:
    for labels, value in samples:
        family.add_metric(list(labels), value)
    return family
