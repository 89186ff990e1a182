"""End to end: fleet correlation with real agents and a real collector (issue #15, item 5).

A fault that hits every host and that every host fixes itself must still surface as one
problem (self-healed: no page, no SLA) so that its root cause gets a CAPA record; and two
unrelated failures in a small fleet must not be called a fleet problem. Every agent is
its own process with its own state folder and spool; everything runs on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_incidents_alertmanager import Receiver
from tests.support.procs import (
    Collector,
    collector_config,
    spawn_agent,
    start_collector,
    stop,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
AGENT_TOKEN = "fleet-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "fleet-admin-token-0123456789abcdef0123456789abcdef"
CHECK = "spool.size"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def collector(tmp_path: Path, receiver: Receiver) -> Iterator[Collector]:
    """A collector correlating at 3 hosts and half the fleet, notifying the receiver
    (as Alertmanager and as a webhook) after a 1 s group wait."""
    config = collector_config(
        tmp_path,
        agent_token=AGENT_TOKEN,
        admin_token=ADMIN_TOKEN,
        extra=f"""\
incidents:
  correlation: {{window: 5m, min_hosts: 3, min_share: 0.5}}
notifications:
  delay: 1s
  interval: 500ms
  alertmanager: [{{url: "http://127.0.0.1:{receiver.port}/am"}}]
  webhooks: [{{url: "http://127.0.0.1:{receiver.port}/hook"}}]
""",
    )
    proc, url = start_collector(config, tmp_path / "collector.log")
    try:
        yield Collector(url=url, token=ADMIN_TOKEN)
    finally:
        assert stop(proc) == 0, (tmp_path / "collector.log").read_text()


def start_agent(folder: Path, url: str, *, fix: bool) -> subprocess.Popen[bytes]:
    """An agent watching ``folder/spool``; with ``fix`` the check empties it
    (demo-cleanup) when it goes critical, else it only reports."""
    spool = folder / "spool"
    spool.mkdir(parents=True)
    remediation = (
        f"\n    remediation: {{id: demo-cleanup, params: {{dir: '{spool}'}}}}" if fix else ""
    )
    (folder / "agent.yaml").write_text(
        f"""\
agent:
  state_dir: state
collector: {{url: "{url}", token: {AGENT_TOKEN}}}
intervals: {{sample: 300ms, report: 500ms, heartbeat: 2s, metrics: 5s}}
sampler:
  disk_mounts: []
  paths: [{{name: spool, path: spool}}]
remediation:
  folders: ["{REPO / "remediations"}"]
  verify_delay: 100ms
checks:
  - id: {CHECK}
    metric: 'path.size_bytes[spool]'
    critical: 1000{remediation}
"""
    )
    return spawn_agent(folder / "agent.yaml", folder / "agent.log", unbuffered=True)


def run_agents(
    tmp_path: Path, collector: Collector, count: int, *, fix: bool
) -> list[subprocess.Popen[bytes]]:
    agents = [start_agent(tmp_path / f"agent{n}", collector.url, fix=fix) for n in range(count)]
    wait_for(
        f"all {count} agents to report",
        lambda: len(collector.get("/api/v1/hosts")["hosts"]) == count,
        timeout_s=60.0,
    )
    return agents


def stop_agents(tmp_path: Path, agents: list[subprocess.Popen[bytes]]) -> None:
    codes = [stop(agent) for agent in agents]
    for n, code in enumerate(codes):
        assert code == 0, (tmp_path / f"agent{n}" / "agent.log").read_text()


def inject(folder: Path) -> None:
    (folder / "spool" / "junk.bin").write_bytes(b"\0" * 5000)


def test_a_fault_every_host_fixed_is_one_self_healed_problem_and_no_page(
    tmp_path: Path, collector: Collector, receiver: Receiver
) -> None:
    hosts = 8
    agents = run_agents(tmp_path, collector, hosts, fix=True)
    try:
        for n in range(hosts):
            inject(tmp_path / f"agent{n}")
        prevented = wait_for(
            "every host to fix the fault",
            lambda: (
                len(p := collector.get("/api/v1/incidents?state=prevented")["incidents"]) == hosts
                and p
            ),
            timeout_s=60.0,
        )
        (problem,) = collector.get("/api/v1/problems")["problems"]
        assert (problem["kind"], problem["state"], problem["check"]) == (
            "self_healed",
            "open",
            CHECK,
        )
        assert problem["hosts"] == hosts
        assert problem["summary"].startswith(f"{CHECK} self-healed on {hosts} hosts")
        assert problem["sla_due"] is None
        assert sorted(problem["incidents"]) == sorted(i["id"] for i in prevented)
        assert collector.get("/api/v1/incidents?state=open")["incidents"] == []
        wait_for(
            "the self-healed problem in /metrics",
            lambda: (
                collector.metrics().get(("vigil_problems_open", (("kind", "self_healed"),))) == 1
            ),
            timeout_s=20.0,
        )
        assert collector.metrics()[("vigil_problems_open", (("kind", "fleet"),))] == 0
        # Several notifier passes past the group wait: nothing is paged or posted.
        time.sleep(3.0)
        assert receiver.received == []
    finally:
        stop_agents(tmp_path, agents)


def test_two_unrelated_failures_on_four_hosts_are_not_a_fleet_problem(
    tmp_path: Path, collector: Collector
) -> None:
    agents = run_agents(tmp_path, collector, 4, fix=False)
    try:
        for n in (0, 1):
            inject(tmp_path / f"agent{n}")
        incidents = wait_for(
            "both incidents to open",
            lambda: len(i := collector.get("/api/v1/incidents?state=open")["incidents"]) == 2 and i,
            timeout_s=30.0,
        )
        assert {i["check"] for i in incidents} == {CHECK}
        assert collector.get("/api/v1/problems")["problems"] == []
    finally:
        stop_agents(tmp_path, agents)
