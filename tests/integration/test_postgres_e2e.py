"""A real collector process on PostgreSQL, a real agent delivering to it: incidents
open and are served through the API, and a restarted collector keeps every row, its
dedup state and its aggregates (it reloads them from the database, not a local file).

Needs the server ``VIGIL_TEST_PG_DSN`` names (``tests/support/postgres.py``): skipped
with the reason without one, failed under ``CI=true``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import TestSchema, require_postgres
from tests.support.procs import (
    Collector,
    collector_config,
    spawn_agent,
    start_collector,
    stop,
    wait_for,
)

AGENT_TOKEN = "pg-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "pg-admin-token-0123456789abcdef0123456789abcdef"
OPEN_BY_CHECK = ("vigil_incidents_open_by_check", (("check", "inbox.size"),))


@pytest.fixture
def schema() -> Iterator[TestSchema]:
    require_postgres()
    made = TestSchema()
    yield made
    made.drop()


def start(tmp_path: Path, config: Path, n: int) -> tuple[subprocess.Popen[str], Collector]:
    proc, url = start_collector(config, tmp_path / f"collector-{n}.log")
    return proc, Collector(url=url, token=ADMIN_TOKEN)


def start_agent(tmp_path: Path, url: str) -> subprocess.Popen[bytes]:
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""\
agent: {{state_dir: agent-state, labels: {{department: pg}}}}
collector: {{url: "{url}", token: {AGENT_TOKEN}}}
intervals: {{sample: 300ms, report: 500ms, heartbeat: 2s, metrics: 5s}}
sampler:
  disk_mounts: []
  paths: [{{name: inbox, path: inbox}}]
checks:
  - {{id: inbox.size, metric: 'path.size_bytes[inbox]', critical: 1000}}
"""
    )
    (tmp_path / "inbox").mkdir(exist_ok=True)
    return spawn_agent(config, tmp_path / "agent.log", unbuffered=True, cwd=tmp_path)


def test_a_collector_on_postgresql_serves_incidents_and_keeps_them_across_a_restart(
    tmp_path: Path, schema: TestSchema
) -> None:
    config = collector_config(
        tmp_path,
        agent_token=AGENT_TOKEN,
        admin_token=ADMIN_TOKEN,
        storage=f"{{url: '{schema.url}'}}",
    )
    proc, collector = start(tmp_path, config, 1)
    agent = None
    try:
        agent = start_agent(tmp_path, collector.url)
        (tmp_path / "inbox" / "junk.bin").write_bytes(b"\0" * 5000)
        incident = wait_for(
            "the incident to open",
            lambda: collector.get("/api/v1/incidents?state=open")["incidents"],
        )[0]
        assert (incident["check"], incident["value"]) == ("inbox.size", 5000)
        detail = collector.get(f"/api/v1/incidents/{incident['id']}")["incident"]
        hosts = collector.get("/api/v1/hosts")["hosts"]
        assert [h["labels"] for h in hosts] == [{"department": "pg"}]
        assert stop(agent) == 0, (tmp_path / "agent.log").read_text()
        agent = None
        reports = collector.metrics()[("vigil_reports_accepted_total", ())]
        assert stop(proc) == 0, (tmp_path / "collector-1.log").read_text()

        # The same database, a new process: nothing of the state was in the old one.
        proc, collector = start(tmp_path, config, 2)
        assert collector.get(f"/api/v1/incidents/{incident['id']}")["incident"] == detail
        assert collector.get("/api/v1/hosts")["hosts"] == hosts
        metrics = collector.metrics()
        assert metrics[OPEN_BY_CHECK] == 1
        assert metrics[("vigil_reports_accepted_total", ())] == reports

        # The agent carries on against the restarted collector: the fix resolves the
        # incident opened before the restart, and no second incident is opened.
        agent = start_agent(tmp_path, collector.url)
        (tmp_path / "inbox" / "junk.bin").unlink()
        wait_for(
            "the incident to resolve",
            lambda: (
                collector.get(f"/api/v1/incidents/{incident['id']}")["incident"]["state"]
                == "resolved"
            ),
        )
        assert [i["id"] for i in collector.get("/api/v1/incidents")["incidents"]] == [
            incident["id"]
        ]
        assert collector.metrics().get(OPEN_BY_CHECK, 0) == 0
    finally:
        if agent is not None:
            stop(agent)
        assert stop(proc) == 0, (tmp_path / "collector-2.log").read_text()
