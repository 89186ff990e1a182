"""End to end: a real collector process and a real agent process on ephemeral ports.

Faults are injected in temporary folders the agent watches; everything is asserted
through the collector's HTTP API and /metrics, as a service desk or Prometheus would.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Collector, running_collector, spawn_agent, stop, wait_for

REPO = Path(__file__).resolve().parents[2]
AGENT_TOKEN = "e2e-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef0123456789abcdef"


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    with running_collector(tmp_path, agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN) as c:
        yield c


def start_agent(tmp_path: Path, url: str, checks: str) -> subprocess.Popen[bytes]:
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""\
agent:
  state_dir: agent-state
  labels: {{department: e2e}}
collector: {{url: "{url}", token: {AGENT_TOKEN}}}
intervals: {{sample: 300ms, report: 500ms, heartbeat: 2s, metrics: 5s}}
sampler:
  disk_mounts: []
  paths:
    - {{name: inbox, path: inbox}}
    - {{name: spool, path: spool}}
remediation:
  folders: [{REPO / "remediations"}]
  verify_delay: 100ms
checks:
{checks}
"""
    )
    for sub in ("inbox", "spool"):
        (tmp_path / sub).mkdir(exist_ok=True)
    return spawn_agent(config, tmp_path / "agent.log", unbuffered=True)


def fill(folder: Path, nbytes: int) -> None:
    (folder / "junk.bin").write_bytes(b"\0" * nbytes)


def test_a_fault_without_a_fix_opens_an_incident_that_resolves_on_recovery(
    tmp_path: Path, collector: Collector
) -> None:
    agent = start_agent(
        tmp_path,
        collector.url,
        "  - {id: inbox.size, metric: 'path.size_bytes[inbox]', critical: 1000}\n",
    )
    try:
        host = wait_for("the agent to report", lambda: collector.get("/api/v1/hosts")["hosts"])[0]
        assert host["labels"] == {"department": "e2e"}
        assert collector.get("/api/v1/incidents?state=open")["incidents"] == []

        fill(tmp_path / "inbox", 5000)
        incident = wait_for(
            "the incident to open",
            lambda: collector.get("/api/v1/incidents?state=open")["incidents"],
        )[0]
        assert incident["check"] == "inbox.size"
        assert incident["host"] == host["agent_id"]
        assert incident["value"] == 5000
        assert isinstance(incident["id"], int)
        metrics = collector.metrics()
        open_by_check = ("vigil_incidents_open_by_check", (("check", "inbox.size"),))
        assert metrics[open_by_check] == 1
        assert metrics[("vigil_incidents_open", (("priority", "P3"), ("service", "none")))] == 1
        assert (
            metrics[("vigil_checks_failing", (("check", "inbox.size"), ("service", "none")))] == 1
        )

        (tmp_path / "inbox" / "junk.bin").unlink()
        resolved = wait_for(
            "the incident to resolve",
            lambda: (
                (i := collector.get(f"/api/v1/incidents/{incident['id']}")["incident"])
                and i["state"] == "resolved"
                and i
            ),
        )
        assert resolved["resolved_at"] >= resolved["opened_at"]
        metrics = collector.metrics()
        assert metrics.get(open_by_check, 0) == 0
        assert metrics[("vigil_incidents_resolved_total", ())] == 1
    finally:
        assert stop(agent) == 0, (tmp_path / "agent.log").read_text()


def test_a_remediated_fault_is_recorded_as_fixed_and_raises_no_incident(
    tmp_path: Path, collector: Collector
) -> None:
    agent = start_agent(
        tmp_path,
        collector.url,
        "  - id: spool.size\n"
        "    metric: 'path.size_bytes[spool]'\n"
        "    critical: 1000\n"
        "    remediation: {id: demo-cleanup, params: {dir: ./spool}}\n",
    )
    try:
        wait_for("the agent to report", lambda: collector.get("/api/v1/hosts")["hosts"])
        fill(tmp_path / "spool", 5000)
        run = wait_for(
            "the remediation record",
            lambda: collector.get("/api/v1/remediations/runs")["runs"],
        )[0]
        assert run["remediation"] == "demo-cleanup"
        assert run["check"] == "spool.size"
        assert run["outcome"] == "fixed"
        assert run["exit_code"] == 0
        assert run["value_before"] == 5000
        assert run["value_after"] == 0
        assert len(run["script_sha256"]) == 64
        assert not (tmp_path / "spool" / "junk.bin").exists()

        prevented = wait_for(
            "the prevented record",
            lambda: collector.get("/api/v1/incidents?state=prevented")["incidents"],
        )
        assert [p["check"] for p in prevented] == ["spool.size"]
        # Give any wrongly raised incident time to arrive before asserting there is none.
        wait_for(
            "the check to report ok again",
            lambda: collector.get("/api/v1/hosts")["hosts"][0]["checks"].get("spool.size") == "ok",
        )
        assert collector.get("/api/v1/incidents?state=open")["incidents"] == []
        metrics = collector.metrics()
        assert metrics[("vigil_incidents_prevented_total", ())] == 1
        assert metrics[("vigil_incidents_opened_total", ())] == 0
        key = (
            "vigil_remediation_runs_total",
            (("outcome", "fixed"), ("remediation", "demo-cleanup")),
        )
        assert metrics[key] == 1
    finally:
        assert stop(agent) == 0, (tmp_path / "agent.log").read_text()
