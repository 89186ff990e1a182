"""The pure check engine: levels, for-duration, immediate recovery, transitions."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from vigil.agent.checks import CheckStatus, Transition, classify, evaluate
from vigil.agent.config import CheckSpec

DISK = CheckSpec(
    id="disk-root",
    metric="disk.used_percent[/]",
    op=">",
    warning=90.0,
    critical=95.0,
    for_s=120.0,
)
INSTANT = replace(DISK, for_s=0.0)
FREE = CheckSpec(
    id="free-space",
    metric="disk.free_bytes[/]",
    op="<",
    warning=10e9,
    critical=2e9,
)

Steps = list[tuple[float, float | None]]


def run(spec: CheckSpec, steps: Steps) -> tuple[list[CheckStatus], list[Transition | None]]:
    """Feed ``(now, value)`` steps through :func:`evaluate`; every status and transition."""
    status: CheckStatus | None = None
    statuses: list[CheckStatus] = []
    transitions: list[Transition | None] = []
    for now, value in steps:
        status, transition = evaluate(spec, status, value, now)
        statuses.append(status)
        transitions.append(transition)
    return statuses, transitions


# (spec, steps, reported state after each step)
CASES = [
    pytest.param(DISK, [(0, 50.0)], "ok", id="ok value is reported at once"),
    pytest.param(DISK, [(0, None)], "unknown", id="missing value is unknown"),
    pytest.param(INSTANT, [(0, math.nan)], "unknown", id="NaN value is unknown"),
    pytest.param(DISK, [(0, 97.0)], "unknown", id="first bad value with a for-duration is pending"),
    pytest.param(
        INSTANT, [(0, 97.0)], "critical", id="first bad value without for-duration is reported"
    ),
    pytest.param(
        DISK,
        [(0, 97.0), (60, 97.0), (120, 97.0)],
        "unknown unknown critical",
        id="first bad value is reported once it has held",
    ),
    pytest.param(
        DISK, [(0, 97.0), (60, 50.0)], "unknown ok", id="first pending value that clears is ok"
    ),
    pytest.param(
        DISK,
        [(0, 50.0), (60, 97.0), (120, 97.0), (180, 97.0)],
        "ok ok ok critical",
        id="critical held for 2m is reported",
    ),
    pytest.param(
        DISK,
        [(0, 50.0), (60, 97.0), (120, 50.0), (180, 97.0), (240, 97.0)],
        "ok ok ok ok ok",
        id="blip shorter than for-duration is not reported",
    ),
    pytest.param(
        DISK,
        [(0, 50.0), (60, 97.0), (180, 97.0), (195, 40.0)],
        "ok ok critical ok",
        id="recovery is immediate",
    ),
    pytest.param(
        DISK,
        [(0, 50.0), (60, 97.0), (180, 97.0), (195, 92.0)],
        "ok ok critical warning",
        id="critical to warning is immediate",
    ),
    pytest.param(
        DISK,
        [(0, 50.0), (60, 97.0), (180, 97.0), (195, None)],
        "ok ok critical unknown",
        id="moving to unknown is immediate",
    ),
    pytest.param(
        DISK,
        [(0, 97.0), (120, 97.0), (135, None), (150, 97.0), (255, 97.0), (270, 97.0)],
        "unknown critical unknown unknown unknown critical",
        id="after a missing value critical must hold again",
    ),
    pytest.param(
        DISK,
        [(0, 50.0), (10, 92.0), (100, 97.0), (130, 97.0), (220, 97.0)],
        "ok ok ok warning critical",
        id="warning is reported on time while critical is still pending",
    ),
    pytest.param(
        DISK,
        [(0, 50.0), (10, 92.0), (60, 97.0), (90, 92.0), (130, 92.0)],
        "ok ok ok ok warning",
        id="touching critical does not restart the warning timer",
    ),
    pytest.param(
        DISK,
        [(0, 50.0), (10, 97.0), (60, 92.0), (70, 97.0), (180, 97.0), (190, 97.0)],
        "ok ok ok ok warning critical",
        id="dropping out of critical restarts the critical timer",
    ),
    pytest.param(
        DISK,
        [(0, 92.0), (120, 92.0), (130, 97.0), (240, 97.0), (250, 97.0)],
        "unknown warning warning warning critical",
        id="escalation from a reported warning obeys the for-duration",
    ),
    pytest.param(
        FREE,
        [(0, 50e9), (15, 5e9), (30, 1e9), (45, 50e9)],
        "ok warning critical ok",
        id="operator < for free space",
    ),
    pytest.param(INSTANT, [(0, 95.0)], "warning", id="exactly at the threshold is not beyond >"),
    pytest.param(
        replace(INSTANT, op=">="), [(0, 95.0)], "critical", id="operator >= includes the threshold"
    ),
    pytest.param(
        replace(INSTANT, critical=None), [(0, 99.0)], "warning", id="warning-only check tops out"
    ),
    pytest.param(
        replace(INSTANT, warning=None),
        [(0, 92.0), (10, 97.0)],
        "ok critical",
        id="critical-only check skips warning",
    ),
]


@pytest.mark.parametrize(("spec", "steps", "expected"), CASES)
def test_reported_state_follows_the_rules(spec: CheckSpec, steps: Steps, expected: str) -> None:
    statuses, _ = run(spec, steps)

    assert [s.state for s in statuses] == expected.split()


@pytest.mark.parametrize(("spec", "steps", "expected"), CASES)
def test_a_transition_comes_exactly_when_the_reported_state_changes(
    spec: CheckSpec, steps: Steps, expected: str
) -> None:
    statuses, transitions = run(spec, steps)

    previous = [None] + [s.state for s in statuses[:-1]]
    changes = [
        (before, s.state) if s.state != before else None
        for before, s in zip(previous, statuses, strict=True)
    ]
    assert [(t.previous, t.state) if t else None for t in transitions] == changes


def test_transition_carries_check_id_and_value() -> None:
    _, (transition,) = run(INSTANT, [(0, 97.2)])

    assert transition == Transition(
        check="disk-root",
        previous=None,
        state="critical",
        value=97.2,
        message="disk.used_percent[/] = 97.2 > 95 (critical)",
    )


def test_value_updates_even_when_the_state_does_not() -> None:
    statuses, transitions = run(DISK, [(0, 50.0), (15, 61.5)])

    assert statuses[-1].value == 61.5
    assert transitions[-1] is None


def test_since_stays_at_the_time_the_state_was_reported() -> None:
    statuses, _ = run(DISK, [(0, 50.0), (60, 97.0), (180, 97.0), (240, 97.0)])

    assert [s.since for s in statuses] == [0, 0, 180, 180]


def test_pending_names_the_worse_level_and_when_it_began() -> None:
    statuses, _ = run(DISK, [(0, 50.0), (60, 97.0), (75, 97.0)])

    assert (statuses[-1].pending, statuses[-1].pending_since) == ("critical", 60)


def test_pending_warning_keeps_the_start_of_the_bad_period() -> None:
    statuses, _ = run(DISK, [(0, 50.0), (10, 92.0), (60, 97.0), (90, 92.0)])

    assert (statuses[-1].pending, statuses[-1].pending_since) == ("warning", 10)


def test_pending_clears_when_the_value_goes_back_to_ok() -> None:
    statuses, _ = run(DISK, [(0, 50.0), (60, 97.0), (75, 50.0)])

    assert (statuses[-1].pending, statuses[-1].pending_since) == (None, None)


def test_pending_clears_once_the_level_is_reported() -> None:
    statuses, _ = run(DISK, [(0, 50.0), (60, 97.0), (180, 97.0)])

    assert (statuses[-1].pending, statuses[-1].pending_since) == (None, None)


@pytest.mark.parametrize(
    ("spec", "steps", "message"),
    [
        pytest.param(
            INSTANT, [(0, 92.0)], "disk.used_percent[/] = 92 > 90 (warning)", id="warning"
        ),
        pytest.param(
            FREE, [(0, 1.5e9)], "disk.free_bytes[/] = 1500000000 < 2000000000 (critical)", id="<"
        ),
        pytest.param(INSTANT, [(0, 40.25)], "disk.used_percent[/] = 40.25 (ok)", id="ok"),
        pytest.param(
            INSTANT, [(0, None)], "disk.used_percent[/] has no value (unknown)", id="unknown"
        ),
        pytest.param(
            DISK,
            [(0, 97.0)],
            "disk.used_percent[/] = 97 > 95, critical for less than 2m so far (unknown)",
            id="first evaluation pending",
        ),
    ],
)
def test_transition_message_says_value_threshold_and_state(
    spec: CheckSpec, steps: Steps, message: str
) -> None:
    _, transitions = run(spec, steps)

    assert transitions[-1] is not None
    assert transitions[-1].message == message


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        pytest.param(">", 96.0, "critical", id="> above critical"),
        pytest.param(">", 91.0, "warning", id="> between warning and critical"),
        pytest.param(">", 90.0, "ok", id="> at warning is ok"),
        pytest.param(">=", 90.0, "warning", id=">= at warning is warning"),
        pytest.param("<", 1.0, "critical", id="< below critical"),
        pytest.param("<", 5.0, "warning", id="< between critical and warning"),
        pytest.param("<=", 2.0, "critical", id="<= at critical is critical"),
        pytest.param("<", 50.0, "ok", id="< above warning is ok"),
    ],
)
def test_classify_compares_with_the_spec_operator(op: str, value: float, expected: str) -> None:
    thresholds = (90.0, 95.0) if op.startswith(">") else (10.0, 2.0)
    spec = replace(DISK, op=op, warning=thresholds[0], critical=thresholds[1])  # type: ignore[arg-type]

    assert classify(spec, value) == expected


def test_classify_ignores_the_for_duration() -> None:
    assert classify(DISK, 97.0) == "critical"


# ------------------------------------------------------------------ hysteresis

HYST = replace(INSTANT, recovery=85.0)
HYST_CRIT_ONLY = replace(INSTANT, warning=None, recovery=85.0)
HYST_BELOW = replace(FREE, recovery=20e9)


@pytest.mark.parametrize(
    ("spec", "values", "expected"),
    [
        pytest.param(INSTANT, [91, 89, 91, 89], "warning ok warning ok", id="no recovery toggles"),
        pytest.param(
            HYST, [91, 89, 91, 89], "warning warning warning warning", id="band holds warning"
        ),
        pytest.param(HYST, [91, 84], "warning ok", id="crossing recovery clears"),
        pytest.param(HYST, [97, 89], "critical warning", id="critical de-escalates into the band"),
        pytest.param(HYST, [89], "ok", id="band from ok is ok"),
        pytest.param(
            HYST_CRIT_ONLY, [97, 90, 84], "critical critical ok", id="critical-only band holds"
        ),
        pytest.param(
            HYST_BELOW, [5e9, 15e9, 25e9], "warning warning ok", id="op < recovers above recovery"
        ),
    ],
)
def test_recovery_threshold_adds_hysteresis(
    spec: CheckSpec, values: list[float], expected: str
) -> None:
    statuses, _ = run(spec, [(i * 15.0, v) for i, v in enumerate(values)])

    assert [s.state for s in statuses] == expected.split()


def test_message_in_the_recovery_band_says_why_the_check_is_still_bad() -> None:
    statuses, _ = run(HYST, [(0, 91.0), (15, 89.0)])

    assert statuses[-1].message == "disk.used_percent[/] = 89, not yet past recovery 85 (warning)"


# ------------------------------------------------------------------ flapping

FLAPPY = replace(INSTANT, flap_changes=4, flap_window_s=100.0)


def alternate(n: int, step: float = 10.0) -> Steps:
    """``n`` steps alternating critical and ok, ``step`` seconds apart."""
    return [(i * step, 97.0 if i % 2 == 0 else 50.0) for i in range(n)]


def test_without_flap_detection_every_crossing_is_a_transition() -> None:
    _, transitions = run(INSTANT, alternate(8))

    assert all(t is not None for t in transitions)


def test_too_many_changes_in_the_window_mark_the_check_flapping() -> None:
    statuses, _ = run(FLAPPY, alternate(5))

    assert [s.flapping for s in statuses] == [False, False, False, False, True]


def test_a_flapping_check_holds_its_worse_state() -> None:
    statuses, _ = run(FLAPPY, alternate(8))

    assert [s.state for s in statuses[4:]] == ["critical"] * 4


def test_a_flapping_check_emits_no_transitions_while_it_keeps_flapping() -> None:
    _, transitions = run(FLAPPY, alternate(9))

    assert [t is not None for t in transitions[5:]] == [False] * 4


def test_entering_flapping_is_one_transition_that_says_so() -> None:
    _, transitions = run(FLAPPY, alternate(5))

    last = transitions[-1]
    assert last is not None
    assert (last.previous, last.state, last.flapping) == ("ok", "critical", True)
    assert last.message.startswith("flapping (4 changes in 100s): ")


def test_flapping_stops_once_the_window_is_quiet_and_reports_the_real_state() -> None:
    steps = [*alternate(5), (200.0, 50.0), (300.0, 50.0)]

    statuses, transitions = run(FLAPPY, steps)

    assert (statuses[-2].flapping, statuses[-2].state) == (False, "ok")
    assert transitions[-2] is not None and transitions[-2].flapping is False


def test_flap_history_keeps_only_changes_inside_the_window() -> None:
    statuses, _ = run(FLAPPY, [(0, 97.0), (10, 50.0), (200, 97.0)])

    assert statuses[-1].changes == (200.0,)


def test_unknown_readings_are_not_flap_changes() -> None:
    """ok -> unknown -> ok -> critical -> unknown -> ok is two changes, not five (#15)."""
    steps = [(0, 50.0), (5, None), (10, 50.0), (15, 97.0), (20, None), (25, 50.0)]

    statuses, _ = run(FLAPPY, steps)

    assert statuses[-1].changes == (15.0, 25.0)
    assert [s.flapping for s in statuses] == [False] * 6
    assert statuses[-1].state == "ok"


def test_a_known_state_after_unknown_counts_against_the_last_known_one() -> None:
    """ok -> unknown -> critical is one change, made when critical is seen."""
    statuses, _ = run(FLAPPY, [(0, 50.0), (5, None), (10, 97.0)])

    assert statuses[-1].changes == (10.0,)


def test_the_first_known_state_after_a_start_in_unknown_is_no_change() -> None:
    statuses, _ = run(FLAPPY, [(0, None), (5, 97.0), (10, None), (15, 97.0)])

    assert statuses[-1].changes == ()


def test_missing_readings_alone_never_make_a_check_flap() -> None:
    steps = [(i * 5.0, None if i % 2 else 50.0) for i in range(12)]

    statuses, _ = run(FLAPPY, steps)

    assert not any(s.flapping for s in statuses)


def test_a_flapping_check_holds_its_worse_state_through_unknown() -> None:
    statuses, _ = run(FLAPPY, [*alternate(5), (50.0, None)])

    assert (statuses[-1].flapping, statuses[-1].state) == (True, "critical")


# ------------------------------------------------------------------ unknown reasons and levels


def test_unknown_carries_the_reason_it_was_given() -> None:
    status, transition = evaluate(DISK, None, None, 0, reason="timed out after 2s (hung mount?)")

    assert status.state == "unknown"
    assert transition is not None
    assert transition.message == "disk.used_percent[/]: timed out after 2s (hung mount?) (unknown)"


def test_unknown_without_a_reason_still_says_there_is_no_value() -> None:
    status, _ = evaluate(DISK, None, None, 0)

    assert status.message == "disk.used_percent[/] has no value (unknown)"


COMMAND = CheckSpec(id="nagios.load", metric="", command=("/bin/check_load",), for_s=60.0)


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        pytest.param(["ok", "critical"], "ok ok", id="plugin critical waits for the for-duration"),
        pytest.param(["critical", "critical"], "unknown unknown", id="first critical is pending"),
        pytest.param(["ok", "unknown"], "ok unknown", id="plugin unknown is immediate"),
        pytest.param(["warning", "ok"], "unknown ok", id="plugin ok is immediate"),
    ],
)
def test_a_given_level_replaces_classification(levels: list[str], expected: str) -> None:
    status: CheckStatus | None = None
    states = []
    for i, level in enumerate(levels):
        status, _ = evaluate(COMMAND, status, None, i * 15.0, level=level, text="LOAD")  # type: ignore[arg-type]
        states.append(status.state)

    assert states == expected.split()


def test_given_text_is_the_message() -> None:
    status, _ = evaluate(COMMAND, None, 0.5, 0, level="ok", text="OK - load average: 0.5")

    assert status.message == "OK - load average: 0.5"
