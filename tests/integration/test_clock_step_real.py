"""A real agent whose wall clock is set back an hour keeps working, and says so.

The agent runs under Debian's libfaketime (``LD_PRELOAD``), which shifts the process's
wall clock (``time.time``, ``datetime.now``, SQLite's clock) by the offset in a file the
test rewrites while the agent runs; its monotonic and boot clocks stay real, exactly as
when an admin or NTP steps the clock. Before the agent's jobs ran on the monotonic clock
(``agent/timers.py``), its scheduler kept due times in wall-clock time and ran nothing for
the hour after such a step: no sample cycle, no heartbeat, no delivery, so the collector
saw an outage. Everything is asserted through the collector's hosts API and the agent log.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.peers import unavailable
from tests.support.procs import Collector, running_collector, spawn_agent, stop, wait_for

AGENT_TOKEN = "clock-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "clock-admin-token-0123456789abcdef0123456789abcdef"
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
STEP_S = -3600.0


def require_libfaketime() -> str:
    """The preload library's path, else skip (fail under ``CI=true``: .ci/run installs it)."""
    candidates = [LIBFAKETIME, *Path("/usr/lib").glob("*/faketime/libfaketime.so.1")]
    for path in map(str, candidates):
        if os.path.exists(path):
            return path
    unavailable("libfaketime not found: install the Debian package faketime (.ci/run does)")


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    with running_collector(tmp_path, agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN) as c:
        yield c


def the_host(collector: Collector) -> dict | None:  # type: ignore[type-arg]
    hosts = collector.get("/api/v1/hosts")["hosts"]
    return hosts[0] if hosts else None


def test_an_agent_whose_clock_is_set_back_an_hour_keeps_sampling_and_reporting(
    tmp_path: Path, collector: Collector
) -> None:
    library = require_libfaketime()
    offset_file = tmp_path / "faketime-offset"
    offset_file.write_text("+0\n")
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""\
agent: {{state_dir: agent-state}}
collector: {{url: "{collector.url}", token: {AGENT_TOKEN}}}
intervals: {{sample: 500ms, report: 500ms, heartbeat: 1s, metrics: 10m}}
shipping: {{start_jitter: 0s}}
sampler: {{disk_mounts: []}}
checks:
  - {{id: memory.used, metric: memory.used_percent, critical: 101}}
"""
    )
    env = {
        "LD_PRELOAD": library,
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",  # read the offset file at every clock call
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # a step moves the wall clock only
    }
    log = tmp_path / "agent.log"
    agent = spawn_agent(config, log, cwd=tmp_path, unbuffered=True, env=env)
    try:
        host = wait_for("the agent's first report", lambda: the_host(collector), 30)
        assert abs(host["clock_offset_s"]) < 5, host

        offset_file.write_text(f"{STEP_S:+.0f}\n")
        stepped_at = time.time()

        # A report sent after the step carries a sent_at an hour behind the collector's
        # clock: the collector's offset estimate follows it at once (a step, not drift).
        host = wait_for(
            "a report sent after the step",
            lambda: (h := the_host(collector)) and abs(h["clock_offset_s"] + STEP_S) < 5 and h,
            20,
        )
        # ... and the agent keeps sampling and sending heartbeats, second after second.
        wait_for(
            "heartbeats well after the step",
            lambda: (h := the_host(collector)) and h["last_seen"] > stepped_at + 3 and h,
            20,
        )
        host = the_host(collector)
        assert host is not None and host["liveness"] == "alive", host
        text = wait_for(
            "the step in the agent log",
            lambda: "stepped" in log.read_text() and log.read_text(),
            10,
        )
        assert "clock jump: wall clock stepped -3600 s" in text, text
        assert "Traceback" not in text and "failed" not in text, text
        assert agent.poll() is None, text
    finally:
        assert stop(agent) == 0, log.read_text()
