"""``python -m collector`` as a real process: the listening line, clean shutdown, exit codes."""

from __future__ import annotations

import json
import selectors
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LISTENING = "vigil-collector listening on http://127.0.0.1:"
VALID = """\
listen: {host: 127.0.0.1, port: 9750}
storage: {sqlite_path: collector.db}
auth: {agent_tokens: [cli-test-token-0123456789abcdef0123456789abcdef]}
"""


def write_config(tmp_path: Path, text: str = VALID) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    return path


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vigil.collector", "--config", str(config), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_to_exit(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vigil.collector", "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=20,
    )


def first_line(proc: subprocess.Popen[str], timeout_s: float = 15.0) -> str:
    """The first stdout line, or fail (with the process's stderr) after ``timeout_s``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            proc.kill()
            pytest.fail(f"no output within {timeout_s}s; stderr: {proc.communicate()[1]}")
    return proc.stdout.readline()


@pytest.fixture
def collector_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A running collector on an ephemeral port and the URL its listening line names."""
    proc = start(write_config(tmp_path), "--port", "0")
    try:
        line = first_line(proc)
        assert line.startswith(LISTENING), line
        yield proc, line.removeprefix("vigil-collector listening on ").strip()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def stop(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=15)
    return proc.returncode, out, err


def test_the_listening_line_names_the_real_port_and_healthz_answers(collector_process) -> None:
    _, url = collector_process
    port = int(url.rsplit(":", 1)[1])
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
        body = json.load(resp)
    assert port not in (0, 9750), "--port 0 overrides the config and asks for a free port"
    assert body == {"status": "ok", "version": "0.1.0"}


@pytest.mark.parametrize(
    ("extra", "logged"),
    [("", False), ("logging: {access_log: true}\n", True)],
    ids=["off by default", "on when configured"],
)
def test_the_access_log_is_off_unless_configured(tmp_path, extra: str, logged: bool) -> None:
    """At ``--log-level INFO`` every agent POST would otherwise be one log line."""
    proc = start(write_config(tmp_path, VALID + extra), "--port", "0", "--log-level", "INFO")
    try:
        url = first_line(proc).removeprefix("vigil-collector listening on ").strip()
        for _ in range(3):
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as resp:
                resp.read()
        code, _, err = stop(proc, signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert code == 0, err
    assert err.count("GET /healthz") == (3 if logged else 0), err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_signal_shuts_down_cleanly_with_exit_0(sig, collector_process, tmp_path) -> None:
    proc, _ = collector_process
    code, out, err = stop(proc, sig)
    assert code == 0, err
    assert out == "", "the listening line is the only stdout output"
    assert "Traceback" not in err
    # SQLite removes the WAL file when the last connection closes: the store was closed.
    assert (tmp_path / "collector.db").exists()
    assert not (tmp_path / "collector.db-wal").exists()


def test_an_unknown_config_key_exits_2_naming_file_key_and_value(tmp_path) -> None:
    config = write_config(tmp_path, VALID + "limits: {max_body_byte: 2MiB}\n")
    result = run_to_exit(config)
    assert result.returncode == 2
    assert result.stderr.startswith(f"vigil-collector: {config}: limits.max_body_byte:")
    assert "unknown key" in result.stderr
    assert "'2MiB'" in result.stderr
    assert result.stdout == ""


def test_a_bad_config_value_exits_2_naming_it(tmp_path) -> None:
    config = write_config(tmp_path, VALID.replace("port: 9750", 'port: "abc"'))
    result = run_to_exit(config)
    assert result.returncode == 2
    assert f"{config}: listen.port: expected an integer (got 'abc')" in result.stderr


def test_bad_satisfaction_quiet_hours_exit_2_naming_file_key_and_value(tmp_path) -> None:
    config = write_config(tmp_path, VALID + "satisfaction: {enabled: true, quiet_hours: 8pm-7am}\n")
    result = run_to_exit(config)
    assert result.returncode == 2
    assert f'{config}: satisfaction.quiet_hours: expected "HH:MM-HH:MM"' in result.stderr
    assert "(got '8pm-7am')" in result.stderr


@pytest.mark.parametrize(
    ("auth", "key", "problem"),
    [
        ("{agent_tokens: [change-me-agent-token-but-long-enough-to-pass]}",
         "auth.agent_tokens[0]", "placeholder"),
        ("{agent_tokens: [short-token-31-characters-long1]}", "auth.agent_tokens[0]",
         "31 characters long; at least 32"),
        ("{agent_tokens: [" + "a" * 40 + "], admin_tokens: [" + "b" * 40 + ", CHANGE-ME-x]}",
         "auth.admin_tokens[1]", "placeholder"),
    ],
    ids=["placeholder agent token", "short agent token", "placeholder admin token"],
)  # fmt: skip
def test_a_guessable_token_exits_2_saying_how_to_make_one(tmp_path, auth, key, problem) -> None:
    config = write_config(tmp_path, f"auth: {auth}\n")
    result = run_to_exit(config)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"vigil-collector: {config}: {key}: ")
    assert problem in result.stderr
    assert "secrets.token_urlsafe(32)" in result.stderr
    assert "change-me-agent" not in result.stderr and "short-token" not in result.stderr


def test_the_shipped_example_config_is_refused_until_its_tokens_are_replaced() -> None:
    result = run_to_exit(REPO / "config" / "collector.yaml")
    assert result.returncode == 2
    assert "auth.agent_tokens[0]: is the example's placeholder" in result.stderr


def test_a_missing_config_file_exits_2(tmp_path) -> None:
    result = run_to_exit(tmp_path / "absent.yaml")
    assert result.returncode == 2
    assert "absent.yaml" in result.stderr


def test_a_taken_port_exits_1_with_a_one_line_reason(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_exit(write_config(tmp_path), "--port", str(port))
    assert result.returncode == 1
    assert "vigil-collector: cannot start:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("port", ["70000", "http"], ids=["out-of-range", "not-a-number"])
def test_a_bad_port_option_is_a_usage_error(port, tmp_path) -> None:
    result = run_to_exit(write_config(tmp_path), "--port", port)
    assert result.returncode == 2
    assert "--port" in result.stderr


def test_version_prints_the_version(tmp_path) -> None:
    result = run_to_exit(tmp_path / "unused.yaml", "--version")
    assert (result.returncode, result.stdout) == (0, "vigil-collector 0.1.0\n")
