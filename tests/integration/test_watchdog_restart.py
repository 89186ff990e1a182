"""The watchdog path end to end with a real agent process: its event loop is blocked, its
WATCHDOG=1 pings stop, and a supervisor honouring systemd's watchdog protocol kills it
(SIGABRT) and starts it again, after which the new process is ready and pinging.

The supervisor is the test-side :class:`~tests.support.supervisor.NotifySupervisor`, not
systemd (there is no systemd as PID 1 here); the agent's side is exactly what runs under
systemd. ``tests/integration/test_sd_notify.py`` checks the ping cadence itself.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.supervisor import NotifySupervisor

WATCHDOG_S = 1.0


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent: {state_dir: state}\n"
        # Nothing listens there: the watchdog does not depend on delivery.
        "collector: {url: 'http://127.0.0.1:9', token: agent-secret-token-0123456789}\n"
        "sampler: {disk_mounts: [/]}\n"
        "intervals: {sample: 1s}\n"
    )
    return config


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[NotifySupervisor]:
    argv = [sys.executable, "-m", "vigil.agent", "--config", str(_config(tmp_path)), "run"]
    # Only the first start has a loop that blocks (for 60 s: far past the watchdog).
    sup = NotifySupervisor(
        argv,
        tmp_path,
        watchdog_s=WATCHDOG_S,
        restart_s=0.5,
        env_for=lambda n: {"VIGIL_AGENT_TEST_BLOCK_LOOP": "2:60"} if n == 0 else {},
        cwd=tmp_path,
    )
    try:
        yield sup
    finally:
        sup.close()


def test_a_blocked_loop_stops_the_pings_and_the_watchdog_restarts_the_agent(
    supervisor: NotifySupervisor,
) -> None:
    def second_start_pinging(sup: NotifySupervisor) -> bool:
        return len(sup.starts) >= 2 and len(sup.starts[1].pings) >= 4

    supervisor.run(40.0, max_starts=3, until=second_start_pinging)
    starts = supervisor.starts
    logs = "\n".join(s.log.read_text()[-2000:] for s in starts)
    assert len(starts) >= 2, logs
    first, second = starts[0], starts[1]
    # The first start was up and pinging before its loop blocked.
    assert first.ready is not None and len(first.pings) >= 2, (first, logs)
    # Then the pings stopped for longer than the watchdog interval: killed by SIGABRT.
    assert first.watchdog_killed, (first, logs)
    assert first.exit_code == -signal.SIGABRT, first
    assert first.ended is not None
    gap = first.ended - first.pings[-1]
    assert gap > WATCHDOG_S, gap
    assert gap < 60, gap  # killed, not merely waited out
    # The restarted agent is a new process that says READY=1 and pings on schedule.
    assert second.pid != first.pid
    assert second.ready is not None and not second.watchdog_killed, (second, logs)
    assert any(m == f"MAINPID={second.pid}" for m in second.messages), second.messages
