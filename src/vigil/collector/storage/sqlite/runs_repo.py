"""SQLite repository of remediation runs (corrective-action records) and the summaries
kept as each run is stored (schema 10), so statistics never scan the runs."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from vigil import wire
from vigil.collector.storage.sqlite.codec import columns_to_keys
from vigil.collector.storage.sqlite.ingest_repos import where

RUN_COLUMNS = (
    "host, hostname, received_at, event_id, seq, time, remediation, check_id, outcome,"
    " exit_code, started_at, duration_s, value_before, value_after, output, output_truncated,"
    " script_sha256, dry_run, run_as_user"
)
_RUN_KEYS = columns_to_keys(RUN_COLUMNS)


class SqliteRuns:
    """:class:`~collector.storage.protocols.RemediationRunRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def add(self, host: str, hostname: str, event: wire.RemediationEvent, at: float) -> None:
        self._db.execute(
            f"INSERT INTO remediation_runs ({RUN_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                host,
                hostname,
                at,
                event.event_id,
                event.seq,
                event.time,
                event.remediation,
                event.check,
                event.outcome,
                event.exit_code,
                event.started_at,
                event.duration_s,
                event.value_before,
                event.value_after,
                event.output,
                int(event.output_truncated),
                event.script_sha256,
                int(event.dry_run),
                event.run_as_user,
            ),
        )
        # The summaries, in the run's transaction (schema 10): stats never scan runs.
        self._db.execute(
            "INSERT INTO remediation_outcomes (remediation, version, outcome, runs)"
            " VALUES (?, ?, ?, 1) ON CONFLICT (remediation, version, outcome)"
            " DO UPDATE SET runs = runs + 1",
            (event.remediation, event.script_sha256, event.outcome),
        )
        first = self._db.execute(
            "INSERT OR IGNORE INTO remediation_hosts (remediation, host) VALUES (?, ?)",
            (event.remediation, host),
        ).rowcount
        if first:
            self._db.execute(
                "INSERT INTO remediation_totals (remediation, hosts) VALUES (?, 1)"
                " ON CONFLICT (remediation) DO UPDATE SET hosts = hosts + 1",
                (event.remediation,),
            )

    def list(
        self,
        *,
        host: str | None,
        remediation: str | None,
        limit: int,
        offset: int,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        clause, args = where(("host", host), ("remediation", remediation))
        if before is not None:  # keyset paging, newest first
            clause = f"{clause} AND id < ?" if clause else " WHERE id < ?"
            args = [*args, before]
        rows = self._db.execute(
            f"SELECT id, {RUN_COLUMNS} FROM remediation_runs{clause}"
            " ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return [_listed_run(row) for row in rows]

    def for_key(
        self, host: str, check: str, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        rows = self._db.execute(
            f"SELECT {RUN_COLUMNS} FROM remediation_runs WHERE host = ? AND check_id = ?"
            " AND received_at >= ? AND received_at <= ? ORDER BY id LIMIT ?",
            (host, check, since, until, limit),
        ).fetchall()
        return [_run_dict(row) for row in rows]

    def outcome_counts(self) -> list[tuple[str, str, int]]:
        return self._db.execute(
            "SELECT remediation, outcome, SUM(runs) FROM remediation_outcomes"
            " GROUP BY remediation, outcome"
        ).fetchall()

    def hosts_by_remediation(self) -> dict[str, int]:
        return dict(
            self._db.execute("SELECT remediation, hosts FROM remediation_totals").fetchall()
        )

    def durations(self) -> Iterator[tuple[str, float]]:
        yield from self._db.execute("SELECT remediation, duration_s FROM remediation_runs")


def _listed_run(row: tuple[Any, ...]) -> dict[str, Any]:
    """A listed run: its ``id`` (the keyset of its pages) and :func:`_run_dict`."""
    return {"id": row[0], **_run_dict(row[1:])}


def _run_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    run = dict(zip(_RUN_KEYS, row, strict=True))
    run["output_truncated"] = bool(run["output_truncated"])
    run["dry_run"] = bool(run["dry_run"])
    if run["run_as_user"] is None:
        # Only runs as another user carry it, so older records read exactly as before.
        del run["run_as_user"]
    return run
