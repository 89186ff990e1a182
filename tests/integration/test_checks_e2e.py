"""A real agent process with real Debian plugins, reporting to a real collector.

Also the ``vigil-agent check`` CLI, run as a process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.peers import require_binary
from tests.support.procs import collector_config, get_json, spawn_agent, start_collector, stop

REPO = Path(__file__).resolve().parents[2]
AGENT_TOKEN = "checks-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "checks-admin-token-0123456789abcdef0123456789abcdef"


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[str]:
    config = collector_config(tmp_path, agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN)
    proc, url = start_collector(config, None, cwd=REPO)
    yield url
    stop(proc)


def host_checks(url: str) -> dict[str, str]:
    hosts = get_json(url + "/api/v1/hosts", ADMIN_TOKEN)["hosts"]
    return hosts[0]["checks"] if hosts else {}


def test_agent_reports_plugin_states_and_unknown_reasons(tmp_path: Path, collector: str) -> None:
    dummy = require_binary("check_dummy")
    load = require_binary("check_load")
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""\
agent: {{state_dir: state}}
collector: {{url: "{collector}", token: {AGENT_TOKEN}}}
intervals: {{sample: 300ms, report: 300ms, heartbeat: 2s, metrics: 5s}}
sampler:
  disk_mounts: [/no/such/mount]
checks:
  - id: nagios.dummy
    command: [{dummy}, "2", "disk on fire"]
    interval: 500ms
  - id: nagios.load
    command: [{load}, -w, "1000,1000,1000", -c, "2000,2000,2000"]
  - id: disk.gone
    metric: disk.used_percent[/no/such/mount]
    critical: 95
  - id: cpu.fast
    metric: cpu.busy_percent
    critical: 101
    interval: 200ms
"""
    )
    log = tmp_path / "agent.log"
    agent = spawn_agent(config, log, cwd=REPO)
    want = {
        "nagios.dummy": "critical",
        "nagios.load": "ok",
        "disk.gone": "unknown",
        "cpu.fast": "ok",
    }
    try:
        deadline = time.monotonic() + 30
        checks: dict[str, str] = {}
        while time.monotonic() < deadline:
            checks = host_checks(collector)
            if all(checks.get(k) == v for k, v in want.items()):
                break
            time.sleep(0.2)
    finally:
        assert stop(agent) == 0, log.read_text()

    assert {k: checks.get(k) for k in want} == want
    text = log.read_text()
    assert "CRITICAL: disk on fire" in text
    assert "mount /no/such/mount: No such file or directory (unknown)" in text


def run_check_cli(tmp_path: Path, checks: str, *extra: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "collector: {url: 'http://127.0.0.1:9', token: t}\n"
        "sampler: {disk_mounts: [/, /no/such/mount]}\n"
        f"checks:\n{checks}"
    )
    return subprocess.run(
        [sys.executable, "-m", "vigil.agent", "--config", str(config), "check", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_check_cli_json_shows_states_values_and_reasons(tmp_path: Path) -> None:
    dummy = require_binary("check_dummy")
    done = run_check_cli(
        tmp_path,
        f"""\
  - {{id: root, metric: "disk.used_percent[/]", critical: 101}}
  - {{id: gone, metric: "disk.used_percent[/no/such/mount]", critical: 95}}
  - {{id: dummy, command: [{dummy}, "1", "meh | x=5"]}}
""",
        "--json",
    )

    out = json.loads(done.stdout)
    rows = {r["check"]: r for r in out["checks"]}
    assert done.returncode == 1  # not every check is ok
    assert rows["root"]["state"] == "ok"
    assert 0 <= rows["root"]["value"] <= 100
    assert (rows["gone"]["state"], rows["gone"]["detail"]) == (
        "unknown",
        "mount /no/such/mount: No such file or directory",
    )
    assert (rows["dummy"]["state"], rows["dummy"]["detail"]) == ("warning", "WARNING: meh")
    assert out["values"]["plugin.x[dummy]"] == 5
    assert "cpu.busy_percent" in out["values"]


def test_check_cli_table_exits_0_when_all_ok(tmp_path: Path) -> None:
    done = run_check_cli(
        tmp_path, '  - {id: root, metric: "disk.used_percent[/]", critical: 101}\n'
    )

    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()
    assert header.split()[:3] == ["CHECK", "STATE", "VALUE"]
    assert row.split()[:2] == ["root", "OK"]
