"""The desk over the SQLite backend: idempotent ingest, incidents, reads, schema
migrations, and aggregates that survive restarts.

Every test uses a real database file under ``tmp_path``; reports are built from the
``vigil.wire`` dataclasses exactly as an agent sends them.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.desk import open_desk
from vigil import wire
from vigil.collector.desk.apply import IngestResult
from vigil.collector.desk.service import Desk
from vigil.collector.storage.records import StorageError
from vigil.collector.storage.sqlite import schema
from vigil.collector.telemetry.buckets import AGENT_RSS_SERIES

CHECK = "disk.free_percent[/]"
FIX = "clean-temp"
T0 = 1_700_000_000.0
WAIT = 600.0

_ids = itertools.count(1)


def check(
    state: str, remediation: str | None = None, *, name: str = CHECK, event_id: str | None = None
) -> wire.CheckEvent:
    n = next(_ids)
    return wire.CheckEvent(
        event_id=event_id or f"e{n}",
        seq=n,
        time=T0 + n,
        check=name,
        state=state,  # type: ignore[arg-type]
        previous_state=None,
        value=3.5,
        message=f"disk {state}",
        remediation=remediation,
    )


def heartbeat(ttl_s: float = 90.0) -> wire.CheckEvent:
    n = next(_ids)
    return wire.CheckEvent(
        event_id=f"e{n}",
        seq=n,
        time=T0 + n,
        check=wire.HEARTBEAT_CHECK,
        state="ok",
        previous_state="ok",
        value=None,
        message="alive",
        ttl_s=ttl_s,
    )


def run(outcome: str, remediation: str = FIX, *, name: str | None = CHECK) -> wire.RemediationEvent:
    n = next(_ids)
    return wire.RemediationEvent(
        event_id=f"e{n}",
        seq=n,
        time=T0 + n,
        remediation=remediation,
        check=name,
        outcome=outcome,  # type: ignore[arg-type]
        exit_code=0 if outcome == "fixed" else 1,
        started_at=T0 + n - 2,
        duration_s=1.5,
        value_before=3.5,
        value_after=12.0,
        output="removed 3 GB\n",
        output_truncated=False,
        script_sha256="ab" * 32,
        dry_run=False,
    )


def metrics(values: dict[str, float], *, time: float = T0) -> wire.MetricsEvent:
    return wire.MetricsEvent(event_id=f"e{next(_ids)}", seq=next(_ids), time=time, values=values)


def report(
    *events: wire.Event, batch: str | None = None, agent: str = "a1", sent_at: float = T0 + 100
) -> wire.Report:
    return wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id=agent,
        hostname=f"{agent}.example.test",
        labels={"site": "hq"},
        batch_id=batch or f"b{next(_ids)}",
        sent_at=sent_at,
        agent_version="0.1.0",
        events=events,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "collector.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Desk]:
    s = open_desk(db_path, remediation_wait_s=WAIT)
    yield s
    s.close()


# --------------------------------------------------------------------------- opening


def test_creates_the_parent_folder_and_uses_wal(db_path: Path, store: Desk) -> None:
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_the_stored_version_names_the_newest_shape(db_path: Path, store: Desk) -> None:
    """The file records the version whose shape it has (metric_names, schema 14), so a
    collector that predates that shape refuses it with "schema version ... is newer"
    instead of failing later on a column it expects."""
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (14,)
        columns = {row[1] for row in db.execute("PRAGMA table_info(host_metrics)")}
        assert "names_id" in columns and "names" not in columns


def test_refuses_a_database_from_a_newer_version(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(StorageError, match="schema version 99"):
        open_desk(db_path)


# --------------------------------------------------------------------------- ingest


def test_critical_without_remediation_opens_an_incident(store: Desk) -> None:
    result = store.ingest(report(check("critical")), T0 + 101)
    (incident,) = store.list_incidents()
    assert result.opened == (incident["id"],)
    assert incident["state"] == "open"
    assert (incident["host"], incident["hostname"], incident["check"]) == (
        "a1",
        "a1.example.test",
        CHECK,
    )


def test_incident_dict_has_the_documented_shape(store: Desk) -> None:
    store.ingest(report(check("critical")), T0 + 101)
    (incident,) = store.list_incidents()
    assert incident == {
        "id": incident["id"],
        "host": "a1",
        "hostname": "a1.example.test",
        "check": CHECK,
        "state": "open",
        "priority": "P3",
        "opened_at": T0 + 101,
        "resolved_at": None,
        "value": 3.5,
        "message": "disk critical",
        "remediation": None,
        "remediation_outcome": None,
        "resolution": None,
        "service": None,
        "impact": "medium",
        "urgency": "medium",
        "sla_due": T0 + 101 + 3 * 86400,
        "acknowledged_at": None,
        "acknowledged_by": None,
        "flapping": False,
        "root_cause": None,
        "corrective_action": None,
        "preventive_action": None,
    }


def test_same_batch_twice_is_a_duplicate_and_changes_nothing(store: Desk) -> None:
    batch = report(check("critical"), metrics({"cpu.busy_percent": 50.0}))
    first = store.ingest(batch, T0 + 101)
    before = store.metrics_snapshot()
    second = store.ingest(batch, T0 + 102)
    after = store.metrics_snapshot()
    assert (first.duplicate, second.duplicate) == (False, True)
    assert (second.events, second.opened) == (0, ())
    assert len(store.list_incidents()) == 1
    assert after.events_total == before.events_total == 2
    assert after.reports_accepted_total == before.reports_accepted_total == 1
    assert after.reports_duplicate_total == 1


def test_duplicate_batch_does_not_move_last_seen(store: Desk) -> None:
    batch = report(check("ok"))
    store.ingest(batch, T0 + 101)
    store.ingest(batch, T0 + 500)
    (host,) = store.list_hosts()
    assert host["last_seen"] == T0 + 101


def test_same_batch_id_from_another_agent_is_not_a_duplicate(store: Desk) -> None:
    store.ingest(report(check("critical"), batch="same", agent="a1"), T0 + 101)
    result = store.ingest(report(check("critical"), batch="same", agent="a2"), T0 + 102)
    assert result.duplicate is False
    assert len(store.list_incidents()) == 2


def test_event_resent_in_a_new_batch_is_not_applied_twice(store: Desk) -> None:
    event = check("critical")
    store.ingest(report(event), T0 + 101)
    store.ingest(report(check("ok")), T0 + 102)
    result = store.ingest(report(event), T0 + 103)
    assert (result.duplicate, result.events, result.opened) == (False, 0, ())
    assert [i["state"] for i in store.list_incidents()] == ["resolved"]


def test_events_are_applied_in_seq_order(store: Desk) -> None:
    """A batch listing recovery before failure still ends resolved, not open."""
    failing, recovered = check("critical"), check("ok")
    result = store.ingest(report(recovered, failing), T0 + 101)
    assert (len(result.opened), len(result.resolved)) == (1, 1)
    assert store.list_hosts()[0]["checks"] == {CHECK: "ok"}


def test_remediation_fixed_records_a_prevented_incident(store: Desk) -> None:
    result = store.ingest(report(check("critical", FIX), run("fixed")), T0 + 101)
    (incident,) = store.list_incidents()
    assert result.prevented == (incident["id"],)
    assert result.opened == ()
    assert (incident["state"], incident["remediation"], incident["remediation_outcome"]) == (
        "prevented",
        FIX,
        "fixed",
    )
    assert store.list_incidents(state="open") == []


def test_promise_then_fix_in_separate_reports_is_prevented(store: Desk) -> None:
    store.ingest(report(check("critical", FIX)), T0 + 101)
    result = store.ingest(report(run("fixed")), T0 + 130)
    assert len(result.prevented) == 1
    assert store.metrics_snapshot().incidents_open == {}


def test_failed_fix_opens_an_incident_naming_it(store: Desk) -> None:
    store.ingest(report(check("critical", FIX), run("not_fixed")), T0 + 101)
    (incident,) = store.list_incidents(state="open")
    assert (incident["remediation"], incident["remediation_outcome"]) == (FIX, "not_fixed")


def test_recovery_resolves_the_open_incident(store: Desk) -> None:
    opened = store.ingest(report(check("critical")), T0 + 101).opened
    result = store.ingest(report(check("ok")), T0 + 200)
    assert result.resolved == opened
    incident = store.get_incident(opened[0])
    assert incident is not None
    assert (incident["state"], incident["resolved_at"], incident["resolution"]) == (
        "resolved",
        T0 + 200,
        "check recovered",
    )


def test_incident_timeline_tells_the_story(store: Desk) -> None:
    (incident_id,) = store.ingest(report(check("critical")), T0 + 101).opened
    store.ingest(report(check("warning")), T0 + 150)
    store.ingest(report(check("ok")), T0 + 200)
    incident = store.get_incident(incident_id)
    assert incident is not None
    assert incident["timeline"] == [
        {"at": T0 + 101, "text": "opened: check critical, no remediation"},
        {"at": T0 + 150, "text": "check warning: disk warning"},
        {"at": T0 + 200, "text": "resolved: check recovered"},
    ]


def test_get_incident_of_unknown_id_is_none(store: Desk) -> None:
    assert store.get_incident(12345) is None


def test_heartbeat_sets_ttl_and_opens_nothing(store: Desk) -> None:
    store.ingest(report(heartbeat(ttl_s=90.0)), T0 + 101)
    (host,) = store.list_hosts()
    assert (host["heartbeat_ttl_s"], host["checks"]) == (90.0, {})
    assert store.list_incidents() == []
    assert store.metrics_snapshot().host_ttl == {"a1": 90.0}


def test_latest_metrics_keep_the_newest_value_only(store: Desk) -> None:
    store.ingest(report(metrics({"cpu.busy_percent": 10.0}, time=T0 + 10)), T0 + 101)
    store.ingest(report(metrics({"cpu.busy_percent": 90.0}, time=T0 + 30)), T0 + 102)
    # A late retry of an older sample must not overwrite the newer one.
    store.ingest(report(metrics({"cpu.busy_percent": 20.0}, time=T0 + 20)), T0 + 103)
    assert store.latest_metrics("a1") == {"cpu.busy_percent": 90.0}


def test_a_failing_report_applies_nothing(db_path: Path, store: Desk) -> None:
    """A database error mid-report rolls the whole report back, aggregates included."""
    with sqlite3.connect(db_path) as other:  # a trigger stands in for a failing disk
        other.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON remediation_runs"
            " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    other.close()
    with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
        store.ingest(report(check("critical"), run("not_fixed")), T0 + 101)
    snapshot = store.metrics_snapshot()
    assert store.list_incidents() == []
    assert store.list_hosts() == []
    assert (snapshot.incidents_opened_total, snapshot.checks_failing) == (0, {})


def test_received_at_must_be_finite(store: Desk) -> None:
    with pytest.raises(ValueError, match="received_at"):
        store.ingest(report(check("ok")), float("nan"))


# --------------------------------------------------------------------------- tick


def test_tick_opens_after_the_remediation_wait(store: Desk) -> None:
    store.ingest(report(check("critical", FIX)), T0 + 100)
    assert store.tick(T0 + 100 + WAIT) == ()
    opened = store.tick(T0 + 101 + WAIT)
    (incident,) = store.list_incidents(state="open")
    assert opened == (incident["id"],)
    assert (incident["remediation"], incident["remediation_outcome"]) == (FIX, None)


def test_tick_opens_only_once(store: Desk) -> None:
    store.ingest(report(check("critical", FIX)), T0 + 100)
    store.tick(T0 + 101 + WAIT)
    assert store.tick(T0 + 200 + WAIT) == ()


def test_tick_does_nothing_once_the_fix_arrived(store: Desk) -> None:
    store.ingest(report(check("critical", FIX)), T0 + 100)
    store.ingest(report(run("fixed")), T0 + 120)
    assert store.tick(T0 + 101 + WAIT) == ()


# --------------------------------------------------------------------------- restart


def test_data_and_aggregates_survive_close_and_reopen(db_path: Path) -> None:
    store = open_desk(db_path, remediation_wait_s=WAIT)
    store.ingest(report(check("critical"), heartbeat(), agent="a1"), T0 + 101)
    store.ingest(report(check("critical", FIX), run("fixed"), agent="a2"), T0 + 102)
    store.ingest(report(check("critical"), agent="a3"), T0 + 103)
    store.ingest(report(check("ok"), agent="a3"), T0 + 104)
    batch = report(check("warning", name="mem"), agent="a3")
    store.ingest(batch, T0 + 105)
    store.ingest(batch, T0 + 106)
    before = store.metrics_snapshot()
    incidents = store.list_incidents()
    store.close()

    reopened = open_desk(db_path, remediation_wait_s=WAIT)
    try:
        assert reopened.metrics_snapshot() == before
        assert reopened.list_incidents() == incidents
    finally:
        reopened.close()


def test_aggregates_after_a_mixed_history(store: Desk) -> None:
    store.ingest(report(check("critical"), heartbeat(60.0), agent="a1"), T0 + 101)
    store.ingest(report(check("critical", FIX), run("fixed"), agent="a2"), T0 + 102)
    store.ingest(report(check("critical"), agent="a3"), T0 + 103)
    store.ingest(report(check("ok"), agent="a3"), T0 + 104)
    snapshot = store.metrics_snapshot()
    assert snapshot.host_last_seen == {"a1": T0 + 101, "a2": T0 + 102, "a3": T0 + 104}
    assert snapshot.host_ttl == {"a1": 60.0}
    assert snapshot.incidents_open == {("P3", CHECK): 1}
    assert (
        snapshot.incidents_opened_total,
        snapshot.incidents_resolved_total,
        snapshot.incidents_prevented_total,
    ) == (2, 1, 1)
    # a1 open, a2 fixed but its check never reported ok again, a3 recovered.
    assert snapshot.checks_failing == {CHECK: 2}
    assert snapshot.remediation_runs == {(FIX, "fixed"): 1}
    assert (snapshot.reports_accepted_total, snapshot.events_total) == (4, 6)


def test_gauges_drop_keys_that_fall_to_zero(store: Desk) -> None:
    """No stale zero series once the last open incident on a check is resolved."""
    store.ingest(report(check("critical")), T0 + 101)
    store.ingest(report(check("ok")), T0 + 102)
    snapshot = store.metrics_snapshot()
    assert (snapshot.incidents_open, snapshot.checks_failing) == ({}, {})


def test_unknown_checks_are_counted_by_check_and_rebuilt_at_start(db_path: Path) -> None:
    """A check that cannot read what it watches (a metric-name typo) stays unknown for
    ever with no incident: the collector counts the hosts where it is, per check, also
    after a restart, and forgets a host once its check reads again."""
    store = open_desk(db_path, remediation_wait_s=WAIT)
    store.ingest(report(check("unknown"), agent="a1"), T0 + 101)
    store.ingest(report(check("unknown"), agent="a2"), T0 + 102)
    store.ingest(report(check("unknown", name="mem"), agent="a2"), T0 + 103)
    store.ingest(report(check("critical", name="mem"), agent="a2"), T0 + 104)
    store.ingest(report(check("unknown", name="dns"), agent="a3"), T0 + 105)
    store.ingest(report(check("ok", name="dns"), agent="a3"), T0 + 106)
    before = store.metrics_snapshot()
    store.close()
    assert before.checks_unknown == {CHECK: 2}
    assert before.checks_failing == {"mem": 1}

    reopened = open_desk(db_path, remediation_wait_s=WAIT)
    try:
        assert reopened.metrics_snapshot().checks_unknown == {CHECK: 2}
    finally:
        reopened.close()


# --------------------------------------------------------------------------- reads


@pytest.fixture
def history(store: Desk) -> Desk:
    """Five incidents: a1 has three on CHECK (two resolved) and one on mem; a2 one prevented."""
    for _ in range(2):
        store.ingest(report(check("critical"), agent="a1"), T0 + 101)
        store.ingest(report(check("ok"), agent="a1"), T0 + 102)
    store.ingest(report(check("critical"), agent="a1"), T0 + 103)
    store.ingest(report(check("critical", name="mem"), agent="a1"), T0 + 104)
    store.ingest(report(check("critical", FIX), run("fixed"), agent="a2"), T0 + 105)
    return store


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, 5),
        ({"state": "open"}, 2),
        ({"state": "resolved"}, 2),
        ({"state": "prevented"}, 1),
        ({"host": "a2"}, 1),
        ({"check": "mem"}, 1),
        ({"host": "a1", "check": CHECK, "state": "open"}, 1),
        ({"host": "nobody"}, 0),
    ],
    ids=["all", "open", "resolved", "prevented", "host", "check", "combined", "unknown-host"],
)
def test_list_incidents_filters(history: Desk, filters: dict, expected: int) -> None:
    found = history.list_incidents(**filters)
    assert len(found) == expected
    assert all(i[key] == value for i in found for key, value in filters.items())


def test_list_incidents_pages_newest_first(history: Desk) -> None:
    everything = history.list_incidents()
    ids = [i["id"] for i in everything]
    assert ids == sorted(ids, reverse=True)
    first = history.list_incidents(limit=2)
    second = history.list_incidents(limit=2, offset=2)
    last = history.list_incidents(limit=2, offset=4)
    assert first + second + last == everything
    assert len(last) == 1


def test_list_incidents_rejects_an_unknown_state(store: Desk) -> None:
    """Page bounds (limit, offset) are the API's input validation, tested with the API
    (``test_a_bad_incidents_query_is_400_naming_the_field``); the state is the desk's."""
    with pytest.raises(ValueError, match=r"state: must be one of .*'open'.*got 'closed'"):
        store.list_incidents(state="closed")


def test_hosts_include_checks_and_open_counts(history: Desk) -> None:
    history.ingest(report(heartbeat(45.0), agent="a2", sent_at=T0 + 100), T0 + 106.5)
    hosts = {h["agent_id"]: h for h in history.list_hosts()}
    assert hosts["a1"]["checks"] == {CHECK: "critical", "mem": "critical"}
    assert hosts["a1"]["open_incidents"] == 2
    assert hosts["a2"] == {
        "agent_id": "a2",
        "hostname": "a2.example.test",
        "labels": {"site": "hq"},
        "agent_version": "0.1.0",
        "first_seen": T0 + 105,
        "last_seen": T0 + 106.5,
        # Samples 5.0 s then 6.5 s: the smaller one (aged by 1.5 s at 100 ppm) is kept.
        "clock_offset_s": 5.0 + 1.5 * 1e-4,
        "heartbeat_ttl_s": 45.0,
        "open_incidents": 0,
        "checks": {CHECK: "critical"},
    }


def test_remediation_run_dict_holds_every_wire_field(store: Desk) -> None:
    event = run("not_fixed")
    store.ingest(report(event), T0 + 101)
    (stored,) = store.list_remediation_runs()
    assert stored == {
        **wire.to_dict(event),
        "id": 1,  # listed runs carry their id: the key of keyset paging (issue #17)
        "host": "a1",
        "hostname": "a1.example.test",
        "received_at": T0 + 101,
    }


def test_run_without_a_check_is_recorded_but_opens_nothing(store: Desk) -> None:
    store.ingest(report(run("not_fixed", name=None)), T0 + 101)
    assert len(store.list_remediation_runs()) == 1
    assert store.list_incidents() == []
    assert store.list_hosts()[0]["checks"] == {}


def test_run_for_a_check_that_never_reported_leaves_no_check_state(store: Desk) -> None:
    store.ingest(report(run("fixed")), T0 + 101)
    assert store.list_hosts()[0]["checks"] == {}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, 3),
        ({"host": "a2"}, 1),
        ({"remediation": "restart-spooler"}, 1),
        ({"host": "a1", "remediation": FIX}, 2),
    ],
    ids=["all", "host", "remediation", "combined"],
)
def test_list_remediation_runs_filters(store: Desk, filters: dict, expected: int) -> None:
    store.ingest(report(run("fixed"), run("error"), agent="a1"), T0 + 101)
    store.ingest(report(run("fixed", "restart-spooler"), agent="a2"), T0 + 102)
    assert len(store.list_remediation_runs(**filters)) == expected


def test_list_remediation_runs_pages_newest_first(store: Desk) -> None:
    first, second, third = run("fixed"), run("error"), run("timeout")
    store.ingest(report(first, second, third), T0 + 101)
    page = store.list_remediation_runs(limit=2, offset=1)
    assert [r["event_id"] for r in page] == [second.event_id, first.event_id]


def test_prune_seen_forgets_old_ids_only(store: Desk) -> None:
    old = report(check("critical"))
    store.ingest(old, T0 + 101)
    store.ingest(report(check("warning")), T0 + 5000)
    assert store.prune_seen(T0 + 1000) == 2  # the old batch id and its one event id
    assert store.ingest(old, T0 + 5001).duplicate is False


# --------------------------------------------------------------------------- schema 2


_SCHEMA_1_TABLES = """
CREATE TABLE batches (host TEXT NOT NULL, batch_id TEXT NOT NULL, received_at REAL NOT NULL,
    events INTEGER NOT NULL, PRIMARY KEY (host, batch_id));
CREATE TABLE events_seen (host TEXT NOT NULL, event_id TEXT NOT NULL,
    received_at REAL NOT NULL, PRIMARY KEY (host, event_id));
CREATE TABLE metrics_latest (host TEXT NOT NULL, series TEXT NOT NULL, value REAL NOT NULL,
    time REAL NOT NULL, received_at REAL NOT NULL, PRIMARY KEY (host, series));
"""


def test_a_schema_1_database_is_migrated_without_losing_ids_or_metrics(db_path: Path) -> None:
    open_desk(db_path).close()
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        # Turn the fresh database back into what schema 1 stored.
        db.executescript("DROP TABLE seen; DROP TABLE host_metrics;" + _SCHEMA_1_TABLES)
        db.execute("INSERT INTO batches VALUES ('a1', 'old-batch', ?, 1)", (T0,))
        db.execute("INSERT INTO events_seen VALUES ('a1', 'old-event', ?)", (T0,))
        db.executemany(
            "INSERT INTO metrics_latest VALUES ('a1', ?, ?, ?, ?)",
            [
                ("cpu.busy_percent", 12.5, T0 + 10, T0 + 11),
                (AGENT_RSS_SERIES, 40.0 * 2**20, T0 + 20, T0 + 21),
            ],
        )
        db.execute("PRAGMA user_version=1")

    store = open_desk(db_path)
    try:
        assert store.latest_metrics("a1") == {
            AGENT_RSS_SERIES: 40.0 * 2**20,
            "cpu.busy_percent": 12.5,
        }
        assert store.metrics_snapshot().agent_rss.count == 1  # footprint read at start-up
        again = store.ingest(report(check("critical"), batch="old-batch"), T0 + 200)
        assert again.duplicate
        resent = check("critical", event_id="old-event")
        assert store.ingest(report(resent), T0 + 201).events == 0
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            assert {"batches", "events_seen", "metrics_latest"}.isdisjoint(tables)
            assert db.execute("PRAGMA user_version").fetchone() == (schema.SCHEMA_VERSION,)
    finally:
        store.close()


def test_a_database_from_before_last_batch_id_gains_the_column_on_open(db_path: Path) -> None:
    open_desk(db_path).close()
    with contextlib.closing(sqlite3.connect(db_path)) as db, db:
        db.execute("ALTER TABLE hosts DROP COLUMN last_batch_id")  # as schema 2 first was
    store = open_desk(db_path)
    try:
        last = report(check("critical"), batch="b-last")
        store.ingest(last, T0)
        store.prune_seen(T0 + 1)
        assert store.ingest(last, T0 + 2).duplicate
    finally:
        store.close()


def test_latest_metrics_are_the_newest_summary_as_a_whole(store: Desk) -> None:
    store.ingest(report(metrics({"disk[/a]": 1.0, "disk[/b]": 2.0}, time=T0 + 10)), T0 + 101)
    store.ingest(report(metrics({"disk[/a]": 3.0}, time=T0 + 20)), T0 + 102)
    # /b was unmounted: the newest summary has no value for it, so none is shown.
    assert store.latest_metrics("a1") == {"disk[/a]": 3.0}
    assert store.latest_metrics("nobody") == {}


def test_an_event_id_twice_in_one_batch_is_applied_once(store: Desk) -> None:
    twice = check("critical", event_id="same")
    result = store.ingest(report(twice, twice), T0 + 101)
    assert result.events == 1
    assert len(store.list_incidents()) == 1


def test_a_reused_batch_id_with_new_events_records_none_of_them(store: Desk) -> None:
    store.ingest(report(check("ok"), batch="b-reused"), T0 + 101)
    late = check("critical", event_id="late")
    # An agent bug: the same batch id with other events. The batch is a duplicate, and its
    # new event is not marked as seen, so it is applied when it comes in a proper batch.
    assert store.ingest(report(late, batch="b-reused"), T0 + 102).duplicate
    assert store.list_incidents() == []
    assert store.ingest(report(late, batch="b-proper"), T0 + 103).events == 1
    assert len(store.list_incidents()) == 1


def test_prune_seen_forgets_old_batch_and_event_ids(store: Desk) -> None:
    old = check("ok", event_id="old")
    store.ingest(report(old, batch="b-old"), T0)
    store.ingest(report(check("ok"), batch="b-new"), T0 + 1000)
    assert store.prune_seen(T0 + 500) == 2  # the old batch id and its event id
    assert not store.ingest(report(old, batch="b-old"), T0 + 1001).duplicate
    assert store.ingest(report(check("ok"), batch="b-new"), T0 + 1002).duplicate


def test_a_retry_of_the_last_batch_is_a_duplicate_even_after_its_ids_expired(
    store: Desk,
) -> None:
    """A laptop shut down between sending a batch and reading the ack retries that same
    batch when it is back, however much later: the host row remembers its last batch."""
    store.ingest(report(check("ok"), batch="b-first"), T0)
    last = report(check("critical"), batch="b-last")
    store.ingest(last, T0 + 100)
    assert store.prune_seen(T0 + 10**7) == 4  # every id of both batches expired

    again = store.ingest(last, T0 + 30 * 86400)

    assert again.duplicate and again.events == 0
    # Only the last batch is remembered: an older one retried this late applies again
    # (docs/delivery.md, "Deduplication window").
    assert not store.ingest(report(check("ok"), batch="b-first"), T0 + 30 * 86400).duplicate


# --------------------------------------------------------------------------- begin_group


def test_begin_group_applies_now_and_commits_in_finish(db_path: Path, store: Desk) -> None:
    finish = store.begin_group([(report(check("critical")), T0 + 101)])
    assert finish is not None
    # Not committed yet: another connection sees nothing, and the store is held.
    with contextlib.closing(sqlite3.connect(db_path)) as other:
        assert other.execute("SELECT COUNT(*) FROM incidents").fetchone() == (0,)
    assert store.begin_group([(report(check("ok")), T0 + 102)]) is None
    (result,) = finish()
    assert isinstance(result, IngestResult) and result.events == 1
    assert store.metrics_snapshot().events_total == 1  # aggregates only after the COMMIT
    assert len(store.list_incidents()) == 1  # the store is free again


def test_begin_group_steps_aside_when_a_report_fails(db_path: Path, store: Desk) -> None:
    with contextlib.closing(sqlite3.connect(db_path)) as other, other:
        other.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON remediation_runs"
            " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    good, bad = report(check("critical")), report(run("not_fixed"), agent="a2")
    assert store.begin_group([(good, T0 + 101), (bad, T0 + 102)]) is None
    assert store.list_hosts() == []  # rolled back, and the store is not left locked
    # ingest_many (the fallback) isolates the culprit.
    ok, failed = store.ingest_many([(good, T0 + 101), (bad, T0 + 102)])
    assert isinstance(ok, IngestResult) and isinstance(failed, sqlite3.IntegrityError)


def test_the_clock_offset_is_the_smallest_recent_sample_and_follows_a_step(
    store: Desk,
) -> None:
    def offset_after(sample: float, at: float) -> float:
        store.ingest(report(heartbeat(), sent_at=at - sample), at)
        (host,) = store.list_hosts()
        return host["clock_offset_s"]

    # (Offsets that are exact in binary: T0 + x - x is then exact too.)
    assert offset_after(2.25, T0) == 2.25
    # Delay only adds to a sample: a slower delivery does not move the estimate up...
    assert offset_after(2.875, T0 + 10) == pytest.approx(2.25 + 10 * 1e-4)
    # ...a faster one brings it down.
    assert offset_after(2.0, T0 + 20) == 2.0
    # A stepped clock (more than 5 s off the estimate) replaces it at once, both ways.
    assert offset_after(-3600.0, T0 + 30) == -3600.0
    assert offset_after(2.125, T0 + 40) == 2.125
    assert store.metrics_snapshot().clock_offsets.total == 2.125
