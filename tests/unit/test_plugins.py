"""Nagios-plugin checks: the exit-status contract, perfdata, and the bounded runner.

The real plugins of Debian's ``monitoring-plugins-basic`` run in
``tests/integration/test_plugins_nagios.py``.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from tests.support.procs import assert_process_gone
from vigil.agent.plugins import PerfDatum, parse_output, parse_perfdata, run_plugin, series_label


def run(argv: list[str], timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    return asyncio.run(run_plugin(argv, timeout_s=timeout_s))


def script(tmp_path: Path, body: str, name: str = "plugin") -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


# ------------------------------------------------------------------ parsing (pure)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("load1=0.5", [PerfDatum("load1", 0.5, "")], id="bare number"),
        pytest.param(
            "time=120ms;500;1000;0", [PerfDatum("time", 0.12, "ms")], id="ms become seconds"
        ),
        pytest.param("'/ free'=2KB", [PerfDatum("/ free", 2048.0, "KB")], id="quoted label, KB"),
        pytest.param("'it''s'=1", [PerfDatum("it's", 1.0, "")], id="doubled quote in label"),
        pytest.param("used=95%;90;95", [PerfDatum("used", 95.0, "%")], id="percent as given"),
        pytest.param("a=1 b=U c=2c", [PerfDatum("a", 1, ""), PerfDatum("c", 2, "c")], id="U skip"),
        pytest.param("=5 junk x=abc", [], id="malformed items are skipped"),
        pytest.param("x=1.5e3s", [PerfDatum("x", 1500.0, "s")], id="exponent"),
    ],
)
def test_parse_perfdata(text: str, expected: list[PerfDatum]) -> None:
    assert list(parse_perfdata(text)) == expected


def test_parse_output_splits_status_perfdata_and_long_output() -> None:
    text, perf, long_output = parse_output(
        "DISK OK - free 5 GB | free=5GB\nline two\nline three | extra=1\nmore=2\n"
    )

    assert text == "DISK OK - free 5 GB"
    assert [p.label for p in perf] == ["free", "extra", "more"]
    assert long_output == "line two\nline three"


def test_series_label_is_safe_for_a_series_name() -> None:
    assert series_label("/ free space") == "/_free_space"


# ------------------------------------------------------------------ the runner, with scripts


@pytest.mark.parametrize(
    ("code", "state"),
    [(0, "ok"), (1, "warning"), (2, "critical"), (3, "unknown")],
    ids=["0 ok", "1 warning", "2 critical", "3 unknown"],
)
def test_exit_status_is_the_state(tmp_path: Path, code: int, state: str) -> None:
    result = run([script(tmp_path, f"echo 'STATUS {code}|v={code}'\nexit {code}\n")])

    assert (result.state, result.text, result.exit_code) == (state, f"STATUS {code}", code)


def test_exit_status_outside_the_contract_is_unknown_with_the_reason(tmp_path: Path) -> None:
    result = run([script(tmp_path, "echo broken\nexit 127\n")])

    assert result.state == "unknown"
    assert result.reason == "plugin exited with 127 (not 0-3)"


def test_missing_plugin_is_unknown_with_the_reason(tmp_path: Path) -> None:
    result = run([str(tmp_path / "nope")])

    assert result.state == "unknown"
    assert "No such file" in result.text


def test_relative_plugin_path_is_refused() -> None:
    assert run(["check_load"]).reason == "plugin path must be absolute: check_load"


def test_arguments_are_passed_as_argv_never_through_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    plugin = script(tmp_path, 'echo "OK - $1"\n')

    result = run([plugin, f"; touch {marker}"])

    assert result.text == f"OK - ; touch {marker}"
    assert not marker.exists()


def test_timeout_kills_the_whole_process_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    plugin = script(tmp_path, f"sleep 30 &\necho $! > {pidfile}\nwait\n")
    started = time.monotonic()

    result = run([plugin], timeout_s=0.5)

    assert (result.state, result.timed_out) == ("unknown", True)
    assert result.text == "plugin timed out after 0.5s"
    assert time.monotonic() - started < 5
    child = int(pidfile.read_text())
    assert_process_gone(child)


def test_output_is_capped(tmp_path: Path) -> None:
    plugin = script(tmp_path, "echo 'OK | a=1'\nhead -c 1000000 /dev/zero | tr '\\0' x\n")

    result = asyncio.run(run_plugin([plugin], timeout_s=10, output_cap_bytes=4096))

    assert result.truncated
    assert len(result.long_output) < 4096


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="root-only rule")
def test_world_writable_plugin_is_refused_as_root(tmp_path: Path) -> None:
    plugin = script(tmp_path, "echo OK\n")
    os.chmod(plugin, 0o777 | stat.S_IFREG)

    assert "world-writable" in (run([plugin]).reason or "")
