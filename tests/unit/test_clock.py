"""Clock jumps: a suspend and a wall-clock step told apart from three clock readings."""

from __future__ import annotations

import time

import pytest

from vigil.agent.clock import ClockJump, ClockReading, detect_clock_jumps, read_clock


def reading(wall: float, mono: float, boot: float) -> ClockReading:
    return ClockReading(wall=wall, monotonic=mono, boot=boot)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (reading(1005.0, 105.0, 205.0), ()),
        (reading(1005.5, 105.0, 205.0), ()),
        (reading(4605.0, 105.0, 3805.0), (ClockJump("sleep", 3600.0),)),
        (reading(-2595.0, 105.0, 205.0), (ClockJump("step", -3600.0),)),
        (reading(1905.0, 105.0, 205.0), (ClockJump("step", 900.0),)),
        (
            reading(4665.0, 105.0, 3805.0),
            (ClockJump("sleep", 3600.0), ClockJump("step", 60.0)),
        ),
    ],
    ids=[
        "steady",
        "drift-within-tolerance",
        "an-hour-asleep",
        "clock-set-back-an-hour",
        "clock-set-forward-15-min",
        "asleep-then-ntp-corrects",
    ],
)
def test_clock_jumps_are_told_apart(after: ClockReading, expected: tuple[ClockJump, ...]) -> None:
    before = reading(1000.0, 100.0, 200.0)

    assert detect_clock_jumps(before, after, tolerance_s=2.0) == expected


def test_a_reading_has_boot_time_at_least_as_far_as_monotonic_time() -> None:
    """Boot time counts suspend and monotonic time does not: boot never trails behind."""
    before = read_clock()
    time.sleep(0.01)
    after = read_clock()

    assert after.monotonic - before.monotonic >= 0.01
    assert (after.boot - before.boot) >= (after.monotonic - before.monotonic) - 0.005
    assert detect_clock_jumps(before, after) == ()
