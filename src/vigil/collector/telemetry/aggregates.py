"""The collector's in-memory aggregates for ``/metrics`` and the snapshot a scrape reads.

:class:`Aggregates` holds counters, gauges and histograms kept incrementally: the desk
fills a fresh instance with one transaction's deltas and merges it into the long-lived
one only after the COMMIT succeeded, so a scrape never sees a rolled-back report.
:meth:`Aggregates.snapshot` copies them into a frozen :class:`MetricsSnapshot` with no
I/O. Prometheus exposition lives apart, in ``collector/metrics.py``, which reads this.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from dataclasses import dataclass, field

from vigil.collector.telemetry.buckets import (
    AGENT_CPU_BUCKETS,
    AGENT_CPU_SERIES,
    AGENT_RSS_BUCKETS,
    AGENT_RSS_SERIES,
    CLOCK_OFFSET_BUCKETS_S,
    RESTORE_BUCKETS_S,
    RUN_BUCKETS_S,
    AgentFootprint,
    BucketCounts,
    FleetDistribution,
    LivenessIndex,
    LivenessView,
)

# Distinct check names, and distinct remediation names, the long-lived aggregates keep
# apart; later names share OTHER_NAME. Admins name checks and remediations, so a real
# fleet stays far below; the cap keeps an agent that invents names (a bug, or a stolen
# token) from growing the collector's memory without bound. Above the cap of labels the
# exposition shows (``collector/metrics.py``), which picks the busiest among these.
MAX_NAMES = 1000
OTHER_NAME = "_other"


class NameCap:
    """The first ``limit`` distinct names seen, kept for good; any other maps to
    :data:`OTHER_NAME`.

    Sticky on purpose: a name keeps the key it got when first counted, so a gauge
    incremented under one key is always decremented under the same one.
    """

    __slots__ = ("_known", "limit")

    def __init__(self, limit: int = MAX_NAMES) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, name: str) -> str:
        known = self._known
        if name in known:
            return name
        if len(known) < self.limit:
            known.add(name)
            return name
        return OTHER_NAME

    def __len__(self) -> int:
        return len(self._known)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """In-memory aggregates for /metrics; building one does no I/O and costs O(buckets +
    label values + itemized hosts), not O(hosts).

    Times are Unix seconds (collector clock). Totals count since the database was created.
    ``checks_failing`` counts hosts whose last state for the check is ``critical``,
    ``checks_unknown`` those whose last state is ``unknown`` (the check cannot read what
    it watches: a metric-name typo, a missing path, a failing plugin);
    ``incidents_open`` is keyed ``(priority, check)``. ``host_detail`` lists the first
    ``host_series`` hosts (first-seen order, so a host keeps its series) as ``(agent_id,
    hostname, last_seen)``; ``host_overflow`` is ``(hosts not listed, oldest last_seen
    among them or None)``.

    ``incidents_acknowledged``, ``incidents_past_sla`` and ``problems_open`` are counted
    in storage by :meth:`~collector.desk.service.Desk.refresh_metrics_figures`, off the
    scrape path.
    ``liveness_silence_expected`` covers the hosts the catalog expects to go quiet.
    """

    liveness: LivenessView
    incidents_open: dict[tuple[str, str], int]
    incidents_opened_total: int
    incidents_resolved_total: int
    incidents_prevented_total: int
    checks_failing: dict[str, int]
    remediation_runs: dict[tuple[str, str], int]
    reports_accepted_total: int
    reports_duplicate_total: int
    events_total: int
    clock_offsets: BucketCounts = field(
        default_factory=lambda: BucketCounts.empty(CLOCK_OFFSET_BUCKETS_S)
    )
    time_to_restore: dict[str, BucketCounts] = field(default_factory=dict)
    remediation_durations: dict[str, BucketCounts] = field(default_factory=dict)
    agent_cpu: BucketCounts = field(default_factory=lambda: BucketCounts.empty(AGENT_CPU_BUCKETS))
    agent_rss: BucketCounts = field(default_factory=lambda: BucketCounts.empty(AGENT_RSS_BUCKETS))
    host_detail: tuple[tuple[str, str, float], ...] = ()
    host_overflow: tuple[int, float | None] = (0, None)
    # Every host's last_seen and heartbeat TTL: O(hosts) to copy, so left empty when
    # metrics_snapshot(host_maps=False) (the /metrics path does not need them).
    host_last_seen: dict[str, float] = field(default_factory=dict)
    host_ttl: dict[str, float] = field(default_factory=dict)
    checks_unknown: dict[str, int] = field(default_factory=dict)
    # Reports refused with epoch_reset (an agent restored from a snapshot).
    reports_epoch_reset_total: int = 0
    # ---- refreshed by refresh_metrics_figures() (at most one tick old)
    incidents_acknowledged: dict[str, int] = field(default_factory=dict)  # open, by priority
    incidents_past_sla: dict[str, int] = field(default_factory=dict)  # open, by priority
    problems_open: dict[str, int] = field(default_factory=dict)  # by kind (recurring, fleet)
    # ---- filled by later stages; empty until then
    # Hosts in a catalog group whose silence is expected (laptops): silent means asleep.
    liveness_silence_expected: LivenessView = field(default_factory=LivenessView)


@dataclass(slots=True)
class Aggregates:
    """Mutable aggregates; a fresh instance holds the deltas of one transaction.

    The long-lived instance also keeps derived, incrementally updated structures
    (``liveness``, ``clock_skew``, ``footprint``) that :meth:`merge` maintains from a
    delta's ``host_*`` maps and ``footprint_samples``; a delta leaves them empty.
    """

    host_last_seen: dict[str, float] = field(default_factory=dict)
    host_ttl: dict[str, float] = field(default_factory=dict)
    host_names: dict[str, str] = field(default_factory=dict)
    host_clock_offset: dict[str, float] = field(default_factory=dict)
    host_silence_expected: dict[str, bool] = field(default_factory=dict)
    incidents_open: Counter[tuple[str, str]] = field(default_factory=Counter)
    checks_failing: Counter[str] = field(default_factory=Counter)
    checks_unknown: Counter[str] = field(default_factory=Counter)
    remediation_runs: Counter[tuple[str, str]] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)
    time_to_restore: dict[str, BucketCounts] = field(default_factory=dict)
    run_durations: dict[str, BucketCounts] = field(default_factory=dict)
    footprint_samples: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)
    liveness: LivenessIndex = field(default_factory=LivenessIndex)
    asleep_liveness: LivenessIndex = field(default_factory=LivenessIndex)
    clock_skew: FleetDistribution = field(
        default_factory=lambda: FleetDistribution(CLOCK_OFFSET_BUCKETS_S)
    )
    footprint: AgentFootprint = field(default_factory=AgentFootprint)
    # The long-lived instance's bounds on check and remediation names (see NameCap).
    check_names: NameCap = field(default_factory=NameCap, repr=False, compare=False)
    remediation_names: NameCap = field(default_factory=NameCap, repr=False, compare=False)
    # Replaced whole by replace_figures(), never merged.
    incidents_acknowledged: dict[str, int] = field(default_factory=dict)
    incidents_past_sla: dict[str, int] = field(default_factory=dict)
    problems_open: dict[str, int] = field(default_factory=dict)
    # Guards the long-lived instance between merge() and snapshot(). Not the
    # storage's lock: that one is held across COMMIT (an fsync), and a scrape must never
    # wait for the disk.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def observe_restore(self, priority: str, seconds: float) -> None:
        """Count one incident restored after ``seconds`` (time to restore, by priority)."""
        hist = self.time_to_restore.setdefault(priority, BucketCounts.empty(RESTORE_BUCKETS_S))
        hist.observe(max(seconds, 0.0))

    def observe_run_duration(self, remediation: str, seconds: float) -> None:
        """Count one remediation run that took ``seconds``."""
        hist = self.run_durations.setdefault(remediation, BucketCounts.empty(RUN_BUCKETS_S))
        hist.observe(seconds)

    def note_footprint(self, host: str, at: float, values: dict[str, float]) -> None:
        """Keep a metrics summary's agent-footprint values, if it has any."""
        own = {k: values[k] for k in (AGENT_CPU_SERIES, AGENT_RSS_SERIES) if k in values}
        if own:
            self.footprint_samples.append((host, at, own))

    def merge(self, delta: Aggregates) -> None:
        """Add a committed transaction's ``delta`` (call only after its COMMIT)."""
        with self.lock:
            self._merge(delta)

    def snapshot(self, *, host_series: int = 0, host_maps: bool = True) -> MetricsSnapshot:
        """Copy the in-memory aggregates (no I/O), itemizing up to ``host_series`` hosts.

        Cost is O(buckets + label values + ``host_series``) plus a copy of two float
        lists (liveness); with ``host_series`` > 0, one pass over the remaining hosts for
        the overflow row's oldest time; with ``host_maps``, a copy of the per-host maps.
        """
        agg = self
        with agg.lock:  # not the storage's lock: never wait behind a commit's fsync
            detail: tuple[tuple[str, str, float], ...] = ()
            overflow: tuple[int, float | None] = (0, None)
            if host_series > 0:
                seen = agg.host_last_seen
                names = agg.host_names
                detail = tuple(
                    (h, names.get(h, h), t) for h, t in itertools.islice(seen.items(), host_series)
                )
                rest = len(seen) - len(detail)
                if rest > 0:
                    overflow = (rest, min(itertools.islice(seen.values(), host_series, None)))
            return MetricsSnapshot(
                liveness=agg.liveness.view(),
                liveness_silence_expected=agg.asleep_liveness.view(),
                incidents_open=dict(agg.incidents_open),
                incidents_opened_total=agg.counters["incidents_opened"],
                incidents_resolved_total=agg.counters["incidents_resolved"],
                incidents_prevented_total=agg.counters["incidents_prevented"],
                checks_failing=dict(agg.checks_failing),
                checks_unknown=dict(agg.checks_unknown),
                remediation_runs=dict(agg.remediation_runs),
                reports_accepted_total=agg.counters["reports_accepted"],
                reports_duplicate_total=agg.counters["reports_duplicate"],
                reports_epoch_reset_total=agg.counters["reports_epoch_reset"],
                events_total=agg.counters["events"],
                clock_offsets=agg.clock_skew.snapshot(),
                time_to_restore={p: h.copy() for p, h in agg.time_to_restore.items()},
                remediation_durations={r: h.copy() for r, h in agg.run_durations.items()},
                agent_cpu=agg.footprint.cpu.snapshot(),
                agent_rss=agg.footprint.rss.snapshot(),
                host_detail=detail,
                host_overflow=overflow,
                host_last_seen=dict(agg.host_last_seen) if host_maps else {},
                host_ttl=dict(agg.host_ttl) if host_maps else {},
                incidents_acknowledged=dict(agg.incidents_acknowledged),
                incidents_past_sla=dict(agg.incidents_past_sla),
                problems_open=dict(agg.problems_open),
            )

    def replace_figures(
        self,
        *,
        problems_open: dict[str, int],
        incidents_past_sla: dict[str, int],
        incidents_acknowledged: dict[str, int],
    ) -> None:
        """Swap in the figures counted off the scrape path (see
        :meth:`~collector.desk.service.Desk.refresh_metrics_figures`)."""
        with self.lock:
            self.problems_open = dict(problems_open)
            self.incidents_past_sla = dict(incidents_past_sla)
            self.incidents_acknowledged = dict(incidents_acknowledged)

    def _merge(self, delta: Aggregates) -> None:
        self.host_last_seen.update(delta.host_last_seen)
        self.host_ttl.update(delta.host_ttl)
        self.host_names.update(delta.host_names)
        self.host_silence_expected.update(delta.host_silence_expected)
        # Per host of the delta (every report): names looked up once, not per host.
        last_seen, ttls, asleep = self.host_last_seen, self.host_ttl, self.host_silence_expected
        liveness, asleep_liveness = self.liveness, self.asleep_liveness
        for host in delta.host_last_seen.keys() | delta.host_ttl.keys():
            seen = last_seen.get(host)
            if seen is not None:
                ttl = ttls.get(host)
                liveness.update(host, seen, ttl)
                if asleep.get(host):
                    asleep_liveness.update(host, seen, ttl)
                else:
                    asleep_liveness.discard(host)
        skew = self.clock_skew.set
        for host, offset in delta.host_clock_offset.items():
            skew(host, abs(offset))
        footprint = self.footprint.update
        for host, at, values in delta.footprint_samples:
            footprint(host, at, values)
        self._merge_named(delta)

    def merge_named(self, delta: Aggregates) -> None:
        """Add only ``delta``'s counters and histograms (not its hosts): the start-up
        rebuild, which loads the per-host structures in bulk."""
        with self.lock:
            self._merge_named(delta)

    def _merge_named(self, delta: Aggregates) -> None:
        # Names from agents pass through the caps here, on the long-lived instance only:
        # a delta is small and short-lived.
        checks, fixes = self.check_names, self.remediation_names
        for mine, theirs, name_of in (
            (self.time_to_restore, delta.time_to_restore, str),
            (self.run_durations, delta.run_durations, fixes),
        ):
            for key, hist in theirs.items():
                key = name_of(key)
                if key in mine:
                    mine[key].add(hist)
                else:
                    mine[key] = hist.copy()
        for (priority, check), n in delta.incidents_open.items():
            self.incidents_open[(priority, checks(check))] += n
        for check, n in delta.checks_failing.items():
            self.checks_failing[checks(check)] += n
        for check, n in delta.checks_unknown.items():
            self.checks_unknown[checks(check)] += n
        for (name, outcome), n in delta.remediation_runs.items():
            self.remediation_runs[(fixes(name), outcome)] += n
        self.counters.update(delta.counters)
        for mine in (
            self.incidents_open,
            self.checks_failing,
            self.checks_unknown,
            self.remediation_runs,
            self.counters,
        ):
            # Gauges drop to zero when the last incident closes: forget the key so the
            # label set stays bounded by what is currently true.
            for key in [k for k, v in mine.items() if v <= 0]:
                del mine[key]
