"""SQLite repository of histograms kept as values are observed (schema 10): start-up
loads their bucket counts instead of scanning every incident and run (issue #17)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

# Reserved bucket numbers: the sum of the values, and the "complete" mark of a family.
TOTAL, COMPLETE = -1, -2


class SqliteHistograms:
    """:class:`~collector.storage.protocols.HistogramRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def add(self, family: str, label: str, counts: Sequence[int], total: float) -> None:
        rows = [(family, label, i, n, 0.0) for i, n in enumerate(counts) if n]
        rows.append((family, label, TOTAL, 0, total))
        self._db.executemany(
            "INSERT INTO histograms (family, label, bucket, count, total) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (family, label, bucket) DO UPDATE SET count = count + excluded.count,"
            " total = total + excluded.total",
            rows,
        )

    def load(self, family: str) -> dict[str, tuple[dict[int, int], float]] | None:
        rows = self._db.execute(
            "SELECT label, bucket, count, total FROM histograms WHERE family = ?", (family,)
        ).fetchall()
        return shape_histograms(rows)

    def replace(self, family: str, hists: Mapping[str, tuple[Sequence[int], float]]) -> None:
        self._db.execute("DELETE FROM histograms WHERE family = ?", (family,))
        self._db.execute(
            "INSERT INTO histograms (family, label, bucket, count, total) VALUES (?, '', ?, 1, 0)",
            (family, COMPLETE),
        )
        for label, (counts, total) in hists.items():
            self.add(family, label, counts, total)


def shape_histograms(
    rows: Sequence[tuple[str, int, int, float]],
) -> dict[str, tuple[dict[int, int], float]] | None:
    """Rows of one family as ``{label: (counts by bucket, total)}``; None without the
    family's complete mark (it was never filled from history)."""
    out: dict[str, tuple[dict[int, int], float]] = {}
    complete = False
    for label, bucket, count, total in rows:
        if bucket == COMPLETE:
            complete = True
            continue
        counts, sum_ = out.get(label, ({}, 0.0))
        if bucket == TOTAL:
            out[label] = (counts, sum_ + total)
        else:
            counts[bucket] = count
            out[label] = (counts, sum_)
    return out if complete else None
