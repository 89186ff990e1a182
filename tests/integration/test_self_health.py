"""A real agent whose event loop is blocked reports it: the heartbeat carries the loop lag,
the ``agent.self_health`` check goes critical, and a real collector opens an incident for
it through the usual check path, then resolves it once the loop runs freely again."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import collector_config, get_json, spawn_agent, start_collector, stop

REPO = Path(__file__).resolve().parents[2]
AGENT_TOKEN = "selfhealth-agent-token-0123456789abcdef0123456789"
ADMIN_TOKEN = "selfhealth-admin-token-0123456789abcdef0123456789"


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[str]:
    config = collector_config(tmp_path, agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN)
    proc, url = start_collector(config, tmp_path / "collector.log", cwd=REPO)
    yield url
    stop(proc)


@pytest.fixture
def notify_path() -> Iterator[str]:
    """A bound notify socket: the test-only loop block is armed with the sd_notify setup."""
    folder = tempfile.mkdtemp(prefix="vigil-sh-", dir="/tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"{folder}/notify")
    try:
        yield f"{folder}/notify"
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _wait(what: str, probe: Any, log: Path, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}: {log.read_text()[-3000:]}")


def test_a_blocked_loop_raises_a_self_health_incident_that_resolves(
    tmp_path: Path, collector: str, notify_path: str
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent: {state_dir: state}\n"
        f"collector: {{url: '{collector}', token: {AGENT_TOKEN}}}\n"
        "sampler: {disk_mounts: [/]}\n"
        "intervals: {sample: 500ms, report: 500ms, heartbeat: 1s, metrics: 2s}\n"
        "shipping: {start_jitter: 0s}\n"
        "self_health: {loop_lag: 1s, loop_lag_heartbeats: 1}\n"
    )
    log = tmp_path / "agent.log"
    env = {"NOTIFY_SOCKET": notify_path, "VIGIL_AGENT_TEST_BLOCK_LOOP": "3:3"}
    agent = spawn_agent(config, log, cwd=REPO, env=env)

    def hosts_check(state: str) -> bool:
        hosts = get_json(collector + "/api/v1/hosts", ADMIN_TOKEN)["hosts"]
        return bool(hosts) and hosts[0]["checks"].get("agent.self_health") == state

    def open_incident() -> list[dict[str, Any]]:
        found = get_json(collector + "/api/v1/incidents?state=open", ADMIN_TOKEN)["incidents"]
        return [i for i in found if i["check"] == "agent.self_health"]

    try:
        _wait("self_health ok before the block", lambda: hosts_check("ok"), log, 15)
        assert not open_incident()
        incident = _wait("a self_health incident", open_incident, log)[0]
        _wait("self_health ok after the block", lambda: hosts_check("ok"), log)
        resolved = _wait(
            "the incident resolved",
            lambda: (
                get_json(f"{collector}/api/v1/incidents/{incident['id']}", ADMIN_TOKEN)["incident"][
                    "state"
                ]
                == "resolved"
            ),
            log,
        )
        assert resolved
    finally:
        stop(agent)
    text = log.read_text()
    assert "check agent.self_health: ok -> critical (event loop lag" in text, text[-3000:]
