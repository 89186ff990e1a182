"""The agent's crash-loop back-off: the pure delay rule, the window, the record file."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.agent.config import load_agent_config
from vigil.agent.crashguard import (
    CRASH_FILE,
    MAX_KEPT,
    CrashBackoffConfig,
    CrashRecord,
    backoff_delay,
    recent,
)
from vigil.configio import ConfigError

CFG = CrashBackoffConfig(after=3, window_s=3600, base_s=10, cap_s=300)


@pytest.mark.parametrize(
    ("crashes", "delay"),
    [(0, 0.0), (2, 0.0), (3, 10.0), (4, 20.0), (5, 40.0), (8, 300.0), (10_000, 300.0)],
    ids=["none", "below after", "at after", "doubles", "doubles again", "capped", "huge"],
)
def test_the_delay_doubles_from_base_after_n_crashes_up_to_the_cap(
    crashes: int, delay: float
) -> None:
    assert backoff_delay(crashes, CFG) == delay


def test_after_zero_turns_the_back_off_off() -> None:
    assert backoff_delay(50, CrashBackoffConfig(after=0)) == 0.0


def test_only_starts_within_the_window_count_and_future_ones_are_ignored() -> None:
    now = 10_000.0
    starts = [now - 4000, now - 3000, now - 10, now + 30, now + 500]
    assert recent(starts, now, 3600) == [now - 3000, now - 10, now + 30]


def test_each_start_is_recorded_and_a_clean_stop_clears_the_record(tmp_path: Path) -> None:
    record = CrashRecord(tmp_path)
    got = [record.begin(1000.0 + i, CFG) for i in range(5)]
    assert got == [(0, 0.0), (1, 0.0), (2, 0.0), (3, 10.0), (4, 20.0)]
    record.clean_stop()
    assert record.begin(2000.0, CFG) == (0, 0.0)


def test_the_record_keeps_a_bounded_number_of_starts(tmp_path: Path) -> None:
    record = CrashRecord(tmp_path)
    for i in range(MAX_KEPT + 20):
        record.begin(1000.0 + i, CFG)
    assert len(record.load()) == MAX_KEPT


@pytest.mark.parametrize(
    ("content", "starts"),
    [
        ("not json", []),
        ("[1, 2]", []),
        ('{"unclean_starts": "x"}', []),
        ('{"unclean_starts": [1, "a", true]}', [1.0]),
    ],
    ids=["not json", "not an object", "not a list", "bad items skipped"],
)
def test_a_corrupt_record_counts_as_none(tmp_path: Path, content: str, starts: list[float]) -> None:
    (tmp_path / CRASH_FILE).write_text(content)
    assert CrashRecord(tmp_path).load() == starts


def test_a_state_folder_that_cannot_be_written_does_not_stop_the_start(tmp_path: Path) -> None:
    """Even root cannot create a file under a regular file: the record fails, the start goes."""
    not_a_folder = tmp_path / "state"
    not_a_folder.write_text("")
    assert CrashRecord(not_a_folder).begin(1000.0, CFG) == (0, 0.0)
    CrashRecord(not_a_folder).clean_stop()  # logged, not raised


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("{base: 10s, cap: 5s}", "agent.crash_backoff.cap"),
        ("{cap: 10m, window: 5m}", "agent.crash_backoff.window"),
        ("{after: -1}", "agent.crash_backoff.after"),
        ("{delay: 1s}", "agent.crash_backoff.delay"),
        ("{stable: 0s}", "agent.crash_backoff.stable"),
    ],
    ids=["cap below base", "window within cap", "negative after", "unknown key", "zero stable"],
)
def test_bad_crash_backoff_config_names_the_key(tmp_path: Path, section: str, key: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"agent: {{crash_backoff: {section}}}\n"
        "collector: {url: 'http://127.0.0.1:9', token: t0ken}\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_agent_config(path)
    assert exc.value.key == key
