"""PostgreSQL repository of histograms kept as values are observed (migration 6):
start-up loads their bucket counts instead of scanning every incident and run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import psycopg

from vigil.collector.storage.sqlite.summary_repos import COMPLETE, TOTAL, shape_histograms


class PgHistograms:
    """:class:`~collector.storage.protocols.HistogramRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def add(self, family: str, label: str, counts: Sequence[int], total: float) -> None:
        rows = [(family, label, i, n, 0.0) for i, n in enumerate(counts) if n]
        rows.append((family, label, TOTAL, 0, total))
        with self._db.cursor() as cur:
            cur.executemany(
                "INSERT INTO histograms (family, label, bucket, count, total)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (family, label, bucket) DO UPDATE"
                " SET count = histograms.count + excluded.count,"
                " total = histograms.total + excluded.total",
                rows,
            )

    def load(self, family: str) -> dict[str, tuple[dict[int, int], float]] | None:
        rows = self._db.execute(
            "SELECT label, bucket, count, total FROM histograms WHERE family = %s", (family,)
        ).fetchall()
        return shape_histograms(rows)

    def replace(self, family: str, hists: Mapping[str, tuple[Sequence[int], float]]) -> None:
        self._db.execute("DELETE FROM histograms WHERE family = %s", (family,))
        self._db.execute(
            "INSERT INTO histograms (family, label, bucket, count, total)"
            " VALUES (%s, '', %s, 1, 0)",
            (family, COMPLETE),
        )
        for label, (counts, total) in hists.items():
            self.add(family, label, counts, total)
