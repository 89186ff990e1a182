"""A real agent that crashes at every start (its outbox path is a folder, so the outbox
cannot open) backs off: each restart waits longer, up to the cap, and once the fault is
fixed and the agent has run for ``stable`` (or stopped cleanly), the next start waits for
nothing.

The restarts come from the test-side :class:`~tests.support.supervisor.NotifySupervisor`
(``Restart=on-failure`` semantics, not systemd itself); the back-off is the agent's own.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from tests.support.supervisor import NotifySupervisor, Start

BACKOFF = re.compile(r"crash-loop back-off: (\d+) unclean starts, waiting ([0-9.]+) s")


def _delay(start: Start) -> float:
    found = BACKOFF.search(start.log.read_text())
    return float(found.group(2)) if found else 0.0


def test_a_crash_loop_backs_off_then_a_clean_run_resets_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "outbox.db").mkdir(parents=True)  # the injected fault: a folder, not a file
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent:\n"
        "  state_dir: state\n"
        "  crash_backoff: {after: 2, base: 0.5s, cap: 2s, window: 10m, stable: 3s}\n"
        "collector: {url: 'http://127.0.0.1:9', token: agent-secret-token-0123456789}\n"
        "sampler: {disk_mounts: [/]}\n"
        "intervals: {sample: 1s}\n"
    )
    argv = [sys.executable, "-m", "vigil.agent", "--config", str(config), "run"]
    sup = NotifySupervisor(argv, tmp_path, restart_s=0.1, cwd=tmp_path)
    try:
        sup.run(60.0, max_starts=6, until=lambda s: len(s.starts) == 6 and s.starts[-1].ended)
        crashed = sup.starts
        logs = "\n".join(s.log.read_text()[-1500:] for s in crashed)
        assert len(crashed) == 6, logs
        assert all(s.exit_code not in (0, None) and s.ready is None for s in crashed), logs
        delays = [_delay(s) for s in crashed]
        # Two crashes go by; then 0.5 s, doubling, capped at 2 s.
        assert delays == [0.0, 0.0, 0.5, 1.0, 2.0, 2.0], (delays, logs)
        # And the process really waited before crashing (a crash costs no CPU meanwhile).
        lifetimes = [s.ended - s.spawned for s in crashed if s.ended is not None]
        for delay, lived in zip(delays, lifetimes, strict=True):
            assert lived >= delay, (delays, lifetimes)
        assert lifetimes[4] > lifetimes[0] + 1.5, lifetimes

        # The admin fixes the fault; the next start still backs off (six recent crashes)
        # but then runs, and once it has run `stable` (3 s) the record is cleared.
        (state / "outbox.db").rmdir()
        sup.start_again()
        sup.run(30.0, until=lambda s: len(s.starts) == 7 and s.starts[-1].ready is not None)
        fixed = sup.starts[6]
        assert fixed.ready is not None, fixed.log.read_text()
        assert _delay(fixed) == 2.0
        record = state / "crash-starts.json"
        assert len(json.loads(record.read_text())["unclean_starts"]) == 7  # this one too
        deadline = time.monotonic() + 20
        while json.loads(record.read_text())["unclean_starts"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert json.loads(record.read_text()) == {"unclean_starts": []}
        assert fixed.ended is None  # cleared while running: a run that lasted is no loop
        assert sup.stop_current() == 0, fixed.log.read_text()
        assert json.loads(record.read_text()) == {"unclean_starts": []}

        sup.start_again()
        sup.run(30.0, until=lambda s: len(s.starts) == 8 and s.starts[-1].ready is not None)
        calm = sup.starts[7]
        assert calm.ready is not None, calm.log.read_text()
        assert _delay(calm) == 0.0
        assert calm.ready - calm.spawned < 10.0
        assert sup.stop_current() == 0
    finally:
        sup.close()
