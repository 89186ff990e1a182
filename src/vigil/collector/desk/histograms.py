"""The /metrics histograms kept in storage as values are observed, so start-up reads
their bucket counts instead of every incident and remediation run (issue #17: 1M
incidents took most of a 8.5 s start).

The desk saves each transaction's histogram deltas in that same transaction
(:func:`save`), so the stored counts are exactly the committed ones, whatever the
number of collector processes. A family's name carries a fingerprint of its bucket
bounds: when a release changes the bounds, the new family is simply absent, and the
first start fills it from history once (:func:`load`), as it does on a store written
before schema 10 / migration 6.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator

from vigil.collector.storage.protocols import UnitOfWork
from vigil.collector.telemetry.aggregates import Aggregates
from vigil.collector.telemetry.buckets import RESTORE_BUCKETS_S, RUN_BUCKETS_S, BucketCounts


def _family(name: str, bounds: tuple[float, ...]) -> str:
    return f"{name}/{hashlib.sha256(repr(bounds).encode()).hexdigest()[:12]}"


RESTORE_FAMILY = _family("time_to_restore", RESTORE_BUCKETS_S)
RUN_FAMILY = _family("remediation_duration", RUN_BUCKETS_S)

# Fills a fresh Aggregates from history: one restore time or run duration per row.
Scan = Callable[[Aggregates], None]


def save(uow: UnitOfWork, deltas: Iterable[Aggregates]) -> None:
    """Add the histograms of ``deltas`` to storage, inside the caller's transaction."""
    for delta in deltas:
        for family, hists in (
            (RESTORE_FAMILY, delta.time_to_restore),
            (RUN_FAMILY, delta.run_durations),
        ):
            for label, hist in hists.items():
                uow.histograms.add(family, label, hist.counts, hist.total)


def load(uow: UnitOfWork, into: Aggregates, scan_restores: Scan, scan_runs: Scan) -> None:
    """Add the stored histograms to ``into`` (a start-up's named aggregates).

    A family never filled is filled first, once, from history by the scan given for it,
    in a write transaction (so no report commits between the scan and the write: the
    counts neither miss nor double one). A stored bucket index outside the bounds (a row
    edited by hand) is dropped.
    """
    families = ((RESTORE_FAMILY, RESTORE_BUCKETS_S, scan_restores, True),)
    families += ((RUN_FAMILY, RUN_BUCKETS_S, scan_runs, False),)
    for family, bounds, scan, restore in families:
        stored = uow.histograms.load(family)
        if stored is None:
            with uow.transaction():
                scanned = Aggregates()
                scan(scanned)
                hists = scanned.time_to_restore if restore else scanned.run_durations
                uow.histograms.replace(family, {k: (h.counts, h.total) for k, h in hists.items()})
                stored = uow.histograms.load(family) or {}
        target = into.time_to_restore if restore else into.run_durations
        for label, hist in _histograms(stored, bounds):
            target[label] = hist


def _histograms(
    stored: dict[str, tuple[dict[int, int], float]], bounds: tuple[float, ...]
) -> Iterator[tuple[str, BucketCounts]]:
    for label, (by_bucket, total) in stored.items():
        hist = BucketCounts.empty(bounds)
        for index, count in by_bucket.items():
            if 0 <= index < len(hist.counts) and count > 0:
                hist.counts[index] += count
        hist.total = total
        yield label, hist
