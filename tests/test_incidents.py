"""The incident engine, specified as sequences of events for one (host, check) key.

Each table row feeds a sequence of check results, remediation results and ticks through
the engine, carrying out its actions the way the store does (a fake that numbers opened
incidents), and names the actions it expects in order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from agent import wire
from collector import incidents
from collector.incidents import (
    Action,
    AddTimeline,
    KeyState,
    OpenIncident,
    RecordPrevented,
    ResolveIncident,
)

CHECK = "disk.free_percent[/]"
FIX = "clean-temp"
WAIT = 600.0


def check(state: str, remediation: str | None = None, *, name: str = CHECK) -> wire.CheckEvent:
    return wire.CheckEvent(
        event_id=f"c-{state}",
        seq=0,
        time=0.0,
        check=name,
        state=state,  # type: ignore[arg-type]
        previous_state=None,
        value=3.5,
        message=f"disk {state}",
        remediation=remediation,
    )


def run(outcome: str, remediation: str = FIX, *, name: str | None = CHECK) -> wire.RemediationEvent:
    return wire.RemediationEvent(
        event_id=f"r-{outcome}",
        seq=0,
        time=0.0,
        remediation=remediation,
        check=name,
        outcome=outcome,  # type: ignore[arg-type]
        exit_code=0,
        started_at=0.0,
        duration_s=1.0,
        value_before=3.5,
        value_after=12.0,
        output="",
        output_truncated=False,
        script_sha256="0" * 64,
        dry_run=outcome == "dry_run",
    )


@dataclass(frozen=True)
class Tick:
    """A scheduler tick; the step's time is the tick time."""


Step = tuple[float, wire.CheckEvent | wire.RemediationEvent | Tick]


def feed(steps: list[Step], state: KeyState | None = None) -> tuple[KeyState, list[Action]]:
    """Run the steps, assigning incident ids 1, 2, ... to OpenIncident like the store."""
    state = state or KeyState()
    seen: list[Action] = []
    next_id = 1
    for now, step in steps:
        if isinstance(step, Tick):
            state, actions = incidents.on_tick(state, now, WAIT)
        elif isinstance(step, wire.CheckEvent):
            state, actions = incidents.on_check(state, step, now)
        else:
            state, actions = incidents.on_remediation(state, step, now)
        for action in actions:
            if isinstance(action, OpenIncident):
                state = replace(state, incident_id=next_id)
                next_id += 1
        seen.extend(actions)
    return state, seen


_NAMES = {
    OpenIncident: "open",
    ResolveIncident: "resolve",
    RecordPrevented: "prevented",
    AddTimeline: "timeline",
}


def kinds(actions: list[Action]) -> list[str]:
    return [_NAMES[type(a)] for a in actions]


SEQUENCES: list[tuple[str, list[Step], list[str]]] = [
    ("critical without remediation opens", [(0, check("critical"))], ["open"]),
    ("critical with remediation waits", [(0, check("critical", FIX))], []),
    (
        "fix verified is prevented, never opened",
        [(0, check("critical", FIX)), (5, run("fixed"))],
        ["prevented"],
    ),
    (
        "fix verified then recovery raises nothing more",
        [(0, check("critical", FIX)), (5, run("fixed")), (9, check("ok"))],
        ["prevented"],
    ),
    *[
        (
            f"{outcome} fix opens",
            [(0, check("critical", FIX)), (5, run(outcome))],
            ["open"],
        )
        for outcome in ("not_fixed", "error", "timeout", "skipped", "dry_run")
    ],
    ("recovery resolves", [(0, check("critical")), (9, check("ok"))], ["open", "resolve"]),
    (
        "failed fix then recovery resolves",
        [(0, check("critical", FIX)), (5, run("not_fixed")), (9, check("ok"))],
        ["open", "resolve"],
    ),
    ("ok without incident does nothing", [(0, check("ok"))], []),
    ("warning never opens", [(0, check("warning"))], []),
    ("unknown never opens", [(0, check("unknown"))], []),
    (
        "warning keeps the incident open with a note",
        [(0, check("critical")), (5, check("warning"))],
        ["open", "timeline"],
    ),
    ("critical twice opens once", [(0, check("critical")), (5, check("critical"))], ["open"]),
    (
        "tick within the wait does nothing",
        [(0, check("critical", FIX)), (WAIT, Tick())],
        [],
    ),
    (
        "tick after the wait opens",
        [(0, check("critical", FIX)), (WAIT + 1, Tick())],
        ["open"],
    ),
    (
        "tick after the wait opens only once",
        [(0, check("critical", FIX)), (WAIT + 1, Tick()), (WAIT + 2, Tick())],
        ["open"],
    ),
    (
        "late fix after the wait is noted on the incident",
        [(0, check("critical", FIX)), (WAIT + 1, Tick()), (WAIT + 5, run("fixed"))],
        ["open", "timeline"],
    ),
    (
        "tick after recovery does nothing",
        [(0, check("critical", FIX)), (5, check("ok")), (WAIT + 1, Tick())],
        [],
    ),
    (
        "tick after a downgrade to warning does nothing",
        [(0, check("critical", FIX)), (5, check("warning")), (WAIT + 1, Tick())],
        [],
    ),
    (
        "failed fix while warning does nothing",
        [(0, check("critical", FIX)), (5, check("warning")), (6, run("not_fixed"))],
        [],
    ),
    (
        "fix of an open incident is a note, not prevented",
        [(0, check("critical")), (5, run("fixed"))],
        ["open", "timeline"],
    ),
    (
        "promise while open is a note, its failure another",
        [(0, check("critical")), (1, check("critical", FIX)), (5, run("error"))],
        ["open", "timeline", "timeline"],
    ),
    (
        "repeated promise while open is noted once",
        [(0, check("critical")), (1, check("critical", FIX)), (2, check("critical", FIX))],
        ["open", "timeline"],
    ),
    (
        "fixed run on a healthy check does nothing",
        [(0, check("ok")), (5, run("fixed"))],
        [],
    ),
    (
        "failed run on a healthy check does nothing",
        [(0, check("ok")), (5, run("not_fixed"))],
        [],
    ),
    (
        "heartbeat critical never opens",
        [(0, check("critical", name=wire.HEARTBEAT_CHECK))],
        [],
    ),
    (
        "reopens after a resolved incident fails again",
        [(0, check("critical")), (5, check("ok")), (9, check("critical"))],
        ["open", "resolve", "open"],
    ),
]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [(steps, expected) for _, steps, expected in SEQUENCES],
    ids=[name for name, _, _ in SEQUENCES],
)
def test_sequence_produces_actions(steps: list[Step], expected: list[str]) -> None:
    _, actions = feed(steps)
    assert kinds(actions) == expected


FINAL_STATES: list[tuple[str, list[Step], KeyState]] = [
    (
        "promise is remembered with its start time",
        [(7, check("critical", FIX))],
        KeyState(
            check_state="critical",
            awaiting=FIX,
            awaiting_since=7,
            incident_id=None,
            value=3.5,
            message="disk critical",
        ),
    ),
    (
        "repeated promise keeps the first start time",
        [(7, check("critical", FIX)), (9, check("critical", FIX))],
        KeyState(
            check_state="critical",
            awaiting=FIX,
            awaiting_since=7,
            incident_id=None,
            value=3.5,
            message="disk critical",
        ),
    ),
    (
        "fix result clears the promise",
        [(7, check("critical", FIX)), (9, run("fixed"))],
        KeyState(
            check_state="critical",
            awaiting=None,
            awaiting_since=None,
            incident_id=None,
            value=3.5,
            message="disk critical",
        ),
    ),
    (
        "another remediation's result keeps the promise",
        [(7, check("critical", FIX)), (9, run("fixed", "restart-service"))],
        KeyState(
            check_state="critical",
            awaiting=FIX,
            awaiting_since=7,
            incident_id=None,
            value=3.5,
            message="disk critical",
        ),
    ),
    (
        "recovery clears the promise and the incident",
        [(0, check("critical")), (1, check("critical", FIX)), (9, check("ok"))],
        KeyState(
            check_state="ok",
            awaiting=None,
            awaiting_since=None,
            incident_id=None,
            value=3.5,
            message="disk ok",
        ),
    ),
    (
        "expired promise is cleared",
        [(0, check("critical", FIX)), (WAIT + 1, Tick())],
        KeyState(
            check_state="critical",
            awaiting=None,
            awaiting_since=None,
            incident_id=1,
            value=3.5,
            message="disk critical",
        ),
    ),
]


@pytest.mark.parametrize(
    ("steps", "expected"),
    [(steps, expected) for _, steps, expected in FINAL_STATES],
    ids=[name for name, _, _ in FINAL_STATES],
)
def test_sequence_leaves_state(steps: list[Step], expected: KeyState) -> None:
    state, _ = feed(steps)
    assert state == expected


def test_failed_fix_incident_names_the_remediation_and_outcome() -> None:
    _, actions = feed([(0, check("critical", FIX)), (5, run("timeout"))])
    (opened,) = actions
    assert isinstance(opened, OpenIncident)
    assert (opened.remediation, opened.remediation_outcome) == (FIX, "timeout")
    assert f"remediation {FIX} finished timeout" in opened.reason


def test_failed_fix_incident_carries_the_value_after_the_fix() -> None:
    _, actions = feed([(0, check("critical", FIX)), (5, run("not_fixed"))])
    assert actions[0] == OpenIncident(
        reason=f"remediation {FIX} finished not_fixed (exit code 0)",
        value=12.0,
        message="disk critical",
        remediation=FIX,
        remediation_outcome="not_fixed",
    )


def test_overdue_promise_incident_says_how_long_it_waited() -> None:
    _, actions = feed([(0, check("critical", FIX)), (WAIT + 1, Tick())])
    (opened,) = actions
    assert isinstance(opened, OpenIncident)
    assert opened.reason == f"remediation {FIX} promised but no result within 600 s"
    assert (opened.remediation, opened.remediation_outcome) == (FIX, None)


def test_prevented_records_the_values_before_and_after() -> None:
    _, actions = feed([(0, check("critical", FIX)), (5, run("fixed"))])
    assert actions == [
        RecordPrevented(
            remediation=FIX, value_before=3.5, value_after=12.0, message="disk critical"
        )
    ]


def test_late_fix_note_names_the_remediation() -> None:
    _, actions = feed([(0, check("critical")), (5, run("fixed"))])
    assert actions[-1] == AddTimeline(f"fixed by {FIX} (value 3.5 -> 12)")


def test_recovery_reason_is_check_recovered() -> None:
    _, actions = feed([(0, check("critical")), (5, check("ok"))])
    assert actions[-1] == ResolveIncident("check recovered")


def test_promise_without_start_time_starts_waiting_at_the_tick() -> None:
    """A damaged state (awaiting but no start) neither expires at once nor hangs forever."""
    state, actions = incidents.on_tick(KeyState(check_state="critical", awaiting=FIX), 100.0, WAIT)
    assert (state.awaiting_since, actions) == (100.0, [])


def test_default_priority_is_p3_until_the_catalog_exists() -> None:
    assert incidents.default_priority(CHECK, "critical") == "P3"
