"""The shared config reader refuses careless and hostile files with exit-2 errors.

Every case names the file (and the key where there is one) and is answered quickly,
without a traceback, whatever the file holds.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vigil.configio import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    MAX_SHOWN,
    ConfigError,
    Section,
    load_yaml,
    parse_duration,
    parse_size,
    shown,
)


def write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "c.yaml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def refused(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    assert str(path) in str(err.value)
    return err.value


def test_a_duplicate_key_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a: 1\nb:\n  c: 1\n  c: 2\n")

    err = refused(path)

    assert "duplicate key 'c'" in str(err)
    assert "line 4" in str(err)


def test_the_same_key_in_two_mappings_is_fine(tmp_path: Path) -> None:
    assert load_yaml(write(tmp_path, "a: {x: 1}\nb: {x: 2}\n")) == {"a": {"x": 1}, "b": {"x": 2}}


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    path = write(tmp_path, "\n".join(lines) + "\n")

    started = time.monotonic()
    err = refused(path)

    assert f"expands to more than {MAX_NODES} values" in str(err)
    assert time.monotonic() - started < 2
    assert len(str(err)) < 500


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    data = load_yaml(write(tmp_path, "base: &b {x: 1}\none: *b\ntwo: *b\n"))

    assert data["two"] == {"x": 1}


@pytest.mark.parametrize("flow", [True, False], ids=["flow lists", "block mappings"])
def test_deep_nesting_is_refused(tmp_path: Path, flow: bool) -> None:
    depth = 20_000 if flow else MAX_DEPTH + 5
    if flow:
        text = "a: " + "[" * depth + "]" * depth + "\n"
    else:
        text = "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "x: 1\n"

    err = refused(write(tmp_path, text))

    assert "nested deeper than" in str(err) or "nested too deeply" in str(err)


def test_nesting_within_the_limit_loads(tmp_path: Path) -> None:
    depth = MAX_DEPTH - 2
    text = "a: " + "[" * depth + "]" * depth + "\n"

    assert "a" in load_yaml(write(tmp_path, text))


def test_invalid_utf8_is_refused_with_its_offset(tmp_path: Path) -> None:
    err = refused(write(tmp_path, b"name: caf\xe9\n"))

    assert "not valid UTF-8 (byte 9" in str(err)


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    err = refused(write(tmp_path, "a: " + "x" * MAX_FILE_BYTES + "\n"))

    assert f"larger than {MAX_FILE_BYTES} bytes" in str(err)


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "1" * 400], ids=str)
def test_a_non_finite_number_is_refused_where_a_number_is_read(text: str) -> None:
    section = Section({"ratio": __import__("yaml").safe_load(text)}, "f.yaml")

    with pytest.raises(ConfigError) as err:
        section.get("ratio", float)

    assert err.value.key == "ratio"
    assert "must be a finite number" in str(err.value)


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), 10**400, "9" * 400 + "s"],
    ids=["nan", "inf", "huge int", "huge string"],
)
def test_a_non_finite_duration_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="finite"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value",
    ["9" * 400 + "KiB", "nanKiB", 2**64, "16EiB"],
    ids=["huge string", "nan", "2^64", "unit"],
)
def test_an_out_of_range_size_is_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("366d", 366 * 86400.0), (366 * 86400, 366 * 86400.0), ("0s", 0.0)],
    ids=["366d", "366 days as a number", "zero"],
)
def test_a_duration_up_to_a_year_and_a_day_is_accepted(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    ["367d", "9999999d", 366 * 86400 + 1, 1e300, "8785h"],
    ids=["367d", "typo", "a second over", "1e300", "hours"],
)
def test_a_duration_over_366_days_is_refused(value: object) -> None:
    """A finite but absurd duration would push a deadline past what a timestamp holds and
    in effect switch off the limit it sets."""
    with pytest.raises(ValueError, match="at most 366 days"):
        parse_duration(value)


def test_a_duration_key_names_itself_when_over_the_bound(tmp_path: Path) -> None:
    path = write(tmp_path, "window: 9999999d\n")
    section = Section(load_yaml(path), str(path))

    with pytest.raises(ConfigError) as err:
        section.duration("window")

    assert str(err.value).startswith(f"{path}: window: must be at most 366 days")


def test_a_duration_key_names_itself_when_non_finite(tmp_path: Path) -> None:
    path = write(tmp_path, "timeout: .nan\n")
    section = Section(load_yaml(path), str(path))

    with pytest.raises(ConfigError) as err:
        section.duration("timeout")

    assert str(err.value).startswith(f"{path}: timeout: must be a finite number")


def test_an_echoed_value_is_cut_to_a_short_excerpt() -> None:
    err = ConfigError("f.yaml", "name", "x" * 1_000_000, "too long")

    assert len(str(err)) < 200
    assert "1000000 characters" in str(err)


@pytest.mark.parametrize(
    "value",
    [10**5000, list(range(100_000)), {str(i): i for i in range(100_000)}, b"x" * 10_000],
    ids=["5000-digit int", "big list", "big mapping", "bytes"],
)
def test_shown_never_renders_a_value_whole(value: object) -> None:
    assert len(shown(value)) <= MAX_SHOWN + 40


def test_depth_limit_leaves_room_for_real_configs() -> None:
    """The shipped configs nest at most a handful of levels."""
    assert MAX_DEPTH >= 16


AGENT_HEAD = "collector:\n  url: http://127.0.0.1:9750\n  token: t\n"


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("intervals:\n  sample: .nan\n", "intervals.sample"),
        ("collector:\n  url: http://127.0.0.1:9750\n  token: t\n  timeout: .inf\n", None),
    ],
    ids=["intervals.sample", "collector.timeout"],
)
def test_the_agent_config_refuses_non_finite_durations(
    tmp_path: Path, body: str, key: str | None
) -> None:
    from vigil.agent.config import load_agent_config

    text = body if body.startswith("collector:") else AGENT_HEAD + body
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as err:
        load_agent_config(path)

    assert err.value.key == (key or "collector.timeout")
    assert "finite" in str(err.value)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("storage:\n  dedup_retention: .nan\n", "storage.dedup_retention"),
        ("incidents:\n  heartbeat_grace: .inf\n", "incidents.heartbeat_grace"),
    ],
    ids=["dedup_retention", "heartbeat_grace"],
)
def test_the_collector_config_refuses_non_finite_numbers(
    tmp_path: Path, body: str, key: str
) -> None:
    from vigil.collector.config import load_collector_config

    path = write(tmp_path, "auth:\n  agent_tokens: [t-0123456789abcdef0123456789abcdef]\n" + body)

    with pytest.raises(ConfigError) as err:
        load_collector_config(path)

    assert err.value.key == key
    assert "finite" in str(err.value)
