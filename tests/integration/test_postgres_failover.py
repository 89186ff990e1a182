"""Two real collector processes on one PostgreSQL database: one leads (runs the tick
that ages incidents), the other follows; killed, the leader's duties move to the
follower within one tick, and nothing is applied twice.

Needs the server ``VIGIL_TEST_PG_DSN`` names (``tests/support/postgres.py``): skipped
with the reason without one, failed under ``CI=true``.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import TestSchema, require_postgres
from tests.support.procs import Collector, collector_config, start_collector, stop, wait_for

pytestmark = pytest.mark.timeout(180)

AGENT_TOKEN = "pgf-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "pgf-admin-token-0123456789abcdef0123456789abcdef"
LEADER_LOCK = 0x76696733  # storage/postgres/schema.py; literal: the test reads pg_locks


@pytest.fixture
def schema() -> Iterator[TestSchema]:
    require_postgres()
    made = TestSchema()
    yield made
    made.drop()


def leader_app(schema: TestSchema) -> str | None:
    """The application_name of the session holding the leader lock, if any."""
    import psycopg

    with psycopg.connect(schema.url, autocommit=True) as db:
        row = db.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a"
            " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.classid = %s"
            " AND l.granted",
            (LEADER_LOCK,),
        ).fetchone()
    return None if row is None else str(row[0])


def post_report(collector: Collector, batch: str, ttl_s: float) -> int:
    """One report with a heartbeat (``ttl_s``) from agent ``a1``; the HTTP status."""
    import json
    import urllib.request

    from vigil import wire

    report = wire.Report(
        schema_version=wire.SCHEMA_VERSION, agent_id="a1", hostname="a1.example.test",
        labels={}, batch_id=batch, sent_at=time.time(), agent_version="0.1.0",
        events=(
            wire.CheckEvent(
                event_id=f"{batch}-hb", seq=1, time=time.time(), check="agent.heartbeat",
                state="ok", previous_state=None, value=None, message="alive", ttl_s=ttl_s,
            ),
        ),
    )  # fmt: skip
    request = urllib.request.Request(
        collector.url + "/api/v1/reports",
        data=json.dumps(report.to_dict()).encode(),
        headers={"Authorization": f"Bearer {AGENT_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_the_tick_fails_over_to_the_other_collector(tmp_path: Path, schema: TestSchema) -> None:
    config = collector_config(
        tmp_path,
        agent_token=AGENT_TOKEN,
        admin_token=ADMIN_TOKEN,
        storage=f"{{url: '{schema.url}'}}",
        extra="incidents: {heartbeat_grace: 1s}\nmetrics: {fleet_refresh: 1s}\n",
    )
    first, first_url = start_collector(config, tmp_path / "first.log")
    procs: list[subprocess.Popen[str]] = [first]
    try:
        name = f"vigil-collector-{first.pid}"
        wait_for("the first collector to lead", lambda: leader_app(schema) == name)
        second, second_url = start_collector(config, tmp_path / "second.log")
        procs.append(second)
        a, b = Collector(first_url, ADMIN_TOKEN), Collector(second_url, ADMIN_TOKEN)

        # The same batch through both: applied once.
        assert post_report(a, "b1", ttl_s=4.0) == 200
        assert post_report(b, "b1", ttl_s=4.0) == 200
        # Fleet counters come from the leader only, rebuilt from the database (so they
        # count what the follower applied); the follower serves none of them.
        wait_for(
            "the leader to count the follower's duplicate",
            lambda: a.metrics().get(("vigil_reports_duplicate_total", ())) == 1,
        )
        assert ("vigil_reports_duplicate_total", ()) not in b.metrics()

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed = time.monotonic()
        # The host stays silent past its TTL + grace; only a leader's tick notices.
        incident = wait_for(
            "the follower to take over and open the silent-host incident",
            lambda: b.get("/api/v1/incidents?check=agent.heartbeat")["incidents"],
            timeout_s=30,
        )
        assert len(incident) == 1 and incident[0]["host"] == "a1"
        assert leader_app(schema) == f"vigil-collector-{second.pid}"
        assert time.monotonic() - killed < 4.0 + 1.0 + 10.0
    finally:
        for proc in procs:
            stop(proc)
