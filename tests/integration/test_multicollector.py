"""Two real collector processes on one port (``listen.reuse_port``) and one PostgreSQL
database: connections spread over both, every report is applied once whichever process
takes it (and its retry), and ``/metrics`` serves fleet figures from the leader only
while each process serves its own counts, so a sum over processes is right. The leader
SIGKILLed, the survivor serves the port alone, takes the lead, and loses nothing.

Needs the server ``VIGIL_TEST_PG_DSN`` names (``tests/support/postgres.py``): skipped
with the reason without one, failed under ``CI=true``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_chaos import applied_twice, duplicates_acknowledged, stored_event_ids
from tests.support.peers import free_port
from tests.support.postgres import TestSchema, require_postgres
from tests.support.procs import (
    Metrics,
    collector_config,
    read_line,
    read_metrics,
    stop,
    wait_for,
)
from tests.support.simagents import SimAgent, deliver

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT: Linux"),
]

AGENT_TOKEN = "mc-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "mc-admin-token-0123456789abcdef0123456789abcdef"
AGENTS, REPORTS_EACH = 8, 5


@pytest.fixture
def schema() -> Iterator[TestSchema]:
    require_postgres()
    made = TestSchema()
    yield made
    made.drop()


def start_on(config: Path, log: Path, process_port: int) -> subprocess.Popen[str]:
    """A collector on the config's (shared) port, and alone on ``process_port``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil.collector", "--config", str(config),
         "--process-port", str(process_port)],
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
    )  # fmt: skip
    line = read_line(proc, 20.0)
    if "listening on" not in line:
        pytest.fail(f"collector did not start: {line!r} {log.read_text()}")
    return proc


def requests_in(log: Path) -> int:
    """Report POSTs this process answered (its access log)."""
    return sum("POST /api/v1/reports" in line for line in log.read_text().splitlines())


def scrape_both(url: str) -> dict[int, Metrics]:
    """Scrape the shared port until both the leader's (key 1) and a follower's (key 0)
    answer came back; each scrape lands on whichever process the kernel picks."""
    seen: dict[int, Metrics] = {}
    for _ in range(200):  # bounded: the chance of missing one process is 2**-200
        metrics = read_metrics(url + "/metrics", ADMIN_TOKEN)
        seen[int(metrics[("vigil_collector_leader", ())])] = metrics
        if len(seen) == 2:
            return seen
    pytest.fail(f"only processes with vigil_collector_leader in {sorted(seen)} answered")


def test_two_processes_on_one_port_apply_each_report_once(
    tmp_path: Path, schema: TestSchema
) -> None:
    port = free_port()
    config = collector_config(
        tmp_path,
        agent_token=AGENT_TOKEN,
        admin_token=ADMIN_TOKEN,
        port=port,
        storage=f"{{url: '{schema.url}', record_event_ids: true}}",
        extra="logging: {access_log: true}\nmetrics: {fleet_refresh: 1s}\n",
    )
    config.write_text(config.read_text().replace("port: ", "reuse_port: true, port: ", 1))
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    own = [free_port(), free_port()]
    procs = [start_on(config, logs[0], own[0]), start_on(config, logs[1], own[1])]
    url = f"http://127.0.0.1:{port}"
    try:
        agents = [SimAgent(f"mc{i}") for i in range(AGENTS)]
        for _ in range(REPORTS_EACH):
            for agent in agents:
                report = agent.report()
                # Each on a fresh connection, then once more (a retry after a lost ack),
                # likely through the other process.
                assert deliver(port, report, AGENT_TOKEN) == (True, 1)
                assert deliver(port, report, AGENT_TOKEN) == (True, 1)
        reports = AGENTS * REPORTS_EACH

        # Connections spread over both processes.
        # (aiohttp writes the access line after the response: wait for the last one.)
        def counted() -> list[int] | None:
            n = [requests_in(log) for log in logs]
            return n if sum(n) == 2 * reports else None

        answered = wait_for("every request in the access logs", counted, timeout_s=10)
        assert min(answered) > 0, answered

        # Nothing lost, nothing applied twice.
        sent = {(a.agent_id, e) for a in agents for e in a.sent}
        assert stored_event_ids(schema.url) == sent
        assert applied_twice(schema.url) == 0
        assert duplicates_acknowledged(schema.url) == reports

        # /metrics: per-process counts sum to the whole; fleet figures from the leader
        # only, rebuilt from the database (they include the follower's reports).
        def leader_caught_up() -> dict[int, Metrics] | None:
            both = scrape_both(url)
            accepted = both[1].get(("vigil_reports_accepted_total", ()))
            return both if accepted == reports else None

        both = wait_for("the leader's fleet figures to count every report", leader_caught_up)
        # Each process at its own port (--process-port) says the same about itself.
        alone = [read_metrics(f"http://127.0.0.1:{p}/metrics", ADMIN_TOKEN) for p in own]
        assert sorted(m[("vigil_collector_leader", ())] for m in alone) == [0, 1]
        leader, follower = both[1], both[0]
        assert leader[("vigil_reports_duplicate_total", ())] == reports
        assert leader[("vigil_agents", (("state", "up"),))] == AGENTS
        assert not any(name == "vigil_agents" for name, _ in follower)
        assert not any(name.startswith("vigil_reports_accepted") for name, _ in follower)
        ingested = sum(m[("vigil_ingest_duration_seconds_count", ())] for m in both.values())
        assert ingested == 2 * reports  # every answered report, duplicates too
        for metrics in both.values():  # every process says what it runs
            assert [v for (name, _), v in metrics.items() if name == "vigil_build_info"] == [1]

        # The leader SIGKILLed: the port stays served by the survivor, which takes over
        # the lead (and the fleet figures); the next round is applied once, all of it.
        lead = 0 if alone[0][("vigil_collector_leader", ())] == 1 else 1
        procs[lead].send_signal(signal.SIGKILL)
        procs[lead].wait(timeout=10)
        for agent in agents:
            assert deliver(port, agent.report(), AGENT_TOKEN)[0]
        survivor = f"http://127.0.0.1:{own[1 - lead]}/metrics"
        wait_for(
            "the survivor to lead and count every report",
            lambda: (
                read_metrics(survivor, ADMIN_TOKEN).get(("vigil_reports_accepted_total", ()))
                == reports + AGENTS
            ),
        )
        sent = {(a.agent_id, e) for a in agents for e in a.sent}
        assert stored_event_ids(schema.url) == sent
        assert applied_twice(schema.url) == 0
    finally:
        for proc in procs:
            stop(proc)
