"""Interval jobs on the event loop's monotonic clock: the agent's scheduler.

Every periodic job of the agent (the sample cycle, shipping, per-check intervals, command
checks, detection scripts) is an :class:`IntervalJob` in one :class:`Timers`. The rules
are the ones the agent needs and nothing more:

- **Monotonic time only.** Due times are ``loop.time()`` values, so a wall clock set back
  (by hand, or by NTP after a resume) never stalls a job, and one set forward never makes
  a job run in a burst. (APScheduler 3, which the agent used before, keeps due times in
  wall-clock time: with the clock set back an hour it ran nothing for an hour, so the
  agent went silent and its heartbeat looked like an outage; see ``docs/delivery.md``.)
- **A fixed grid.** A job runs at ``start + k * period``; a run that is late (a busy loop,
  a laptop that slept) runs once, then the job continues at the next grid point after
  now: missed runs are coalesced, never replayed.
- **One instance at a time.** A grid point reached while the previous run is still going
  is skipped.
- **Bounded runs.** Each run is cancelled after ``timeout_s``; a failure is logged and the
  job keeps its schedule.
- **Pause and resume.** A paused job has no timer at all; resuming schedules it at the
  next grid point (the start, if that is still ahead).
- **Self-measurement.** Every timer callback notes how late it woke (loop lag: the loop
  time it ran at minus the time it was due, the sign of a loop that something blocked)
  and every run that outlived its period or timed out counts as an overrun; the agent
  reports both as its self-health (:mod:`~vigil.agent.selfhealth`). Measuring on the
  callbacks that run anyway costs no extra wake-up.

One timer handle per job and one task per run, nothing else: an idle agent pays one
event-loop wake-up per sample interval (APScheduler's own per-run bookkeeping cost
~0.3 ms of CPU on top of it, a sixth of an idle sample cycle; ``docs/benchmarks.md``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("vigil.agent")

JobFunc = Callable[[], Awaitable[object]]


@dataclass(eq=False)
class IntervalJob:
    """One periodic job. ``start`` anchors its grid (loop time, seconds): ``first_in_s``
    after the timers started."""

    id: str
    func: JobFunc
    period_s: float
    timeout_s: float
    first_in_s: float = 0.0
    start: float = 0.0
    paused: bool = False
    runs: int = 0
    skipped: int = 0
    # Runs that took longer than the period (or hit the timeout): the job cannot keep up.
    overruns: int = 0
    handle: asyncio.TimerHandle | None = field(default=None, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def next_after(self, now: float) -> float:
        """The first grid point at or after ``now`` (``start`` while that is ahead)."""
        if now <= self.start:
            return self.start
        return self.start + math.ceil((now - self.start) / self.period_s) * self.period_s


class Timers:
    """The agent's interval jobs. Add jobs, ``start()`` inside the running loop, and
    ``await stop()`` to cancel the timers and any run in progress."""

    def __init__(self) -> None:
        self.jobs: dict[str, IntervalJob] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._max_lag_s = 0.0

    def take_max_lag(self) -> float:
        """The largest loop lag (seconds a timer callback ran after it was due) seen
        since the previous call, and start over. 0.0 when no timer fired meanwhile."""
        lag, self._max_lag_s = self._max_lag_s, 0.0
        return lag

    @property
    def running(self) -> bool:
        return self._loop is not None

    def add(
        self,
        job_id: str,
        func: JobFunc,
        period_s: float,
        *,
        timeout_s: float | None = None,
        first_in_s: float = 0.0,
        paused: bool = False,
    ) -> IntervalJob:
        """Add a job running ``func()`` every ``period_s`` seconds, first ``first_in_s``
        seconds after :meth:`start` (0: at once). ``timeout_s`` (default: the period, at
        least 5 s) bounds each run. A job id may be used once."""
        if job_id in self.jobs:
            raise ValueError(f"job {job_id!r} already exists")
        if not period_s > 0:
            raise ValueError(f"job {job_id!r}: period must be > 0, got {period_s!r}")
        job = IntervalJob(
            id=job_id,
            func=func,
            period_s=period_s,
            timeout_s=timeout_s if timeout_s is not None else max(period_s, 5.0),
            first_in_s=first_in_s,
            paused=paused,
        )
        self.jobs[job_id] = job
        if self._loop is not None:
            self._begin(job, self._loop.time())
        return job

    def start(self) -> None:
        """Start every job's timer; call from inside the running event loop."""
        if self._loop is not None:
            raise RuntimeError("timers already started")
        self._loop = asyncio.get_running_loop()
        now = self._loop.time()
        for job in self.jobs.values():
            self._begin(job, now)

    async def stop(self) -> None:
        """Cancel every timer and every run in progress, and wait for the runs to end."""
        self._loop = None
        tasks = []
        for job in self.jobs.values():
            if job.handle is not None:
                job.handle.cancel()
                job.handle = None
            if job.task is not None and not job.task.done():
                job.task.cancel()
                tasks.append(job.task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def pause(self, job_id: str) -> None:
        """Stop scheduling ``job_id`` (a run in progress finishes)."""
        job = self.jobs[job_id]
        job.paused = True
        if job.handle is not None:
            job.handle.cancel()
            job.handle = None

    def resume(self, job_id: str) -> None:
        """Schedule ``job_id`` again at its next grid point."""
        job = self.jobs[job_id]
        was_paused, job.paused = job.paused, False
        if was_paused and self._loop is not None:
            self._arm(job, self._loop.time())

    def remove(self, job_id: str) -> None:
        """Forget ``job_id``: no further runs (a run in progress finishes on its own).
        Unknown ids are ignored, so a caller can remove what it may have added."""
        job = self.jobs.pop(job_id, None)
        if job is not None and job.handle is not None:
            job.handle.cancel()
            job.handle = None

    def next_run_in(self, job_id: str) -> float | None:
        """Seconds until ``job_id`` next runs; ``None`` while paused or stopped."""
        job = self.jobs[job_id]
        if job.handle is None or self._loop is None:
            return None
        return max(0.0, job.handle.when() - self._loop.time())

    def _begin(self, job: IntervalJob, now: float) -> None:
        job.start = now + job.first_in_s
        self._arm(job, now)

    def _arm(self, job: IntervalJob, now: float) -> None:
        """Set ``job``'s timer for its first grid point at or after ``now`` (loop time)."""
        if self._loop is None or job.paused:
            return
        if job.handle is not None:
            job.handle.cancel()
        self._call_at(job, job.next_after(now))

    def _call_at(self, job: IntervalJob, when: float) -> None:
        assert self._loop is not None
        job.handle = self._loop.call_at(when, self._fire, job, when)

    def _fire(self, job: IntervalJob, due: float) -> None:
        loop = self._loop
        if loop is None:
            return
        # asyncio may run a callback up to its clock resolution early: never negative.
        self._max_lag_s = max(self._max_lag_s, loop.time() - due)
        # The next grid point after both now and this one: a late wake-up runs once, not
        # once per missed period; one a hair early (the loop's clock resolution) does not
        # fire the same point twice.
        self._call_at(job, job.next_after(max(loop.time() + 1e-6, due + job.period_s / 2)))
        if job.task is not None and not job.task.done():
            job.skipped += 1
            log.debug("job %s still running at its next interval; skipped", job.id)
            return
        job.runs += 1
        job.task = loop.create_task(self._run(job))

    @staticmethod
    async def _run(job: IntervalJob) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # asyncio.timeout, not wait_for: no extra task per run.
            async with asyncio.timeout(job.timeout_s):
                await job.func()
        except TimeoutError:
            job.overruns += 1
            log.warning("job %s exceeded %.1fs and was cancelled", job.id, job.timeout_s)
            return
        except Exception:
            log.exception("job %s failed", job.id)
        if loop.time() - started > job.period_s:
            job.overruns += 1
