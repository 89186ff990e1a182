"""The remediation runs repository (corrective-action records) and the summaries kept as
each run is stored, so statistics never scan the runs; shared by both backends
(``sqlite/runs_repo.py``, ``postgres/runs_repo.py``): plain SQL both engines accept, with
``?`` placeholders that the PostgreSQL subclass rewrites to ``%s``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from vigil import wire
from vigil.collector.storage.sql_hooks import where
from vigil.collector.storage.sqlite.codec import columns_to_keys

RUN_COLUMNS = (
    "host, hostname, received_at, event_id, seq, time, remediation, check_id, outcome,"
    " exit_code, started_at, duration_s, value_before, value_after, output, output_truncated,"
    " script_sha256, dry_run, run_as_user"
)
_RUN_KEYS = columns_to_keys(RUN_COLUMNS)


class RunsSql:
    """:class:`~collector.storage.protocols.RemediationRunRepository` over a DB-API
    connection; subclasses set :meth:`_run` for their driver's placeholder style (as
    ``policy_sql.PolicySql``)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def _run(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, args)

    def add(self, host: str, hostname: str, event: wire.RemediationEvent, at: float) -> None:
        self._run(
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
                bool(event.output_truncated),
                event.script_sha256,
                bool(event.dry_run),
                event.run_as_user,
            ),
        )
        # The summaries, in the run's transaction (SQLite schema 10, PostgreSQL migration
        # 6): stats never scan runs. Writers hold the write lock: the host count cannot race.
        self._run(
            "INSERT INTO remediation_outcomes (remediation, version, outcome, runs)"
            " VALUES (?, ?, ?, 1) ON CONFLICT (remediation, version, outcome)"
            " DO UPDATE SET runs = remediation_outcomes.runs + 1",
            (event.remediation, event.script_sha256, event.outcome),
        )
        first = self._run(
            "INSERT INTO remediation_hosts (remediation, host) VALUES (?, ?)"
            " ON CONFLICT DO NOTHING",
            (event.remediation, host),
        ).rowcount
        if first:
            self._run(
                "INSERT INTO remediation_totals (remediation, hosts) VALUES (?, 1)"
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
            clause = f"{clause} AND id < ?" if clause else " WHERE id < ?"
            args = [*args, before]
        rows = self._run(
            f"SELECT id, {RUN_COLUMNS} FROM remediation_runs{clause}"
            " ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return [_listed_run(row) for row in rows]

    def for_key(
        self, host: str, check: str, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        rows = self._run(
            f"SELECT {RUN_COLUMNS} FROM remediation_runs WHERE host = ? AND check_id = ?"
            " AND received_at >= ? AND received_at <= ? ORDER BY id LIMIT ?",
            (host, check, since, until, limit),
        ).fetchall()
        return [_run_dict(row) for row in rows]

    def outcome_counts(self) -> list[tuple[str, str, int]]:
        rows = self._run(
            "SELECT remediation, outcome, CAST(SUM(runs) AS BIGINT) FROM remediation_outcomes"
            " GROUP BY remediation, outcome"
        ).fetchall()
        return [tuple(row) for row in rows]

    def hosts_by_remediation(self) -> dict[str, int]:
        return dict(self._run("SELECT remediation, hosts FROM remediation_totals").fetchall())

    def durations(self) -> Iterator[tuple[str, float]]:
        yield from self._run("SELECT remediation, duration_s FROM remediation_runs")


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
