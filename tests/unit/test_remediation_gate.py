"""remediation.gate: cooldown, attempts per window and concurrency, on a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from vigil.agent.remediation.gate import AlreadyRunning, RunGate

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def _run_once(gate: RunGate, key: str) -> None:
    async with gate.slot(key):
        pass


def test_gate_lets_a_new_key_run() -> None:
    assert RunGate(clock=FakeClock()).check("demo-cleanup:disk.full", 300) is None


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [(0, "cooldown: 60s left"), (50.5, "cooldown: 10s left"), (60, None), (61, None)],
    ids=["just-finished", "rounds-up", "exactly-over", "long-over"],
)
def test_gate_cooldown_counts_from_the_end_of_the_last_run(
    elapsed: float, expected: str | None
) -> None:
    clock = FakeClock()
    gate = RunGate(clock=clock)
    run(_run_once(gate, "k"))

    clock.now += elapsed

    assert gate.check("k", 60) == expected


def test_gate_cooldown_starts_when_the_run_ends_not_when_it_starts() -> None:
    clock = FakeClock()
    gate = RunGate(clock=clock)

    async def long_run() -> None:
        async with gate.slot("k"):
            clock.now += 100  # the script ran for 100 s

    run(long_run())

    assert gate.check("k", 60) == "cooldown: 60s left"


def test_gate_cooldown_is_per_key() -> None:
    gate = RunGate(clock=FakeClock())
    run(_run_once(gate, "fix:a"))

    assert gate.check("fix:b", 60) is None


def test_gate_records_the_run_even_when_it_fails() -> None:
    gate = RunGate(clock=FakeClock())

    async def failing() -> None:
        async with gate.slot("k"):
            raise OSError("boom")

    with pytest.raises(OSError):
        run(failing())

    assert gate.check("k", 60) == "cooldown: 60s left"
    assert gate.check("k", 0) is None


def test_gate_runs_one_at_a_time_per_key() -> None:
    gate = RunGate(clock=FakeClock())
    seen: list[str | None] = []

    async def main() -> None:
        async with gate.slot("k"):
            seen.append(gate.check("k", 0))
            with pytest.raises(AlreadyRunning):
                async with gate.slot("k"):
                    pass

    run(main())

    assert seen == ["already running"]


def test_gate_limits_concurrent_runs_globally() -> None:
    gate = RunGate(max_concurrent=2, clock=FakeClock())
    inside: list[str] = []

    async def main() -> tuple[list[str], list[str | None], list[str]]:
        release = asyncio.Event()

        async def job(key: str) -> None:
            async with gate.slot(key):
                inside.append(key)
                await release.wait()

        tasks = [asyncio.create_task(job(k)) for k in ("a", "b", "c")]
        for _ in range(10):  # let every task get as far as it can
            await asyncio.sleep(0)
        during = list(inside)
        waiting = [gate.check("c", 0)]
        release.set()
        await asyncio.gather(*tasks)
        return during, waiting, list(inside)

    during, waiting, after = run(main())

    assert during == ["a", "b"]
    assert waiting == ["already running"]  # queued for a slot counts as running
    assert after == ["a", "b", "c"]


def test_gate_run_cancelled_while_queued_starts_no_cooldown() -> None:
    gate = RunGate(max_concurrent=1, clock=FakeClock())

    async def main() -> None:
        release = asyncio.Event()

        async def job(key: str) -> None:
            async with gate.slot(key):
                await release.wait()

        first = asyncio.create_task(job("a"))
        queued = asyncio.create_task(job("b"))
        for _ in range(5):
            await asyncio.sleep(0)
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        release.set()
        await first

    run(main())

    assert gate.check("b", 60) is None
    assert gate.check("a", 60) == "cooldown: 60s left"


def test_gate_needs_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        RunGate(max_concurrent=0)


# --- RunGate: attempts per window -----------------------------------------------------


def test_gate_allows_attempts_up_to_the_budget() -> None:
    clock = FakeClock()
    gate = RunGate(clock=clock)
    for _ in range(2):
        run(_run_once(gate, "k"))

    assert gate.check("k", 0, max_attempts=3, window_s=3600) is None


def test_gate_refuses_once_the_budget_is_used_up_and_says_when_it_frees() -> None:
    clock = FakeClock()
    gate = RunGate(clock=clock)
    for _ in range(3):
        run(_run_once(gate, "k"))
        clock.now += 100

    assert gate.check("k", 0, max_attempts=3, window_s=3600) == (
        "attempts: 3 of 3 used in the last 3600s (next in 3300s)"
    )


def test_gate_attempts_older_than_the_window_no_longer_count() -> None:
    clock = FakeClock()
    gate = RunGate(clock=clock)
    for _ in range(3):
        run(_run_once(gate, "k"))
    clock.now += 3600

    assert gate.check("k", 0, max_attempts=3, window_s=3600) is None


def test_gate_attempts_are_per_key() -> None:
    gate = RunGate(clock=FakeClock())
    run(_run_once(gate, "a"))

    assert gate.check("b", 0, max_attempts=1, window_s=3600) is None
    assert gate.check("a", 0, max_attempts=1, window_s=3600) is not None


def test_gate_run_cancelled_while_queued_uses_no_attempt() -> None:
    async def scenario() -> str | None:
        gate = RunGate(1, clock=FakeClock())
        hold = asyncio.Event()

        async def holder() -> None:
            async with gate.slot("busy"):
                await hold.wait()

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        queued = asyncio.create_task(_run_once(gate, "k"))
        await asyncio.sleep(0)
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        hold.set()
        await first
        return gate.check("k", 0, max_attempts=1, window_s=3600)

    assert run(scenario()) is None
