"""The storage contract: what every backend must do, run once per backend (``backend``).

Three parts: exactly-once under replays and concurrent writers (through the desk, as
the collector uses storage); a schema-2 database of today's collector opened and served
exactly as that collector served it, with every query the API makes, filters and pages
included; and the repositories' own store-and-fetch promises.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import multiprocessing
import threading
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.desk import CATALOG, RULES
from tests.unit.storage.backends import BackendFactory
from vigil import wire
from vigil.collector.desk.apply import IngestResult
from vigil.collector.desk.service import Desk
from vigil.collector.storage import protocols
from vigil.collector.storage.factory import create_storage
from vigil.collector.storage.records import KeyRow

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
T0 = 1_700_000_000.0
DAY = 86400.0


def check(n: int, name: str = "disk.root", state: str = "critical") -> wire.CheckEvent:
    return wire.CheckEvent(
        event_id=f"e{n}", seq=n, time=T0, check=name, state=state,  # type: ignore[arg-type]
        previous_state=None, value=1.0, message=f"{name} {state}",
    )  # fmt: skip


def report(batch: str, *events: wire.Event, host: str = "h1") -> wire.Report:
    return wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id=host,
        hostname=f"{host}.example.test",
        labels={"role": "server"},
        batch_id=batch,
        sent_at=T0,
        agent_version="0.1.0",
        events=events,
    )


@pytest.fixture
def desk(backend: BackendFactory) -> Iterator[Desk]:
    d = backend.desk(catalog=CATALOG, rules=RULES)
    yield d
    d.close()


# --------------------------------------------------------------------------- exactly once


def test_the_same_batch_twice_applies_once(desk: Desk) -> None:
    first = desk.ingest(report("b1", check(1)), T0)
    again = desk.ingest(report("b1", check(1)), T0 + 5)
    assert (first.duplicate, first.events, len(first.opened)) == (False, 1, 1)
    assert (again.duplicate, again.events, again.opened) == (True, 0, ())
    assert len(desk.list_incidents()) == 1
    assert desk.list_hosts()[0]["last_seen"] == T0
    snap = desk.metrics_snapshot()
    assert (snap.reports_accepted_total, snap.reports_duplicate_total) == (1, 1)


def test_events_resent_in_a_new_batch_apply_once(desk: Desk) -> None:
    desk.ingest(report("b1", check(1)), T0)
    result = desk.ingest(report("b2", check(1), check(2, "mail.imap")), T0 + 5)
    assert (result.duplicate, result.events) == (False, 1)
    assert sorted(i["check"] for i in desk.list_incidents()) == ["disk.root", "mail.imap"]


def test_the_hosts_last_batch_is_a_duplicate_after_its_ids_are_pruned(desk: Desk) -> None:
    desk.ingest(report("b1", check(1)), T0)
    assert desk.prune_seen(T0 + 1) == 2  # the batch id and the event id
    assert desk.ingest(report("b1", check(1)), T0 + 2).duplicate


def test_a_batch_repeated_inside_one_group_is_a_duplicate_of_the_first(desk: Desk) -> None:
    results = desk.ingest_many([(report("b1", check(1)), T0), (report("b1", check(1)), T0)])
    assert [r.duplicate for r in results if isinstance(r, IngestResult)] == [False, True]


def test_the_two_step_group_commit_applies_once_too(desk: Desk) -> None:
    finish = desk.begin_group([(report("b1", check(1)), T0)])
    assert finish is not None
    (result,) = finish()
    assert isinstance(result, IngestResult) and not result.duplicate
    assert desk.ingest(report("b1", check(1)), T0).duplicate


def test_dedup_survives_a_reopen(backend: BackendFactory) -> None:
    first = backend.desk(catalog=CATALOG, rules=RULES)
    first.ingest(report("b1", check(1)), T0)
    first.close()
    second = backend.desk(catalog=CATALOG, rules=RULES)
    try:
        assert second.ingest(report("b1", check(1)), T0).duplicate
        assert len(second.list_incidents()) == 1
    finally:
        second.close()


def test_threads_with_their_own_storage_apply_one_batch_once(backend: BackendFactory) -> None:
    """Four writers (separate connections) race to apply the same batch: one applies it."""
    desks = [backend.desk(catalog=CATALOG, rules=RULES) for _ in range(4)]
    start = threading.Barrier(len(desks))
    results: list[IngestResult] = []

    def write(d: Desk) -> None:
        start.wait()
        results.append(d.ingest(report("b1", check(1), check(2, "mail.imap")), T0))

    threads = [threading.Thread(target=write, args=(d,)) for d in desks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert sorted(r.duplicate for r in results) == [False, True, True, True]
        assert len(desks[0].list_incidents()) == 2
    finally:
        for d in desks:
            d.close()


def _ingest_in_a_process(url: str, start: Any, out: Any) -> None:
    desk = Desk(create_storage(url), catalog=CATALOG, rules=RULES)
    try:
        start.wait(timeout=60)
        result = desk.ingest(report("b1", check(1), check(2, "mail.imap")), T0)
        out.put(result.duplicate)
    finally:
        desk.close()


def test_processes_apply_one_batch_once(backend: BackendFactory) -> None:
    """Three collector processes on one database receive the same batch at once."""
    backend.desk().close()  # create the schema before the race
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(target=_ingest_in_a_process, args=(backend.url, start, out)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sorted(out.get(timeout=5) for _ in procs) == [False, True, True]
    desk = backend.desk(catalog=CATALOG, rules=RULES)
    try:
        assert len(desk.list_incidents()) == 2
        assert desk.metrics_snapshot().reports_accepted_total == 1
    finally:
        desk.close()


# --------------------------------------------------------------------------- schema 2


@pytest.fixture(scope="module")
def served() -> dict[str, Any]:
    """What the collector before the storage split served from the fixture database."""
    return json.loads((FIXTURES / "schema2_served.json").read_text())


@pytest.fixture
def migrated(backend: BackendFactory) -> Iterator[Desk]:
    backend.restore_schema2((FIXTURES / "schema2.sql").read_text())
    d = backend.desk(catalog=CATALOG, rules=RULES)
    yield d
    d.close()


def plain(value: Any) -> Any:
    """``value`` as JSON would carry it (tuples become lists), to compare with a fixture."""
    return json.loads(json.dumps(value))


def test_a_schema2_database_serves_every_row_as_before(
    migrated: Desk, served: dict[str, Any]
) -> None:
    now = served["now"]
    assert plain(migrated.list_incidents(limit=1000)) == served["list_incidents"]
    for incident_id, incident in served["incidents"].items():
        assert plain(migrated.get_incident(int(incident_id))) == incident
    assert plain(migrated.list_problems(limit=1000)) == served["list_problems"]
    for problem_id, problem in served["problems"].items():
        assert plain(migrated.get_problem(int(problem_id))) == problem
    assert plain(migrated.list_silences()) == served["list_silences"]
    assert plain(migrated.list_hosts()) == served["hosts"]
    for host, values in served["latest_metrics"].items():
        assert plain(migrated.latest_metrics(host)) == values
    assert plain(migrated.list_remediation_runs(limit=1000)) == served["list_remediation_runs"]
    assert plain(migrated.remediation_stats()) == served["remediation_stats"]
    assert plain(migrated.alertables(now)) == served["alertables"]
    assert plain(migrated.incident_aggregates(now)) == served["incident_aggregates"]


def test_a_schema2_database_loads_the_same_aggregates(
    migrated: Desk, served: dict[str, Any]
) -> None:
    snap = migrated.metrics_snapshot()
    want = served["metrics"]
    assert (
        plain(sorted([list(k), v] for k, v in snap.incidents_open.items()))
        == want["incidents_open"]
    )
    assert snap.incidents_opened_total == want["incidents_opened_total"]
    assert snap.incidents_resolved_total == want["incidents_resolved_total"]
    assert snap.incidents_prevented_total == want["incidents_prevented_total"]
    assert snap.checks_failing == want["checks_failing"]
    assert (
        plain(sorted([list(k), v] for k, v in snap.remediation_runs.items()))
        == want["remediation_runs"]
    )
    assert snap.reports_accepted_total == want["reports_accepted_total"]
    assert snap.reports_duplicate_total == want["reports_duplicate_total"]
    assert snap.events_total == want["events_total"]
    assert snap.host_last_seen == want["host_last_seen"]
    assert snap.host_ttl == want["host_ttl"]
    assert snap.clock_offsets.counts == want["clock_offsets"]
    assert snap.agent_rss.counts == want["agent_rss"]
    assert {p: h.counts for p, h in snap.time_to_restore.items()} == want["time_to_restore"]
    assert {r: h.counts for r, h in snap.remediation_durations.items()} == want[
        "remediation_durations"
    ]


def test_a_schema2_database_still_knows_each_hosts_last_batch(
    migrated: Desk, served: dict[str, Any]
) -> None:
    """Their ids were pruned; the retry of each host's last batch is still a duplicate."""
    for host, batch in served["last_batches"].items():
        assert migrated.ingest(report(batch, check(10_000), host=host), served["now"]).duplicate


def test_a_schema2_database_takes_new_reports(migrated: Desk, served: dict[str, Any]) -> None:
    result = migrated.ingest(report("new-batch", check(10_001, "fresh.check"), host="srv-9"), T0)
    assert not result.duplicate and len(result.opened) == 1
    assert max(i["id"] for i in served["list_incidents"]) < result.opened[0]


def test_the_user_a_run_ran_as_is_kept_and_older_runs_read_as_before(desk: Desk) -> None:
    """``run_as_user`` (schema 11 / migration 7) comes back on the runs that carry it;
    a run without it reads exactly as before (no key)."""
    run = wire.RemediationEvent(
        event_id="r1", seq=1, time=T0, remediation="notify-user", check="disk.root",
        outcome="fixed", exit_code=0, started_at=T0, duration_s=1.0,
        value_before=9.0, value_after=1.0, output="", output_truncated=False,
        script_sha256="0" * 64, dry_run=False, run_as_user="alice",
    )  # fmt: skip
    plain_run = dataclasses.replace(run, event_id="r2", seq=2, run_as_user=None)
    desk.ingest(report("b1", run, plain_run), T0)
    by_id = {r["event_id"]: r for r in desk.list_remediation_runs(limit=10)}
    assert by_id["r1"]["run_as_user"] == "alice"
    assert "run_as_user" not in by_id["r2"]


# --------------------------------------------------------------------------- API queries


def _stored_state(incident: dict[str, Any]) -> str:
    return "open" if incident["state"] in ("acknowledged", "flapping") else incident["state"]


def test_a_schema2_database_takes_a_self_healed_problem(migrated: Desk) -> None:
    """The problem kinds of schema 2 were fixed by a CHECK; the migration allows the
    self-healed kind and keeps every earlier link and timeline entry."""
    before = {p["id"]: p for p in migrated.list_problems(limit=1000)}
    for n, host in enumerate(("s1", "s2", "s3")):
        fix = wire.RemediationEvent(
            event_id=f"r{n}", seq=n + 100, time=T0, remediation="fix-it", check="disk.tmp",
            outcome="fixed", exit_code=0, started_at=T0, duration_s=1.0,
            value_before=9.0, value_after=1.0, output="", output_truncated=False,
            script_sha256="0" * 64, dry_run=False,
        )  # fmt: skip
        failing = dataclasses.replace(check(n + 50, "disk.tmp"), remediation="fix-it")
        migrated.ingest(report(f"m{n}", failing, fix, host=host), T0 + 9 * DAY + n)
    (healed,) = migrated.list_problems(kind="self_healed")
    assert healed["hosts"] == 3
    for problem_id, problem in before.items():
        again = migrated.get_problem(problem_id)
        assert again is not None and again["incidents"] == problem["incidents"]
        assert again["timeline"] != []


@pytest.mark.parametrize(
    "state", ["open", "acknowledged", "flapping", "resolved", "prevented", None]
)
def test_incidents_filter_by_state(
    migrated: Desk, served: dict[str, Any], state: str | None
) -> None:
    everything = served["list_incidents"]
    if state is None:
        want = everything
    elif state == "open":
        want = [i for i in everything if _stored_state(i) == "open"]
    else:
        want = [i for i in everything if i["state"] == state]
    assert want, "the fixture has incidents in every state"
    assert plain(migrated.list_incidents(state=state, limit=1000)) == want


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("host", "srv-1"),
        ("check", "disk.root"),
        ("service", "email"),
        ("priority", "P1"),
    ],
)
def test_incidents_filter_by_field(
    migrated: Desk, served: dict[str, Any], field: str, value: str
) -> None:
    want = [i for i in served["list_incidents"] if i[field] == value]
    assert want
    assert plain(migrated.list_incidents(**{field: value}, limit=1000)) == want


def test_incident_filters_combine(migrated: Desk, served: dict[str, Any]) -> None:
    want = [
        i
        for i in served["list_incidents"]
        if i["host"] == "srv-3" and i["check"] == "disk.root" and i["state"] == "resolved"
    ]
    assert len(want) == 1
    got = migrated.list_incidents(host="srv-3", check="disk.root", state="resolved")
    assert plain(got) == want


@pytest.mark.parametrize(("limit", "offset"), [(1, 0), (3, 0), (3, 3), (5, 10), (4, 100)])
def test_incidents_page_newest_first(
    migrated: Desk, served: dict[str, Any], limit: int, offset: int
) -> None:
    want = served["list_incidents"][offset : offset + limit]
    assert plain(migrated.list_incidents(limit=limit, offset=offset)) == want


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"state": "resolved"},
        {"state": "open"},
        {"state": "acknowledged"},
        {"kind": "fleet"},
        {"kind": "recurring"},
        {"check": "dns.resolve"},
    ],
    ids=repr,
)
def test_problems_filter(migrated: Desk, served: dict[str, Any], filters: dict[str, str]) -> None:
    want = [
        p
        for p in served["list_problems"]
        if all(p[k] == v for k, v in filters.items() if k != "state")
        and filters.get("state") in (None, p["state"])
    ]
    assert plain(migrated.list_problems(**filters, limit=1000)) == want


def test_problems_page(migrated: Desk, served: dict[str, Any]) -> None:
    assert plain(migrated.list_problems(limit=1, offset=1)) == served["list_problems"][1:2]


@pytest.mark.parametrize(
    "filters",
    [{"host": "srv-1"}, {"remediation": "clean-temp"}, {"host": "srv-3", "remediation": "x"}],
    ids=repr,
)
def test_remediation_runs_filter(
    migrated: Desk, served: dict[str, Any], filters: dict[str, str]
) -> None:
    want = [
        r for r in served["list_remediation_runs"] if all(r[k] == v for k, v in filters.items())
    ]
    assert plain(migrated.list_remediation_runs(**filters, limit=1000)) == want


def test_remediation_runs_page(migrated: Desk, served: dict[str, Any]) -> None:
    got = migrated.list_remediation_runs(limit=2, offset=1)
    assert plain(got) == served["list_remediation_runs"][1:3]


def test_silences_active_at_a_time(migrated: Desk, served: dict[str, Any]) -> None:
    now = served["now"]
    want = [s for s in served["list_silences"] if s["starts_at"] <= now < s["ends_at"]]
    assert len(want) == 1
    assert plain(migrated.list_silences(active_at=now)) == want


def test_a_silence_is_created_changed_and_deleted(desk: Desk) -> None:
    made = desk.create_silence("host", "h1", T0, T0 + 60, "patching", "alice", T0)
    assert made == {
        "id": made["id"], "matcher": "host", "value": "h1", "starts_at": T0,
        "ends_at": T0 + 60, "comment": "patching", "created_by": "alice", "created_at": T0,
    }  # fmt: skip
    changed = desk.update_silence(made["id"], ends_at=T0 + 30, comment=None)
    assert changed is not None and (changed["ends_at"], changed["comment"]) == (T0 + 30, "patching")
    assert desk.update_silence(made["id"] + 1, ends_at=T0, comment="x") is None
    assert desk.delete_silence(made["id"]) and not desk.delete_silence(made["id"])
    assert desk.get_silence(made["id"]) is None and desk.list_silences() == []


def test_latest_metrics_of_an_unknown_host_are_empty(migrated: Desk) -> None:
    assert migrated.latest_metrics("nobody") == {}


def test_unknown_ids_are_none(migrated: Desk) -> None:
    assert migrated.get_incident(999) is None and migrated.get_problem(999) is None


# --------------------------------------------------------------------------- repositories


@pytest.fixture
def storage(backend: BackendFactory) -> Iterator[Any]:
    s = backend.open()
    yield s
    s.close()


def test_a_rolled_back_transaction_leaves_nothing(storage: Any) -> None:
    with storage.session() as uow:
        with pytest.raises(RuntimeError), uow.transaction():
            uow.counters.add("events", 3)
            raise RuntimeError("spoilt")
        assert uow.counters.load() == {}


def test_a_savepoint_undoes_only_its_own_writes(storage: Any) -> None:
    with storage.session() as uow, uow.transaction():
        uow.counters.add("events", 1)
        with pytest.raises(RuntimeError), uow.savepoint():
            uow.counters.add("events", 10)
            raise RuntimeError("one report fails")
        uow.counters.add("events", 2)
    with storage.session() as uow:
        assert uow.counters.load() == {"events": 3}


def test_the_session_is_exclusive(storage: Any) -> None:
    held = storage.acquire()
    try:
        assert storage.acquire(blocking=False) is None
    finally:
        storage.release()
    assert held is not None and storage.acquire(blocking=False) is not None
    storage.release()


def test_seen_records_each_id_once_per_host(storage: Any) -> None:
    with storage.session() as uow, uow.transaction():
        assert uow.seen.record("h1", "b1", ["e1", "e2"], T0) == (True, {"e1", "e2"})
        assert uow.seen.record("h1", "b1", ["e2", "e3"], T0) == (False, {"e3"})
        uow.seen.forget_events("h1", {"e3"})
        assert uow.seen.record("h2", "b1", ["e1"], T0) == (True, {"e1"})
        assert uow.seen.record("h1", "b2", ["e3"], T0 + 9) == (True, {"e3"})
    with storage.session() as uow, uow.transaction():
        assert uow.seen.prune(T0 + 1, limit=2) == 2
        assert uow.seen.prune(T0 + 1, limit=None) == 3  # 5 ids at T0 in all
        assert uow.seen.prune(T0 + 10, limit=None) == 2


def test_a_host_keeps_its_ttl_when_a_report_brings_none(storage: Any) -> None:
    with storage.session() as uow, uow.transaction():
        uow.hosts.upsert(report("b1"), T0, 1.5, 90.0)
        uow.hosts.upsert(report("b2"), T0 + 5, 1.0, None)
        assert uow.hosts.before("h1") == ("b2", 1.0, T0 + 5, None, None, False)  # no epoch/mark
        (row,) = uow.hosts.list()
        assert (row["first_seen"], row["heartbeat_ttl_s"], row["labels"]) == (
            T0,
            90.0,
            {"role": "server"},
        )
        assert uow.hosts.before("nobody") is None


def test_a_host_row_read_says_whether_its_heartbeat_incident_is_open(storage: Any) -> None:
    """before() reads the heartbeat key with the host row: an incident open on it (which
    a report resolves) or not (a healthy host's report then reads no key at all)."""
    ok = KeyRow("ok", None, None, None, None, "", False)
    with storage.session() as uow, uow.transaction():
        for host in ("no-key", "healthy", "open", "other-check-open"):
            uow.hosts.upsert(report("b", host=host), T0, 0.0, 60.0)
        uow.keys.save("healthy", wire.HEARTBEAT_CHECK, ok, T0)
        silent = ok._replace(state="critical", incident_id=7)
        uow.keys.save("open", wire.HEARTBEAT_CHECK, silent, T0)
        uow.keys.save("other-check-open", "disk.root", silent._replace(incident_id=8), T0)
        assert {
            host: uow.hosts.before(host).heartbeat_open  # type: ignore[union-attr]
            for host in ("no-key", "healthy", "open", "other-check-open")
        } == {"no-key": False, "healthy": False, "open": True, "other-check-open": False}
        uow.keys.save("open", wire.HEARTBEAT_CHECK, ok, T0 + 1)  # resolved
        assert uow.hosts.before("open").heartbeat_open is False  # type: ignore[union-attr]


def test_a_known_host_row_follows_renames_relabels_and_its_sequence(storage: Any) -> None:
    """Every report leaves the host row as a full upsert would, whether the host's name,
    labels and version are unchanged (the steady state's short update) or not."""
    epoch = "ab" * 16
    sequenced = dataclasses.replace(report("b1"), epoch=epoch, seq_first=1, seq_last=2)
    with storage.session() as uow, uow.transaction():
        uow.hosts.upsert(sequenced, T0, 1.5, 90.0)
        uow.hosts.upsert(
            dataclasses.replace(sequenced, batch_id="b2", seq_last=4), T0 + 5, 1.0, None
        )
        assert uow.hosts.before("h1") == ("b2", 1.0, T0 + 5, epoch, 4, False)
        # An older agent version without sequence fields keeps the stored epoch and mark.
        uow.hosts.upsert(report("b3"), T0 + 6, 0.5, None)
        assert uow.hosts.before("h1") == ("b3", 0.5, T0 + 6, epoch, 4, False)
        renamed = dataclasses.replace(
            report("b4"), hostname="renamed.example.test", labels={"role": "laptop"},
            agent_version="0.2.0",
        )  # fmt: skip
        uow.hosts.upsert(renamed, T0 + 7, 0.25, 60.0)
        assert uow.hosts.before("h1") == ("b4", 0.25, T0 + 7, epoch, 4, False)
        (row,) = uow.hosts.list()
        assert {k: row[k] for k in ("hostname", "labels", "agent_version")} == {
            "hostname": "renamed.example.test",
            "labels": {"role": "laptop"},
            "agent_version": "0.2.0",
        }
        assert (row["first_seen"], row["last_seen"], row["heartbeat_ttl_s"]) == (
            T0,
            T0 + 7,
            60.0,
        )
        assert uow.hosts.info("h1") == ("renamed.example.test", {"role": "laptop"})


def test_liveness_reads_the_hosts_due_and_those_with_a_heartbeat_to_recover(
    storage: Any,
) -> None:
    """Hosts whose deadline (last_seen + TTL) passed, and hosts whose heartbeat key is
    not plainly ok, each once; a host in time with an ok key, or without a TTL, is not
    read at all (the tick's cost follows what is due, not the fleet)."""
    heartbeat = wire.HEARTBEAT_CHECK
    ok = KeyRow("ok", None, None, None, None, "", False)
    with storage.session() as uow, uow.transaction():
        for host, seen, ttl in (
            ("late", T0, 60.0),  # deadline T0 + 60
            ("late-open", T0, 60.0),  # deadline passed and an incident already open
            ("fresh", T0 + 100, 60.0),
            ("no-ttl", T0, None),
            ("back", T0 + 100, 60.0),  # in time again, its incident still to resolve
            ("asleep", T0 + 100, 60.0),  # key unknown: recorded asleep
        ):
            uow.hosts.upsert(report("b", host=host), seen, 0.0, ttl)
        uow.keys.save("late-open", heartbeat, ok._replace(state="critical", incident_id=7), T0)
        uow.keys.save("fresh", heartbeat, ok, T0)
        uow.keys.save("back", heartbeat, ok._replace(incident_id=8), T0)
        uow.keys.save("asleep", heartbeat, ok._replace(state="unknown"), T0)
        uow.keys.save("fresh", "disk.root", ok._replace(state="critical"), T0)
        rows = uow.hosts.liveness(heartbeat, T0 + 61)
    got = {r.agent_id: (r.last_seen, r.heartbeat_ttl_s, r.key_state, r.incident_id) for r in rows}
    assert len(rows) == len(got)
    assert got == {
        "late": (T0, 60.0, None, None),
        "late-open": (T0, 60.0, "critical", 7),
        "back": (T0 + 100, 60.0, "ok", 8),
        "asleep": (T0 + 100, 60.0, "unknown", None),
    }
    assert rows[0].labels == {"role": "server"} and rows[0].hostname.endswith(".example.test")
    with storage.session() as uow, uow.transaction():
        # Only what changed: the silent hosts whose key records their silence (late-open's
        # incident; at T0 + 200 asleep's unknown too) are left out; a silent host without
        # a key stays, and so does a host in time whose key is still to recover.
        changed = uow.hosts.liveness(heartbeat, T0 + 61, noted=False)
        assert sorted(r.agent_id for r in changed) == ["asleep", "back", "late"]
        assert {r.agent_id for r in uow.hosts.liveness(heartbeat, T0 + 200, noted=False)} == {
            "late",
            "fresh",
            "back",
        }


def test_pending_keys_say_whether_their_host_is_silent(storage: Any) -> None:
    waiting = KeyRow("critical", "fix-it", None, None, 1.0, "bad", False)
    with storage.session() as uow, uow.transaction():
        uow.hosts.upsert(report("b", host="gone"), T0, 0.0, 60.0)  # deadline T0 + 60
        uow.hosts.upsert(report("b", host="here"), T0 + 100, 0.0, 60.0)
        uow.hosts.upsert(report("b", host="no-ttl"), T0, 0.0, None)
        for host in ("gone", "here", "no-ttl"):
            uow.keys.save(host, "disk.root", waiting, T0)
        got = {host: silent for host, _, _, silent in uow.keys.pending(T0 + 1, T0 + 61)}
    assert got == {"gone": True, "here": False, "no-ttl": False}


def test_remediation_stats_are_kept_as_runs_are_added(storage: Any) -> None:
    """Runs by (remediation, outcome) over every script version, and distinct hosts per
    remediation, counted as each run is stored rather than scanned at each request."""

    def run(n: int, name: str, outcome: str, sha: str = "a" * 64) -> wire.RemediationEvent:
        return wire.RemediationEvent(
            event_id=f"r{n}", seq=n, time=T0, remediation=name, check="disk.tmp",
            outcome=outcome, exit_code=0, started_at=T0, duration_s=1.0,  # type: ignore[arg-type]
            value_before=None, value_after=None, output="", output_truncated=False,
            script_sha256=sha, dry_run=False,
        )  # fmt: skip

    with storage.session() as uow, uow.transaction():
        uow.runs.add("h1", "h1", run(1, "fix", "fixed"), T0)
        uow.runs.add("h1", "h1", run(2, "fix", "fixed", "b" * 64), T0)
        uow.runs.add("h2", "h2", run(3, "fix", "error"), T0)
        uow.runs.add("h1", "h1", run(4, "other", "fixed"), T0)
        assert sorted(uow.runs.outcome_counts()) == [
            ("fix", "error", 1),
            ("fix", "fixed", 2),
            ("other", "fixed", 1),
        ]
        assert uow.runs.hosts_by_remediation() == {"fix": 2, "other": 1}


def test_histograms_add_up_and_a_family_is_known_once_replaced(storage: Any) -> None:
    with storage.session() as uow, uow.transaction():
        uow.histograms.add("f/1", "P1", [0, 2, 0], 3.5)
        assert uow.histograms.load("f/1") is None  # never filled from history
        uow.histograms.replace("f/1", {"P1": ([1, 0, 0], 0.5), "P2": ([0, 0, 4], 40.0)})
        uow.histograms.add("f/1", "P1", [0, 2, 0], 3.5)
        uow.histograms.add("f/2", "P1", [9], 9.0)
        assert uow.histograms.load("f/1") == {"P1": ({0: 1, 1: 2}, 4.0), "P2": ({2: 4}, 40.0)}
        uow.histograms.replace("f/1", {})
        assert uow.histograms.load("f/1") == {}


def test_restarts_load_the_histograms_kept_not_the_history(backend: BackendFactory) -> None:
    """Time to restore and remediation durations survive a restart from their summaries
    alone: with the history's rows gone, the next start shows the same histograms."""

    def fix(n: int, outcome: str, seconds: float) -> wire.RemediationEvent:
        return wire.RemediationEvent(
            event_id=f"r{n}", seq=n, time=T0, remediation="fix-it", check="disk.tmp",
            outcome=outcome, exit_code=0, started_at=T0, duration_s=seconds,  # type: ignore[arg-type]
            value_before=None, value_after=None, output="", output_truncated=False,
            script_sha256="0" * 64, dry_run=False,
        )  # fmt: skip

    def histograms(desk: Desk) -> Any:
        snap = desk.metrics_snapshot()
        return plain(
            {
                "restore": {k: [h.counts, h.total] for k, h in snap.time_to_restore.items()},
                "runs": {k: [h.counts, h.total] for k, h in snap.remediation_durations.items()},
            }
        )

    first = backend.desk(catalog=CATALOG, rules=RULES)
    try:
        first.ingest(report("b1", check(1)), T0)
        first.ingest(report("b2", check(2, state="ok"), fix(3, "fixed", 2.5)), T0 + 300)
        first.ingest(report("b3", fix(4, "error", 40.0), host="h2"), T0 + 301)
        before = histograms(first)
    finally:
        first.close()
    assert before["restore"] and before["runs"]["fix-it"][1] == 42.5
    again = backend.desk(catalog=CATALOG, rules=RULES)
    try:
        assert histograms(again) == before
    finally:
        again.close()
    backend.execute("DELETE FROM remediation_runs")
    backend.execute("UPDATE incidents SET resolved_at = opened_at + 99999")
    third = backend.desk(catalog=CATALOG, rules=RULES)
    try:
        assert histograms(third) == before
    finally:
        third.close()


def test_hosts_page_by_agent_id_in_byte_order(storage: Any) -> None:
    """Keyset pages of hosts: after a given agent_id, at most ``limit``, in byte order
    whatever the database's collation ("B" before "a")."""
    names = ["h-b", "h-a", "h-B", "h-c", "h-1"]
    with storage.session() as uow, uow.transaction():
        for name in names:
            uow.hosts.upsert(report("b", host=name), T0, 0.0, None)
        first = [h["agent_id"] for h in uow.hosts.list(limit=2)]
        rest = [h["agent_id"] for h in uow.hosts.list(after=first[-1], limit=10)]
        assert first + rest == sorted(names) == ["h-1", "h-B", "h-a", "h-b", "h-c"]
        assert [h["agent_id"] for h in uow.hosts.list(after="h-c", limit=10)] == []
        assert [h["agent_id"] for h in uow.hosts.list()] == sorted(names)


def test_versions_are_each_hosts_last_reported_agent_version(storage: Any) -> None:
    with storage.session() as uow, uow.transaction():
        assert uow.hosts.versions() == {}
        uow.hosts.upsert(report("b1", host="h1"), T0, 0.0, None)
        uow.hosts.upsert(report("b1", host="h2"), T0, 0.0, None)
        upgraded = dataclasses.replace(report("b2", host="h2"), agent_version="0.2.0")
        uow.hosts.upsert(upgraded, T0 + 1, 0.0, None)
        assert uow.hosts.versions() == {"h1": "0.1.0", "h2": "0.2.0"}


def test_the_fleet_read_gives_each_host_with_one_dict_per_label_set(storage: Any) -> None:
    """HostRepository.fleet (the rollout evidence read): the four fields of every host,
    hosts with equal labels sharing one dict."""
    with storage.session() as uow, uow.transaction():
        for n, host in enumerate(("h1", "h2", "h3")):
            uow.hosts.upsert(report("b1", host=host), T0 + n, 0.0, None)
        laptop = dataclasses.replace(report("b2", host="h3"), labels={"role": "laptop"})
        uow.hosts.upsert(laptop, T0 + 5, 0.0, None)
        fleet = {h["agent_id"]: h for h in uow.hosts.fleet()}
        assert fleet == {
            "h1": {"agent_id": "h1", "labels": {"role": "server"}, "last_seen": T0,
                   "agent_version": "0.1.0"},
            "h2": {"agent_id": "h2", "labels": {"role": "server"}, "last_seen": T0 + 1,
                   "agent_version": "0.1.0"},
            "h3": {"agent_id": "h3", "labels": {"role": "laptop"}, "last_seen": T0 + 5,
                   "agent_version": "0.1.0"},
        }  # fmt: skip
        assert fleet["h1"]["labels"] is fleet["h2"]["labels"]


def test_a_late_older_metrics_summary_does_not_replace_a_newer_one(storage: Any) -> None:
    with storage.session() as uow, uow.transaction():
        uow.metrics.put("h1", T0 + 60, T0 + 60, {"cpu": 2.0, "mem": 3.0})
        uow.metrics.put("h1", T0, T0 + 61, {"cpu": 1.0})
        assert uow.metrics.latest("h1") == {"cpu": 2.0, "mem": 3.0}
        assert uow.metrics.latest("h2") is None


def _name_lists(uow: Any) -> int:
    return int(uow._db.execute("SELECT COUNT(*) FROM metric_names").fetchone()[0])


def test_a_series_name_list_is_stored_once_for_every_host_that_sends_it(storage: Any) -> None:
    """Schema 14 / migration 10 (issue #17): rows name their list by id."""
    names = [f"series.{i}" for i in range(40)]
    with storage.session() as uow, uow.transaction():
        for n in range(5):
            uow.metrics.put(f"h{n}", T0, T0, {name: float(n) for name in names})
        uow.metrics.put("h9", T0, T0, {"cpu": 1.0})
        assert _name_lists(uow) == 2
        assert uow.metrics.latest("h3") == {name: 3.0 for name in names}
        assert uow.metrics.latest("h9") == {"cpu": 1.0}


@pytest.mark.parametrize("undo", ["transaction", "savepoint"])
def test_a_name_list_stored_then_rolled_back_is_stored_again(storage: Any, undo: str) -> None:
    """A list's id is forgotten with the rollback that removed its row: the next summary
    with that list stores it again rather than naming a row that is gone."""
    with storage.session() as uow:
        if undo == "transaction":
            with pytest.raises(RuntimeError), uow.transaction():
                uow.metrics.put("h1", T0, T0, {"cpu": 1.0, "mem": 2.0})
                raise RuntimeError("undo")
        else:
            with uow.transaction(), pytest.raises(RuntimeError), uow.savepoint():
                uow.metrics.put("h1", T0, T0, {"cpu": 1.0, "mem": 2.0})
                raise RuntimeError("undo")
        with uow.transaction():
            assert _name_lists(uow) == 0
            uow.metrics.put("h2", T0, T0, {"cpu": 3.0, "mem": 4.0})
            assert uow.metrics.latest("h2") == {"cpu": 3.0, "mem": 4.0}
            assert _name_lists(uow) == 1


def test_a_key_state_round_trips(storage: Any) -> None:
    key = KeyRow("critical", "fix-it", T0, None, 9.5, "bad", True)
    with storage.session() as uow, uow.transaction():
        uow.keys.save("h1", "disk.root", key, T0)
        assert uow.keys.load("h1", "disk.root") == key
        assert uow.keys.load("h1", "other") is None
        # No host row: "h1" as its name, and not silent (no deadline to pass).
        assert uow.keys.pending(T0 + 1, T0 + 1) == [("h1", "disk.root", "h1", False)]


def test_pending_keys_are_the_flapping_ones_and_the_overdue_waits(storage: Any) -> None:
    """A wait that began at or after ``awaiting_before`` is not due yet; a flapping key
    always is (the tick must see it stop flapping); a wait with no start is due."""
    waiting = KeyRow("critical", "fix-it", T0, None, 1.0, "bad", False)
    with storage.session() as uow, uow.transaction():
        uow.keys.save("h1", "young", waiting, T0)
        uow.keys.save("h1", "old", waiting._replace(awaiting_since=T0 - 700), T0)
        uow.keys.save("h1", "nostart", waiting._replace(awaiting_since=None), T0)
        uow.keys.save("h1", "flaps", KeyRow("ok", None, None, None, 0.0, "ok", True), T0)
        uow.keys.save("h1", "calm", KeyRow("ok", None, None, None, 0.0, "ok", False), T0)
        due = sorted(check for _, check, _, _ in uow.keys.pending(T0 - 600, T0))
        assert due == ["flaps", "nostart", "old"]
        assert sorted(check for _, check, _, _ in uow.keys.pending(T0 + 1, T0)) == [
            "flaps",
            "nostart",
            "old",
            "young",
        ]


def test_known_states_skip_unknown_results_oldest_first(storage: Any) -> None:
    states = ["critical", "unknown", "ok", "unknown", "critical"]
    with storage.session() as uow, uow.transaction():
        for n, state in enumerate(states):
            uow.results.add("h1", check(n, state=state), T0 + n)
        uow.results.add("h2", check(9, state="ok"), T0 + 9)
        assert uow.results.known_states("h1", "disk.root", 2) == [
            (T0 + 2, "ok"),
            (T0 + 4, "critical"),
        ]
        assert [s for _, s in uow.results.known_states("h1", "disk.root", 9)] == [
            "critical",
            "ok",
            "critical",
        ]
        assert uow.results.known_states("h1", "other", 9) == []


def test_an_incident_resolves_once_and_a_problem_links_once(storage: Any) -> None:
    row = {
        "host": "h1", "hostname": "h1", "check_id": "c", "state": "open", "priority": "P2",
        "opened_at": T0, "message": "m", "groups": ["servers"], "flapping": False,
    }  # fmt: skip
    with storage.session() as uow, uow.transaction():
        incident = uow.incidents.insert(row)
        problem = uow.problems.insert(
            {"kind": "fleet", "check_id": "c", "host": None, "hostname": None, "service": None,
             "impact": "low", "urgency": "low", "priority": "P3", "sla_due": None,
             "opened_at": T0, "summary": "s"}
        )  # fmt: skip
        assert uow.problems.link(problem, incident) and not uow.problems.link(problem, incident)
        assert uow.problems.open_fleet_of(incident) == [problem]
        assert uow.problems.has_open_incident(problem)
        assert uow.incidents.resolve(incident, T0 + 60, "ok") == ("P2", "c", T0)
        assert uow.incidents.resolve(incident, T0 + 90, "again") is None
        assert not uow.problems.has_open_incident(problem)
        assert uow.incidents.state_of(incident) == ("resolved", None)


def test_counts_and_links_answer_for_more_ids_than_one_statement_takes(storage: Any) -> None:
    """``open_by_host`` and a page of problems' links answer for lists longer than one
    statement takes (SQLite: 1000 ids), repeats included, naming every problem."""
    row = {
        "hostname": "ws", "check_id": "c", "state": "open", "priority": "P3",
        "opened_at": T0, "message": "m", "groups": [], "flapping": False,
    }  # fmt: skip
    problem = {
        "kind": "recurring", "check_id": "c", "hostname": "ws", "service": None, "impact": "low",
        "urgency": "low", "priority": "P3", "sla_due": None, "opened_at": T0, "summary": "s",
    }  # fmt: skip
    hosts = [f"h{n:04d}" for n in range(1201)]
    with storage.session() as uow, uow.transaction():
        incidents = [uow.incidents.insert({**row, "host": h}) for h in hosts[:1100]]
        uow.incidents.insert({**row, "host": "h0777"})
        uow.incidents.insert({**row, "host": hosts[1100], "state": "resolved"})
        counts = uow.incidents.open_by_host([*hosts, *hosts[:3]])
        problems = [uow.problems.insert({**problem, "host": h}) for h in hosts[:1001]]
        for n, p in enumerate(problems[:1000]):
            uow.problems.link(p, incidents[n])
            if n % 2:  # a second incident, of the next host
                uow.problems.link(p, incidents[n + 1])
        linked = uow.problems.incident_ids_of([*problems, problems[0]])
        spread = uow.problems.hosts_linked_of(problems)
    assert counts == {h: 1 for h in hosts[:1100]} | {"h0777": 2}
    assert linked[problems[1000]] == [] and spread[problems[1000]] == 0
    for n, p in enumerate(problems[:1000]):
        assert linked[p] == incidents[n : n + 1 + n % 2]
        assert spread[p] == 1 + n % 2
    assert len(linked) == len(spread) == 1001


def test_an_acknowledged_open_problem_is_listed_as_acknowledged(desk: Desk) -> None:
    """Problems have no flapping flag: the acknowledged filter must not need one."""
    for n, host in enumerate(("h1", "h2", "h3")):
        desk.ingest(report(f"b{n}", check(n, "dns.resolve"), host=host), T0 + n)
    (problem,) = desk.list_problems(kind="fleet")
    assert desk.acknowledge("problem", problem["id"], "alice", "", T0 + 10) == "acknowledged"
    (listed,) = desk.list_problems(state="acknowledged")
    assert (listed["id"], listed["state"]) == (problem["id"], "acknowledged")
    assert desk.list_problems(state="resolved") == []


def _members(protocol: type) -> dict[str, inspect.Signature]:
    names = {
        name
        for klass in protocol.__mro__
        if klass not in (object, typing.Protocol, typing.Generic)
        for name, value in vars(klass).items()
        if callable(value) and not name.startswith("_")
    }
    return {name: inspect.signature(getattr(protocol, name)) for name in names}


def _params(signature: inspect.Signature) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in signature.parameters.values()]


def test_the_backend_implements_every_protocol_member(storage: Any) -> None:
    """Every repository (and the unit of work and storage) has each method its Protocol
    declares, with the same parameters: a backend cannot quietly lag the interface."""
    uow = storage.acquire()
    try:
        pairs: list[tuple[Any, type]] = [(storage, protocols.Storage), (uow, protocols.UnitOfWork)]
        hints = typing.get_type_hints(protocols.UnitOfWork)
        pairs += [(getattr(uow, name), hints[name]) for name in hints]
        for obj, protocol in pairs:
            for name, signature in _members(protocol).items():
                method = getattr(obj, name, None)
                assert callable(method), f"{type(obj).__name__}.{name} is missing"
                want = _params(signature)[1:]  # without self
                assert _params(inspect.signature(method)) == want, f"{type(obj).__name__}.{name}"
    finally:
        storage.release()


def test_a_lone_storage_leads(storage: Any) -> None:
    """With one collector on the database, it runs the tick and the notifier."""
    assert storage.leads() and storage.leads()


def test_operators_are_stored_by_name_without_their_tokens(storage: Any) -> None:
    with storage.session() as uow, uow.transaction():
        assert uow.operators.add("bob", "viewer", "h1", T0)
        assert uow.operators.add("alice", "admin", "h2", T0)
        assert not uow.operators.add("bob", "admin", "h3", T0 + 1)
        assert uow.operators.set_token("bob", "h4", T0 + 2)
        assert not uow.operators.set_token("carol", "h5", T0 + 2)
        assert uow.operators.list() == [
            {"name": "alice", "role": "admin", "created_at": T0, "rotated_at": T0},
            {"name": "bob", "role": "viewer", "created_at": T0, "rotated_at": T0 + 2},
        ]
        assert sorted(uow.operators.credentials()) == [
            ("alice", "admin", "h2"),
            ("bob", "viewer", "h4"),
        ]
        assert uow.operators.remove("bob") and not uow.operators.remove("bob")


def test_audit_records_list_newest_first_and_count_by_action(storage: Any) -> None:
    base = {"actor": "alice", "target": "incident:1", "peer": "127.0.0.1"}
    with storage.session() as uow, uow.transaction():
        first = uow.audit.append({**base, "at": T0, "action": "incident.acknowledge"})
        second = uow.audit.append(
            {**base, "at": T0 + 1, "action": "operator.add", "detail": {"role": "admin"}}
        )
        assert second > first
        listed = uow.audit.list(limit=10, offset=0, action=None)
        assert [r["id"] for r in listed] == [second, first]
        assert listed[0] == {**base, "id": second, "at": T0 + 1, "action": "operator.add",
                             "detail": {"role": "admin"}}  # fmt: skip
        assert listed[1]["detail"] == {}
        assert [r["id"] for r in uow.audit.list(limit=10, offset=0, action="operator.add")] == [
            second
        ]
        assert uow.audit.list(limit=1, offset=1, action=None)[0]["id"] == first
        assert uow.audit.counts() == {"incident.acknowledge": 1, "operator.add": 1}
