"""Clock jumps: telling a suspend (the machine slept) from a wall-clock step (it was set).

The agent's jobs run on the monotonic clock, which stops while the machine is
suspended; the collector compares ``sent_at`` with its own wall clock. Reading three
clocks together (:func:`read_clock`) and comparing two readings
(:func:`detect_clock_jumps`, pure) tells the service that the machine slept (end a
delivery backoff, report it) or that someone set the clock (report it), so neither
looks like an outage or a stuck agent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# time.monotonic() stops while the machine is suspended (Linux CLOCK_MONOTONIC, macOS);
# CLOCK_BOOTTIME keeps counting, so their difference is the time spent asleep.
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


@dataclass(frozen=True, slots=True)
class ClockReading:
    """Three clocks read together, in seconds.

    ``wall``: ``time.time()``. ``monotonic``: ``time.monotonic()``, which stops during
    suspend. ``boot``: ``CLOCK_BOOTTIME`` (counts suspend) where the platform has it, else
    the same as ``monotonic`` (then a sleep shows up as a forward wall-clock step).
    """

    wall: float
    monotonic: float
    boot: float


@dataclass(frozen=True, slots=True)
class ClockJump:
    """``kind`` ``"sleep"``: the machine was suspended for ``seconds``. ``"step"``: the wall
    clock was set by ``seconds`` (signed; negative is backwards) beyond elapsed time."""

    kind: str
    seconds: float


def read_clock() -> ClockReading:
    """Read the three clocks of :class:`ClockReading` now."""
    mono = time.monotonic()
    boot = time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else mono
    return ClockReading(wall=time.time(), monotonic=mono, boot=boot)


def detect_clock_jumps(
    before: ClockReading, after: ClockReading, *, tolerance_s: float = 2.0
) -> tuple[ClockJump, ...]:
    """The jumps between two readings, each beyond ``tolerance_s`` seconds.

    Pure: the caller reads the clocks. A sleep is boot time that passed while monotonic
    time did not; a step is wall time that passed (or went back) while boot time did not.
    Both can happen together (NTP corrects the clock right after a resume).
    """
    boot_elapsed = after.boot - before.boot
    slept = boot_elapsed - (after.monotonic - before.monotonic)
    step = (after.wall - before.wall) - boot_elapsed
    jumps = []
    if slept > tolerance_s:
        jumps.append(ClockJump("sleep", slept))
    if abs(step) > tolerance_s:
        jumps.append(ClockJump("step", step))
    return tuple(jumps)
