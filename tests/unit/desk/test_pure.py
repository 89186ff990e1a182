"""The desk's pure decisions, on plain data: no storage, no clock."""

from __future__ import annotations

import pytest

from vigil.collector.desk.alertables import alertables, incident_alertable, problem_alertable
from vigil.collector.desk.apply import CLOCK_DRIFT_PER_S, clock_offset_estimate
from vigil.collector.desk.engine import Silence
from vigil.collector.storage.records import IncidentAlertRow, ProblemAlertRow, SilenceRow

T0 = 1_700_000_000.0


@pytest.mark.parametrize(
    ("previous", "sample", "received_at", "expected"),
    [
        (None, 2.5, T0, 2.5),
        ((2.0, T0), 2.5, T0 + 10, 2.0 + 10 * CLOCK_DRIFT_PER_S),
        ((2.0, T0), 1.0, T0 + 10, 1.0),
        ((2.0, T0), 7.5, T0 + 10, 7.5),
        ((2.0, T0), -3.5, T0 + 10, -3.5),
        ((2.0, T0 + 10), 2.5, T0, 2.0),
    ],
    ids=[
        "a new host takes its first sample",
        "a slower delivery only ages the estimate by the drift",
        "a faster delivery brings it down",
        "a clock stepped forward replaces it",
        "a clock stepped back replaces it",
        "a receive time before the last one ages nothing",
    ],
)
def test_clock_offset_estimate(
    previous: tuple[float, float] | None, sample: float, received_at: float, expected: float
) -> None:
    assert clock_offset_estimate(previous, sample, received_at) == pytest.approx(expected)


def incident(**fields: object) -> IncidentAlertRow:
    row: dict[str, object] = {
        "id": 7, "host": "a1", "hostname": "pc-1", "check": "disk.root", "state": "open",
        "priority": "P2", "service": "health", "groups": ["laptops"], "opened_at": T0,
        "resolved_at": None, "message": "disk full", "remediation": None,
        "remediation_outcome": None, "flapping": False, "notified_at": None,
        "resolve_notified_at": None, "resolution": None, "in_fleet_problem": False,
    }  # fmt: skip
    row.update(fields)
    return IncidentAlertRow(**row)  # type: ignore[arg-type]


def problem(**fields: object) -> ProblemAlertRow:
    row: dict[str, object] = {
        "id": 3, "kind": "fleet", "host": None, "hostname": None, "check": "dns.resolve",
        "state": "open", "priority": "P1", "service": None, "opened_at": T0,
        "resolved_at": None, "summary": "dns.resolve failing on 4 hosts at once",
        "notified_at": None, "resolve_notified_at": None, "resolution": None, "linked": 4,
    }  # fmt: skip
    row.update(fields)
    return ProblemAlertRow(**row)  # type: ignore[arg-type]


def test_an_open_incident_says_what_fails_where() -> None:
    got = incident_alertable(incident(), [], T0)
    assert got["ref"] == "incident:7" and got["active"] and not got["held"]
    assert got["summary"] == "disk.root failing on pc-1"
    assert (got["description"], got["remediation"]) == ("disk full", "none")


def test_notification_text_is_one_bounded_line_of_agent_text() -> None:
    """A hostname or message with newlines and escapes cannot forge lines in a chat or
    a mail; a script's long output does not become a page-long notification."""
    got = incident_alertable(
        incident(hostname="pc-1\nResolved: all fine\x1b[0m", message="line1\nline2" * 500,
                 remediation="fix\r\nnext"),
        [], T0,
    )  # fmt: skip
    assert got["summary"] == "disk.root failing on pc-1 Resolved: all fine [0m"
    assert "\n" not in got["description"] and len(got["description"]) == 1000
    assert got["remediation"] == "fix next: promised, no result"
    fleet = problem_alertable(problem(summary="dns\n\nfixed"), [], T0)
    assert (fleet["summary"], fleet["description"]) == (
        "dns fixed",
        "dns fixed; 4 linked incidents",
    )


@pytest.mark.parametrize(
    ("remediation", "outcome", "text"),
    [
        ("clean-temp", "not_fixed", "clean-temp: not_fixed"),
        ("clean-temp", None, "clean-temp: promised, no result"),
        (None, None, "none"),
    ],
)
def test_an_incident_names_its_remediation(
    remediation: str | None, outcome: str | None, text: str
) -> None:
    row = incident(remediation=remediation, remediation_outcome=outcome)
    assert incident_alertable(row, [], T0)["remediation"] == text


@pytest.mark.parametrize(
    ("fields", "silences", "held"),
    [
        ({"flapping": True}, [], True),
        ({"in_fleet_problem": True}, [], True),
        ({}, [Silence(1, "group", "laptops", T0 - 1, T0 + 1)], True),
        ({}, [Silence(1, "group", "laptops", T0 + 1, T0 + 2)], False),
        ({}, [Silence(1, "host", "pc-2", T0 - 1, T0 + 1)], False),
    ],
    ids=[
        "flapping",
        "claimed by a fleet problem",
        "silenced",
        "silence not yet active",
        "silence of another host",
    ],
)
def test_what_holds_an_incident_back(
    fields: dict[str, object], silences: list[Silence], held: bool
) -> None:
    assert incident_alertable(incident(**fields), silences, T0)["held"] is held


def test_a_fleet_problem_speaks_for_its_hosts() -> None:
    got = problem_alertable(problem(), [], T0)
    assert (got["ref"], got["kind"], got["host"], got["hostname"]) == (
        "problem:3",
        "fleet_problem",
        "fleet",
        "4 hosts",
    )
    assert got["description"] == "dns.resolve failing on 4 hosts at once; 4 linked incidents"


def test_a_resolved_and_notified_item_is_offered_for_its_resolution() -> None:
    got = incident_alertable(incident(state="resolved", notified_at=T0), [], T0 + 5)
    assert (got["active"], got["notified"], got["resolve_notified"]) == (False, True, False)


def test_alertables_list_incidents_then_problems_and_match_silences_by_check() -> None:
    silence = SilenceRow(1, "check", "dns.*", T0 - 1, T0 + 1, "dns work")
    got = alertables([incident()], [problem()], [silence], T0)
    assert [(a["ref"], a["held"]) for a in got] == [("incident:7", False), ("problem:3", True)]
