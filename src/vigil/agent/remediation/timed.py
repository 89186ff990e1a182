"""Runs daily and once schedules (:mod:`~vigil.agent.remediation.schedule`) on the
agent's monotonic timers, remembering each schedule's last run in
``<state_dir>/schedule.json`` so a restart neither repeats nor forgets one."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from vigil.agent.identity import write_atomically
from vigil.agent.remediation.flow import RemediationFlow, detection_spec
from vigil.agent.remediation.requested import run_requested
from vigil.agent.remediation.schedule import TimedSchedule, due, host_offset

log = logging.getLogger("vigil.agent")

STATE_FILE = "schedule.json"


class TimedRuns:
    """The daily/once schedules of one agent. ``clock`` gives wall seconds."""

    def __init__(self, state_dir: Path, agent_id: str, *, clock: Callable[[], float]) -> None:
        self.path = Path(state_dir) / STATE_FILE
        self.agent_id = agent_id
        self.clock = clock
        self.state = self._load()  # id -> {"first_seen": t, "last_run": t | None}

    def _load(self) -> dict[str, dict[str, float | None]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("schedule state %s unreadable (%s); starting afresh", self.path, exc)
            return {}
        return (
            {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}
        )

    def _save(self) -> None:
        try:
            write_atomically(self.path, json.dumps(self.state))
        except OSError as exc:
            log.error("cannot save the schedule state %s: %s", self.path, exc)

    async def tick(self, flow: RemediationFlow, timed: Mapping[str, TimedSchedule]) -> int:
        """Run every schedule that is due now (at most once each); returns how many ran.
        A daily schedule seen for the first time waits for its next instant."""
        now = self.clock()
        ran = 0
        changed = False
        for rem_id, sched in sorted(timed.items()):
            entry = self.state.get(rem_id)
            if entry is None:
                # First sight: a daily one starts counting from now (no run for an instant
                # that passed before the schedule existed); a once one after its splay.
                entry = self.state[rem_id] = {
                    "first_seen": now,
                    "last_run": now if sched.kind == "daily" else None,
                }
                changed = True
            offset = host_offset(self.agent_id, rem_id, sched.splay_s)
            last = entry.get("last_run")
            first = entry.get("first_seen") or now
            if not due(sched, now=now, last_run=last, offset_s=offset, started=first):
                continue
            entry["last_run"] = now  # before running: a crash mid-run does not repeat it
            self._save()
            changed = False
            ran += 1
            await self._run(flow, rem_id)
        if changed:
            self._save()
        return ran

    async def _run(self, flow: RemediationFlow, rem_id: str) -> None:
        rem = flow.library.get(rem_id)
        if rem is None:
            log.warning("scheduled remediation %s is not loaded; nothing run", rem_id)
            return
        if flow.is_halted(rem_id):
            log.info("scheduled remediation %s is halted by the collector; not run", rem_id)
            return
        spec_id = detection_spec(rem).id
        if rem.detection_for() is not None and spec_id in flow.detectors:
            log.info("schedule: running the detection of %s", rem_id)
            await flow.detect(spec_id)
            return
        log.info("schedule: running %s", rem_id)
        await run_requested(flow, rem_id, {}, request_id=None, why="schedule")
