"""Rate maths from two snapshots: clamped deltas, guarded denominators, no rate
rather than a wrong one."""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.fake_psutil import Times, linux_times
from vigil.agent.sampling.rates import (
    counter_rates,
    cpu_busy_percent,
    cpu_time_percent,
    usage_percent,
)


@pytest.mark.parametrize(
    ("prev", "cur", "expected"),
    [
        pytest.param(
            Times(100.0, 50.0, 850.0), Times(130.0, 70.0, 900.0), 50.0, id="normal interval"
        ),
        pytest.param(
            linux_times(user=100, idle=100, steal=10),
            linux_times(user=150, idle=150, steal=5),
            50.0,
            id="counter that went backwards counts as zero",
        ),
        pytest.param(
            Times(100.0, 50.0, 850.0), Times(100.0, 50.0, 850.0), None, id="zero delta is no rate"
        ),
        pytest.param(None, Times(100.0, 50.0, 850.0), None, id="first call has no rate"),
        pytest.param(
            linux_times(user=10, idle=10, iowait=10),
            linux_times(user=20, idle=20, iowait=20),
            pytest.approx(100 / 3),
            id="iowait is not busy",
        ),
        pytest.param(
            linux_times(user=10, idle=10, guest=5),
            linux_times(user=20, idle=20, guest=15),
            50.0,
            id="guest time is already inside user time",
        ),
        pytest.param(
            Times(100.0, 50.0, 850.0),
            linux_times(user=130, system=70, idle=900),
            None,
            id="snapshots with different fields have no rate",
        ),
    ],
)
def test_cpu_busy_percent(prev: Any, cur: Any, expected: float | None) -> None:
    assert cpu_busy_percent(prev, cur) == expected


Counters = namedtuple("Counters", "sent recv")


@pytest.mark.parametrize(
    ("prev", "cur", "seconds", "expected"),
    [
        pytest.param(
            Counters(100, 1000), Counters(300, 1500), 10.0, {"sent": 20.0, "recv": 50.0}, id="rates"
        ),
        pytest.param(
            Counters(100, 1000), Counters(100, 1000), 10.0, {"sent": 0.0, "recv": 0.0}, id="idle"
        ),
        pytest.param(None, Counters(100, 1000), 10.0, None, id="first snapshot has no rate"),
        pytest.param(Counters(100, 1000), Counters(300, 1500), 0.0, None, id="no time elapsed"),
        pytest.param(Counters(100, 1000), Counters(300, 1500), -1.0, None, id="time went back"),
        pytest.param(
            Counters(100, 1000), Counters(300, 10), 10.0, None, id="a counter that went back"
        ),
    ],
)
def test_counter_rates(
    prev: Any, cur: Any, seconds: float, expected: dict[str, float] | None
) -> None:
    """A counter reset gives no rate at all rather than a huge or negative one."""
    assert counter_rates(prev, cur, seconds, ("sent", "recv")) == expected


@pytest.mark.parametrize(
    ("prev_s", "cur_s", "elapsed_s", "expected"),
    [
        pytest.param(10.0, 15.0, 10.0, 50.0, id="half a CPU"),
        pytest.param(10.0, 40.0, 10.0, 300.0, id="three busy threads exceed 100"),
        pytest.param(10.0, 5.0, 10.0, 0.0, id="CPU time that went back counts as zero"),
        pytest.param(None, 15.0, 10.0, None, id="first scan has no rate"),
        pytest.param(10.0, 15.0, None, None, id="no previous scan time"),
        pytest.param(10.0, 15.0, 0.0, None, id="no time elapsed"),
    ],
)
def test_cpu_time_percent(
    prev_s: float | None, cur_s: float, elapsed_s: float | None, expected: float | None
) -> None:
    assert cpu_time_percent(prev_s, cur_s, elapsed_s) == expected


@pytest.mark.parametrize(
    ("used", "total", "expected"),
    [(1, 3, 33.3), (2, 3, 66.7), (0, 0, 0.0), (5, 5, 100.0)],
    ids=["rounded-down", "rounded-up", "zero-total", "full"],
)
def test_usage_percent_rounds_like_psutil(used: float, total: float, expected: float) -> None:
    assert usage_percent(used, total) == expected


def test_per_name_rates_start_on_the_second_snapshot_and_skip_a_reset_name() -> None:
    from vigil.agent.sampling.rates import PerNameRates

    rates = PerNameRates(("n",))
    first = rates.update(10.0, {"a": SimpleNamespace(n=100), "b": SimpleNamespace(n=50)})
    second = rates.update(12.0, {"a": SimpleNamespace(n=300), "b": SimpleNamespace(n=10)})

    assert first == []
    assert second == [("a", {"n": 100.0})]  # b went back: no rate rather than a wrong one
