"""The agent's schedule: one wakeup per sample interval, and delivery only when needed.

A hand-written sampler and shipper stand in for psutil and the collector; the scheduler,
the outbox and the service are real.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from vigil import wire
from vigil.agent.checks import Transition
from vigil.agent.config import load_agent_config
from vigil.agent.delivery.outbox import Outbox
from vigil.agent.delivery.shipper import ShipResult
from vigil.agent.service import AgentService, build_service, due_in_cycle

T0 = 1_700_000_000.0


class FakeSampler:
    """Fixed values; records the sources of each call, the calling thread, and whether
    the call was declared blocking."""

    def __init__(self, values: dict[str, float], *, blocking: bool = False) -> None:
        self.values = values
        self.is_blocking = blocking
        self.calls: list[frozenset[str] | None] = []
        self.threads: list[int] = []

    def sample(self, sources: Iterable[str] | None = None) -> dict[str, float]:
        self.calls.append(None if sources is None else frozenset(sources))
        self.threads.append(threading.get_ident())
        return dict(self.values)

    def blocking(self, sources: Iterable[str] | None = None) -> bool:
        return self.is_blocking

    def sample_paths(self) -> dict[str, float]:
        return {}

    def reason_for(self, metric: str) -> str:
        return "not sampled"


class FakeShipper:
    """Delivers every pending batch at once and records what each call carried."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.calls: list[list[wire.Event]] = []
        # What the agent's self-health reads of a shipper (it never fails here).
        self.last_delivery: float | None = None
        self.failures_in_a_row = 0

    async def ship(self) -> ShipResult:
        sent: list[wire.Event] = []
        while (batch := self.outbox.next_batch(1000)) is not None:
            sent += batch.events
            self.outbox.ack(batch.batch_id)
            self.last_delivery = time.monotonic()
        self.calls.append(sent)
        return ShipResult(1 if sent else 0, len(sent), None, None)

    async def close(self) -> None:
        return None


def service(
    tmp_path: Path,
    sampler: FakeSampler,
    checks: list[dict[str, Any]] | None = None,
    **intervals: str,
) -> tuple[AgentService, FakeShipper]:
    config = {
        "agent": {"state_dir": str(tmp_path / "state")},
        "collector": {"url": "http://127.0.0.1:9", "token": "t"},
        "intervals": {"sample": "15s", "report": "30s", "heartbeat": "1m", "metrics": "5m"}
        | intervals,
        "shipping": {"start_jitter": "0s"},
        "checks": checks or [],
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    svc = build_service(load_agent_config(path), sampler=sampler, clock=lambda: T0, library={})
    shipper = FakeShipper(svc.outbox)
    svc.shipper = shipper  # type: ignore[assignment]
    return svc, shipper


def metrics_event() -> wire.MetricsEvent:
    return wire.MetricsEvent(event_id=uuid.uuid4().hex, seq=0, time=T0, values={"x": 1.0})


async def run_for(svc: AgentService, seconds: float, during: Any = None) -> None:
    """Run the real agent (scheduler and all) for ``seconds``; ``during`` is awaited
    meanwhile with the service running."""
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    if during is not None:
        await during
    else:
        await asyncio.sleep(seconds)
    stop.set()
    await task


CPU = {"id": "cpu", "metric": "cpu.busy_percent", "critical": 90}
DISK = {"id": "disk", "metric": "disk.used_percent[/]", "critical": 95}


# ------------------------------------------------------------------ folded periodic work


@pytest.mark.parametrize(
    ("next_at", "now", "expected"),
    [
        (100.0, 90.0, (False, 100.0)),
        (100.0, 92.5, (True, 160.0)),  # at most half a sample interval early: on time
        (100.0, 100.2, (True, 160.0)),  # late by timer jitter: the cadence is kept
        (100.0, 400.0, (True, 460.0)),  # left far behind (a sleep): restarts from now
        (float("-inf"), 5.0, (True, 65.0)),
    ],
    ids=["not-yet", "slightly-early", "slightly-late", "after-a-sleep", "first-time"],
)
def test_a_task_folded_into_the_cycle_runs_at_the_cycle_nearest_its_due_time(
    next_at: float, now: float, expected: tuple[bool, float]
) -> None:
    assert due_in_cycle(next_at, 60.0, now, slack_s=7.5) == expected


def test_the_cycle_samples_only_its_checks_sources_after_a_first_full_sample(
    tmp_path: Path,
) -> None:
    sampler = FakeSampler({"cpu.busy_percent": 5.0, "disk.used_percent[/]": 50.0})
    svc, _ = service(tmp_path, sampler, [CPU, DISK])

    async def cycles() -> None:
        for _ in range(3):
            await svc.cycle()

    asyncio.run(cycles())

    assert sampler.calls == [None, frozenset({"cpu", "disk"}), frozenset({"cpu", "disk"})]
    svc.outbox.close()


def test_a_running_agent_records_heartbeats_and_summaries_from_its_sample_cycle(
    tmp_path: Path,
) -> None:
    """No job of their own: the summary's cycle samples everything, the others only what
    the checks read."""
    sampler = FakeSampler({"cpu.busy_percent": 5.0})
    svc, shipper = service(
        tmp_path, sampler, [CPU], sample="200ms", report="200ms", heartbeat="1s", metrics="1s"
    )

    asyncio.run(run_for(svc, 2.3))

    sent = [e for call in shipper.calls for e in call]
    heartbeats = [e for e in sent if getattr(e, "check", None) == wire.HEARTBEAT_CHECK]
    summaries = [e for e in sent if isinstance(e, wire.MetricsEvent)]
    assert 2 <= len(heartbeats) <= 3  # at start, then about every second
    assert 1 <= len(summaries) <= 2  # about every second, not at start
    full = [i for i, c in enumerate(sampler.calls) if c is None]
    assert full[0] == 0 and len(full) == 1 + len(summaries)
    assert all(c == frozenset({"cpu"}) for c in sampler.calls if c is not None)
    assert svc._timers is None  # shut down; no job ids "heartbeat" or "metrics" existed


def test_a_cheap_sample_runs_on_the_event_loop_and_a_blocking_one_on_a_worker(
    tmp_path: Path,
) -> None:
    cheap, slow = FakeSampler({}), FakeSampler({}, blocking=True)
    loop_threads = []
    for name, sampler in (("cheap", cheap), ("slow", slow)):
        (tmp_path / name).mkdir()
        svc, _ = service(tmp_path / name, sampler, [CPU])

        async def one_cycle(svc: AgentService = svc) -> None:
            loop_threads.append(threading.get_ident())
            await svc.cycle()

        asyncio.run(one_cycle())
        svc.outbox.close()

    assert cheap.threads == [loop_threads[0]]
    assert slow.threads != [loop_threads[1]]


# ------------------------------------------------------------------ delivery


def test_no_ship_wakeup_while_the_outbox_is_empty(tmp_path: Path) -> None:
    """The first cycle's records go out with it; then nothing is pending and the ship
    job stays paused, however many report intervals pass."""
    svc, shipper = service(
        tmp_path, FakeSampler({"cpu.busy_percent": 5.0}), [CPU], sample="300ms", report="100ms"
    )
    seen: list[tuple[int, bool]] = []

    async def watch() -> None:
        await asyncio.sleep(1.5)
        assert svc._timers is not None
        seen.append((len(shipper.calls), svc._timers.next_run_in("ship") is None))

    asyncio.run(run_for(svc, 0, watch()))

    assert seen == [(1, True)]  # one delivery in 1.5 s, and the ship job paused
    # cpu's first state, the first heartbeat and the agent.self_health check's first state
    first = shipper.calls[0]
    assert sorted(e.check for e in first if isinstance(e, wire.CheckEvent)) == [
        "agent.heartbeat",
        "agent.self_health",
        "cpu",
    ]
    assert len(first) == 3


def test_an_event_stored_between_cycles_goes_at_the_next_report_tick(tmp_path: Path) -> None:
    svc, shipper = service(tmp_path, FakeSampler({}), [], sample="10s", report="200ms")
    seen: list[int] = []

    async def put_later() -> None:
        await asyncio.sleep(0.5)  # the first cycle's heartbeat is delivered by now
        delivered = len(shipper.calls)
        svc.outbox.put(metrics_event())
        await asyncio.sleep(0.5)
        seen.extend([delivered, len(shipper.calls), svc.outbox.pending])

    asyncio.run(run_for(svc, 0, put_later()))

    delivered_before, delivered_after, pending = seen
    assert delivered_after == delivered_before + 1
    assert pending == 0
    assert shipper.calls[delivered_before][0].type == "metrics"


def test_an_urgent_event_still_ships_at_once(tmp_path: Path) -> None:
    """A check going critical is delivered by the cycle that saw it, not at a report tick."""
    svc, shipper = service(tmp_path, FakeSampler({"cpu.busy_percent": 99.0}), [CPU])

    async def one_cycle() -> None:
        await svc.cycle()
        await asyncio.gather(*svc._tasks)

    started = time.monotonic()
    asyncio.run(one_cycle())

    assert time.monotonic() - started < 5  # the report interval is 30 s
    ((event,),) = shipper.calls
    assert (event.check, event.state) == ("cpu", "critical")  # type: ignore[union-attr]
    svc.outbox.close()


def test_a_flapping_transition_is_recorded_with_the_flag(tmp_path: Path) -> None:
    svc, _shipper = service(tmp_path, FakeSampler({}))
    t = Transition("disk", "critical", "critical", 97.0, "flapping (6 changes in 30m)", True)
    svc.flow.record_transition(t, T0, None)
    batch = svc.outbox.next_batch(10)
    assert batch is not None
    (event,) = batch.events
    assert isinstance(event, wire.CheckEvent)
    assert (event.state, event.flapping) == ("critical", True)
