"""Prometheus metrics rendered from state at scrape time by one custom Collector.

:class:`VigilCollector` builds fresh metric families from the store's
:meth:`~collector.store.SqliteStore.metrics_snapshot` and the in-memory
:class:`RequestCounters` on every scrape, so a host or check that disappears leaves no
stale series, and handlers never mutate gauges. It is registered on the app's explicit
``CollectorRegistry`` (never the global one), so two apps in one process share nothing.

Label cardinality is bounded on purpose: no per-host series (a fleet of 10 000 laptops
would be 10 000 series per metric); per-host detail lives in the REST API.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from agent import __version__

if TYPE_CHECKING:
    from collector.store import MetricsSnapshot

# Why an ingest is refused; fixed so the label set stays bounded.
REJECT_REASONS: tuple[str, ...] = ("unauthorized", "too_large", "bad_gzip", "invalid")

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
        index = next(
            (i for i, bound in enumerate(INGEST_BUCKETS_S) if seconds <= bound),
            len(INGEST_BUCKETS_S),
        )
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


def agents_by_state(
    last_seen: Mapping[str, float],
    ttl: Mapping[str, float],
    *,
    now: float,
    grace_s: float,
) -> tuple[int, int]:
    """Count hosts ``(up, silent)`` at ``now`` (all times in epoch seconds).

    A host is up while ``last_seen + ttl + grace_s >= now``, where ``ttl`` is the
    heartbeat TTL it last announced. A host that never announced a TTL counts as up for
    ``2 * grace_s`` after it was last seen.
    """
    up = 0
    for host, seen in last_seen.items():
        host_ttl = ttl.get(host)
        deadline = seen + 2 * grace_s if host_ttl is None else seen + host_ttl + grace_s
        if deadline >= now:
            up += 1
    return up, len(last_seen) - up


class VigilCollector:
    """A ``prometheus_client`` custom collector for one collector app.

    ``snapshot`` returns the store's current :class:`~collector.store.MetricsSnapshot`
    (it must not do I/O: it runs on every scrape), ``counters`` holds request-level
    counts, ``clock`` gives epoch seconds for agent liveness, ``heartbeat_grace_s`` is
    the silence tolerated past a heartbeat TTL.
    """

    def __init__(
        self,
        snapshot: Callable[[], MetricsSnapshot],
        counters: RequestCounters,
        *,
        heartbeat_grace_s: float,
        clock: Callable[[], float] = time.time,
        version: str = __version__,
    ) -> None:
        self._snapshot = snapshot
        self._counters = counters
        self._grace_s = heartbeat_grace_s
        self._clock = clock
        self._version = version

    def describe(self) -> list[Metric]:
        # Empty on purpose: registering must not call the store (which may not be open
        # yet), and names are unique by construction.
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        counters = self._counters.copy()

        info = GaugeMetricFamily(
            "vigil_build_info", "Vigil collector build; always 1.", labels=["version"]
        )
        info.add_metric([self._version], 1)
        yield info

        up, silent = agents_by_state(
            snap.host_last_seen, snap.host_ttl, now=self._clock(), grace_s=self._grace_s
        )
        agents = GaugeMetricFamily(
            "vigil_agents",
            "Known agents by liveness: up, or silent past heartbeat TTL plus grace.",
            labels=["state"],
        )
        agents.add_metric(["up"], up)
        agents.add_metric(["silent"], silent)
        yield agents

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

        yield _labelled(
            GaugeMetricFamily(
                "vigil_incidents_open",
                "Open incidents by priority and check.",
                labels=["priority", "check"],
            ),
            sorted(snap.incidents_open.items()),
        )
        yield _counter("vigil_incidents_opened", "Incidents opened.", snap.incidents_opened_total)
        yield _counter(
            "vigil_incidents_resolved", "Incidents resolved.", snap.incidents_resolved_total
        )
        yield _counter(
            "vigil_incidents_prevented",
            "Failures fixed and verified by a remediation before an incident was raised.",
            snap.incidents_prevented_total,
        )
        yield _labelled(
            GaugeMetricFamily(
                "vigil_checks_failing",
                "Hosts whose latest result for a check is not ok.",
                labels=["check"],
            ),
            [((check,), n) for check, n in sorted(snap.checks_failing.items())],
        )
        yield _labelled(
            CounterMetricFamily(
                "vigil_remediation_runs",
                "Remediation runs reported by agents, by remediation and outcome.",
                labels=["remediation", "outcome"],
            ),
            sorted(snap.remediation_runs.items()),
        )

        latency = HistogramMetricFamily(
            "vigil_ingest_duration_seconds",
            "Time from a report's body being read to its durable commit.",
        )
        bounds = [repr(b) for b in INGEST_BUCKETS_S] + ["+Inf"]
        cumulative = itertools.accumulate(counters.ingest_buckets)
        latency.add_metric(
            [], list(zip(bounds, cumulative, strict=True)), sum_value=counters.ingest_sum_s
        )
        yield latency


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(
    family: GaugeMetricFamily | CounterMetricFamily,
    samples: Iterable[tuple[tuple[str, ...], float]],
) -> GaugeMetricFamily | CounterMetricFamily:
    for labels, value in samples:
        family.add_metric(list(labels), value)
    return family
