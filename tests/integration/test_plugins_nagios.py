"""Nagios-plugin checks against the real plugins of Debian's ``monitoring-plugins-basic``."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from tests.support.peers import require_binary
from vigil.agent.plugins import run_plugin


def run(argv: list[str], timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    return asyncio.run(run_plugin(argv, timeout_s=timeout_s))


@pytest.mark.parametrize(
    ("args", "state"),
    [
        pytest.param(["0", "all good"], "ok", id="0 ok"),
        pytest.param(["1", "meh"], "warning", id="1 warning"),
        pytest.param(["2", "boom"], "critical", id="2 critical"),
        pytest.param(["3", "what"], "unknown", id="3 unknown"),
    ],
)
def test_real_check_dummy(args: list[str], state: str) -> None:
    result = run([require_binary("check_dummy"), *args])

    assert result.state == state
    assert result.text.endswith(args[1])


def test_real_check_load_gives_load_perfdata() -> None:
    result = run([require_binary("check_load"), "-w", "1000,1000,1000", "-c", "2000,2000,2000"])

    assert result.state == "ok"
    assert {"load1", "load5", "load15"} <= {p.label for p in result.perfdata}
    assert set(result.series("nagios.load")) >= {"plugin.load1[nagios.load]"}


def test_real_check_disk_reports_root_free_space_in_bytes() -> None:
    result = run([require_binary("check_disk"), "-w", "0%", "-c", "0%", "-p", "/"])

    assert result.state == "ok"
    free = psutil.disk_usage("/").free
    (used,) = [p for p in result.perfdata if p.label == "/"]
    assert used.unit in ("B", "MB")
    assert 0 < used.value < free * 100  # a byte count, not MiB


def test_real_check_procs_critical_when_too_few_processes() -> None:
    result = run([require_binary("check_procs"), "-c", "1000000:", "-C", "python3"])

    assert result.state == "critical"
    assert result.text.startswith("PROCS CRITICAL")
