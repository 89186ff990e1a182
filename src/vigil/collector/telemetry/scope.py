"""What one collector process's ``/metrics`` shows when several share a database.

Prometheus scrapes every collector process and adds figures up with ``sum()``. Two kinds
of family are served, so that such a sum is right and fleet figures are never counted
once per process:

* **process** families (:data:`PROCESS_FAMILIES`): what this process itself did since it
  started (reports it refused, its ingest latency, its enrollments, its notification
  failures), its build, and ``vigil_collector_leader`` (1 on the process that leads, 0
  elsewhere). Every process serves them; summing over processes gives the whole.
* **fleet** families (every other one: agents by state, open incidents, problems, report
  and incident totals, remediation runs, audit records, credentials, paused
  remediations...): figures about the whole fleet, the same whichever process received
  the reports. Only the process holding the leader lock (``Storage.leads``) serves them,
  so exactly one series of each exists at any time; its aggregates are rebuilt from the
  database every ``metrics.fleet_refresh`` when the storage is shared (PostgreSQL), so
  they include what the other processes applied.

A single collector on SQLite always leads and so serves everything, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

# Names as prometheus_client holds them (a counter's family name is without ``_total``).
PROCESS_FAMILIES: frozenset[str] = frozenset(
    {
        "vigil_build_info",
        "vigil_collector_leader",
        "vigil_reports_rejected",
        "vigil_ingest_duration_seconds",
        "vigil_enrollments",
        "vigil_notifications_failed",
    }
)


class LeaderFlag:
    """Whether this process led at the last time it asked the database (the tick, the
    notifier and the policy pass ask; a scrape only reads this, never the database)."""

    def __init__(self, leading: bool = False) -> None:
        self._lock = threading.Lock()
        self._leading = leading
        # Monotonic seconds of the last rebuild of the fleet figures while leading; None
        # when they were not rebuilt since this process last became the leader.
        self._rebuilt_at: float | None = None

    @property
    def leading(self) -> bool:
        with self._lock:
            return self._leading

    def set(self, leading: bool) -> None:
        """Record the latest answer of ``Storage.leads``."""
        with self._lock:
            if leading != self._leading:
                self._rebuilt_at = None  # a new leader rebuilds at once
            self._leading = leading

    def rebuild_due(self, now: float, interval_s: float) -> bool:
        """Whether the leader's fleet figures should be rebuilt from the database at
        ``now`` (monotonic seconds): never rebuilt since it became the leader, or the
        last rebuild is ``interval_s`` old. Always False while not leading."""
        with self._lock:
            if not self._leading:
                return False
            return self._rebuilt_at is None or now - self._rebuilt_at >= interval_s

    def rebuilt(self, now: float) -> None:
        """Note a rebuild (or a fresh load) of the fleet figures at ``now`` (monotonic)."""
        with self._lock:
            self._rebuilt_at = now


class ScopedRegistry:
    """The app's registry as one process should expose it: every family while this
    process leads, only :data:`PROCESS_FAMILIES` otherwise, plus
    ``vigil_collector_leader``. Has the one method ``generate_latest`` calls."""

    def __init__(self, registry: CollectorRegistry, flag: LeaderFlag) -> None:
        self._registry = registry
        self._flag = flag

    def collect(self) -> Iterator[Metric]:
        leading = self._flag.leading
        yield GaugeMetricFamily(
            "vigil_collector_leader",
            "1 on the collector process that holds the leader lock (runs the tick and"
            " notifications, serves the fleet figures), 0 on the others.",
            value=1 if leading else 0,
        )
        for family in self._registry.collect():
            if leading or family.name in PROCESS_FAMILIES:
                yield family
