"""What only the PostgreSQL backend has: migrations under an advisory lock, the refusal
of a newer schema, the write lock between collectors, the SQLite importer, HOT-friendly
tables, monthly history partitions and retention. (What every backend must do is in
``test_contract.py``.)"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.postgres import TestSchema, require_postgres
from tests.support.procs import wait_for
from vigil import wire

psycopg = pytest.importorskip("psycopg", reason="the postgresql extra is not installed")

from vigil.collector.storage.factory import create_storage  # noqa: E402
from vigil.collector.storage.postgres.backend import PgStorage  # noqa: E402
from vigil.collector.storage.postgres.importer import _TABLES, import_sqlite, main  # noqa: E402
from vigil.collector.storage.postgres.partitions import (  # noqa: E402
    AHEAD_MONTHS,
    PARTITIONED,
    maintain,
    month_start,
    next_month,
)
from vigil.collector.storage.postgres.partitions import main as partitions_main  # noqa: E402
from vigil.collector.storage.postgres.schema import (  # noqa: E402
    LEADER_LOCK,
    MIGRATIONS,
    SCHEMA_VERSION,
)
from vigil.collector.storage.records import StorageError  # noqa: E402
from vigil.collector.storage.sqlite.backend import SqliteStorage  # noqa: E402

T0 = 1_700_000_000.0


@pytest.fixture
def schema() -> Iterator[TestSchema]:
    require_postgres()
    made = TestSchema()
    yield made
    made.drop()


def sql(schema: TestSchema, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(schema.url, autocommit=True) as db:
        return db.execute(query).fetchall()


def test_collectors_starting_at_once_migrate_once(schema: TestSchema) -> None:
    """Six storages open the same empty schema at the same moment: every one opens,
    and each migration is recorded once."""
    start = threading.Barrier(6)
    opened: list[PgStorage] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            opened.append(PgStorage(schema.url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for s in opened:
        s.close()
    assert errors == [] and len(opened) == 6
    # Each migration once (the docstring's promise; there is more than one since #18).
    expected = [(version,) for version, _ in MIGRATIONS]
    assert sql(schema, "SELECT version FROM vigil_schema ORDER BY version") == expected


def test_a_migration_numbered_below_the_highest_applied_is_still_applied(
    schema: TestSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migrations are numbered per feature and land in any order: a database that a
    development build took to the last migration without the earlier ones gets those
    when a build that has them starts."""
    from vigil.collector.storage.postgres import schema as pg_schema

    first, last = MIGRATIONS[0], MIGRATIONS[-1]
    monkeypatch.setattr(pg_schema, "MIGRATIONS", (first, last))
    with psycopg.connect(schema.url, autocommit=True) as db:
        pg_schema.migrate(db)
    assert sql(schema, "SELECT version FROM vigil_schema ORDER BY version") == [
        (first[0],),
        (last[0],),
    ]
    monkeypatch.undo()

    PgStorage(schema.url).close()

    assert sql(schema, "SELECT version FROM vigil_schema ORDER BY version") == [
        (version,) for version, _ in MIGRATIONS
    ]


def test_a_schema_from_a_newer_collector_is_refused(schema: TestSchema) -> None:
    PgStorage(schema.url).close()
    sql(schema, f"INSERT INTO vigil_schema VALUES ({SCHEMA_VERSION + 1}, 0) RETURNING 1")
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        create_storage(schema.url)


def test_a_writer_waits_for_another_collectors_transaction(schema: TestSchema) -> None:
    """``begin`` takes the schema's write lock: a second storage's ``begin`` blocks
    until the first commits (as SQLite's BEGIN IMMEDIATE does)."""
    first, second = PgStorage(schema.url), PgStorage(schema.url)
    order: list[str] = []
    try:
        with first.session() as uow:
            uow.begin()
            uow.counters.add("x", 1)

            def write() -> None:
                with second.session() as other, other.transaction():
                    order.append("second began")
                    other.counters.add("x", 1)

            thread = threading.Thread(target=write)
            thread.start()
            thread.join(timeout=1.0)
            assert thread.is_alive() and order == []
            order.append("first commits")
            uow.commit()
            thread.join(timeout=30)
        assert order == ["first commits", "second began"]
        with first.session() as uow:
            assert uow.counters.load() == {"x": 2}
    finally:
        first.close()
        second.close()


def test_hot_tables_leave_room_for_heap_only_updates(schema: TestSchema) -> None:
    PgStorage(schema.url).close()
    options = dict(
        sql(
            schema,
            "SELECT relname, reloptions FROM pg_class WHERE relnamespace = current_schema()"
            "::regnamespace AND relkind = 'r' AND reloptions IS NOT NULL",
        )
    )
    for table in ("hosts", "host_metrics", "check_state", "counters"):
        assert any(o.startswith("fillfactor=") for o in options[table]), table


def test_a_host_refresh_touches_no_index_but_the_deadline(schema: TestSchema) -> None:
    """Refreshing a host on every report touches no index but ``hosts_deadline`` (HOT
    once that one is set aside): the deadline index is the one deliberate exception
    (migration 6, issue #17: the tick reads only hosts whose deadline passed), and no
    other index may make the hottest write of all bloat."""
    storage = PgStorage(schema.url)
    with psycopg.connect(schema.url, autocommit=True) as db:
        db.execute("DROP INDEX hosts_deadline")
    try:
        with storage.session() as uow:
            for n in range(20):
                report = wire.Report(
                    schema_version=wire.SCHEMA_VERSION, agent_id="h1", hostname="h1",
                    labels={"a": "b"}, batch_id=f"b{n}", sent_at=T0 + n,
                    agent_version="0.1.0", events=(),
                )  # fmt: skip
                with uow.transaction():
                    uow.hosts.upsert(report, T0 + n, 0.5, 60.0)
    finally:
        storage.close()  # a backend flushes its statistics when it exits

    def counts() -> tuple[int, int] | None:
        rows = sql(
            schema,
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
            " WHERE relname = 'hosts' AND schemaname = current_schema()",
        )
        return rows[0] if rows and rows[0][0] >= 19 else None

    updates, hot = wait_for("the statistics of the updates", counts, timeout_s=10)
    assert hot == updates


def test_the_importer_refuses_a_target_with_hosts(schema: TestSchema, tmp_path: Path) -> None:
    source = tmp_path / "c.db"
    SqliteStorage(source).close()
    with contextlib.closing(sqlite3.connect(source)) as db, db:
        db.execute(
            "INSERT INTO hosts (agent_id, hostname, labels, agent_version, first_seen,"
            " last_seen, last_sent_at, clock_offset_s) VALUES ('h1', 'h1', '{}', '1', 0, 0, 0, 0)"
        )
    assert import_sqlite(source, schema.url)["hosts"] == 1
    with pytest.raises(StorageError, match="already holds hosts"):
        import_sqlite(source, schema.url)


def test_the_importer_copies_policy_documents_byte_for_byte(
    schema: TestSchema, tmp_path: Path
) -> None:
    """Moving from SQLite keeps every stored bundle exactly as uploaded, and the rest of
    the policy state (rollout, halts, run-now and its results)."""
    source = tmp_path / "c.db"
    document = bytes(range(256)) * 3
    store = SqliteStorage(source)
    with store.session() as uow, uow.transaction():
        row = {"policy": "finance", "version": 2, "sha256": "s", "key_id": "k", "target": {}}
        row |= {"created_at": 1.0, "expires_at": 2.0, "uploaded_at": 1.0, "uploaded_by": "a"}
        uow.policy.add_version(row, document)
        uow.policy.put_rollout(
            {"policy": "finance", "version": 2, "previous_version": 1, "target": {}}
            | {"rings": [0.05, 1.0], "canary": ["h1"], "soak_s": 60.0, "ring": 0}
            | {"ring_started_at": 1.0, "started_at": 1.0, "paused": True}
            | {"paused_reason": "guard: fix", "updated_at": 1.0}
        )
        uow.policy.halt("fix", 1.0, "guard", "3/3 runs failed")
        uow.policy.add_run_now(
            {"id": "rn-1", "remediation": "fix", "params": {"a": "b"}, "host": "h1"}
            | {"labels": {}, "requested_by": "alice", "requested_at": 1.0, "expires_at": 9e9}
        )
        uow.policy.add_run_now_result("rn-1", "h1", "e1", "fixed", 2.0)
    store.close()
    copied = import_sqlite(source, schema.url)
    assert copied["policy_versions"] == 1 and copied["run_now_results"] == 1
    pg = PgStorage(schema.url)
    try:
        with pg.session() as uow:
            assert uow.policy.document("finance", 2) == document
            (rollout,) = uow.policy.rollouts()
            assert rollout["paused"] is True and rollout["canary"] == ["h1"]
            assert [h["remediation"] for h in uow.policy.halts()] == ["fix"]
            got = uow.policy.get_run_now("rn-1")
        assert got is not None and got["params"] == {"a": "b"}
        assert got["results"][0]["event_id"] == "e1"
    finally:
        pg.close()


def test_the_importer_command_names_a_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "none.db"), "postgresql://127.0.0.1:1/x"]) == 1
    assert "none.db: no such file" in capsys.readouterr().err


def _result(n: int) -> wire.CheckEvent:
    return wire.CheckEvent(
        event_id=f"e{n}", seq=n, time=T0, check="disk.root", state="critical",
        previous_state=None, value=1.0, message="full",
    )  # fmt: skip


def _where_rows(schema: TestSchema) -> dict[str, int]:
    return dict(
        sql(
            schema,
            "SELECT tableoid::regclass::text, COUNT(*) FROM check_results GROUP BY 1",
        )
    )


def test_history_goes_to_month_partitions_and_retention_drops_whole_months(
    schema: TestSchema,
) -> None:
    """Results of 2023-11 and 2024-01 start in the default partition (no month made for
    them); maintenance gives each month its partition, then retention at 2024-01-15
    minus 30 days drops November's partition whole and keeps January's."""
    storage = PgStorage(schema.url)
    nov, jan = 1_700_000_000.0, 1_705_000_000.0  # 2023-11-14, 2024-01-11 (UTC)
    try:
        with storage.session() as uow, uow.transaction():
            uow.results.add("h1", _result(1), nov)
            uow.results.add("h1", _result(2), jan)
        assert _where_rows(schema) == {"check_results_default": 2}
        with storage.session():
            made, dropped = maintain(storage.connection, 1_705_300_000.0, keep_s=None)
        assert {"check_results_2023_11", "check_results_2024_01"} <= set(made)
        assert dropped == []
        assert _where_rows(schema) == {"check_results_2023_11": 1, "check_results_2024_01": 1}
        with storage.session():
            made, dropped = maintain(storage.connection, 1_705_300_000.0, keep_s=30 * 86400.0)
        assert "check_results_2023_11" in dropped and made == []
        assert _where_rows(schema) == {"check_results_2024_01": 1}
        with storage.session() as uow:
            assert uow.results.known_states("h1", "disk.root", 10) == [(jan, "critical")]
    finally:
        storage.close()


def test_a_collector_opening_makes_this_and_the_coming_months(schema: TestSchema) -> None:
    PgStorage(schema.url).close()
    names = {n for (n,) in sql(schema, "SELECT relname FROM pg_class WHERE relkind = 'r'")}
    start = month_start(time.time())
    for _ in range(AHEAD_MONTHS + 1):
        for table in PARTITIONED:
            assert f"{table}_{start.year:04d}_{start.month:02d}" in names
        start = next_month(start)


def test_the_maintenance_command_applies_retention(
    schema: TestSchema, capsys: pytest.CaptureFixture[str]
) -> None:
    assert partitions_main([schema.url, "--keep-days", "90"]) == 0
    assert "made:" in capsys.readouterr().out
    assert partitions_main(["postgresql://127.0.0.1:1/x"]) == 1
    assert "maintenance failed" in capsys.readouterr().err


def test_a_lost_connection_fails_one_transaction_then_reconnects(schema: TestSchema) -> None:
    """The server ends the session (a restart, a fail-over): the transaction that finds
    out fails, and the next one runs on a new connection."""
    storage = PgStorage(schema.url)
    try:
        pid = storage.connection.info.backend_pid
        sql(schema, f"SELECT pg_terminate_backend({int(pid)})")
        with (
            pytest.raises(psycopg.OperationalError),
            storage.session() as uow,
            uow.transaction(),
        ):
            uow.counters.add("x", 1)
        with storage.session() as uow, uow.transaction():
            uow.counters.add("x", 2)
        with storage.session() as uow:
            assert uow.counters.load() == {"x": 2}
    finally:
        storage.close()


def test_every_wait_of_a_session_is_bounded(schema: TestSchema) -> None:
    """Lock waits, a transaction left open by a hung collector, and a vanished server
    (TCP keepalives) all end; a keepalive setting in the URL wins over the default."""
    storage = PgStorage(schema.url + "&keepalives_idle=5")
    try:
        db = storage.connection
        assert db.execute("SHOW lock_timeout").fetchone() == ("30s",)
        assert db.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("1min",)
        params = db.info.get_parameters()
        assert (params["keepalives"], params["keepalives_idle"]) == ("1", "5")
    finally:
        storage.close()


def _sqlite_columns(path: Path) -> dict[str, set[str]]:
    SqliteStorage(path).close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = [
            t
            for (t,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {t: {row[1] for row in db.execute(f"PRAGMA table_info({t})")} for t in tables}


def test_both_schemas_have_the_same_tables_and_columns_and_the_importer_copies_all(
    schema: TestSchema, tmp_path: Path
) -> None:
    """A column added to one backend's schema and not the other's (or not copied by the
    importer) fails here, not in production."""
    PgStorage(schema.url).close()
    partition = re.compile(r"_(\d{4}_\d{2}|default)$")
    pg: dict[str, set[str]] = {}
    for table, column in sql(
        schema,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema()",
    ):
        if not partition.search(table) and table != "vigil_schema":
            pg.setdefault(table, set()).add(column)
    pg["hosts"].discard("first_order")  # SQLite's rowid order
    assert pg == _sqlite_columns(tmp_path / "c.db")
    copied = {table: {c.strip() for c in columns.split(",")} for table, columns, _ in _TABLES}
    # Copied apart (values decoded, each name list stored once as it is met).
    copied["host_metrics"] = pg["host_metrics"]
    copied["metric_names"] = pg["metric_names"]
    assert copied == pg


def test_one_collector_leads_and_another_takes_over_when_it_goes(schema: TestSchema) -> None:
    """The leader lock: one holder per database; a follower takes over at its next call
    once the leader closes, or once its session dies (a killed or cut-off process)."""
    first, second, third = (PgStorage(schema.url) for _ in range(3))
    try:
        assert first.leads() and first.leads()
        assert not second.leads() and not third.leads()
        first.close()
        assert second.leads() and not third.leads()
        leader_pid = sql(
            schema,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = "
            f"{LEADER_LOCK} AND granted",
        )[0][0]
        sql(schema, f"SELECT pg_terminate_backend({int(leader_pid)})")
        assert wait_for("the leader's session to end", lambda: third.leads(), timeout_s=10)
        assert not second.leads()  # it noticed its session is gone
    finally:
        for s in (first, second, third):
            s.close()


@pytest.mark.parametrize(
    "statement", ["UPDATE audit SET actor = 'x'", "DELETE FROM audit", "TRUNCATE audit"]
)
def test_the_audit_log_is_append_only(schema: TestSchema, statement: str) -> None:
    storage = PgStorage(schema.url)
    try:
        with storage.session() as uow, uow.transaction():
            row = {"at": T0, "actor": "alice", "action": "a.b", "target": "t", "peer": "local"}
            uow.audit.append({**row, "detail": {"k": 1}})
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            storage.connection.execute(statement)  # type: ignore[call-overload]
        with storage.session() as uow:
            (record,) = uow.audit.list(limit=10, offset=0, action=None)
            assert (record["actor"], record["detail"]) == ("alice", {"k": 1})
    finally:
        storage.close()


def test_the_importer_keeps_enrollment_secrets_credentials_and_generation(
    schema: TestSchema, tmp_path: Path
) -> None:
    """Enrolled agents keep working after a move to PostgreSQL: their credentials, the
    secrets (hash, uses, labels) and the cache generation come across as they were."""
    source = SqliteStorage(tmp_path / "c.db")
    try:
        with source.session() as uow, uow.transaction():
            uow.enrollment.add_secret(
                {
                    "id": "s1",
                    "secret_hash": "a" * 64,
                    "labels": {"group": "ops"},
                    "comment": "laptops",
                    "created_at": T0,
                    "expires_at": T0 + 3600,
                    "max_uses": 5,
                }
            )
            uow.enrollment.use_secret("s1")
            uow.enrollment.put_credential(
                {
                    "token_hash": "b" * 64,
                    "agent_id": "h1",
                    "secret_id": "s1",
                    "labels": {"group": "ops"},
                    "hostname": "laptop1",
                    "issued_at": T0,
                    "expires_at": T0 + 86400,
                    "pending": True,
                }
            )
        with source.session() as uow:
            secrets, credentials = uow.enrollment.list_secrets(), uow.enrollment.all_credentials()
            generation = uow.enrollment.generation()
    finally:
        source.close()
    copied = import_sqlite(tmp_path / "c.db", schema.url)
    assert (copied["enroll_secrets"], copied["agent_credentials"]) == (1, 1)
    target = PgStorage(schema.url)
    try:
        with target.session() as uow:
            assert uow.enrollment.list_secrets() == secrets
            assert uow.enrollment.all_credentials() == credentials
            assert uow.enrollment.secret_by_hash("a" * 64) == secrets[0]
            assert uow.enrollment.generation() == generation == 3
    finally:
        target.close()
