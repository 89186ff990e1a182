"""The agent process: lifecycle and wiring of sampler, checks, remediations and delivery.

One :class:`~vigil.agent.timers.Timers` drives every periodic job on the monotonic clock:
the sample cycle, shipping, plus one job per distinct per-check ``interval``, one per
command check and one per detection script, so a critical check can run every second
without sampling everything. Each job has its own timeout and runs one instance at a
time, so a slow cycle is skipped rather than piled up, and a wall clock set back never
stalls it. Every event goes to the outbox *before* any delivery attempt; urgent events (a
check going critical, a failed fix) trigger an immediate ship.

Footprint (an agent a workstation never notices, see ``docs/benchmarks.md``): an idle
agent wakes once per sample interval and does only what that interval needs.

- The cycle also looks for clock jumps and records the heartbeat and the metrics summary
  when they are due (periods of at least one sample interval), instead of jobs of their own.
- It samples only the sources the cycle's checks read; every source is sampled on the
  first cycle and for each metrics summary, so rates in a summary (network, disk I/O) are
  averages since the previous summary.
- Cheap sources are read on the event loop itself; a sample that may block or walk a lot
  (a path walk or full process scan that is due, services, probes, sensors) runs on a
  worker thread (see :mod:`~vigil.agent.measure`). A hung mount is bounded by the
  sampler's disk timeout either way.
- The ship job runs every report interval only while the outbox holds events: an empty
  outbox pauses it and the next stored event resumes it.

What a check job samples and evaluates is :class:`~vigil.agent.cycle.CheckCycle`'s;
check results go to the :class:`~vigil.agent.remediation.flow.RemediationFlow`, which
records transitions and runs the detect → fix → verify → retry flow. This module holds
the jobs' schedule, what rides on the sample cycle (heartbeat, summary, clock watch),
shipping and shutdown. :class:`AgentService` takes every collaborator
through its constructor; :func:`build_service` makes the real ones from the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import signal
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from vigil import __version__, wire
from vigil.agent.clock import ClockReading, detect_clock_jumps, read_clock
from vigil.agent.config import AgentConfig, CheckSpec
from vigil.agent.cycle import CheckCycle
from vigil.agent.delivery.credential import CredentialSource
from vigil.agent.delivery.outbox import Outbox
from vigil.agent.delivery.shipper import Shipper
from vigil.agent.delivery.transport import KEEPALIVE_S
from vigil.agent.events import new_event_id, status_event
from vigil.agent.heartbeat import HeartbeatRecorder
from vigil.agent.identity import Identity, load_identity
from vigil.agent.measure import Measurer, SampleSource
from vigil.agent.notify_user import command_notifier, platform_notifier
from vigil.agent.policy.swap import rebuilt
from vigil.agent.policy.sync import PolicySync, open_policy
from vigil.agent.preflight import REMEDIATIONS_CHECK, check_enabled, load_checked_library
from vigil.agent.remediation.flow import RemediationFlow
from vigil.agent.remediation.manifest import Remediation, check_library, with_schedule
from vigil.agent.remediation.schedule import POLL_S, host_offset
from vigil.agent.remediation.timed import TimedRuns
from vigil.agent.sampling.sampler import Sampler
from vigil.agent.surveys import SurveyInbox
from vigil.agent.svc.notify import start_notify, stop_notify
from vigil.agent.timers import Timers
from vigil.agent.update.sync import ReleaseSync, release_sync_for

log = logging.getLogger("vigil.agent")

_Composed = tuple[AgentConfig, Mapping[str, Remediation], Mapping[str, str]]
# Per check, how many of its readings were unknown since the agent started (a counter).
UNKNOWN_SERIES = "agent.unknown_total"
# A clock jump smaller than this (seconds) between two sample cycles is noise.
CLOCK_JUMP_TOLERANCE_S = 2.0


def build_service(
    config: AgentConfig,
    *,
    sampler: SampleSource | None = None,
    clock: Callable[[], float] = time.time,
    library: Mapping[str, Remediation] | None = None,
    broken: Mapping[str, str] | None = None,
    policy: bool = False,
) -> AgentService:
    """The real agent for ``config``: identity, outbox, shipper, sampler, remediation flow.

    ``sampler``, ``clock`` (wall seconds) and ``library`` may be given (tests); defaults
    are the real psutil sampler, ``time.time`` and the manifests found in
    ``remediation.folders`` (a manifest that fails to load is logged, left out, and
    reported as the ``agent.remediations`` check; see :mod:`~vigil.agent.preflight`).
    ``broken`` (bundle -> reason) comes with a ``library`` that a preflight loaded.
    ``policy`` turns on the central-policy exchange (``vigil-agent run`` does): the
    newest cached bundle that verifies again is merged over ``config`` before anything
    starts (see :mod:`~vigil.agent.policy.sync`).
    Raises :class:`~vigil.configio.ConfigError` when a check or ``remediation.enable`` /
    ``remediation.params`` names a remediation that is not loaded, a parameter its
    manifest does not declare, or a remediation that could never run.
    """
    if library is None:
        config, library, broken = load_checked_library(config)
    else:
        check_library(config, library)
        check_enabled(config, library)
    start = open_policy(config, now=clock(), agent_version=__version__) if policy else None
    if start is not None and start.running is not None:
        config, library, broken = start.composed
    library = with_schedule(config, library)
    identity = load_identity(config.state_dir, hostname=config.hostname, labels=config.labels)
    outbox = Outbox(
        config.outbox.path,
        max_bytes=config.outbox.max_bytes,
        max_age_s=config.outbox.max_age_s,
    )
    sh = config.shipping
    notifier = (
        command_notifier(config.surveys.notifier)
        if config.surveys.notifier
        else platform_notifier()
    )
    surveys = SurveyInbox(config.surveys, notifier, state_file=config.state_dir / "surveys.json")
    shipper = Shipper(
        config.collector,
        outbox,
        identity,
        agent_version=__version__,
        batch_max_events=config.outbox.batch_max_events,
        batch_max_bytes=config.outbox.batch_max_bytes,
        backoff_base_s=sh.backoff_base_s,
        backoff_cap_s=sh.backoff_cap_s,
        drain_batches_per_s=sh.drain_batches_per_s,
        # Routine deliveries are a report interval apart at least: hold the connection
        # only when that is short enough for it to be reused.
        hold_connection=config.intervals.report_s < KEEPALIVE_S,
        credentials=CredentialSource(
            config.state_dir, identity.agent_id, config.collector.token, clock=time.time
        ),
        exchanges=(surveys,),
        console_user=surveys.console_user_id,
    )
    measurer = Measurer(sampler if sampler is not None else Sampler(config.sampler))
    flow = RemediationFlow(
        config.remediation, library, outbox, measure=measurer.measure, clock=clock
    )
    checks = CheckCycle(
        config.checks,
        sample_s=config.intervals.sample_s,
        measurer=measurer,
        flow=flow,
        clock=clock,
    )
    sync = start.sync(fetcher=shipper, sink=outbox, clock=clock) if start else None
    release = (
        release_sync_for(config, fetcher=shipper, sink=outbox, agent_version=__version__)
        if policy
        else None
    )
    return AgentService(
        config,
        identity=identity,
        outbox=outbox,
        shipper=shipper,
        checks=checks,
        flow=flow,
        clock=clock,
        # The first delivery waits a random part of the start jitter (at most one report
        # interval) so a fleet that boots together does not flush its backlogs in step.
        first_ship_delay_s=random.uniform(0, min(sh.start_jitter_s, config.intervals.report_s)),
        broken_remediations=broken,
        surveys=surveys,
        policy=sync,
        release=release,
    )


class AgentService:
    """One running agent: its jobs on one :class:`Timers`, started by :meth:`run`.

    Every collaborator comes in through the constructor (:func:`build_service` makes the
    real ones): ``identity``, the ``outbox`` every event goes to, the ``shipper`` that
    delivers it, the ``checks`` (what each check job samples and evaluates) and the
    remediation ``flow`` that check results go to. ``clock`` gives wall seconds for the records;
    ``first_ship_delay_s`` is when the first delivery goes. The service becomes the
    outbox's ``on_put`` and the flow's ``deliver_now``, so that what they store is shipped.
    ``broken_remediations`` (bundle -> why it did not load) is reported once at start as
    the ``agent.remediations`` check result; ``None`` reports nothing.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        identity: Identity,
        outbox: Outbox,
        shipper: Shipper,
        checks: CheckCycle,
        flow: RemediationFlow,
        clock: Callable[[], float] = time.time,
        first_ship_delay_s: float = 0.0,
        broken_remediations: Mapping[str, str] | None = None,
        surveys: SurveyInbox | None = None,
        policy: PolicySync | None = None,
        release: ReleaseSync | None = None,
    ) -> None:
        self.config = config
        self.broken_remediations = broken_remediations
        self.clock = clock
        self.identity = identity
        self.outbox = outbox
        self.shipper = shipper
        self.checks = checks
        self.flow = flow
        self.surveys = surveys
        outbox.on_put = self._stored
        flow.deliver_now = self._ship_soon
        self.first_ship_delay_s = first_ship_delay_s
        self._clock_reading: ClockReading | None = None
        iv = config.intervals
        # Heartbeat and summary ride on the sample cycle when it comes often enough.
        self._fold_heartbeat = iv.heartbeat_s >= iv.sample_s
        self._fold_metrics = iv.metrics_s >= iv.sample_s
        # Monotonic due times, set when the agent starts (run); never due before that.
        self._next_heartbeat = self._next_summary = float("inf")
        self._timers: Timers | None = None
        self._ship_armed = False
        self._in_cycle = False
        # Monotonic time before which the cycle leaves routine events to the ship job:
        # the jittered first delivery (exactly), then one report interval after each
        # delivery (less half a sample interval, for timer jitter).
        self._ship_not_before = float("inf")
        self._ship_slack = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.beats = HeartbeatRecorder(config, outbox=outbox, clock=clock)
        # Central policy: the ack hook, the header, and a composed config waiting for the
        # next cycle (swapped in between cycles, see _swap_policy).
        self.policy = policy
        self._pending_policy: _Composed | None = None
        self._retired: list[RemediationFlow] = []  # flows replaced while runs were in flight
        self._timed: TimedRuns | None = None  # daily/once schedules, made on first use
        if policy is not None:
            policy.flow = lambda: self.flow
            policy.apply = self.apply_policy
            policy.enforce_halts(flow)
            shipper.add_exchange(policy)
        # Self-update: a delivered report counts for the guard, an offered release is
        # fetched; a new release (or a rollback) restarts the agent through the CLI.
        self.release = release
        self.restart_requested = False
        self._stop: asyncio.Event | None = None
        if release is not None:
            release.restart = self.request_restart
            shipper.add_exchange(release)

    def request_restart(self) -> None:
        """Stop cleanly so that ``vigil-agent run`` re-executes the launcher."""
        self.restart_requested = True
        if self._stop is not None:
            self._stop.set()

    # ------------------------------------------------------------------ policy

    def apply_policy(
        self,
        config: AgentConfig,
        library: Mapping[str, Remediation],
        broken: Mapping[str, str],
    ) -> None:
        """Take a composed (verified, checked) config; it replaces the running checks
        and remediations at the start of the next sample cycle, without a restart."""
        self._pending_policy = (config, library, broken)

    def _swap_policy(self) -> None:
        """Swap in the pending config between cycles: a new remediation flow (statuses
        and the kill switch carried over; runs in flight finish in the old one), a new
        check cycle, and the check and detection jobs re-made on the timers."""
        pending, self._pending_policy = self._pending_policy, None
        if pending is None:
            return
        config, library, broken = pending
        old = self.flow
        flow, checks = rebuilt(
            config,
            library,
            old,
            self.checks,
            sink=self.outbox,
            clock=self.clock,
            deliver_now=self._ship_soon,
        )
        self._retired = [f for f in (*self._retired, old) if f.tasks]
        timers = self._timers
        if timers is not None:
            for job_id in list(timers.jobs):
                if job_id.startswith(("checks@", "command:")) or job_id in old.detectors:
                    timers.remove(job_id)
        self.config, self.flow, self.checks = config, flow, checks
        self.broken_remediations = broken
        if timers is not None:
            self._add_check_jobs(timers)
            self._add_detection_jobs(timers)
            self._add_schedule_job(timers)
        self.report_library()
        if self.policy is not None:
            self.policy.applied()
            self._ship_soon()  # the collector learns the running version at once
        log.info(
            "policy %s applied: %d checks, %d remediations",
            self.policy.announced if self.policy is not None else "none",
            len(config.checks),
            len(flow.library),
        )

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down cleanly (bounded final flush)."""
        iv = self.config.intervals
        self._stop = stop
        timers = Timers()
        timers.add("sample", self.cycle, iv.sample_s)
        if self.release is not None and self.release.guard.pending:
            # Only while a new release has to prove itself: an idle agent wakes no more.
            within = self.release.guard.confirm_within_s
            timers.add("update-guard", self.release.tick, min(30.0, within / 4))
        self._add_check_jobs(timers)
        # Shipping runs on its report-interval grid (starting after the jittered first
        # delay), but only while the outbox holds events: added paused when it is empty,
        # resumed by the next put (see _stored), paused again once a ship empties it.
        self._ship_armed = self.outbox.pending > 0
        timers.add(
            "ship",
            self.ship,
            iv.report_s,
            first_in_s=self.first_ship_delay_s,
            paused=not self._ship_armed,
        )
        # Clock jumps are looked for at the start of every sample cycle rather than by a
        # job of their own: one wakeup fewer per interval on a laptop that should not
        # notice the agent, and a resume is still seen within one sample interval.
        self._clock_reading = read_clock()
        self.beats.start()
        self._next_heartbeat = time.monotonic()  # the first heartbeat goes at once
        self._next_summary = time.monotonic() + iv.metrics_s
        self._ship_not_before = time.monotonic() + self.first_ship_delay_s
        if not self._fold_heartbeat:
            timers.add("heartbeat", self.heartbeat, iv.heartbeat_s)
        if not self._fold_metrics:
            timers.add("metrics", self.metrics_summary, iv.metrics_s, first_in_s=iv.metrics_s)
        self._add_detection_jobs(timers)
        self._add_schedule_job(timers)
        self._timers = timers
        timers.start()
        # Under systemd: READY=1 now, WATCHDOG=1 from a timer job (stops if the loop blocks).
        notifier = start_notify(timers)
        self.report_library()
        if self.policy is not None:
            self.policy.report_start()
        if self.release is not None:
            self.release.report_start()
        log.info(
            "agent %s (%s) started: %d checks, %d remediations, reporting to %s",
            self.identity.agent_id,
            self.identity.hostname,
            len(self.config.checks),
            len(self.flow.library),
            self.config.collector.url,
        )
        try:
            await stop.wait()
        finally:
            self._timers = None
            stop_notify(notifier, restarting=self.restart_requested)
            await timers.stop()
            await self._shutdown()

    async def run_until_signalled(self) -> None:
        """:meth:`run` until SIGINT or SIGTERM (on Windows, Ctrl-C arrives as
        ``KeyboardInterrupt`` instead: there is no ``add_signal_handler``)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await self.run(stop)

    async def _shutdown(self) -> None:
        if self.policy is not None:
            await self.policy.close()
        if self.release is not None:
            await self.release.close()
        for retired in self._retired:
            await retired.close()
        await self.flow.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ship(), timeout=3.0)
        await self.shipper.close()
        left = self._depth()
        self.outbox.close()
        log.info("agent stopped; %d events left in the outbox for next time", left)

    def _depth(self) -> int:
        with contextlib.suppress(Exception):
            return self.outbox.depth()
        return -1

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ship_soon(self) -> None:
        """Ship now, in a task of its own (the flow's ``deliver_now``)."""
        self._spawn(self.ship())

    # ------------------------------------------------------------------ jobs

    async def cycle(self) -> None:
        """Look for a clock jump, record a heartbeat when due, sample, evaluate every
        check, record transitions, start remediations, record a metrics summary when due.

        Samples only the main checks' sources (:attr:`CheckCycle.main_sources`), except on
        the first cycle and for a summary (and every cycle when the summary has a job of
        its own), which sample everything.
        """
        self._in_cycle = True
        try:
            if self.policy is not None:
                # An expired bundle stops here at the latest (its fallback swaps in now).
                self.policy.check_expiry()
            if self._pending_policy is not None:
                self._swap_policy()
            await self._cycle()
        finally:
            self._in_cycle = False
        if self.outbox.pending == 0:
            return
        # What this cycle stored goes out in this same wakeup when a routine delivery is
        # due (a heartbeat, a summary); else the ship job takes it at its next tick.
        if time.monotonic() + self._ship_slack >= self._ship_not_before:
            self._spawn(self.ship())
        elif not self._ship_armed:
            self._set_ship_job(armed=True)

    async def _cycle(self) -> None:
        await self.watch_clock()
        mono = time.monotonic()
        iv = self.config.intervals
        slack = iv.sample_s / 2
        if self._fold_heartbeat:
            due, self._next_heartbeat = due_in_cycle(
                self._next_heartbeat, iv.heartbeat_s, mono, slack
            )
            if due:
                await self.heartbeat()
        summary = False
        if self._fold_metrics:
            summary, self._next_summary = due_in_cycle(
                self._next_summary, iv.metrics_s, mono, slack
            )
        if await self.checks.main(everything=summary or not self._fold_metrics):
            self._spawn(self.ship())
        if summary:
            await self.metrics_summary()

    async def sample_group(self, specs: Sequence[CheckSpec]) -> None:
        """A per-check-interval job (:meth:`CheckCycle.group`); ship at once if urgent."""
        if await self.checks.group(specs):
            self._spawn(self.ship())

    async def command_check(self, spec: CheckSpec) -> None:
        """A command-check job (:meth:`CheckCycle.command`); ship at once if urgent."""
        if await self.checks.command(spec):
            self._spawn(self.ship())

    def _add_check_jobs(self, timers: Timers) -> None:
        """Per-check intervals: one job per distinct interval, one per command check."""
        for interval, specs in sorted(self.checks.interval_groups.items()):
            timers.add(
                f"checks@{interval:g}s", functools.partial(self.sample_group, specs), interval
            )
        for spec in self.checks.command_checks:
            interval = spec.interval_s or self.config.intervals.sample_s
            # The job outlives the plugin's timeout plus the kill grace, never less.
            bound = max(interval, spec.timeout_s + 10.0)
            timers.add(
                f"command:{spec.id}",
                functools.partial(self.command_check, spec),
                interval,
                timeout_s=bound,
            )

    def _add_detection_jobs(self, timers: Timers) -> None:
        """One interval job per remediation with a detection script for this platform."""
        for spec, rem in self.flow.detectors.values():
            # The job outlives the script's own timeout plus the kill grace, so a slow
            # detection ends as a recorded timeout rather than a cancelled job.
            bound = max(rem.detect_every_s, rem.timeout_s + 10.0)
            timers.add(
                spec.id,
                functools.partial(self.detect, spec.id),
                rem.detect_every_s,
                timeout_s=bound,
                # A schedule's splay: a fleet that got it at once (a policy, a restart
                # after an update) does not run it in the same second, like daily ones.
                first_in_s=host_offset(self.identity.agent_id, rem.id, rem.detect_splay_s),
            )

    def _add_schedule_job(self, timers: Timers) -> None:
        """The daily/once schedules' poll job, only while some exist (an idle agent
        wakes once per sample interval and no more)."""
        if self.config.remediation.timed and "schedules" not in timers.jobs:
            timers.add("schedules", self.scheduled, POLL_S, first_in_s=min(POLL_S, 1.0))

    async def scheduled(self) -> None:
        """Run the daily and once schedules that are due (see
        :mod:`~vigil.agent.remediation.timed`); nothing when there are none."""
        timed = self.config.remediation.timed
        if timed:
            if self._timed is None:
                self._timed = TimedRuns(
                    self.config.state_dir, self.identity.agent_id, clock=self.clock
                )
            await self._timed.tick(self.flow, timed)

    async def detect(self, spec_id: str) -> None:
        """A detection job: run the detection script ``spec_id`` stands for (see
        :meth:`RemediationFlow.detect`); ship at once when what it recorded is urgent."""
        if await self.flow.detect(spec_id):
            self._spawn(self.ship())

    async def ship(self) -> None:
        """Deliver what the outbox holds (the shipper serialises overlapping calls); pause
        the ship job once the outbox is empty."""
        iv = self.config.intervals
        self._ship_not_before = time.monotonic() + iv.report_s
        self._ship_slack = iv.sample_s / 2
        if self.surveys is not None and self.surveys.console_look_due():
            # For the next reports (in a task: a look may take a moment, and this batch,
            # perhaps urgent, must not wait for it; it carries the last look's answer).
            self._spawn(self.surveys.refresh_console_user())
        result = await self.shipper.ship()
        if self.surveys is not None and self.surveys.pending:
            self._spawn(self._show_surveys())
        if result.error and result.error != "backing off":
            # The shipper logs the outage itself (one WARNING, one INFO when it ends).
            log.debug("delivery pending (%d events queued): %s", self._depth(), result.error)
        if self._ship_armed and self.outbox.pending == 0:
            self._set_ship_job(armed=False)
        elif not self._ship_armed and self.outbox.pending:
            self._set_ship_job(armed=True)  # left over (a failure, a long backlog): retry

    async def _show_surveys(self) -> None:
        """Show the surveys the last acks brought (in a task: a notifier may take a few
        seconds, and delivery must not wait for it)."""
        assert self.surveys is not None
        try:
            await self.surveys.show_due()
        except Exception:
            log.exception("showing satisfaction surveys failed")

    def _stored(self, urgent: bool) -> None:
        """The outbox's ``on_put``: resume the ship job if an empty outbox had paused it.

        Urgent events are shipped at once by whoever stored them; this only makes sure
        that everything else goes out at the next report-interval tick. Events stored
        by the sample cycle are left to the cycle, which ships them itself when due.
        """
        if not self._ship_armed and not self._in_cycle:
            self._set_ship_job(armed=True)

    def _set_ship_job(self, *, armed: bool) -> None:
        timers = self._timers
        if timers is None or not timers.running:
            return  # not started, or shutting down: run() arms it from the outbox depth
        self._ship_armed = armed
        if armed:
            timers.resume("ship")
        else:
            timers.pause("ship")

    async def heartbeat(self) -> None:
        """Record the liveness check result that tells the collector we are alive, with
        the agent's self-health (:class:`~vigil.agent.heartbeat.HeartbeatRecorder`)."""
        if self.beats.record(self._timers, self.shipper, self.flow):
            self._spawn(self.ship())

    def report_library(self) -> None:
        """Record the ``agent.remediations`` check result: ``critical`` naming every bundle
        that failed to load (and why), ``ok`` once all load, so fixing a bundle and
        restarting resolves the collector's incident. Nothing when no folder is configured
        or the library was handed in (tests)."""
        broken = self.broken_remediations
        if broken is None or not self.config.remediation.folders:
            return
        if broken:
            names = ", ".join(sorted(broken))
            reasons = "; ".join(f"{b}: {broken[b]}" for b in sorted(broken))
            message = f"{len(broken)} remediation(s) not loaded: {names} ({reasons})"
        else:
            message = f"all {len(self.flow.library)} remediations loaded"
        self.outbox.put(
            status_event(
                REMEDIATIONS_CHECK,
                "critical" if broken else "ok",
                message,
                time=self.clock(),
                value=float(len(broken)),
            ),
            urgent=bool(broken),
        )

    async def watch_clock(self) -> None:
        """Detect a sleep/resume or a wall-clock step, report it, and resume delivery.

        A jump is not an outage: after a resume the shipper's backoff (from failures
        before the sleep) is ended and delivery is tried at once; the jump is recorded as
        an ``agent.clock`` check result so the service desk can tell "asleep" from "down".
        """
        now = read_clock()
        before, self._clock_reading = self._clock_reading, now
        if before is None:
            return
        jumps = detect_clock_jumps(before, now, tolerance_s=CLOCK_JUMP_TOLERANCE_S)
        for jump in jumps:
            if jump.kind == "sleep":
                message = f"resumed after {jump.seconds:.0f} s asleep"
            else:
                message = f"wall clock stepped {jump.seconds:+.0f} s"
            log.info("clock jump: %s", message)
            self.outbox.put(
                status_event(
                    wire.CLOCK_CHECK, "ok", message, time=now.wall, value=round(jump.seconds, 3)
                )
            )
        if jumps:
            self.shipper.wake()
            self._spawn(self.ship())

    async def metrics_summary(self) -> None:
        """Record the latest sampled values as one metrics event."""
        if self.checks.latest:
            # The outbox's own state travels too, so drops are reported, not silent.
            ob = self.outbox.stats()
            values = dict(self.checks.latest)
            values["agent.outbox_events"] = float(ob.depth)
            values["agent.outbox_bytes"] = float(ob.payload_bytes)
            values["agent.outbox_dropped_total"] = float(ob.dropped_total)
            for check_id, count in self.checks.unknown_counts.items():
                values[f"{UNKNOWN_SERIES}[{check_id}]"] = float(count)
            values.update(self.beats.monitor.summary_values())
            self.outbox.put(
                wire.MetricsEvent(event_id=new_event_id(), seq=0, time=self.clock(), values=values)
            )


def due_in_cycle(next_at: float, period_s: float, now: float, slack_s: float) -> tuple[bool, float]:
    """Whether a task folded into the sample cycle (period ``period_s``, next due at
    monotonic ``next_at``) runs at this cycle (``now``), and its next due time.

    A cycle at most ``slack_s`` early (half a sample interval) counts as on time, so a
    period that is a multiple of the sample interval keeps its cadence despite timer
    jitter. A due time left behind by more than a period (a sleep, a long stall)
    restarts from ``now``.
    """
    if now + slack_s < next_at:
        return False, next_at
    following = next_at + period_s
    return True, following if following > now else now + period_s
