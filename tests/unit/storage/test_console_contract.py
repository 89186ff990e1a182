"""The console's storage contract (``ConsoleRepository``), run once per backend: the
queue's order and filters, the host search, the quality figures, a problem's CAPA record
and linking — through the desk, as the console uses them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.desk import CATALOG, RULES
from tests.unit.storage.backends import BackendFactory
from vigil import wire
from vigil.collector.desk import console
from vigil.collector.desk.commands import StateError
from vigil.collector.desk.service import Desk
from vigil.collector.identity.audit import AuditEntry

T0 = 1_700_000_000.0
_n = iter(range(1, 1_000_000))


def _report(
    host: str, check: str, state: str, labels: dict[str, str], *, os: str = ""
) -> wire.Report:
    n = next(_n)
    event = wire.CheckEvent(
        event_id=f"e{n}", seq=n, time=T0, check=check, state=state,  # type: ignore[arg-type]
        previous_state=None, value=1.0, message=f"{check} {state}",
    )  # fmt: skip
    return wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id=host,
        hostname=f"{host}.example.test",
        labels={**labels, **({"os": os} if os else {})},
        batch_id=f"b{n}",
        sent_at=T0,
        agent_version="0.2.0" if host.endswith("9") else "0.1.0",
        events=(event,),
    )


SERVER = {"role": "server", "department": "it"}
LAPTOP = {"role": "laptop", "department": "sales"}


@pytest.fixture
def desk(backend: BackendFactory) -> Iterator[Desk]:
    d = backend.desk(catalog=CATALOG, rules=RULES)
    yield d
    d.close()


def _audit(action: str) -> AuditEntry:
    return AuditEntry("tester", action, "x", "local", T0)


def _fill(desk: Desk) -> None:
    # Priorities (tests/support/desk.py): mail on a laptop P2, disk on a server P3,
    # disk on a laptop P4, mail on a server P1. Opened in the reverse of queue order.
    desk.ingest(_report("lap1", "disk.free", "critical", LAPTOP, os="macos"), T0)
    desk.ingest(_report("srv1", "disk.free", "critical", SERVER, os="debian"), T0 + 1)
    desk.ingest(_report("lap2", "mail.imap", "critical", LAPTOP, os="windows"), T0 + 2)
    desk.ingest(_report("srv9", "mail.imap", "critical", SERVER, os="debian"), T0 + 3)


def test_the_queue_is_ordered_by_priority_then_sla_deadline(desk: Desk) -> None:
    _fill(desk)
    rows, total = console.queue(desk.storage, filters={}, state=None, limit=10, offset=0)
    assert total == 4
    assert [(r["priority"], r["host"]) for r in rows] == [
        ("P1", "srv9"), ("P2", "lap2"), ("P3", "srv1"), ("P4", "lap1"),
    ]  # fmt: skip
    assert rows[0]["department"] == "it" and rows[0]["state"] == "open"


def test_the_queue_pages_and_filters(desk: Desk) -> None:
    _fill(desk)

    def hosts(**kw: object) -> list[str]:
        filters = {k: v for k, v in kw.items() if k in ("department", "service", "host")}
        rows, _ = console.queue(
            desk.storage, filters=filters, state=kw.get("state"),  # type: ignore[arg-type]
            limit=int(kw.get("limit", 10)), offset=int(kw.get("offset", 0)),  # type: ignore[call-overload]
        )  # fmt: skip
        return [r["host"] for r in rows]

    assert hosts(limit=2, offset=1) == ["lap2", "srv1"]
    assert hosts(department="sales") == ["lap2", "lap1"]
    assert hosts(service="email") == ["srv9", "lap2"]
    assert hosts(host="srv1.example.test") == ["srv1"]
    desk.acknowledge("incident", 1, "tester", "", T0 + 10)
    assert hosts(state="acknowledged") == ["lap1"]
    assert hosts(state="unacknowledged") == ["srv9", "lap2", "srv1"]
    with pytest.raises(ValueError, match="state"):
        hosts(state="closed")


def test_host_search_by_prefix_labels_version_last_seen_and_health(desk: Desk) -> None:
    _fill(desk)
    desk.ingest(_report("lap3", "cpu.busy", "ok", LAPTOP, os="macos"), T0 + 100)

    def names(**filters: object) -> list[str]:
        rows = console.search_hosts(desk.storage, filters=filters, limit=10, offset=0)
        return [r["agent_id"] for r in rows]

    assert names() == ["lap1", "lap2", "lap3", "srv1", "srv9"]
    assert names(hostname="lap") == ["lap1", "lap2", "lap3"]
    assert names(department="it") == ["srv1", "srv9"]
    assert names(os="macos") == ["lap1", "lap3"]
    assert names(agent_version="0.2.0") == ["srv9"]
    assert names(seen_after=T0 + 50) == ["lap3"]
    assert names(seen_before=T0 + 2) == ["lap1", "srv1"]
    assert names(health="healthy") == ["lap3"]
    assert names(health="failing", department="sales") == ["lap1", "lap2"]
    [lap1] = console.search_hosts(desk.storage, filters={"hostname": "lap1"}, limit=1, offset=0)
    assert lap1["open_incidents"] == 1 and lap1["labels"]["os"] == "macos"
    assert console.host_page(desk.storage, "nope") is None
    page = console.host_page(desk.storage, "lap1")
    assert page is not None and [i["check"] for i in page["incidents"]] == ["disk.free"]


def test_quality_counts_prevented_raised_restore_times_and_sla(desk: Desk) -> None:
    _fill(desk)
    # Restores of 10, 20, 30 and 40 minutes: all within their SLA (4 h and more).
    for incident_id, minutes in ((1, 10), (2, 20), (3, 30), (4, 40)):
        desk.resolve_manually("incident", incident_id, "t", {}, T0 + incident_id - 1 + minutes * 60)
    q = console.quality(desk.storage, T0 - 1, T0 + 10_000)
    by_dept = {r.name: r for r in q.by_department}
    assert set(by_dept) == {"it", "sales"}
    sales = by_dept["sales"]
    assert (sales.raised, sales.prevented, sales.resolved) == (2, 0, 2)
    # Nearest rank of (600, 1800): the median is the first; buckets of a minute here.
    assert sales.restore_median_s == pytest.approx(600.0)
    assert sales.restore_p90_s == pytest.approx(600.0)
    assert sales.sla_attainment == 1.0
    by_service = {r.name: r for r in q.by_service}
    assert by_service["email"].resolved == 2
    assert by_service["email"].restore_median_s == pytest.approx(1800.0)
    assert by_service["health"].raised == 2
    by_service_p90 = by_service["email"].restore_p90_s
    assert by_service_p90 == pytest.approx(1800.0)
    later = console.quality(desk.storage, T0 + 2 * 86400, T0 + 10_000)  # from 2 days on
    assert later.by_service == () and later.by_department == ()


def test_a_problem_record_is_saved_linked_and_closed_only_when_verified(desk: Desk) -> None:
    # Three openings two hours apart (not flapping): a recurring problem
    # (RULES.recurrence_count).
    for n in range(3):
        desk.ingest(_report("srv1", "disk.free", "critical", SERVER), T0 + 7200 * n)
        desk.ingest(_report("srv1", "disk.free", "ok", SERVER), T0 + 7200 * n + 5)
    desk.ingest(_report("lap1", "mail.imap", "critical", LAPTOP), T0 + 20_000)
    [problem] = desk.list_problems(state=None, kind=None, check=None, limit=5, offset=0)
    pid = problem["id"]
    mail = desk.list_incidents(
        state="open", host="lap1", check=None, service=None, priority=None, limit=1, offset=0
    )[0]["id"]
    with pytest.raises(LookupError, match="problem"):
        console.link_incident(desk.storage, mail, 999, "t", T0, _audit("incident.link"))
    assert console.link_incident(desk.storage, mail, pid, "t", T0, _audit("incident.link"))
    assert not console.link_incident(desk.storage, mail, pid, "t", T0, _audit("incident.link"))
    assert mail in desk.get_problem(pid)["incidents"]  # type: ignore[index]
    with pytest.raises(StateError, match="verification"):
        console.check_closable(desk.storage, pid)
    fields = {
        "root_cause": "rc", "corrective_action": "ca", "preventive_action": "pa",
        "verification": "checked", "known_error": "ke", "capa_owner": "me",
        "capa_due": T0 + 86400.0,
    }  # fmt: skip
    changed = console.save_problem_record(
        desk.storage, pid, fields, "t", T0, _audit("problem.capa")
    )
    assert set(changed) == set(fields)
    assert console.save_problem_record(desk.storage, pid, fields, "t", T0, _audit("x")) == []
    record = console.problem_record(desk.storage, pid)
    assert record == {
        "known_error": "ke", "verification": "checked", "capa_owner": "me",
        "capa_due": T0 + 86400.0,
    }  # fmt: skip
    assert desk.get_problem(pid)["root_cause"] == "rc"  # type: ignore[index]
    console.check_closable(desk.storage, pid)  # verified: no error
    with desk.storage.session() as uow:
        actions = [a["action"] for a in uow.audit.list(limit=10, offset=0, action=None)]
    assert sorted(actions) == ["incident.link", "problem.capa"], "one record per write"


@pytest.mark.parametrize(
    ("seconds", "low"),
    [(59.0, 0.0), (61.0, 60.0), (7199.0, 7140.0), (7200.0, 7200.0), (90_500.0, 90_000.0),
     (172_800.0, 172_800.0), (200_000.0, 172_800.0)],
)  # fmt: skip
def test_time_to_restore_is_read_to_the_minute_hour_or_day(
    desk: Desk, seconds: float, low: float
) -> None:
    """Below 2 hours to the minute, below 2 days to the hour, beyond to the day: the
    storage's buckets and the desk's bounds agree."""
    desk.ingest(_report("lap1", "disk.free", "critical", LAPTOP), T0)
    desk.resolve_manually("incident", 1, "t", {}, T0 + seconds)
    [row] = console.quality(desk.storage, T0 - 1, T0 + seconds).by_service
    assert row.restore_median_s == low and row.restore_p90_s == low


def test_an_incident_carries_its_hosts_department(desk: Desk) -> None:
    _fill(desk)
    rows, _ = console.queue(desk.storage, filters={}, state=None, limit=10, offset=0)
    assert {r["host"]: r["department"] for r in rows} == {
        "srv9": "it", "lap2": "sales", "srv1": "it", "lap1": "sales",
    }  # fmt: skip


def test_the_migrations_backfill_gives_the_rollup_the_desk_keeps(desk: Desk) -> None:
    """The rollup kept as incidents are recorded and resolved equals the one the
    migration computes from the stored incidents (for databases older than it)."""
    from vigil.collector.storage.sqlite.console_repo import rollup_backfill_sql

    _fill(desk)
    desk.ingest(_report("lap9", "disk.free", "critical", LAPTOP), T0 + 5)
    for incident_id, minutes in ((1, 10), (3, 300), (4, 4000)):
        desk.resolve_manually("incident", incident_id, "t", {}, T0 + minutes * 60)
    kept = console.quality(desk.storage, T0 - 86400, T0)
    with desk.storage.session() as uow, uow.transaction():
        repo = uow.console
        repo._db.execute("DELETE FROM incident_rollup")  # type: ignore[attr-defined]
        repo._db.execute(rollup_backfill_sql(repo.dialect))  # type: ignore[attr-defined]
    assert console.quality(desk.storage, T0 - 86400, T0) == kept
    assert sum(r.raised for r in kept.by_service) == 5
    assert sum(r.resolved for r in kept.by_service) == 3
