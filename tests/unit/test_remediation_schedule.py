"""Remediation schedules: the config forms, when a daily/once schedule is due (pure, on
a fixed time zone), and the agent running one exactly once across sleeps and restarts."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

import pytest

from vigil.agent.config import RemediationSettings
from vigil.agent.delivery.outbox import Outbox
from vigil.agent.remediation.flow import RemediationFlow
from vigil.agent.remediation.manifest import load_library
from vigil.agent.remediation.schedule import (
    TimedSchedule,
    due,
    host_offset,
    latest_instant,
    parse_schedules,
)
from vigil.agent.remediation.timed import TimedRuns
from vigil.configio import ConfigError, Section

UTC = dt.UTC
DAY = 86400.0
# 2026-03-02 12:00 UTC, a Monday.
NOON = dt.datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp()


def parse(data: dict) -> tuple[dict, dict]:
    every, timed, _splay = parse_schedules(Section(data, "agent.yaml", "remediation.schedule"))
    return every, timed


def test_every_form_and_the_plain_seconds_form_mean_the_same() -> None:
    assert parse({"a": "15m", "b": {"every": "15m"}, "c": 30}) == (
        {"a": 900.0, "b": 900.0, "c": 30.0},
        {},
    )


def test_an_every_schedule_takes_a_splay_of_at_most_its_interval() -> None:
    data = {"a": "15m", "b": {"every": "15m", "splay": "5m"}}
    parsed = parse_schedules(Section(data, "agent.yaml", "remediation.schedule"))
    assert parsed == ({"a": 900.0, "b": 900.0}, {}, {"b": 300.0})
    with pytest.raises(ConfigError) as info:
        parse({"x": {"every": "1m", "splay": "2m"}})
    assert info.value.key == "remediation.schedule.x.splay"


def test_daily_and_once_forms() -> None:
    _, timed = parse({"d": {"daily": "09:30", "splay": "30m"}, "o": {"once": True}})
    assert timed == {
        "d": TimedSchedule("daily", 9 * 3600 + 30 * 60, 1800.0),
        "o": TimedSchedule("once", 0.0, 0.0),
    }


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"daily": "9:30"}, "remediation.schedule.x.daily"),
        ({"daily": "24:00"}, "remediation.schedule.x.daily"),
        ({"once": False}, "remediation.schedule.x.once"),
        ({"every": "1m", "daily": "09:00"}, "remediation.schedule.x.every"),
        ({"daily": "09:00", "jitter": "1m"}, "remediation.schedule.x.jitter"),
        ("0.5s", "remediation.schedule.x"),
    ],
    ids=["no-leading-zero", "24h", "once-false", "two-kinds", "unknown-key", "too-fast"],
)
def test_bad_schedules_name_the_key(entry: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse({"x": entry})
    assert info.value.key == key


def test_host_offset_is_stable_within_the_splay_and_differs_across_hosts() -> None:
    offsets = {host_offset(f"agent-{i}", "fix", 1800.0) for i in range(50)}
    assert all(0 <= o < 1800.0 for o in offsets)
    assert len(offsets) == 50
    assert host_offset("agent-1", "fix", 1800.0) == host_offset("agent-1", "fix", 1800.0)
    assert host_offset("agent-1", "fix", 0.0) == 0.0


DAILY = TimedSchedule("daily", 9 * 3600.0, 0.0)


def test_the_latest_daily_instant_is_today_or_yesterday() -> None:
    nine = dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()
    assert latest_instant(DAILY, NOON, 0.0, UTC) == nine
    assert latest_instant(DAILY, nine - 1, 0.0, UTC) == nine - DAY
    assert latest_instant(DAILY, NOON, 600.0, UTC) == nine + 600.0


def test_a_daily_schedule_runs_once_per_day() -> None:
    ran_at_nine = dt.datetime(2026, 3, 2, 9, 0, 5, tzinfo=UTC).timestamp()
    assert not due(DAILY, now=NOON, last_run=ran_at_nine, offset_s=0, started=0, tz=UTC)
    assert due(DAILY, now=NOON + DAY, last_run=ran_at_nine, offset_s=0, started=0, tz=UTC)


def test_a_laptop_asleep_for_days_finds_one_due_run_on_wake() -> None:
    """Slept from Monday noon to Friday noon: due once; after that run, not again."""
    friday = NOON + 4 * DAY
    assert due(DAILY, now=friday, last_run=NOON, offset_s=0, started=0, tz=UTC)
    assert not due(DAILY, now=friday + 60, last_run=friday, offset_s=0, started=0, tz=UTC)


def test_a_clock_set_back_does_not_rerun() -> None:
    assert not due(DAILY, now=NOON - 3600, last_run=NOON, offset_s=0, started=0, tz=UTC)


def test_once_waits_for_its_splay_then_never_again() -> None:
    once = TimedSchedule("once", 0.0, 600.0)
    assert not due(once, now=NOON + 100, last_run=None, offset_s=300, started=NOON)
    assert due(once, now=NOON + 300, last_run=None, offset_s=300, started=NOON)
    assert not due(once, now=NOON + DAY, last_run=NOON + 300, offset_s=300, started=NOON)


@pytest.mark.skipif(os.name != "posix", reason="POSIX sh remediation script")
def test_the_agent_runs_a_once_schedule_once_across_restarts(tmp_path: Path) -> None:
    library_dir = tmp_path / "lib" / "note"
    library_dir.mkdir(parents=True)
    marker = tmp_path / "marker"
    (library_dir / "remediation.yaml").write_text(
        "id: note\ntitle: Note\ndescription: Appends a line.\nplatforms: [linux, darwin]\n"
        "scripts: {linux: fix.sh, darwin: fix.sh}\n"
    )
    (library_dir / "fix.sh").write_text(f'#!/bin/sh\necho "$VIGIL_TRIGGER" >> {marker}\n')
    library, errors = load_library([tmp_path / "lib"])
    assert errors == []
    settings = RemediationSettings(folders=(tmp_path / "lib",))
    schedules = {"note": TimedSchedule("once", 0.0, 0.0)}
    now = [NOON]

    async def main() -> None:
        outbox = Outbox(tmp_path / "outbox.db")
        flow = RemediationFlow(settings, library, outbox)
        runs = TimedRuns(tmp_path, "agent-1", clock=lambda: now[0])
        assert await runs.tick(flow, schedules) == 1
        now[0] += 60
        assert await runs.tick(flow, schedules) == 0
        again = TimedRuns(tmp_path, "agent-1", clock=lambda: now[0])  # a restart
        assert await again.tick(flow, schedules) == 0
        outbox.close()

    asyncio.run(main())
    assert marker.read_text() == "schedule\n"
