"""The agent's self-health: the pure assessment, the summary series, the config section,
and the loop lag and overruns the timers measure on a real event loop."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from vigil.agent.config import load_agent_config
from vigil.agent.selfhealth import (
    LOOP_LAG_SERIES,
    OVERRUNS_SERIES,
    SKIPPED_SERIES,
    SelfHealthConfig,
    SelfHealthMonitor,
    SelfHealthReading,
    assess,
    take_reading,
)
from vigil.agent.timers import Timers
from vigil.configio import ConfigError

CFG = SelfHealthConfig(loop_lag_s=5.0, loop_lag_heartbeats=3, outbox_full=0.9, delivery_stale_s=600)
HEALTHY = SelfHealthReading(
    loop_lag_s=0.01,
    outbox_events=2,
    outbox_bytes=1000,
    outbox_max_bytes=100_000,
    delivery_age_s=30.0,
    delivery_failures=0,
)


@pytest.mark.parametrize(
    ("reading", "streak", "level", "words"),
    [
        (HEALTHY, 0, "ok", "lag=0.010s outbox=2/1000B delivered=30s ago failures=0"),
        (replace(HEALTHY, loop_lag_s=6.0), 0, "ok", "lag=6.000s"),
        (replace(HEALTHY, loop_lag_s=6.0), 2, "critical", "at 3 heartbeats in a row"),
        (replace(HEALTHY, loop_lag_s=5.0), 2, "ok", "lag=5.000s"),
        (
            replace(HEALTHY, outbox_bytes=95_000, outbox_events=900),
            0,
            "critical",
            "outbox 95% full",
        ),
        (replace(HEALTHY, delivery_age_s=601, delivery_failures=40), 0, "warning", "40 failed"),
        (replace(HEALTHY, delivery_age_s=601, outbox_events=0), 0, "ok", "delivered=601s ago"),
    ],
    ids=[
        "healthy is ok",
        "one lag over the threshold is not yet a fault",
        "lag held for N heartbeats is critical",
        "a lag exactly at the threshold is not over it",
        "an outbox near its byte bound is critical",
        "no delivery for long while events wait is a warning",
        "no delivery needed (empty outbox) is ok",
    ],
)
def test_assess(reading: SelfHealthReading, streak: int, level: str, words: str) -> None:
    result = assess(reading, CFG, streak)
    assert result.level == level
    assert words in result.message


def test_the_lag_streak_counts_up_and_resets_on_a_calm_heartbeat() -> None:
    monitor = SelfHealthMonitor(CFG)
    slow = replace(HEALTHY, loop_lag_s=9.0)
    assert [monitor.observe(slow).level for _ in range(3)] == ["ok", "ok", "critical"]
    assert monitor.lag_streak == 3
    assert monitor.observe(HEALTHY).level == "ok"
    assert monitor.lag_streak == 0
    assert monitor.observe(slow).level == "ok"


def test_summary_carries_the_largest_lag_since_the_last_summary_and_only_busy_jobs() -> None:
    monitor = SelfHealthMonitor(CFG)
    assert monitor.summary_values() == {}
    monitor.observe(replace(HEALTHY, loop_lag_s=2.5, overruns={"sample": 2, "ship": 0}))
    monitor.observe(replace(HEALTHY, loop_lag_s=0.5, skipped={"sample": 1}))
    values = monitor.summary_values()
    assert values[LOOP_LAG_SERIES] == 2.5
    assert f"{SKIPPED_SERIES}[sample]" in values
    assert not any(k.startswith(OVERRUNS_SERIES) for k in values)  # latest reading: none
    monitor.observe(HEALTHY)
    assert monitor.summary_values()[LOOP_LAG_SERIES] == pytest.approx(0.01)


def test_config_section_defaults_and_values(tmp_path: Path) -> None:
    base = "collector: {url: 'http://127.0.0.1:9', token: t0ken}\n"
    (tmp_path / "a.yaml").write_text(base)
    assert load_agent_config(tmp_path / "a.yaml").self_health == SelfHealthConfig()
    (tmp_path / "b.yaml").write_text(
        base + "self_health: {loop_lag: 2s, loop_lag_heartbeats: 4, outbox_full: 0.5,"
        " delivery_stale: 1h}\n"
    )
    got = load_agent_config(tmp_path / "b.yaml").self_health
    assert (got.loop_lag_s, got.loop_lag_heartbeats, got.outbox_full, got.delivery_stale_s) == (
        2.0,
        4,
        0.5,
        3600.0,
    )


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("{outbox_full: 1.5}", "self_health.outbox_full"),
        ("{loop_lag_heartbeats: 0}", "self_health.loop_lag_heartbeats"),
        ("{lag: 3s}", "self_health.lag"),
    ],
    ids=["fraction over 1", "zero heartbeats", "unknown key"],
)
def test_bad_self_health_config_names_the_key(tmp_path: Path, section: str, key: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"collector: {{url: 'http://127.0.0.1:9', token: t0ken}}\nself_health: {section}\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_agent_config(path)
    assert exc.value.key == key


def test_timers_measure_the_lag_of_a_blocked_loop_and_count_overruns() -> None:
    """A job that blocks the loop 0.3 s makes the next timer late by about that much;
    a job slower than its period is counted as an overrun and its grid points skipped."""
    timers = Timers()

    async def block() -> None:
        time.sleep(0.3)  # noqa: ASYNC251 - deliberately blocking: a job that never yields

    async def slow() -> None:
        await asyncio.sleep(0.25)

    timers.add("tick", _noop, 0.05)
    timers.add("block", block, 10.0, first_in_s=0.2)
    timers.add("slow", slow, 0.1)

    async def main() -> tuple[float, float]:
        timers.start()
        await asyncio.sleep(0.1)
        calm = timers.take_max_lag()
        await asyncio.sleep(0.8)
        busy = timers.take_max_lag()
        await timers.stop()
        return calm, busy

    calm, busy = asyncio.run(main())
    assert calm < 0.1
    assert busy >= 0.2
    assert timers.jobs["slow"].overruns >= 2
    assert timers.jobs["slow"].skipped >= 2
    assert timers.jobs["tick"].overruns == 0
    reading = take_reading(
        timers,
        outbox_events=0,
        outbox_bytes=0,
        outbox_max_bytes=1,
        last_delivery=None,
        delivery_failures=0,
        started=10.0,
        now=25.0,
    )
    assert reading.delivery_age_s == 15.0  # no delivery yet: counted from the start
    assert reading.loop_lag_s == 0.0  # taken above
    assert reading.overruns["slow"] == timers.jobs["slow"].overruns


async def _noop() -> None:
    return None
