"""Network rates, battery and sensors, services and probes, as the sampler reports them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_psutil import Battery, FakeClock, FakePs, FullFakePs, Nic, full_sampler
from vigil.agent.config import ProbeSpec, SamplerConfig
from vigil.agent.sampling.probes import ProbeResult
from vigil.agent.sampling.sampler import Sampler
from vigil.agent.svc import ServiceState


def test_net_rates_per_nic_skip_loopback() -> None:
    ps, clock = FullFakePs(), FakeClock()
    s = full_sampler(ps, clock)
    s.sample(["net"])
    ps.nics["eth0"] = Nic(3000, 15000, 0, 0, 3, 1, 0, 6)
    clock.now += 10

    values = s.sample(["net"])

    assert {k: v for k, v in values.items() if k.startswith("net.")} == pytest.approx(
        {
            "net.recv_bytes_per_second[eth0]": 1000.0,
            "net.sent_bytes_per_second[eth0]": 200.0,
            "net.errors_per_second[eth0]": 0.3,
            "net.drops_per_second[eth0]": 0.4,
        }
    )


def test_a_counter_that_went_backwards_gives_no_rate_for_that_nic() -> None:
    ps, clock = FullFakePs(), FakeClock()
    s = full_sampler(ps, clock)
    s.sample(["net"])
    ps.nics["eth0"] = Nic(0, 0, 0, 0, 0, 0, 0, 0)  # re-plugged: counters restart
    clock.now += 10

    assert not [k for k in s.sample(["net"]) if k.startswith("net.")]


# ------------------------------------------------------------------ battery and sensors


@pytest.mark.parametrize(
    ("battery", "expected"),
    [
        pytest.param(
            Battery(55.0, 3600, False),
            {"battery.percent": 55.0, "battery.plugged": 0.0, "battery.seconds_left": 3600.0},
            id="discharging",
        ),
        pytest.param(
            Battery(100.0, -2, True),
            {"battery.percent": 100.0, "battery.plugged": 1.0},
            id="plugged: unlimited time left is no series",
        ),
        pytest.param(None, {}, id="desktop: no battery series"),
    ],
)
def test_battery_series(battery: Battery | None, expected: dict[str, float]) -> None:
    ps = FullFakePs()
    ps.battery = battery

    values = full_sampler(ps, FakeClock()).sample(["battery"])

    assert {k: v for k, v in values.items() if k.startswith("battery.")} == expected


def test_a_desktop_battery_check_reads_unknown_with_the_reason() -> None:
    ps = FullFakePs()
    ps.battery = None
    s = full_sampler(ps, FakeClock())
    s.sample(["battery"])

    assert s.reason_for("battery.percent") == (
        "battery unavailable: no battery (a desktop, or not reported by the OS)"
    )


def test_sensors_give_the_hottest_reading_per_chip_and_every_fan() -> None:
    values = full_sampler(FullFakePs(), FakeClock()).sample(["sensors"])

    assert {k: v for k, v in values.items() if k.startswith(("temperature.", "fan."))} == {
        "temperature.celsius[coretemp]": 63.0,
        "fan.rpm[thinkpad:0]": 2400.0,
    }


def test_slow_sources_are_read_once_per_slow_interval() -> None:
    ps, clock = FullFakePs(), FakeClock()
    s = full_sampler(ps, clock, slow_s=60.0)
    for _ in range(3):
        s.sample(["battery"])
        clock.now += 15
    clock.now += 30
    values = s.sample(["battery"])

    assert ps.battery_reads == 2
    assert values["battery.percent"] == 55.0


# ------------------------------------------------------------------ services and probes


def test_services_are_one_and_zero_and_unknown_with_the_reason() -> None:
    def services(names: Any) -> dict[str, ServiceState]:
        return {
            "cups": ServiceState(True, "active (running)"),
            "bt": ServiceState(False, "inactive (dead)"),
            "typo": ServiceState(None, "unit typo: LoadState=not-found"),
        }

    s = Sampler(SamplerConfig(services=("cups", "bt", "typo")), ps=FakePs(), services=services)
    values = s.sample(["services"])

    assert {k: v for k, v in values.items() if k.startswith("service.")} == {
        "service.active[cups]": 1.0,
        "service.active[bt]": 0.0,
    }
    assert s.reason_for("service.active[typo]") == "unit typo: LoadState=not-found"


def test_probe_series(tmp_path: Path) -> None:
    class FakeProber:
        def run(self, spec: ProbeSpec) -> ProbeResult:
            return ProbeResult(0.25, True, 200)

    spec = ProbeSpec("intranet", "http", "http://intranet.example/")
    s = Sampler(SamplerConfig(probes=(spec,)), ps=FakePs(), prober=FakeProber())  # type: ignore[arg-type]

    assert s.sample(["probes"]) == {
        "probe.seconds[intranet]": 0.25,
        "probe.up[intranet]": 1.0,
        "probe.http_status[intranet]": 200.0,
        "agent.sample_duration_seconds": pytest.approx(0, abs=1),
    }
