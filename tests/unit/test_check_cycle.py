"""cycle.CheckCycle on fakes: which sources each job samples, and what reaches the flow.

A hand-written sampler, a list as the event sink, a flow with no remediations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from vigil import wire
from vigil.agent.config import CheckSpec, RemediationSettings
from vigil.agent.cycle import CheckCycle
from vigil.agent.measure import Measurer
from vigil.agent.remediation.flow import RemediationFlow

T0 = 1_700_000_000.0
CPU = CheckSpec(id="cpu", metric="cpu.busy_percent", critical=90.0)
MEM = CheckSpec(id="mem", metric="memory.used_percent", critical=90.0, interval_s=60.0)
HOT = CheckSpec(id="hot", metric="temperature.celsius[coretemp]", critical=90.0)


class FakeSampler:
    def __init__(self, values: dict[str, float]) -> None:
        self.values = values
        self.calls: list[frozenset[str] | None] = []

    def sample(self, sources: Iterable[str] | None = None) -> dict[str, float]:
        self.calls.append(None if sources is None else frozenset(sources))
        return dict(self.values)

    def blocking(self, sources: Iterable[str] | None = None) -> bool:
        return False

    def sample_paths(self) -> dict[str, float]:
        return {}

    def reason_for(self, metric: str) -> str:
        return "no such sensor"


class Sink:
    def __init__(self) -> None:
        self.events: list[wire.Event] = []

    def put(self, event: wire.Event, *, urgent: bool = False) -> None:
        self.events.append(event)


def cycle(values: dict[str, float], *checks: CheckSpec) -> tuple[CheckCycle, FakeSampler, Sink]:
    sampler, sink = FakeSampler(values), Sink()
    flow = RemediationFlow(RemediationSettings(), {}, sink, clock=lambda: T0)
    checks_ = CheckCycle(
        checks, sample_s=15.0, measurer=Measurer(sampler), flow=flow, clock=lambda: T0
    )
    return checks_, sampler, sink


def test_checks_with_their_own_interval_leave_the_main_cycle() -> None:
    checks, _, _ = cycle({}, CPU, MEM)

    assert checks.main_checks == (CPU,)
    assert checks.interval_groups == {60.0: [MEM]}
    assert checks.main_sources == frozenset({"cpu"})


def test_the_main_cycle_samples_everything_first_then_only_its_sources() -> None:
    checks, sampler, _ = cycle({"cpu.busy_percent": 5.0, "memory.used_percent": 1.0}, CPU, MEM)

    async def three() -> None:
        await checks.main(everything=False)
        await checks.main(everything=False)
        await checks.main(everything=True)

    asyncio.run(three())

    assert sampler.calls == [None, frozenset({"cpu"}), None]
    assert checks.latest == {"cpu.busy_percent": 5.0, "memory.used_percent": 1.0}


def test_a_check_going_critical_is_urgent_and_recorded() -> None:
    checks, _, sink = cycle({"cpu.busy_percent": 99.0}, CPU)

    urgent = asyncio.run(checks.main(everything=False))

    assert urgent
    (event,) = sink.events
    assert isinstance(event, wire.CheckEvent)
    assert (event.check, event.state, event.time) == ("cpu", "critical", T0)


def test_a_missing_series_is_unknown_with_the_samplers_reason() -> None:
    checks, _, sink = cycle({}, HOT)

    urgent = asyncio.run(checks.main(everything=False))

    assert not urgent
    (event,) = sink.events
    assert isinstance(event, wire.CheckEvent)
    assert event.state == "unknown" and "no such sensor" in event.message
