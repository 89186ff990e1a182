"""PostgreSQL repository of remediation runs (corrective-action records) and the
summaries kept as each run is stored (migration 6), so statistics never scan the runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg

from vigil import wire
from vigil.collector.storage.postgres.ingest_repos import where
from vigil.collector.storage.sqlite.codec import columns_to_keys

RUN_COLUMNS = (
    "host, hostname, received_at, event_id, seq, time, remediation, check_id, outcome,"
    " exit_code, started_at, duration_s, value_before, value_after, output, output_truncated,"
    " script_sha256, dry_run, run_as_user"
)
_RUN_KEYS = columns_to_keys(RUN_COLUMNS)


class PgRuns:
    """:class:`~collector.storage.protocols.RemediationRunRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def add(self, host: str, hostname: str, event: wire.RemediationEvent, at: float) -> None:
        self._db.execute(
            f"INSERT INTO remediation_runs ({RUN_COLUMNS}) VALUES ("  # type: ignore[call-overload]
            + ", ".join(["%s"] * 19)
            + ")",
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
                bool(event.output_truncated),
                event.script_sha256,
                bool(event.dry_run),
                event.run_as_user,
            ),
        )
        # The summaries, in the run's transaction (migration 6): stats never scan runs.
        # Writers hold the write lock, so the host count cannot race.
        self._db.execute(
            "INSERT INTO remediation_outcomes (remediation, version, outcome, runs)"
            " VALUES (%s, %s, %s, 1) ON CONFLICT (remediation, version, outcome)"
            " DO UPDATE SET runs = remediation_outcomes.runs + 1",
            (event.remediation, event.script_sha256, event.outcome),
        )
        first = self._db.execute(
            "INSERT INTO remediation_hosts (remediation, host) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            (event.remediation, host),
        ).rowcount
        if first:
            self._db.execute(
                "INSERT INTO remediation_totals (remediation, hosts) VALUES (%s, 1)"
                " ON CONFLICT (remediation) DO UPDATE SET hosts = remediation_totals.hosts + 1",
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
            clause = f"{clause} AND id < %s" if clause else " WHERE id < %s"
            args = [*args, before]
        rows = self._db.execute(  # type: ignore[call-overload]  # column names are ours
            f"SELECT id, {RUN_COLUMNS} FROM remediation_runs{clause}"
            " ORDER BY id DESC LIMIT %s OFFSET %s",
            (*args, limit, offset),
        ).fetchall()
        return [_listed_run(row) for row in rows]

    def for_key(
        self, host: str, check: str, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        rows = self._db.execute(  # type: ignore[call-overload]
            f"SELECT {RUN_COLUMNS} FROM remediation_runs WHERE host = %s AND check_id = %s"
            " AND received_at >= %s AND received_at <= %s ORDER BY id LIMIT %s",
            (host, check, since, until, limit),
        ).fetchall()
        return [_run_dict(row) for row in rows]

    def outcome_counts(self) -> list[tuple[str, str, int]]:
        rows = self._db.execute(
            "SELECT remediation, outcome, SUM(runs)::bigint FROM remediation_outcomes"
            " GROUP BY remediation, outcome"
        ).fetchall()
        return [tuple(r) for r in rows]

    def hosts_by_remediation(self) -> dict[str, int]:
        return dict(
            self._db.execute("SELECT remediation, hosts FROM remediation_totals").fetchall()
        )

    def durations(self) -> Iterator[tuple[str, float]]:
        yield from self._db.execute(
            "SELECT remediation, duration_s FROM remediation_runs"
        ).fetchall()


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
