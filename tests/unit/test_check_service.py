"""The agent's check cycle: per-check intervals, command checks, unknown with a reason.

A hand-written sampler stands in for psutil; plugins are small real scripts.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from vigil import wire
from vigil.agent.config import load_agent_config
from vigil.agent.service import AgentService, build_service

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX sh plugins")
T0 = 1_700_000_000.0


class FakeSampler:
    """Fixed values; records which sources each call asked for."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values
        self.calls: list[set[str] | None] = []

    def sample(self, sources: Iterable[str] | None = None) -> dict[str, float]:
        self.calls.append(None if sources is None else set(sources))
        return dict(self.values)

    def sample_paths(self) -> dict[str, float]:
        return {}

    def reason_for(self, metric: str) -> str:
        return f"no sensor for {metric}"


def service(tmp_path: Path, checks: list[dict[str, Any]], sampler: FakeSampler) -> AgentService:
    config = {
        "agent": {"state_dir": str(tmp_path / "state")},
        "collector": {"url": "http://127.0.0.1:9", "token": "t"},
        "checks": checks,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    svc = build_service(load_agent_config(path), sampler=sampler, clock=lambda: T0, library={})

    async def no_ship() -> None:
        return None

    svc.ship = no_ship  # type: ignore[method-assign]
    return svc


def check_events(svc: AgentService) -> list[wire.CheckEvent]:
    batch = svc.outbox.next_batch(1000)
    events = list(batch.events) if batch else []
    return [e for e in events if isinstance(e, wire.CheckEvent)]


def plugin(tmp_path: Path, body: str) -> str:
    path = tmp_path / "check_test"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


CPU = {"id": "cpu", "metric": "cpu.busy_percent", "critical": 90}
FAST = {"id": "cpu.fast", "metric": "cpu.busy_percent", "critical": 99, "interval": "1s"}
MEM = {"id": "mem", "metric": "memory.used_percent", "critical": 90, "interval": "1m"}


def test_checks_with_their_own_interval_leave_the_main_cycle(tmp_path: Path) -> None:
    svc = service(tmp_path, [CPU, FAST, MEM], FakeSampler({}))

    assert [c.id for c in svc.checks.main_checks] == ["cpu"]
    assert {k: [c.id for c in v] for k, v in svc.checks.interval_groups.items()} == {
        1.0: ["cpu.fast"],
        60.0: ["mem"],
    }
    svc.outbox.close()


def test_an_interval_group_samples_only_the_sources_its_checks_need(tmp_path: Path) -> None:
    sampler = FakeSampler({"cpu.busy_percent": 99.5, "memory.used_percent": 10.0})
    svc = service(tmp_path, [CPU, FAST, MEM], sampler)

    asyncio.run(svc.sample_group(svc.checks.interval_groups[1.0]))

    assert sampler.calls == [{"cpu"}]
    assert [(e.check, e.state) for e in check_events(svc)] == [("cpu.fast", "critical")]
    svc.outbox.close()


def test_a_missing_series_reports_unknown_with_the_samplers_reason(tmp_path: Path) -> None:
    check = {"id": "hot", "metric": "temperature.celsius[coretemp]", "critical": 90}
    svc = service(tmp_path, [check], FakeSampler({}))

    asyncio.run(svc.cycle())

    (event,) = check_events(svc)
    assert event.state == "unknown"
    assert event.message == (
        "temperature.celsius[coretemp]: no sensor for temperature.celsius[coretemp] (unknown)"
    )
    svc.outbox.close()


def test_a_command_check_reports_the_plugins_state_and_status_line(tmp_path: Path) -> None:
    cmd = plugin(tmp_path, "echo 'DISK CRITICAL - 1% free | free=1%;10;5'\nexit 2\n")
    svc = service(tmp_path, [{"id": "nagios.disk", "command": [cmd]}], FakeSampler({}))

    asyncio.run(svc.command_check(svc.config.checks[0]))

    (event,) = check_events(svc)
    assert (event.state, event.message, event.value) == ("critical", "DISK CRITICAL - 1% free", 1.0)
    svc.outbox.close()


def test_command_check_perfdata_joins_the_latest_values(tmp_path: Path) -> None:
    cmd = plugin(tmp_path, "echo 'OK | load1=0.5 load5=0.25'\n")
    svc = service(tmp_path, [{"id": "nagios.load", "command": [cmd]}], FakeSampler({"x": 1.0}))

    async def run() -> None:
        await svc.command_check(svc.config.checks[0])
        await svc.cycle()

    asyncio.run(run())

    assert svc.checks.latest == {
        "x": 1.0,
        "plugin.load1[nagios.load]": 0.5,
        "plugin.load5[nagios.load]": 0.25,
    }
    svc.outbox.close()


def test_a_plugin_that_times_out_is_unknown_with_the_reason(tmp_path: Path) -> None:
    cmd = plugin(tmp_path, "sleep 30\n")
    check = {"id": "slow", "command": [cmd], "timeout": "200ms"}
    svc = service(tmp_path, [check], FakeSampler({}))

    asyncio.run(svc.command_check(svc.config.checks[0]))

    (event,) = check_events(svc)
    assert (event.state, event.message) == ("unknown", "plugin timed out after 0.2s")
    svc.outbox.close()
