"""The :class:`~collector.storage.protocols.SurveyRepository` contract, run against every
backend (see ``backends.py``): what the satisfaction flow relies on."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import build_check_event, build_report
from tests.unit.storage.backends import BackendFactory
from vigil.collector.desk.satisfaction import SatisfactionPolicy
from vigil.collector.desk.service import Desk
from vigil.collector.desk.surveys import FIGURES_INTERVAL_S, SurveyUsed
from vigil.collector.storage.protocols import Storage

NOW = 1_700_000_000.0


@pytest.fixture
def storage(backend: BackendFactory) -> Iterator[Storage]:
    store = backend.open()
    yield store
    store.close()


def survey(incident_id: int = 1, host: str = "a1", **extra: Any) -> dict[str, Any]:
    row = {"incident_id": incident_id, "host": host, "hostname": f"ws-{host}"}
    row |= {"department": "sales", "service": "email", "check_id": "disk.free"}
    return row | {"title": "Disk full", "created_at": NOW, "expires_at": NOW + 100} | extra


def add(storage: Storage, *rows: dict[str, Any]) -> list[int]:
    with storage.session() as uow, uow.transaction():
        return [uow.surveys.add(r) for r in rows]


def test_a_new_survey_is_pending_and_undelivered_until_it_expires(storage: Storage) -> None:
    (sid,) = add(storage, survey())
    with storage.session() as uow:
        found = uow.surveys.get(sid)
        assert uow.surveys.get(sid + 100) is None
        assert [s["id"] for s in uow.surveys.undelivered("a1", NOW + 99, 5)] == [sid]
        assert uow.surveys.undelivered("a1", NOW + 100, 5) == []
        assert uow.surveys.undelivered("other", NOW, 5) == []
        assert uow.surveys.hosts_undelivered(NOW, 5) == {"a1"}
        assert uow.surveys.hosts_undelivered(NOW + 100, 5) == set()
    assert found is not None
    assert found["state"] == "pending" and found["offers"] == 0 and found["score"] is None
    assert found["department"] == "sales" and found["title"] == "Disk full"


def test_last_asked_is_the_newest_survey_of_the_host(storage: Storage) -> None:
    add(storage, survey(created_at=NOW), survey(2, created_at=NOW + 50), survey(3, host="b"))
    with storage.session() as uow:
        assert uow.surveys.last_asked("a1") == NOW + 50
        assert uow.surveys.last_asked("nobody") is None


ALICE, BOB = "a" * 64, "b" * 64  # opaque console user ids, as agents send them


def test_last_asked_user_is_the_newest_survey_of_the_person_on_any_host(
    storage: Storage,
) -> None:
    add(
        storage,
        survey(1, host="a1", console_user=ALICE, created_at=NOW),
        survey(2, host="b2", console_user=ALICE, created_at=NOW + 50),
        survey(3, host="a1", console_user=BOB, created_at=NOW + 90),
    )
    with storage.session() as uow:
        assert uow.surveys.last_asked_user(ALICE, "c3") == NOW + 50
        assert uow.surveys.last_asked_user(BOB, "c3") == NOW + 90
        assert uow.surveys.last_asked_user("c" * 64, "a1") is None  # a1's were others'
        assert uow.surveys.last_asked("a1") == NOW + 90  # per host: whoever it was for


def test_last_asked_user_counts_the_hosts_surveys_for_an_unknown_user(storage: Storage) -> None:
    """A survey queued without a user (an older agent, a responder's resolve) may have
    been the person's: it counts for its host, and only there."""
    add(storage, survey(1, host="a1", created_at=NOW + 10))
    with storage.session() as uow:
        assert uow.surveys.last_asked_user(ALICE, "a1") == NOW + 10
        assert uow.surveys.last_asked_user(ALICE, "b2") is None


def test_a_store_from_before_console_user_gains_it_and_keeps_its_surveys(
    backend: BackendFactory,
) -> None:
    """A database at SQLite schema 12 / PostgreSQL migration 8 (surveys without the
    ``console_user`` column) opens, gains the column, keeps its surveys (their user
    unknown) and takes surveys with a user."""
    backend.open().close()
    if backend.name == "sqlite":
        downgrade = [
            "DROP INDEX surveys_user",
            "ALTER TABLE surveys DROP COLUMN console_user",
            "PRAGMA user_version=12",
        ]
    else:
        downgrade = [
            "DROP INDEX surveys_user",
            "ALTER TABLE surveys DROP COLUMN console_user",
            "DELETE FROM vigil_schema WHERE version = 9",
        ]
    for statement in downgrade:
        backend.execute(statement)
    backend.execute(
        "INSERT INTO surveys (incident_id, host, hostname, department, service, check_id,"
        f" title, created_at, expires_at) VALUES (7, 'a1', 'ws-a1', 'sales', 'email',"
        f" 'disk.free', 'Disk full', {NOW}, {NOW + 100})"
    )
    upgraded = backend.open()
    try:
        (new,) = add(upgraded, survey(8, host="b2", console_user=ALICE, created_at=NOW + 5))
        with upgraded.session() as uow:
            (old,) = uow.surveys.of_incident(7)
            assert old["title"] == "Disk full" and old["state"] == "pending"
            assert uow.surveys.last_asked_user(BOB, "a1") == NOW  # unknown user, its host
            assert uow.surveys.last_asked_user(ALICE, "a1") == NOW + 5
            assert uow.surveys.last_asked_user(BOB, "b2") is None
            assert uow.surveys.get(new) is not None
    finally:
        upgraded.close()


def test_offers_are_counted_and_the_first_offer_time_kept(storage: Storage) -> None:
    (sid,) = add(storage, survey())
    with storage.session() as uow, uow.transaction():
        uow.surveys.mark_offered([sid], NOW + 1)
        uow.surveys.mark_offered([sid], NOW + 2)
        uow.surveys.mark_offered([], NOW + 3)
    with storage.session() as uow:
        found = uow.surveys.get(sid)
        still = uow.surveys.undelivered("a1", NOW + 5, 5)
    assert found is not None and found["state"] == "offered"
    assert found["offers"] == 2 and found["offered_at"] == NOW + 1
    assert [s["id"] for s in still] == [sid]  # offered but not confirmed: offered again
    with storage.session() as uow:
        assert uow.surveys.undelivered("a1", NOW + 5, 2) == []  # offered enough times
        assert uow.surveys.hosts_undelivered(NOW + 5, 2) == set()


def test_offers_are_marked_on_more_surveys_than_one_statement_takes(storage: Storage) -> None:
    """Every survey of a list longer than one statement takes (SQLite: 1000 ids) is
    offered once, an id repeated in the list included; surveys not in it stay pending."""
    ids = add(storage, *(survey(n) for n in range(1002)))
    with storage.session() as uow, uow.transaction():
        uow.surveys.mark_offered([*ids[:1001], ids[0]], NOW + 1)
    with storage.session() as uow:
        states = [uow.surveys.get(i) for i in ids]
    assert all(s is not None and (s["state"], s["offers"]) == ("offered", 1) for s in states[:1001])
    assert states[1001] is not None and states[1001]["state"] == "pending"


def test_only_the_surveys_host_may_record_its_delivery(storage: Storage) -> None:
    (sid,) = add(storage, survey())
    with storage.session() as uow, uow.transaction():
        assert not uow.surveys.mark_delivery(sid, "intruder", "shown", "", NOW + 1)
        assert uow.surveys.mark_delivery(sid, "a1", "unavailable", "no notifier", NOW + 2)
        assert not uow.surveys.mark_delivery(sid, "a1", "shown", "", NOW + 3)  # once
    with storage.session() as uow:
        found = uow.surveys.get(sid)
        assert uow.surveys.undelivered("a1", NOW + 5, 5) == []
        assert uow.surveys.state_counts() == {"unavailable": 1}
    assert found is not None and found["delivery_note"] == "no notifier"
    assert found["shown_at"] == NOW + 2


def test_a_survey_is_answered_once(storage: Storage) -> None:
    (sid,) = add(storage, survey())
    with storage.session() as uow, uow.transaction():
        assert uow.surveys.answer(sid, 9, "quick fix", NOW + 5)
        assert not uow.surveys.answer(sid, 0, "second try", NOW + 6)
        assert not uow.surveys.answer(sid + 100, 5, "", NOW + 6)
    with storage.session() as uow:
        found = uow.surveys.get(sid)
        (by_incident,) = uow.surveys.of_incident(1)
    assert found is not None and found["state"] == "answered"
    assert (found["score"], found["comment"], found["answered_at"]) == (9, "quick fix", NOW + 5)
    assert by_incident["id"] == sid


def test_score_counts_group_answers_and_honour_since(storage: Storage) -> None:
    ids = add(
        storage,
        survey(1),
        survey(2),
        survey(3, department="it", service=""),
        survey(4),  # never answered
    )
    with storage.session() as uow, uow.transaction():
        uow.surveys.answer(ids[0], 10, "", NOW + 1)
        uow.surveys.answer(ids[1], 10, "", NOW + 2)
        uow.surveys.answer(ids[2], 3, "slow", NOW + 3)
    with storage.session() as uow:
        every = uow.surveys.score_counts(None)
        recent = uow.surveys.score_counts(NOW + 3)
    assert sorted(every) == [("it", "", 3, 1), ("sales", "email", 10, 2)]
    assert recent == [("it", "", 3, 1)]


def test_prune_deletes_the_oldest_surveys_first_up_to_the_limit(storage: Storage) -> None:
    ids = add(storage, *(survey(n, created_at=NOW + n) for n in range(1, 6)))
    with storage.session() as uow, uow.transaction():
        assert uow.surveys.answer(ids[0], 10, "a comment", NOW + 10)
        assert uow.surveys.prune(NOW + 4, 2) == 2
        assert uow.surveys.prune(NOW + 4, 2) == 1
        assert uow.surveys.prune(NOW + 4, 2) == 0
    with storage.session() as uow:
        left = [s["incident_id"] for s in (uow.surveys.get(i) for i in ids) if s is not None]
        assert uow.surveys.score_counts(None) == []  # the answer went with its survey
    assert left == [4, 5]


def test_the_first_link_key_stored_wins(storage: Storage, backend: BackendFactory) -> None:
    with storage.session() as uow, uow.transaction():
        assert uow.surveys.link_key("first-key") == "first-key"
    other = backend.open()
    try:
        with other.session() as uow, uow.transaction():
            assert uow.surveys.link_key("second-key") == "first-key"
    finally:
        other.close()


def test_the_desk_queues_offers_and_takes_answers_on_every_backend(
    backend: BackendFactory,
) -> None:
    """The whole collector-side flow over the backend: a raised incident resolves in an
    ingest transaction, its survey is offered with a link two desks (two collectors on
    one database) both accept, answered once, and summed up."""
    policy = SatisfactionPolicy(enabled=True)
    first, second = backend.desk(satisfaction=policy), backend.desk(satisfaction=policy)
    try:
        first.ingest(build_report(build_check_event("disk.free", "critical")), NOW)
        ok = build_check_event("disk.free", "ok", previous_state="critical", seq=2)
        first.ingest(build_report(ok), NOW + 60)
        first.refresh_metrics_figures(NOW + 61)
        assert first.surveys.has_waiting("agent-0001")
        (offer,) = first.surveys.offer("agent-0001", NOW + 61, None)
        row = second.surveys.answer(offer["token"], 10, "great", NOW + 70)
        assert row["department"] == "test" and row["incident_id"] == offer["incident"]
        with pytest.raises(SurveyUsed):
            first.surveys.answer(offer["token"], 0, "", NOW + 71)
        summary = first.satisfaction_summary(department="test")
        assert summary["responses"] == 1 and summary["nps"] == 100.0
        assert second.surveys.figures().states == {"answered": 1}  # its own: at once
        first.refresh_metrics_figures(NOW + 72)
        assert first.surveys.figures().states == {"pending": 1}  # another's: not yet
        first.refresh_metrics_figures(NOW + 61 + FIGURES_INTERVAL_S)
        assert first.surveys.figures().states == {"answered": 1}
        assert not first.surveys.has_waiting("agent-0001")
    finally:
        first.close()
        second.close()


def test_the_desk_tick_deletes_surveys_past_their_retention(backend: BackendFactory) -> None:
    desk = backend.desk(satisfaction=SatisfactionPolicy(enabled=True, retention_s=30 * 86400.0))
    try:
        with desk.storage.session() as uow, uow.transaction():
            old, recent = (
                uow.surveys.add(survey(1)),
                uow.surveys.add(survey(2, created_at=NOW + 86400)),
            )
        desk.tick(NOW + 30 * 86400 + 1)
        with desk.storage.session() as uow:
            assert uow.surveys.get(old) is None and uow.surveys.get(recent) is not None
    finally:
        desk.close()


# ------------------------------------------------------------------ the limit per person

WEEK = 7 * 86400.0


def surveyed_after_resolve(desk: Desk, host: str, user: str | None, at: float) -> bool:
    """Raise and resolve an incident on ``host`` with ``user`` at its console (reports
    at ``at`` and ``at + 60``); whether a survey was queued for it."""
    raised = build_report(build_check_event("disk.free", "critical"), agent_id=host)
    desk.ingest(dataclasses.replace(raised, console_user=user), at)
    ok = build_check_event("disk.free", "ok", previous_state="critical", seq=2)
    recovered = build_report(ok, agent_id=host)
    (incident,) = desk.ingest(dataclasses.replace(recovered, console_user=user), at + 60).resolved
    return bool(desk.surveys.of_incident(incident))


@pytest.fixture
def weekly(backend: BackendFactory) -> Iterator[Desk]:
    desk = backend.desk(satisfaction=SatisfactionPolicy(enabled=True, rate_limit_s=WEEK))
    yield desk
    desk.close()


def test_a_person_asked_on_one_host_is_not_asked_on_another_within_the_limit(
    weekly: Desk,
) -> None:
    assert surveyed_after_resolve(weekly, "laptop", ALICE, NOW)
    assert not surveyed_after_resolve(weekly, "desktop", ALICE, NOW + 86400)
    assert surveyed_after_resolve(weekly, "desktop", ALICE, NOW + WEEK + 60)


def test_two_people_sharing_a_host_are_each_asked(weekly: Desk) -> None:
    assert surveyed_after_resolve(weekly, "kiosk", ALICE, NOW)
    assert surveyed_after_resolve(weekly, "kiosk", BOB, NOW + 3600)
    assert not surveyed_after_resolve(weekly, "kiosk", ALICE, NOW + 7200)


def test_without_a_console_user_the_limit_is_per_host(weekly: Desk) -> None:
    """An older agent, or nobody logged on: one survey per host per week, whoever had
    one elsewhere."""
    assert surveyed_after_resolve(weekly, "laptop", ALICE, NOW)
    assert surveyed_after_resolve(weekly, "old-agent", None, NOW + 60)
    assert not surveyed_after_resolve(weekly, "old-agent", None, NOW + 3600)
    assert not surveyed_after_resolve(weekly, "laptop", None, NOW + 7200)  # Alice's host


def test_a_survey_for_an_unknown_user_holds_back_the_next_person_on_that_host(
    weekly: Desk,
) -> None:
    """An agent upgraded mid-week: the survey its older self's report queued may have
    been for whoever is at the console now, so nobody there is asked within the week."""
    assert surveyed_after_resolve(weekly, "laptop", None, NOW)
    assert not surveyed_after_resolve(weekly, "laptop", ALICE, NOW + 3600)
    assert surveyed_after_resolve(weekly, "desktop", ALICE, NOW + 7200)
