"""Request-level counts the desk never sees: refused reports by reason and ingest latency."""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

from vigil.collector.telemetry.buckets import INGEST_BUCKETS_S

# Why an ingest is refused; fixed so the label set stays bounded.
REJECT_REASONS: tuple[str, ...] = (
    "unauthorized",
    "forbidden",  # a valid credential writing as another agent id (collector/identity/)
    "too_large",
    "bad_gzip",
    "invalid",
    "overloaded",
)


@dataclass
class RequestCounters:
    """Request-level counts the desk does not see: rejected reports and ingest latency.

    Mutated on the event loop and read by :class:`VigilCollector` from the storage thread,
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
