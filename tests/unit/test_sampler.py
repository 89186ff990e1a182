"""The sampler facade: tolerant sources, reasons for missing series, only the asked
sources, when a sample blocks, and sane readings from the real psutil."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.fake_psutil import (
    BOOT,
    GIB,
    FakeClock,
    FakeProcess,
    FakePs,
    FullFakePs,
    Swap,
    Usage,
    full_sampler,
    sampler,
)
from vigil.agent.config import ProbeSpec, ProcessSpec, SamplerConfig
from vigil.agent.sampling.sampler import Sampler
from vigil.agent.sampling.series import source_of


class NoLoadAverage(FakePs):
    """A platform without ``getloadavg``, like a psutil build lacking a sensor function."""

    @property
    def getloadavg(self) -> Any:
        raise AttributeError("module 'psutil' has no attribute 'getloadavg'")


class BrokenSwap(FakePs):
    def swap_memory(self) -> Swap:
        raise RuntimeError("swap accounting unavailable")


class NoProcess(FakePs):
    def Process(self) -> FakeProcess:
        raise PermissionError(13, "Permission denied")


def test_first_sample_has_no_cpu_busy_percent() -> None:
    values = sampler().sample()

    assert "cpu.busy_percent" not in values


def test_second_sample_has_cpu_busy_percent_from_the_two_snapshots() -> None:
    s = sampler()
    s.sample()

    values = s.sample()

    assert values["cpu.busy_percent"] == 50.0


def test_core_series_are_in_base_units() -> None:
    values = sampler().sample()

    assert {k: v for k, v in values.items() if not k.startswith(("disk.", "agent.sample"))} == {
        "cpu.count": 8,
        "load.1m": 1.5,
        "load.5m": 1.25,
        "load.15m": 0.75,
        "memory.total_bytes": 16 * GIB,
        "memory.available_bytes": 4 * GIB,
        "memory.used_percent": 75.0,
        "swap.total_bytes": 2 * GIB,
        "swap.used_percent": 50.0,
        "boot_time_seconds": BOOT,
        "uptime_seconds": 3600.0,
        "agent.cpu_seconds_total": 1.75,
        "agent.rss_bytes": 48 * 2**20,
    }


def test_sample_duration_comes_from_the_monotonic_clock() -> None:
    ticks = iter([10.0, 10.25])
    s = Sampler(SamplerConfig(), ps=FakePs(), clock=lambda: next(ticks))

    assert s.sample(["load"])["agent.sample_duration_seconds"] == 0.25


def test_missing_function_omits_only_its_series() -> None:
    values = sampler(NoLoadAverage()).sample()

    assert not [k for k in values if k.startswith("load.")]
    assert values["memory.total_bytes"] == 16 * GIB


def test_raising_source_omits_only_its_series() -> None:
    values = sampler(BrokenSwap()).sample()

    assert not [k for k in values if k.startswith("swap.")]
    assert values["memory.total_bytes"] == 16 * GIB


def test_unavailable_own_process_omits_only_the_agent_series() -> None:
    values = sampler(NoProcess()).sample()

    assert "agent.rss_bytes" not in values
    assert "agent.cpu_seconds_total" not in values
    assert values["load.1m"] == 1.5


def test_non_finite_readings_are_dropped() -> None:
    """The wire schema rejects NaN and infinity, so they must never reach a report."""
    ps = FakePs()
    ps.usage["/"] = Usage(total=0, used=0, free=0, percent=float("nan"))

    values = sampler(ps).sample()

    assert "disk.used_percent[/]" not in values
    assert values["disk.total_bytes[/]"] == 0


def test_real_psutil_core_series_are_sane_after_two_samples() -> None:
    s = Sampler(SamplerConfig())
    s.sample()
    values = s.sample()
    deadline = time.monotonic() + 2.0
    # Back-to-back calls can land in the same clock tick: no CPU time elapsed, no rate yet.
    while "cpu.busy_percent" not in values and time.monotonic() < deadline:
        time.sleep(0.02)
        values = s.sample()

    assert 0.0 <= values["cpu.busy_percent"] <= 100.0
    assert values["cpu.count"] >= 1
    assert 0 < values["memory.available_bytes"] <= values["memory.total_bytes"]
    assert 0.0 <= values["memory.used_percent"] <= 100.0
    assert 0.0 <= values["swap.used_percent"] <= 100.0
    assert 0 < values["uptime_seconds"] < 10 * 365 * 86400
    assert values["agent.rss_bytes"] > 1_000_000
    assert values["agent.cpu_seconds_total"] > 0
    disks = [v for k, v in values.items() if k.startswith("disk.used_percent[")]
    assert disks
    assert all(0.0 <= v <= 100.0 for v in disks)


def test_first_sample_has_no_rates() -> None:
    values = full_sampler(FullFakePs(), FakeClock()).sample(["net", "diskio"])

    assert not [k for k in values if k.startswith(("net.", "diskio."))]


def test_per_core_busy_percent() -> None:
    ps, clock = FullFakePs(), FakeClock()
    s = full_sampler(ps, clock, per_core=True)
    s.sample(["cpu"])

    values = s.sample(["cpu"])

    assert values["cpu.core_busy_percent[0]"] == pytest.approx(10.0)  # 1 busy of 10
    assert values["cpu.core_busy_percent[1]"] == pytest.approx(40.0)  # 4 busy of 10


def test_only_the_requested_sources_are_read() -> None:
    ps = FullFakePs()

    values = full_sampler(ps, FakeClock()).sample(["memory"])

    assert {k.split(".")[0] for k in values} == {"memory", "agent"}
    assert ps.battery_reads == 0


@pytest.mark.parametrize(
    ("metric", "source"),
    [
        ("cpu.busy_percent", "cpu"),
        ("disk.used_percent[/home]", "disk"),
        ("temperature.celsius[coretemp]", "sensors"),
        ("process.count[sshd]", "processes"),
        ("path.size_bytes[tmp]", "paths"),
        ("uptime_seconds", "uptime"),
        ("plugin.load1[x]", None),
    ],
    ids=lambda v: str(v),
)
def test_source_of_a_series(metric: str, source: str | None) -> None:
    assert source_of(metric) == source


def test_reason_for_a_failed_source_names_it() -> None:
    s = sampler(BrokenSwap())
    s.sample()

    assert s.reason_for("swap.used_percent") == "swap unavailable: swap accounting unavailable"


def test_reason_for_a_missing_function_says_not_available_on_this_platform() -> None:
    s = sampler(NoLoadAverage())
    s.sample()

    assert s.reason_for("load.1m") == "load unavailable: not available on this platform"


def test_reason_for_an_unknown_series_says_so() -> None:
    s = sampler()
    s.sample()

    assert s.reason_for("cpu.bogus").startswith("not sampled on this machine")
    assert s.reason_for("nosuch.thing").startswith("no such series")


def test_real_psutil_full_sample_has_process_and_net_series() -> None:
    s = Sampler(SamplerConfig(processes=(ProcessSpec("me", exe_name="python3"),)))
    s.sample()
    time.sleep(0.05)
    values = s.sample()

    assert values["process.count"] >= 1
    assert "process.zombies" in values
    assert any(k.startswith("process.top_rss_bytes[") for k in values)


CHEAP = ["cpu", "load", "memory", "swap", "disk", "diskio", "net", "uptime", "agent"]


def test_cheap_sources_never_block() -> None:
    s = full_sampler(FullFakePs(), FakeClock())

    assert not s.blocking(CHEAP)


@pytest.mark.parametrize(
    ("config", "sources"),
    [
        ({"services": ("cups",)}, ["services"]),
        ({"probes": (ProbeSpec(name="dns", kind="dns", target="example.org"),)}, ["probes"]),
        ({}, ["processes"]),
        ({}, ["battery"]),
        ({}, ["sensors"]),
        ({}, None),
    ],
    ids=["services", "probes", "first-process-scan", "battery-due", "sensors-due", "everything"],
)
def test_slow_work_that_is_due_blocks(config: dict[str, Any], sources: list[str] | None) -> None:
    s = full_sampler(FullFakePs(), FakeClock(), **config)

    assert s.blocking(sources)


def test_slow_sources_block_again_only_when_their_interval_is_up() -> None:
    clock = FakeClock()
    s = full_sampler(FullFakePs(), clock, slow_s=60.0)
    s.sample(["battery", "sensors"])
    clock.now += 30
    between = s.blocking(["battery", "sensors"])
    clock.now += 30

    assert (between, s.blocking(["battery"])) == (False, True)
