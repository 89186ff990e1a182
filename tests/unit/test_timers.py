"""The agent's interval jobs (agent/timers.py) on a real event loop, with short periods.

Assertions are about order and counts with generous margins (a shared, noisy machine):
never early, never overlapping, late runs coalesced, paused means no timer at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from vigil.agent.timers import IntervalJob, Timers


def recorder(
    times: list[float], body: Callable[[], Awaitable[object]] | None = None
) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        times.append(asyncio.get_running_loop().time())
        if body is not None:
            await body()

    return job


def run_timers(timers: Timers, seconds: float) -> float:
    """Start ``timers`` in a new event loop, let them run ``seconds``, stop them; the
    loop time at which they started."""

    async def main() -> float:
        timers.start()
        start = asyncio.get_running_loop().time()
        await asyncio.sleep(seconds)
        await timers.stop()
        return start

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("start", "period", "now", "expected"),
    [
        (10.0, 2.0, 5.0, 10.0),
        (10.0, 2.0, 10.0, 10.0),
        (10.0, 2.0, 10.5, 12.0),
        (10.0, 2.0, 12.0, 12.0),
        (10.0, 2.0, 17.9, 18.0),
    ],
    ids=["before-start", "at-start", "between", "on-a-grid-point", "many-periods-on"],
)
def test_the_next_grid_point(start: float, period: float, now: float, expected: float) -> None:
    job = IntervalJob("j", recorder([]), period, 5.0, start=start)
    assert job.next_after(now) == pytest.approx(expected)


def test_a_job_runs_at_once_then_once_per_period_never_early() -> None:
    runs: list[float] = []
    timers = Timers()
    timers.add("j", recorder(runs), 0.1)

    start = run_timers(timers, 0.55)

    assert 4 <= len(runs) <= 6, runs
    for k, at in enumerate(runs):
        assert at >= start + k * 0.1 - 0.002, (k, at - start)


def test_the_first_run_waits_first_in_s() -> None:
    runs: list[float] = []
    timers = Timers()
    timers.add("j", recorder(runs), 0.1, first_in_s=0.3)

    start = run_timers(timers, 0.45)

    assert runs and runs[0] >= start + 0.3 - 0.002
    assert len(runs) <= 2


def test_a_run_longer_than_its_period_is_never_overlapped() -> None:
    active, most = 0, 0

    async def slow() -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.25)
        active -= 1

    timers = Timers()
    job = timers.add("slow", slow, 0.1)

    run_timers(timers, 0.6)

    assert most == 1
    assert job.runs >= 2 and job.skipped >= 2, job


def test_a_late_wakeup_runs_once_and_keeps_the_grid() -> None:
    """A loop blocked for 3.5 periods (a laptop that slept, a stalled process) runs the
    job once when it wakes, not once per missed period."""
    runs: list[float] = []

    async def main() -> tuple[float, float]:
        timers = Timers()
        timers.add("j", recorder(runs), 0.1)
        timers.start()
        start = asyncio.get_running_loop().time()
        await asyncio.sleep(0.05)
        time.sleep(0.35)  # noqa: ASYNC251 - blocks the loop on purpose: 0.1, 0.2, 0.3 missed
        woke = asyncio.get_running_loop().time()
        await asyncio.sleep(0.03)
        await timers.stop()
        return start, woke

    start, woke = asyncio.run(main())
    late = [t for t in runs if t >= woke]
    assert len(late) == 1, [round(t - start, 3) for t in runs]
    assert len(runs) == 2  # the first, at once, and the one coalesced late run


def test_a_paused_job_has_no_timer_and_resumes_on_its_grid() -> None:
    runs: list[float] = []
    seen: dict[str, float | None] = {}

    async def main() -> float:
        timers = Timers()
        timers.add("j", recorder(runs), 0.1, paused=True)
        timers.start()
        start = asyncio.get_running_loop().time()
        await asyncio.sleep(0.25)
        seen["paused"] = timers.next_run_in("j")
        timers.resume("j")
        seen["resumed"] = timers.next_run_in("j")
        await asyncio.sleep(0.12)
        timers.pause("j")
        seen["paused again"] = timers.next_run_in("j")
        count = len(runs)
        await asyncio.sleep(0.25)
        assert len(runs) == count
        await timers.stop()
        return start

    start = asyncio.run(main())
    assert seen["paused"] is None and seen["paused again"] is None
    assert seen["resumed"] is not None and 0 < seen["resumed"] <= 0.1
    assert len(runs) == 1
    assert runs[0] >= start + 0.3 - 0.002  # the grid point after the resume, not at once


def test_a_run_past_its_timeout_is_cancelled_and_a_failing_run_logged_and_both_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = {"hang": 0, "fail": 0}

    async def hang() -> None:
        calls["hang"] += 1
        await asyncio.sleep(10)

    async def fail() -> None:
        calls["fail"] += 1
        raise RuntimeError("boom")

    timers = Timers()
    timers.add("hang", hang, 0.2, timeout_s=0.06)
    timers.add("fail", fail, 0.2)

    with caplog.at_level(logging.WARNING, logger="vigil.agent"):
        run_timers(timers, 0.5)

    assert calls["hang"] >= 2 and calls["fail"] >= 2
    assert "job hang exceeded 0.1s and was cancelled" in caplog.text
    assert "job fail failed" in caplog.text and "boom" in caplog.text


def test_a_removed_job_runs_no_more_and_its_id_can_be_added_again() -> None:
    """A policy swap removes the old check jobs and adds the new ones while running."""
    old: list[float] = []
    new: list[float] = []

    async def main() -> None:
        timers = Timers()
        timers.add("checks@1s", recorder(old), 0.05)
        timers.start()
        await asyncio.sleep(0.12)
        timers.remove("checks@1s")
        timers.remove("never-added")  # ignored
        count = len(old)
        timers.add("checks@1s", recorder(new), 0.05)
        await asyncio.sleep(0.12)
        assert len(old) == count
        await timers.stop()

    asyncio.run(main())
    assert len(old) >= 2 and len(new) >= 2


def test_stop_cancels_a_run_in_progress_and_every_timer() -> None:
    cancelled: list[bool] = []
    runs: list[float] = []

    async def long() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main() -> None:
        timers = Timers()
        timers.add("long", long, 0.1)
        timers.add("j", recorder(runs), 0.1)
        timers.start()
        await asyncio.sleep(0.05)
        await timers.stop()
        count = len(runs)
        await asyncio.sleep(0.25)
        assert len(runs) == count and not timers.running
        assert timers.next_run_in("j") is None

    asyncio.run(main())
    assert cancelled == [True]


def test_bad_jobs_are_refused() -> None:
    timers = Timers()
    timers.add("j", recorder([]), 1.0)
    with pytest.raises(ValueError, match="'j' already exists"):
        timers.add("j", recorder([]), 1.0)
    with pytest.raises(ValueError, match="period must be > 0"):
        timers.add("k", recorder([]), 0.0)
