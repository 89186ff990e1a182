"""Agent config: the shipped examples load, and every mistake names file, key and value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vigil.agent.config import load_agent_config
from vigil.configio import ConfigError, parse_duration, parse_size

REPO = Path(__file__).resolve().parents[2]

MINIMAL = """\
collector:
  url: http://127.0.0.1:9750
  token: t0ken
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["config/agent.yaml", "config/demo/agent.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_agent_config(REPO / name)
    assert config.checks


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    config = load_agent_config(write(tmp_path, MINIMAL))
    assert config.intervals.sample_s == 15.0
    assert config.collector.url == "http://127.0.0.1:9750"
    assert config.checks == ()


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    config = load_agent_config(
        write(tmp_path, MINIMAL + "agent:\n  state_dir: state\nremediation:\n  folders: [fixes]\n")
    )
    assert config.state_dir == tmp_path / "state"
    assert config.remediation.folders == (tmp_path / "fixes",)


@pytest.mark.parametrize(
    ("extra", "key", "value"),
    [
        ("intervals:\n  sampel: 5s\n", "intervals.sampel", "5s"),
        ("intervals:\n  sample: soon\n", "intervals.sample", "soon"),
        ("checks:\n  - id: c\n    metric: m\n    critcal: 5\n", "checks[0].critcal", "5"),
        ("checks:\n  - id: c\n    metric: m\n    critical: high\n", "checks[0].critical", "high"),
        (
            "checks:\n  - id: c\n    metric: m\n    op: '=='\n    critical: 1\n",
            "checks[0].op",
            "==",
        ),
        ("checks:\n  - id: c\n    metric: m\n", "checks[0].critical", None),
        (
            "checks:\n  - {id: c, metric: m, critical: 1}\n  - {id: c, metric: n, critical: 1}\n",
            "checks[1].id",
            "c",
        ),
        ("outbox:\n  max_bytes: lots\n", "outbox.max_bytes", "lots"),
        ("bogus: 1\n", "bogus", "1"),
    ],
    ids=[
        "typo in a key",
        "duration that is not one",
        "typo in a check key",
        "threshold that is not a number",
        "unknown operator",
        "check without any level",
        "duplicate check id",
        "size that is not one",
        "unknown top-level key",
    ],
)
def test_a_mistake_names_file_key_and_value(
    tmp_path: Path, extra: str, key: str, value: str | None
) -> None:
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as exc:
        load_agent_config(path)
    assert exc.value.file == str(path)
    assert exc.value.key == key
    assert str(path) in str(exc.value) and key in str(exc.value)
    if value is not None:
        assert value in str(exc.value)


def test_missing_collector_section_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_agent_config(write(tmp_path, "agent: {}\n"))
    assert exc.value.key == "collector"


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_agent_config(write(tmp_path, "collector:\n  url: [unclosed\n"))
    assert "line" in str(exc.value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(30, 30.0), ("30s", 30.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), ("7d", 604800.0)],
    ids=str,
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"), [(1024, 1024), ("1KiB", 1024), ("1MB", 10**6), ("64MiB", 64 * 2**20)], ids=str
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_cli_exits_2_and_names_file_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "intervals:\n  sample: -5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "vigil.agent", "--config", str(path), "check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert str(path) in proc.stderr
    assert "intervals.sample" in proc.stderr
    assert "-5" in proc.stderr


def test_cli_rejects_a_check_naming_an_unknown_remediation(tmp_path: Path) -> None:
    (tmp_path / "fixes").mkdir()
    path = write(
        tmp_path,
        MINIMAL
        + "agent:\n  state_dir: state\nremediation:\n  folders: [fixes]\n"
        + "checks:\n  - {id: c, metric: m, critical: 1, remediation: no-such-fix}\n",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "vigil.agent", "--config", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "checks[0].remediation" in proc.stderr
    assert "no-such-fix" in proc.stderr


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_cli_help_and_version(flag: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vigil.agent", flag], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    assert "vigil-agent" in proc.stdout
