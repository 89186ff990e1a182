"""Copy a collector's SQLite database into an empty PostgreSQL one (moving a deployment
from the embedded default to PostgreSQL), keeping every id, so links, API URLs and
notification marks stay valid.

Run with the collector stopped::

    python -m vigil.collector.storage.postgres.importer /var/lib/vigil/collector.db \\
        postgresql://vigil@db.internal/vigil

The SQLite file is opened through the SQLite backend first, so an older schema is
migrated to the current one before it is read. The copy runs in one PostgreSQL
transaction under the write lock: it applies whole or not at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from vigil.collector.storage.postgres.backend import PgStorage
from vigil.collector.storage.postgres.ingest_repos import names_id
from vigil.collector.storage.postgres.partitions import adopt_default
from vigil.collector.storage.postgres.schema import IDENTITY_TABLES
from vigil.collector.storage.records import StorageError
from vigil.collector.storage.sqlite.backend import SqliteStorage
from vigil.collector.storage.sqlite.codec import unpack_floats
from vigil.collector.storage.url import redact

_Convert = Callable[[Any], Any]


def _json(default: Any) -> _Convert:
    def convert(text: Any) -> Any:
        try:
            value = json.loads(text)
        except (TypeError, ValueError):
            return Jsonb(default)
        return Jsonb(value if isinstance(value, type(default)) else default)

    return convert


def _bool(value: Any) -> bool:
    return bool(value)


# Table -> (columns read from SQLite, conversions by column). Parents before children
# (foreign keys); hosts in first-seen order, which becomes their first_order.
_TABLES: tuple[tuple[str, str, dict[str, _Convert]], ...] = (
    (
        "hosts",
        "agent_id, hostname, labels, agent_version, first_seen, last_seen, last_sent_at,"
        " clock_offset_s, heartbeat_ttl_s, last_batch_id, epoch, mark",
        {"labels": _json({})},
    ),
    ("seen", "host, kind, id, received_at", {}),
    (
        "check_results",
        "id, host, event_id, seq, time, received_at, check_id, state, previous_state, value,"
        " message, remediation, ttl_s, flapping",
        {"flapping": _bool},
    ),
    (
        "check_state",
        "host, check_id, state, value, message, updated_at, awaiting, awaiting_since,"
        " incident_id, flapping",
        {"flapping": _bool},
    ),
    (
        "remediation_runs",
        "id, host, hostname, received_at, event_id, seq, time, remediation, check_id, outcome,"
        " exit_code, started_at, duration_s, value_before, value_after, output,"
        " output_truncated, script_sha256, dry_run, run_as_user",
        {"output_truncated": _bool, "dry_run": _bool},
    ),
    (
        "incidents",
        "id, host, hostname, check_id, state, priority, opened_at, resolved_at, value,"
        " message, remediation, remediation_outcome, resolution, service, impact, urgency,"
        " sla_due, groups, acknowledged_at, acknowledged_by, flapping, root_cause,"
        " corrective_action, preventive_action, notified_at, resolve_notified_at, department",
        {"groups": _json([]), "flapping": _bool},
    ),
    ("incident_timeline", "id, incident_id, at, text", {}),
    (
        "problems",
        "id, kind, check_id, host, hostname, service, impact, urgency, priority, sla_due,"
        " state, opened_at, resolved_at, acknowledged_at, acknowledged_by, summary,"
        " resolution, root_cause, corrective_action, preventive_action, notified_at,"
        " resolve_notified_at, known_error, verification, capa_owner, capa_due",
        {},
    ),
    ("problem_incidents", "problem_id, incident_id", {}),
    (
        "incident_rollup",
        "day, service, department, bucket, prevented, raised, with_sla, within_sla, resolved",
        {},
    ),
    ("problem_timeline", "id, problem_id, at, text", {}),
    (
        "silences",
        "id, matcher, value, starts_at, ends_at, comment, created_by, created_at",
        {},
    ),
    ("counters", "name, value", {}),
    ("operators", "name, role, token_hash, created_at, rotated_at", {}),
    ("audit", "id, at, actor, action, target, peer, detail", {"detail": _json({})}),
    (
        "enroll_secrets",
        "id, secret_hash, labels, comment, created_at, expires_at, max_uses, uses, revoked_at",
        {"labels": _json({})},
    ),
    (
        "agent_credentials",
        "token_hash, agent_id, secret_id, labels, hostname, issued_at, expires_at, pending",
        {"labels": _json({}), "pending": _bool},
    ),
    ("enroll_generation", "id, value", {}),
    (
        "surveys",
        "id, incident_id, host, hostname, department, service, check_id, title, created_at,"
        " expires_at, state, offered_at, offers, shown_at, delivery_note, answered_at, score,"
        " comment, console_user",
        {},
    ),
    ("survey_key", "id, key", {}),
    # Central policy (policy_sql.py): the same column types on both backends (JSON as text).
    (
        "policy_versions",
        "policy, version, sha256, key_id, target, created_at, expires_at, uploaded_at,"
        " uploaded_by, document",
        {},
    ),
    (
        "policy_rollouts",
        "policy, version, previous_version, target, rings, canary, soak_s, ring,"
        " ring_started_at, started_at, paused, paused_reason, updated_at, evidence_at,"
        " remediations",
        {},
    ),
    ("policy_hosts", "agent_id, policy, version, seen_at", {}),
    ("policy_halts", "remediation, halted_at, halted_by, reason", {}),
    (
        "run_now",
        "id, remediation, params, host, labels, requested_by, requested_at, expires_at",
        {},
    ),
    ("run_now_results", "request_id, host, event_id, outcome, at", {}),
    # Schema 10 summaries (the SQLite file was migrated first, so they hold its runs).
    ("remediation_outcomes", "remediation, version, outcome, runs", {}),
    ("remediation_hosts", "remediation, host", {}),
    ("remediation_totals", "remediation, hosts", {}),
    ("histograms", "family, label, bucket, count, total", {}),
)
_ORDER = {"hosts": " ORDER BY rowid"}


def import_sqlite(source: Path, url: str) -> dict[str, int]:
    """Copy every row of the SQLite database ``source`` into the PostgreSQL database
    ``url`` (created or migrated first; it must hold no collector data yet). Returns the
    rows copied per table. Raises :class:`StorageError` (target not empty, unreachable,
    unreadable source)."""
    SqliteStorage(source).close()  # migrate an older file to the current schema
    target = PgStorage(url)
    try:
        with contextlib.closing(
            sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
        ) as src:
            uow = target.acquire()
            assert uow is not None
            try:
                with uow.transaction():
                    return _copy(src, target.connection, url)
            finally:
                target.release()
    except (sqlite3.Error, psycopg.Error) as exc:
        raise StorageError(redact(url), f"import from {source} failed: {exc}") from None
    finally:
        target.close()


def _copy(src: sqlite3.Connection, db: psycopg.Connection, url: str) -> dict[str, int]:
    if db.execute("SELECT EXISTS (SELECT 1 FROM hosts)").fetchone() == (True,):
        raise StorageError(redact(url), "the target already holds hosts; import into an empty one")
    copied: dict[str, int] = {}
    for table, columns, convert in _TABLES:
        names = [c.strip() for c in columns.split(",")]
        rows = src.execute(f"SELECT {columns} FROM {table}{_ORDER.get(table, '')}")
        copied[table] = _copy_rows(db, table, names, convert, rows)
    copied["host_metrics"] = _copy_metrics(src, db)
    adopt_default(db)  # the copied history into its month partitions
    for table in IDENTITY_TABLES:
        db.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence({t}, 'id'),"
                " GREATEST((SELECT MAX(id) FROM {i}), 1))"
            ).format(t=sql.Literal(table), i=sql.Identifier(table))
        )
    return copied


def _copy_rows(
    db: psycopg.Connection,
    table: str,
    names: Sequence[str],
    convert: dict[str, _Convert],
    rows: Any,
) -> int:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    converters = [convert.get(n) for n in names]
    n = 0
    with db.cursor() as cur, cur.copy(statement) as copy:
        for row in rows:
            copy.write_row([v if f is None else f(v) for f, v in zip(converters, row, strict=True)])
            n += 1
    return n


def _copy_metrics(src: sqlite3.Connection, db: psycopg.Connection) -> int:
    n = 0
    ids: dict[str, int] = {}  # the source's name lists (JSON text) -> their id here
    with db.cursor() as cur:
        for host, at, received, cpu, rss, names, vals in src.execute(
            "SELECT h.host, h.time, h.received_at, h.agent_cpu, h.agent_rss, n.names, h.vals"
            " FROM host_metrics h JOIN metric_names n ON n.id = h.names_id"
        ):
            if names not in ids:
                ids[names] = names_id(db, json.loads(names))
            cur.execute(
                "INSERT INTO host_metrics (host, time, received_at, agent_cpu, agent_rss,"
                " names_id, vals) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (host, at, received, cpu, rss, ids[names], unpack_floats(vals)),
            )
            n += 1
    return n


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``SOURCE.db POSTGRESQL_URL``; exit 0 copied, 1 failed."""
    parser = argparse.ArgumentParser(
        prog="python -m vigil.collector.storage.postgres.importer",
        description="Copy a Vigil collector's SQLite database into an empty PostgreSQL one.",
    )
    parser.add_argument("source", type=Path, help="the collector's SQLite file")
    parser.add_argument("url", help="postgresql://user@host:port/database")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"{args.source}: no such file", file=sys.stderr)
        return 1
    try:
        copied = import_sqlite(args.source, args.url)
    except StorageError as exc:
        print(f"import failed: {exc}", file=sys.stderr)
        return 1
    for table, rows in copied.items():
        print(f"{table}: {rows} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
