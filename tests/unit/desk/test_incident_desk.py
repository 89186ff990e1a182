"""The incident desk over real storage: catalog priorities, problems, liveness, silences,
acknowledgement and manual resolution, and the notifier's view.

Real SQLite files under ``tmp_path``; reports built from ``vigil.wire`` dataclasses; time
is passed in (no clock). The rules themselves are tested as pure functions in
``test_engine.py``; these tests check the desk applies them to what it has stored.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from tests.support.desk import CATALOG, RULES, open_desk
from vigil import wire
from vigil.collector.desk.commands import StateError
from vigil.collector.desk.engine import IncidentRules
from vigil.collector.desk.liveness import Budget

T0 = 1_700_000_000.0
DAY = 86400.0
MAIL = "mail.imap"
DISK = "disk.root"

_ids = itertools.count(1)


def check(name: str, state: str, remediation: str | None = None) -> wire.CheckEvent:
    n = next(_ids)
    return wire.CheckEvent(
        event_id=f"e{n}", seq=n, time=T0, check=name, state=state,  # type: ignore[arg-type]
        previous_state=None, value=1.0, message=f"{name} {state}", remediation=remediation,
    )  # fmt: skip


def heartbeat(ttl_s: float = 60.0) -> wire.CheckEvent:
    n = next(_ids)
    return wire.CheckEvent(
        event_id=f"e{n}", seq=n, time=T0, check=wire.HEARTBEAT_CHECK, state="ok",
        previous_state="ok", value=None, message="alive", ttl_s=ttl_s,
    )  # fmt: skip


def fixed(name: str, remediation: str = "fix-it", outcome: str = "fixed") -> wire.RemediationEvent:
    n = next(_ids)
    return wire.RemediationEvent(
        event_id=f"e{n}", seq=n, time=T0, remediation=remediation, check=name,
        outcome=outcome, exit_code=0, started_at=T0, duration_s=1.0,  # type: ignore[arg-type]
        value_before=9.0, value_after=1.0, output="", output_truncated=False,
        script_sha256="0" * 64, dry_run=False,
    )  # fmt: skip


def report(host: str, *events: wire.Event, role: str = "server") -> wire.Report:
    return wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id=host,
        hostname=f"{host}.example.test",
        labels={"role": role},
        batch_id=f"b{next(_ids)}",
        sent_at=T0,
        agent_version="0.1.0",
        events=events,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "collector.db"


@pytest.fixture
def store(db_path: Path):
    s = open_desk(db_path, catalog=CATALOG, rules=RULES)
    yield s
    s.close()


# --------------------------------------------------------------------------- priorities


@pytest.mark.parametrize(
    ("name", "role", "priority", "sla_s"),
    [
        (MAIL, "server", "P1", 4 * 3600),
        (MAIL, "laptop", "P2", 8 * 3600),
        (DISK, "laptop", "P4", 10 * DAY),
    ],
    ids=["mail on a server", "mail on a laptop", "disk on a laptop"],
)
def test_incidents_carry_the_catalog_priority_and_sla(store, name, role, priority, sla_s) -> None:
    (iid,) = store.ingest(report("h1", check(name, "critical"), role=role), T0).opened
    incident = store.get_incident(iid)
    assert incident["priority"] == priority
    assert incident["sla_due"] == T0 + sla_s
    assert incident["service"] == ("email" if name == MAIL else "health")


# --------------------------------------------------------------------------- recurrence


def test_a_key_fixed_three_times_in_a_week_opens_a_recurring_problem(store) -> None:
    """Every occurrence was prevented by a fix, yet the root cause is not fixed."""
    for day in range(3):
        store.ingest(report("h1", check(DISK, "critical", "fix-it"), fixed(DISK)), T0 + day * DAY)
    (problem,) = store.list_problems()
    assert problem["kind"] == "recurring"
    assert problem["state"] == "open"
    assert problem["host"] == "h1"
    assert len(problem["incidents"]) == 3
    assert store.list_incidents(state="open") == []


def test_two_occurrences_open_no_problem(store) -> None:
    for day in range(2):
        store.ingest(report("h1", check(DISK, "critical", "fix-it"), fixed(DISK)), T0 + day * DAY)
    assert store.list_problems() == []


def test_a_fourth_occurrence_joins_the_open_problem(store) -> None:
    for day in range(4):
        store.ingest(report("h1", check(DISK, "critical", "fix-it"), fixed(DISK)), T0 + day * DAY)
    (problem,) = store.list_problems()
    assert len(problem["incidents"]) == 4


# --------------------------------------------------------------------------- correlation


def fail_on(store, hosts: list[str], at: float, name: str = MAIL) -> list[int]:
    opened = []
    for h in hosts:
        opened += store.ingest(report(h, check(name, "critical")), at).opened
    return opened


def test_one_check_failing_on_three_hosts_is_one_fleet_problem(store) -> None:
    opened = fail_on(store, ["h1", "h2", "h3", "h4"], T0)
    (problem,) = store.list_problems()
    assert problem["kind"] == "fleet"
    assert problem["priority"] == "P1"
    assert problem["incidents"] == sorted(opened)


def test_failures_further_apart_than_the_window_are_not_a_fleet(store) -> None:
    fail_on(store, ["h1", "h2"], T0)
    fail_on(store, ["h3"], T0 + 301)
    store.ingest(report("h1", check(MAIL, "ok")), T0 + 302)
    assert store.list_problems(kind="fleet") == []


def test_the_fleet_problem_resolves_when_every_host_recovers(store) -> None:
    fail_on(store, ["h1", "h2", "h3"], T0)
    for h in ("h1", "h2"):
        store.ingest(report(h, check(MAIL, "ok")), T0 + 60)
    assert store.list_problems(state="open") != []
    store.ingest(report("h3", check(MAIL, "ok")), T0 + 61)
    (problem,) = store.list_problems()
    assert (problem["state"], problem["resolved_at"]) == ("resolved", T0 + 61)


def test_share_of_a_group_makes_a_fleet_problem(db_path: Path) -> None:
    rules = IncidentRules(fleet_min_hosts=0, fleet_min_share=0.5)
    store = open_desk(db_path, catalog=CATALOG, rules=rules)
    for h in ("h1", "h2", "h3", "h4"):
        store.ingest(report(h, heartbeat()), T0)
    fail_on(store, ["h1", "h2"], T0 + 1)
    assert [p["kind"] for p in store.list_problems()] == ["fleet"]
    store.close()


def self_heal_on(store, hosts: list[str], at: float, name: str = DISK) -> list[int]:
    """Each host reports the check failing, its fix promised, then the fix verified."""
    prevented = []
    for n, h in enumerate(hosts):
        failing = report(h, check(name, "critical", "fix-it"), fixed(name))
        prevented += store.ingest(failing, at + n).prevented
    return prevented


def test_a_fault_every_host_fixed_is_one_self_healed_problem(store) -> None:
    """Issue #15: eight prevented incidents of one check made no problem at all."""
    hosts = [f"h{n}" for n in range(1, 9)]
    prevented = self_heal_on(store, hosts, T0)
    (problem,) = store.list_problems()
    assert (problem["kind"], problem["state"], problem["host"]) == ("self_healed", "open", None)
    assert problem["hosts"] == 8
    assert problem["summary"].startswith("disk.root self-healed on 8 hosts")
    assert problem["sla_due"] is None
    assert problem["incidents"] == sorted(prevented)
    assert store.list_incidents(state="open") == []


def test_a_self_healed_problem_is_never_notified(store) -> None:
    self_heal_on(store, ["h1", "h2", "h3"], T0)
    assert store.list_problems(kind="self_healed") != []
    assert store.alertables(T0 + 3600) == []


def test_a_self_healed_problem_is_counted_by_kind(store) -> None:
    self_heal_on(store, ["h1", "h2", "h3"], T0)
    assert store.incident_aggregates(T0 + 10)["problems_open"] == {"self_healed": 1}


def test_a_self_healed_problem_stays_open_until_resolved_with_capa(store) -> None:
    self_heal_on(store, ["h1", "h2", "h3"], T0)
    store.tick(T0 + DAY)
    (problem,) = store.list_problems(state="open")
    notes = {"root_cause": "log rotation missing", "corrective_action": "rotated"}
    store.resolve_manually("problem", problem["id"], "alice", notes, T0 + DAY)
    (done,) = store.list_problems()
    assert (done["state"], done["root_cause"]) == ("resolved", "log rotation missing")


def test_later_self_healed_hosts_join_the_open_problem(store) -> None:
    self_heal_on(store, ["h1", "h2", "h3"], T0)
    self_heal_on(store, ["h4"], T0 + DAY)
    (problem,) = store.list_problems()
    assert problem["hosts"] == 4
    assert problem["summary"].startswith("disk.root self-healed on 4 hosts")


def test_self_healed_hosts_further_apart_than_the_window_are_not_a_problem(store) -> None:
    self_heal_on(store, ["h1", "h2"], T0)
    self_heal_on(store, ["h3"], T0 + 400)
    assert store.list_problems() == []


def test_two_unrelated_failures_on_four_hosts_are_not_a_fleet(db_path: Path) -> None:
    """Issue #15: ``min_share: 0.5`` alone made two failures on four hosts a fleet."""
    rules = dataclasses.replace(RULES, fleet_min_hosts=3, fleet_min_share=0.5)
    store = open_desk(db_path, catalog=CATALOG, rules=rules)
    for h in ("h1", "h2", "h3", "h4"):
        store.ingest(report(h, heartbeat()), T0)
    fail_on(store, ["h1", "h2"], T0 + 1)
    self_heal_on(store, ["h3", "h4"], T0 + 2, name=MAIL)
    assert store.list_problems() == []
    store.close()


def test_the_count_and_the_share_together_make_a_fleet(db_path: Path) -> None:
    rules = dataclasses.replace(RULES, fleet_min_hosts=3, fleet_min_share=0.5)
    store = open_desk(db_path, catalog=CATALOG, rules=rules)
    for h in ("h1", "h2", "h3", "h4", "h5", "h6"):
        store.ingest(report(h, heartbeat()), T0)
    fail_on(store, ["h1", "h2"], T0 + 1)
    assert store.list_problems() == []
    fail_on(store, ["h3"], T0 + 2)
    assert [p["kind"] for p in store.list_problems()] == ["fleet"]
    store.close()


# --------------------------------------------------------------------------- liveness


@pytest.mark.parametrize(
    ("role", "opened"),
    [("server", 1), ("laptop", 0)],
    ids=["a silent server opens an incident", "a sleeping laptop raises nothing"],
)
def test_silence_past_the_ttl(store, role, opened) -> None:
    store.ingest(report("h1", heartbeat(60), role=role), T0)
    assert store.tick(T0 + 90) == ()
    assert len(store.tick(T0 + 91)) == opened


def test_a_silent_host_resolves_when_it_reports_again(store) -> None:
    store.ingest(report("h1", heartbeat(60)), T0)
    (iid,) = store.tick(T0 + 100)
    store.ingest(report("h1", heartbeat(60)), T0 + 200)
    assert store.get_incident(iid)["state"] == "resolved"


def test_liveness_is_rebuilt_from_the_store_after_a_restart(db_path: Path) -> None:
    first = open_desk(db_path, catalog=CATALOG, rules=RULES)
    first.ingest(report("h1", heartbeat(60)), T0)
    first.close()
    second = open_desk(db_path, catalog=CATALOG, rules=RULES)
    (iid,) = second.tick(T0 + 100)
    assert second.get_incident(iid)["check"] == wire.HEARTBEAT_CHECK
    second.close()


def test_a_restart_judges_every_silent_host_again_then_only_what_changed(
    db_path: Path,
) -> None:
    """After its first tick a desk leaves out the silent hosts whose key records their
    silence (HostRepository.liveness noted=False); a desk with another catalog (a restart
    after the servers' group came to expect silence) judges them all again at once."""
    first = open_desk(db_path, catalog=CATALOG, rules=RULES)
    first.ingest(report("h1", heartbeat(60)), T0)
    (iid,) = first.tick(T0 + 100)
    first.close()
    asleep = dataclasses.replace(
        CATALOG,
        groups=tuple(dataclasses.replace(g, silence_expected=True) for g in CATALOG.groups),
    )
    second = open_desk(db_path, catalog=asleep, rules=RULES)
    try:
        second.tick(T0 + 200)
        entries = [e["text"] for e in second.get_incident(iid)["timeline"]]
        assert "silence expected for this host group" in entries
        # Now recorded asleep: later ticks read it no more and change nothing.
        with second.storage.session() as uow:
            assert uow.hosts.liveness(wire.HEARTBEAT_CHECK, T0 + 300, noted=False) == []
        assert second.tick(T0 + 300) == ()
    finally:
        second.close()


def test_no_per_check_incident_is_opened_for_a_silent_host(store) -> None:
    """A promised fix whose result cannot arrive (the host is silent) opens nothing."""
    store.ingest(report("h1", heartbeat(60), check(DISK, "critical", "fix-it"), role="laptop"), T0)
    assert store.tick(T0 + 700) == ()
    assert store.list_incidents() == []


def test_a_mass_outage_is_opened_a_bounded_step_at_a_time(store) -> None:
    """Seven hosts silent at once, at most three changes a step: three steps open them
    all, each step but the last saying it is not done, and no key of a silent host gets
    a per-check incident while its silence waits for a later step."""
    hosts = [f"h{n}" for n in range(7)]
    for host in hosts:
        store.ingest(report(host, heartbeat(60), check(DISK, "critical", "fix-it")), T0)
    steps = [store.tick_step(T0 + 700, 3) for _ in range(4)]
    assert [(len(opened), done) for opened, done in steps] == [
        (3, False),
        (3, False),
        (1, True),
        (0, True),
    ]
    incidents = store.list_incidents()
    assert sorted(i["host"] for i in incidents) == hosts
    assert {i["check"] for i in incidents} == {wire.HEARTBEAT_CHECK}


def test_a_tick_step_makes_no_new_change_once_its_seconds_are_spent() -> None:
    """The time bound of a step: at least one change, then none once the clock says the
    step ran its seconds (PostgreSQL took ~180 ms for a step of 50 changes)."""
    now = [0.0]
    budget = Budget(50, 0.03, clock=lambda: now[0])
    assert budget.take()  # the first change is always made, however slow the start
    now[0] = 0.02
    assert budget.take()
    now[0] = 0.031
    assert not budget.take()
    assert budget.exhausted
    now[0] = 0.0  # exhausted stays exhausted: the step is over
    assert not budget.take()
    late = Budget(None, 0.0, clock=lambda: 5.0)
    assert late.take() and not late.take()


def test_a_slow_step_still_makes_progress_and_the_tick_finishes(store) -> None:
    hosts = [f"h{n}" for n in range(4)]
    for host in hosts:
        store.ingest(report(host, heartbeat(60), check(DISK, "critical", "fix-it")), T0)
    # A bound no change fits in: each step makes exactly one, and the steps finish it.
    steps = [store.tick_step(T0 + 700, 50, 0.0) for _ in range(5)]
    assert [(len(opened), done) for opened, done in steps] == [
        (1, False),
        (1, False),
        (1, False),
        (1, True),
        (0, True),
    ]
    assert sorted(i["host"] for i in store.list_incidents()) == hosts


# --------------------------------------------------------------------------- flapping


def test_a_flapping_key_keeps_one_incident_open_and_held_back(store) -> None:
    """Four failures in eight changes: the first incident resolves before the flapping is
    detected (at the fourth change); from then on one incident stays open, held back."""
    for i, state in enumerate(["critical", "ok"] * 4):
        store.ingest(report("h1", check(DISK, state)), T0 + i)
    newest, oldest = store.list_incidents()
    assert (oldest["state"], newest["state"]) == ("resolved", "flapping")
    (alert,) = store.alertables(T0 + 10)
    assert alert["held"]


def test_a_held_incident_resolves_once_the_flapping_ends(store) -> None:
    for i, state in enumerate(["critical", "ok", "critical", "ok"]):
        store.ingest(report("h1", check(DISK, state)), T0 + i)
    assert store.list_incidents()[0]["state"] == "flapping"
    store.tick(T0 + 3601)  # the first change left the one-hour window: 3 changes < 4
    assert store.list_incidents()[0]["state"] == "resolved"


def test_a_check_the_agent_says_is_flapping_holds_its_incident_until_it_settles(store) -> None:
    """The agent damps a flapping check (it holds the worse state and goes quiet), so the
    collector cannot count the changes; the event's ``flapping`` flag says it instead."""
    (iid,) = store.ingest(report("h1", check(DISK, "critical")), T0).opened
    flapping = dataclasses.replace(check(DISK, "critical"), flapping=True)
    store.ingest(report("h1", flapping), T0 + 60)
    assert store.get_incident(iid)["state"] == "flapping"
    store.tick(T0 + 4000)  # long past the collector's own flap window: still flapping
    assert store.get_incident(iid)["state"] == "flapping"
    (alert,) = store.alertables(T0 + 4000)
    assert alert["held"]
    store.ingest(report("h1", check(DISK, "ok")), T0 + 4100)  # settled (flag cleared)
    assert store.get_incident(iid)["state"] == "resolved"


def test_unknown_readings_do_not_hold_a_recovered_incident_open(db_path: Path) -> None:
    """Issue #15: a needs_user incident, then ok -> unknown -> ok -> critical -> unknown
    -> ok within 40 s. Unknown is no state change, so the key does not flap and every
    incident resolves while the check is ok (it was held open for the flap window)."""
    store = open_desk(db_path, catalog=CATALOG, rules=dataclasses.replace(RULES, flap_changes=6))
    store.ingest(report("h1", check(DISK, "critical", "fix-it")), T0)
    (iid,) = store.ingest(report("h1", fixed(DISK, outcome="needs_user")), T0 + 1).opened
    states = ["ok", "unknown", "ok", "critical", "unknown", "ok"]
    for i, state in enumerate(states):
        store.ingest(report("h1", check(DISK, state)), T0 + 10 + 6 * i)
    incidents = store.list_incidents()
    assert iid in [i["id"] for i in incidents]
    assert [i["state"] for i in incidents] == ["resolved"] * len(incidents)
    store.close()


def test_changes_through_unknown_between_failures_still_flap(store) -> None:
    """Unknown is skipped, not a reset: critical/ok changes with unknown gaps still count."""
    for i, state in enumerate(["critical", "unknown", "ok", "unknown", "critical", "ok"]):
        store.ingest(report("h1", check(DISK, state)), T0 + i)
    assert store.list_incidents()[0]["state"] == "flapping"


# --------------------------------------------------------------------------- silences


def test_a_silence_holds_notification_but_not_recording(store) -> None:
    store.create_silence("service", "email", T0, T0 + 3600, "mail upgrade", "ops", T0)
    (iid,) = store.ingest(report("h1", check(MAIL, "critical")), T0 + 10).opened
    incident = store.get_incident(iid)
    assert incident["state"] == "open"
    assert incident["timeline"][-1]["text"] == "silenced by silence 1: mail upgrade; not notified"
    (alert,) = store.alertables(T0 + 100)
    assert alert["held"]
    (after,) = store.alertables(T0 + 3600)
    assert not after["held"]


def test_when_a_silence_ends_only_what_is_still_failing_can_notify(store) -> None:
    store.create_silence("check", "mail.*", T0, T0 + 3600, "", "ops", T0)
    store.ingest(report("h1", check(MAIL, "critical")), T0 + 10)
    store.ingest(report("h1", check(MAIL, "ok")), T0 + 20)
    (still,) = store.ingest(report("h2", check(MAIL, "critical")), T0 + 30).opened
    after = store.alertables(T0 + 3600)
    assert [(a["ref"], a["held"]) for a in after] == [(f"incident:{still}", False)]


def test_a_silence_can_be_ended_early_and_deleted(store) -> None:
    silence = store.create_silence("host", "h1", T0, T0 + 3600, "", "ops", T0)
    assert store.update_silence(silence["id"], ends_at=T0 + 5, comment=None)["ends_at"] == T0 + 5
    assert store.list_silences(active_at=T0 + 10) == []
    assert store.delete_silence(silence["id"])
    assert store.get_silence(silence["id"]) is None


# --------------------------------------------------------------------------- desk actions


def test_acknowledge_then_resolve_with_capa_notes(store) -> None:
    (iid,) = store.ingest(report("h1", check(MAIL, "critical")), T0).opened
    assert store.acknowledge("incident", iid, "alice", "looking", T0 + 5) == "acknowledged"
    assert store.get_incident(iid)["state"] == "acknowledged"
    notes = {"note": "restarted", "root_cause": "cert expired", "corrective_action": "renewed",
             "preventive_action": "monitor expiry"}  # fmt: skip
    store.resolve_manually("incident", iid, "alice", notes, T0 + 60)
    incident = store.get_incident(iid)
    assert incident["state"] == "resolved"
    assert incident["root_cause"] == "cert expired"
    texts = [e["text"] for e in incident["timeline"]]
    assert texts[0].startswith("opened:")
    assert "acknowledged by alice: looking" in texts
    assert texts[-1] == "resolved: resolved manually by alice: restarted"


def test_after_a_manual_resolve_the_next_failure_opens_a_new_incident(store) -> None:
    (first,) = store.ingest(report("h1", check(MAIL, "critical")), T0).opened
    store.resolve_manually("incident", first, "bob", {}, T0 + 1)
    store.ingest(report("h1", check(MAIL, "ok")), T0 + 2)
    (second,) = store.ingest(report("h1", check(MAIL, "critical")), T0 + 3).opened
    assert second != first


@pytest.mark.parametrize(
    ("setup", "error"),
    [("missing", LookupError), ("resolved", StateError)],
    ids=["unknown id", "resolved incident"],
)
def test_acknowledge_refuses(store, setup, error) -> None:
    iid = 999
    if setup == "resolved":
        (iid,) = store.ingest(report("h1", check(MAIL, "critical")), T0).opened
        store.ingest(report("h1", check(MAIL, "ok")), T0 + 1)
    with pytest.raises(error):
        store.acknowledge("incident", iid, "alice", "", T0 + 2)


def test_remediation_stats_count_runs_success_and_prevented(store) -> None:
    store.ingest(report("h1", check(DISK, "critical", "fix-it"), fixed(DISK)), T0)
    store.ingest(report("h2", check(DISK, "critical", "fix-it"), fixed(DISK, outcome="error")), T0)
    (stats,) = store.remediation_stats()
    assert stats == {
        "remediation": "fix-it",
        "runs": 2,
        "outcomes": {"fixed": 1, "error": 1},
        "success_rate": 0.5,
        "prevented": 1,
        "hosts": 2,
    }


# --------------------------------------------------------------------------- notifier view


def test_host_incidents_in_a_fleet_problem_are_held_and_the_problem_is_not(store) -> None:
    fail_on(store, ["h1", "h2", "h3"], T0)
    alerts = {a["ref"]: a for a in store.alertables(T0 + 60)}
    assert [r for r, a in alerts.items() if not a["held"]] == ["problem:1"]


def test_notification_marks_survive_and_resolution_is_offered_once(store) -> None:
    (iid,) = store.ingest(report("h1", check(MAIL, "critical")), T0).opened
    store.mark_notified([f"incident:{iid}"], [], "alertmanager", T0 + 30)
    store.ingest(report("h1", check(MAIL, "ok")), T0 + 60)
    (alert,) = store.alertables(T0 + 61)
    assert (alert["active"], alert["notified"], alert["resolve_notified"]) == (False, True, False)
    store.mark_notified([], [f"incident:{iid}"], "alertmanager", T0 + 62)
    assert store.alertables(T0 + 63) == []
    texts = [e["text"] for e in store.get_incident(iid)["timeline"]]
    assert "notified firing: alertmanager" in texts
    assert "notified resolved: alertmanager" in texts


def test_aggregates_for_metrics(store) -> None:
    fail_on(store, ["h1", "h2", "h3"], T0)
    figures = store.incident_aggregates(T0 + 5 * 3600)
    assert figures["problems_open"] == {"fleet": 1}
    assert figures["sla_breached"] == {"P1": 3}
