"""Prometheus metrics rendered from state at scrape time by one custom Collector.

:class:`VigilCollector` builds fresh metric families from the desk's
:meth:`~collector.desk.service.Desk.metrics_snapshot` and the in-memory
:class:`~collector.telemetry.requests.RequestCounters` on every scrape, so a host or
check that disappears leaves no stale series, and handlers never mutate gauges. It is
registered on the app's explicit ``CollectorRegistry`` (never the global one), so two
apps in one process share nothing.

Cheap at fleet scale: the desk keeps every fleet-wide figure incrementally (the
structures of ``collector/telemetry/buckets.py``: :class:`BucketCounts`, :class:`FleetDistribution`,
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

import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from vigil import __version__
from vigil.collector.desk.engine import is_silent
from vigil.collector.desk.surveys import SurveyFigures
from vigil.collector.telemetry.aggregates import MetricsSnapshot
from vigil.collector.telemetry.buckets import (
    CLOCK_SKEW_LIMIT_S,
    INGEST_BUCKETS_S,
    RESTORE_BUCKETS_S,
    BucketCounts,
)
from vigil.collector.telemetry.requests import RequestCounters
from vigil.collector.telemetry.satisfaction import survey_families

# Priorities always rendered (at zero when nothing has them) so dashboards and alert rules
# see a series, not an absent one; a priority outside this set is rendered as it comes.
PRIORITIES: tuple[str, ...] = ("P1", "P2", "P3", "P4")
# Problem kinds (shared/DESIGN.md): a key that keeps coming back, one check failing on
# many hosts at once, and such a fleet-wide fault that every host fixed itself.
PROBLEM_KINDS: tuple[str, ...] = ("recurring", "fleet", "self_healed")
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

# --------------------------------------------------------------------------- pure helpers


def agents_by_state(
    last_seen: Mapping[str, float],
    ttl: Mapping[str, float],
    *,
    now: float,
    grace_s: float,
) -> tuple[int, int]:
    """Count hosts ``(up, silent)`` at ``now`` (all times in epoch seconds).

    The incident engine's rule (:func:`collector.desk.engine.is_silent`), so /metrics and the
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

    ``snapshot(host_series=N, host_maps=False)`` returns the desk's current
    :class:`~collector.telemetry.aggregates.MetricsSnapshot` with up to N hosts itemized
    and without the O(hosts) per-host maps (it must not do I/O: it runs on every scrape);
    ``counters`` holds request-level counts; ``clock`` gives epoch seconds for agent liveness;
    ``heartbeat_grace_s`` is the silence tolerated past a heartbeat TTL.
    ``per_host_series`` switches the ``vigil_host_*`` series on, for at most
    ``max_host_series`` hosts. ``service_of(check)`` names the catalog service a check
    belongs to (``None``: no service, labelled ``none``). ``notify_failures()`` gives the
    failed notification deliveries per ``(kind, target)`` (bounded by the config).
    ``surveys()`` gives the satisfaction figures (None: surveys off, no such series).
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
        notify_failures: Callable[[], Mapping[tuple[str, str], int]] = dict,
        surveys: Callable[[], SurveyFigures] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._counters = counters
        self._grace_s = heartbeat_grace_s
        self._clock = clock
        self._version = version
        self._host_series = max_host_series if per_host_series else 0
        self._service_of = service_of
        self._notify_failures = notify_failures
        self._surveys = surveys

    def describe(self) -> list[Metric]:
        # Empty on purpose: registering must not call the desk (which may not be open
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
        yield from _notifications(self._notify_failures())
        if self._surveys is not None:
            figures = self._surveys()
            yield from survey_families(figures.scores, figures.states)
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
            "vigil_checks_unknown",
            "Hosts whose latest result for a check is unknown (it cannot read what it"
            " watches: a metric-name typo, a missing path, a failing plugin), by check.",
            labels=["check"],
        ),
        sorted(cap_label({(check,): n for check, n in snap.checks_unknown.items()}, 0).items()),
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
            "Open problems (root cause not fixed) by kind: recurring key, fleet-wide, or"
            " fleet-wide and self-healed on every host.",
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


def _notifications(failures: Mapping[tuple[str, str], int]) -> Iterator[Metric]:
    failed = CounterMetricFamily(
        "vigil_notifications_failed",
        "Notification deliveries that failed, by target (configured targets only).",
        labels=["kind", "target"],
    )
    for (kind, target), count in sorted(failures.items()):
        failed.add_metric([kind, target], count)
    yield failed


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


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(
    family: GaugeMetricFamily | CounterMetricFamily,
    samples: Iterable[tuple[tuple[str, ...], float]],
) -> GaugeMetricFamily | CounterMetricFamily:
    for labels, value in samples:
        family.add_metric(list(labels), value)
    return family
