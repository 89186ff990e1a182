"""The incident engine, specified as sequences of events for one (host, check) key.

Each table row feeds a sequence of check results, remediation results and ticks through
the engine, carrying out its actions the way the store does (a fake that numbers opened
incidents), and names the actions it expects in order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from vigil import wire
from vigil.collector.desk import engine as incidents
from vigil.collector.desk.engine import (
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


# --------------------------------------------------------------------------- flapping

FlapStep = tuple[float, str, bool]  # (time, check state, flapping at that time)


def feed_flapping(steps: list[FlapStep], end: tuple[float, bool] | None = None) -> list[str]:
    """Check results with the caller's flapping verdict, then optionally one tick."""
    state, seen, next_id = KeyState(), [], 1
    for now, st, flapping in steps:
        state, actions = incidents.on_check(state, check(st), now, flapping=flapping)
        for a in actions:
            if isinstance(a, OpenIncident):
                state = replace(state, incident_id=next_id)
                next_id += 1
        seen.extend(actions)
    if end is not None:
        state, actions = incidents.on_tick(state, end[0], WAIT, flapping=end[1])
        seen.extend(actions)
    return kinds(seen)


@pytest.mark.parametrize(
    ("steps", "end", "expected"),
    [
        (
            [(0, "critical", False), (1, "ok", False), (2, "critical", False)],
            None,
            ["open", "resolve", "open"],
        ),
        (
            [(0, "critical", False), (1, "ok", True), (2, "critical", True), (3, "ok", True)],
            None,
            ["open", "timeline", "timeline", "timeline", "timeline"],
        ),
        (
            [(0, "critical", False), (1, "ok", True)],
            (100, True),
            ["open", "timeline", "timeline"],
        ),
        (
            [(0, "critical", False), (1, "ok", True)],
            (100, False),
            ["open", "timeline", "timeline", "resolve"],
        ),
        (
            [(0, "critical", False), (1, "ok", True), (2, "critical", True)],
            (100, False),
            ["open", "timeline", "timeline", "timeline"],
        ),
    ],
    ids=[
        "without flapping each failure is its own incident",
        "while flapping one incident stays open and the changes are notes",
        "a tick while still flapping keeps the incident open",
        "the flapping ending while ok resolves the held incident",
        "the flapping ending while critical keeps the incident open",
    ],
)
def test_flapping_holds_one_incident_open(steps, end, expected) -> None:
    assert feed_flapping(steps, end) == expected


def test_flapping_is_noted_once_when_it_starts() -> None:
    state = KeyState(check_state="critical", incident_id=1)
    state, actions = incidents.on_check(state, check("ok"), 1, flapping=True)
    assert actions[0] == AddTimeline("flapping: notifications held back")
    assert state.flapping and state.incident_id == 1


@pytest.mark.parametrize(
    ("times", "now", "expected"),
    [
        ([], 100, False),
        ([10, 20, 30], 100, False),
        ([10, 20, 30, 40], 100, True),
        ([10, 20, 30, 40], 200, False),
        ([150, 160, 170, 180], 200, True),
    ],
    ids=["no changes", "three changes", "four changes", "changes too old", "recent changes"],
)
def test_is_flapping_counts_changes_in_the_window(times, now, expected) -> None:
    assert incidents.is_flapping(times, now, window_s=100, changes=4) is expected


def test_flapping_detection_is_off_with_zero_changes() -> None:
    assert not incidents.is_flapping([1, 2, 3], 3, window_s=100, changes=0)


@pytest.mark.parametrize(
    ("states", "before", "expected"),
    [
        (["ok", "unknown", "ok", "critical", "unknown", "ok"], "ok", [4, 6]),
        (["unknown", "ok", "unknown", "ok", "unknown"], "ok", []),
        (["critical", "unknown", "critical"], "ok", [1]),
        (["ok", "unknown", "critical"], "critical", [1, 3]),
        (["critical", "critical"], "ok", [1]),
    ],
    ids=[
        "ok-unknown-ok-critical-unknown-ok is two changes, not five",
        "moving into and out of unknown is no change",
        "critical across an unknown gap is one failure",
        "the state before the first result counts",
        "a repeated state (only the flapping flag changed) is no change",
    ],
)
def test_known_changes_skip_unknown(states, before, expected) -> None:
    rows = [(float(i), st) for i, st in enumerate(states, start=1)]
    assert incidents.known_changes(rows, before) == expected


# --------------------------------------------------------------------------- recurrence

DAY = 86400.0


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([0 * DAY, 1 * DAY], False),
        ([0 * DAY, 1 * DAY, 2 * DAY], True),
        ([0 * DAY, 3 * DAY, 6.9 * DAY], True),
        ([-1 * DAY, 3 * DAY, 6.9 * DAY], False),
    ],
    ids=[
        "twice in a week is not yet a problem",
        "three times in three days is a problem",
        "three times within seven days is a problem",
        "an occurrence older than the window does not count",
    ],
)
def test_recurrence_three_times_in_seven_days(times, expected) -> None:
    assert incidents.recurs(times, now=6.9 * DAY, window_s=7 * DAY, count=3) is expected


# --------------------------------------------------------------------------- correlation


@pytest.mark.parametrize(
    ("failing", "scope", "min_hosts", "min_share", "expected"),
    [
        (1, 1, 3, 0.5, False),
        (2, 100, 3, 0.5, False),
        (3, 100, 3, 0.5, False),
        (3, 6, 3, 0.5, True),
        (8, 8, 3, 0.5, True),
        (2, 4, 3, 0.5, False),
        (2, 5, 3, 0.5, False),
        (1, 2, 3, 0.5, False),
        (2, 4, 0, 0.0, False),
        (5, 100, 0, 0.05, True),
        (1, 2, 0, 0.5, False),
        (3, 100, 3, 0.0, True),
    ],
    ids=[
        "one host is never a fleet",
        "two of a hundred is below both rules",
        "the count without the share is not a fleet",
        "the count and the share are reached",
        "every host of the fleet",
        "two unrelated failures on four hosts are not a fleet (issue #15)",
        "under half of a small group",
        "one host is never a fleet even at a share of one half",
        "both rules off",
        "share rule alone",
        "share rule alone still needs two hosts",
        "count rule alone",
    ],
)
def test_fleet_wide_needs_the_count_and_the_share(
    failing, scope, min_hosts, min_share, expected
) -> None:
    assert incidents.fleet_wide(failing, scope, min_hosts, min_share) is expected


# --------------------------------------------------------------------------- liveness


@pytest.mark.parametrize(
    ("last_seen", "ttl", "now", "expected"),
    [
        (0, 60, 60 + 30, False),
        (0, 60, 60 + 31, True),
        (0, None, 10_000, False),
    ],
    ids=["within TTL plus grace", "past TTL plus grace", "no TTL announced"],
)
def test_is_silent_after_ttl_plus_grace(last_seen, ttl, now, expected) -> None:
    assert incidents.is_silent(last_seen, ttl, 30, now) is expected


@pytest.mark.parametrize(
    ("state", "silent", "expected_silence", "kinds_", "check_state"),
    [
        (KeyState(), True, False, ["open"], "critical"),
        (KeyState(), True, True, [], "unknown"),
        (KeyState(check_state="critical", incident_id=7), True, False, [], "critical"),
        (KeyState(check_state="critical", incident_id=7), False, False, ["resolve"], "ok"),
        (KeyState(), False, False, [], "ok"),
    ],
    ids=[
        "a silent server opens an incident",
        "a sleeping laptop raises nothing",
        "still silent opens nothing more",
        "a host reporting again resolves it",
        "an alive host does nothing",
    ],
)
def test_liveness(state, silent, expected_silence, kinds_, check_state) -> None:
    new, actions = incidents.on_liveness(
        state, silent=silent, expected=expected_silence, silent_for_s=120
    )
    assert kinds(actions) == kinds_
    assert new.check_state == check_state


# --------------------------------------------------------------------------- silences

SIL = incidents.Silence(id=1, matcher="check", value="disk.*", starts_at=100, ends_at=200)


@pytest.mark.parametrize(
    ("silence", "now", "expected"),
    [
        (SIL, 150, True),
        (SIL, 99, False),
        (SIL, 200, False),
        (replace(SIL, value="mail.*"), 150, False),
        (replace(SIL, matcher="host", value="ws-1"), 150, True),
        (replace(SIL, matcher="host", value="agent-1"), 150, True),
        (replace(SIL, matcher="host", value="ws-2"), 150, False),
        (replace(SIL, matcher="group", value="laptops"), 150, True),
        (replace(SIL, matcher="group", value="servers"), 150, False),
        (replace(SIL, matcher="service", value="health"), 150, True),
    ],
    ids=[
        "check glob inside the window",
        "before it starts",
        "at its end it no longer applies",
        "another check",
        "by hostname",
        "by agent id",
        "another host",
        "by group",
        "another group",
        "by service",
    ],
)
def test_silence_applies(silence, now, expected) -> None:
    applies = incidents.silence_applies(
        silence,
        host="agent-1",
        hostname="ws-1",
        groups=("laptops",),
        service="health",
        check="disk.root",
        now=now,
    )
    assert applies is expected


# --------------------------------------------------------------------------- notifications


def alertable(**kw) -> incidents.Alertable:
    base = dict(ref="incident:1", active=True, opened_at=0.0, held=False, notified=False,
                resolve_notified=False)  # fmt: skip
    return incidents.Alertable(**{**base, **kw})


@pytest.mark.parametrize(
    ("item", "fire", "resolve"),
    [
        (alertable(), True, False),
        (alertable(opened_at=80.0), False, False),
        (alertable(held=True), False, False),
        (alertable(notified=True), False, False),
        (alertable(active=False, notified=True), False, True),
        (alertable(active=False, notified=True, resolve_notified=True), False, False),
        (alertable(active=False), False, False),
    ],
    ids=[
        "open past the group wait fires",
        "open within the group wait waits",
        "held (silenced, flapping, in a fleet problem) does not fire",
        "already notified does not fire again",
        "resolved after a firing notification sends the resolution",
        "the resolution is sent once",
        "resolved while held never notified: no resolution either",
    ],
)
def test_plan_notifications(item, fire, resolve) -> None:
    fired, resolved = incidents.plan_notifications([item], now=100.0, delay_s=30.0)
    assert (fired == [item], resolved == [item]) == (fire, resolve)


@pytest.mark.parametrize(
    ("state", "acked", "flapping", "shown"),
    [
        ("open", None, False, "open"),
        ("open", 5.0, False, "acknowledged"),
        ("open", 5.0, True, "flapping"),
        ("resolved", 5.0, False, "resolved"),
        ("prevented", None, False, "prevented"),
    ],
    ids=["open", "acknowledged", "flapping wins", "resolved", "prevented"],
)
def test_display_state(state, acked, flapping, shown) -> None:
    assert incidents.display_state(state, acked, flapping) == shown
