"""The agent process: wires sampler, checks, remediations, outbox and shipper together.

One :class:`~agent.timers.Timers` drives every periodic job on the monotonic clock: the
sample cycle, shipping, plus one job per distinct per-check ``interval``, one per command
check and one per detection script, so a critical check can run every second without
sampling everything. Each job has its own timeout and runs one instance at a time, so a
slow cycle is skipped rather than piled up, and a wall clock set back never stalls it.
Every event goes to the outbox *before* any delivery attempt; urgent events (a check going
critical, a failed fix) trigger an immediate ship.

Footprint (an agent a workstation never notices, see ``docs/benchmarks.md``): an idle
agent wakes once per sample interval and does only what that interval needs.

- The cycle also looks for clock jumps and records the heartbeat and the metrics summary
  when they are due (periods of at least one sample interval), instead of jobs of their own.
- It samples only the sources the cycle's checks read; every source is sampled on the
  first cycle and for each metrics summary, so rates in a summary (network, disk I/O) are
  averages since the previous summary.
- Cheap sources are read on the event loop itself; a sample that may block or walk a lot
  (a path walk or full process scan that is due, services, probes, sensors) runs on a
  worker thread. A hung mount is bounded by the sampler's disk timeout either way.
- The ship job runs every report interval only while the outbox holds events: an empty
  outbox pauses it and the next stored event resumes it.

Flow for a check that names a remediation (detection → remediation → verification):
the check's critical transition is recorded with ``remediation=<id>`` (a promise the
collector waits for), the script runs under the runner's limits, the agent re-samples
after ``verify_delay`` and re-evaluates the check, then records the corrective-action
record *before* the check's recovery so the collector sees "fixed while critical"
(a prevented incident). While a check's remediation is in flight the regular cycle does
not evaluate that check, so the order of its events is always the same.

The same flow serves manifest triggers of the remediations in ``remediation.enable``:
``trigger.checks`` (a check id entering a listed state) and ``trigger.detection`` (a
detection script run every ``trigger.every`` as the check ``detect.<id>``: exit 1 means
critical). A run that ends not fixed is retried while the check stays bad, as far as the
gate's cooldown and attempt budget allow. See ``docs/remediations.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vigil import __version__, wire
from vigil.agent.checks import CheckStatus, Transition, classify, evaluate
from vigil.agent.clock import ClockReading, detect_clock_jumps, read_clock
from vigil.agent.config import AgentConfig, CheckSpec, RemediationRef
from vigil.agent.delivery.outbox import Outbox
from vigil.agent.delivery.shipper import KEEPALIVE_S, Shipper
from vigil.agent.identity import Identity, load_identity
from vigil.agent.plugins import run_plugin
from vigil.agent.remediation import (
    Remediation,
    load_library,
    run_outcome,
    verified_outcome,
)
from vigil.agent.runner import RunGate, ScriptResult, run_script
from vigil.agent.sampling.sampler import Sampler
from vigil.agent.sampling.series import source_of
from vigil.agent.timers import Timers
from vigil.configio import ConfigError
from vigil.wire import CheckState

log = logging.getLogger("vigil.agent")

# Outcomes after which a check that stays bad gets another attempt (gate permitting).
RETRY_OUTCOMES = frozenset({"not_fixed", "error", "timeout", "skipped:busy"})
# A heartbeat promises the next one within this many intervals (the collector adds grace).
HEARTBEAT_TTL_INTERVALS = 2.5
# A clock jump smaller than this (seconds) between two sample cycles is noise.
CLOCK_JUMP_TOLERANCE_S = 2.0


def new_event_id() -> str:
    """A globally unique event id (the outbox assigns the per-agent ``seq``)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class RemediationOutcome:
    """What one remediation attempt achieved (also the basis of the wire record)."""

    outcome: str
    value_before: float | None
    value_after: float | None
    result: ScriptResult | None
    reason: str = ""
    # The check's level after the run when it is not a threshold over value_after (a
    # command check's plugin state); None for threshold and detection checks.
    level_after: CheckState | None = None


def check_library(config: AgentConfig, library: Mapping[str, Remediation]) -> None:
    """Raise :class:`ConfigError` when a check (or ``remediation.params``) names a
    remediation that is not loaded, or passes it a parameter its manifest does not declare."""
    for i, spec in enumerate(config.checks):
        if spec.remediation is None:
            continue
        rem = library.get(spec.remediation.id)
        if rem is None:
            folders = ", ".join(str(f) for f in config.remediation.folders) or "(none configured)"
            raise ConfigError(
                config.file,
                f"checks[{i}].remediation",
                spec.remediation.id,
                f"no such remediation in remediation.folders: {folders}",
            )
        try:
            rem.script_env(spec.remediation.params)
        except ValueError as exc:
            raise ConfigError(
                config.file, f"checks[{i}].remediation.params", spec.remediation.params, str(exc)
            ) from None
    for i, rem_id in enumerate(config.remediation.enable):
        if rem_id not in library:
            key = f"remediation.enable[{i}]"
            raise ConfigError(config.file, key, rem_id, "no such remediation loaded")
    for rem_id, values in config.remediation.params.items():
        key = f"remediation.params.{rem_id}"
        if rem_id not in library:
            raise ConfigError(config.file, key, rem_id, "no such remediation loaded")
        try:
            library[rem_id].script_env(values)
        except ValueError as exc:
            raise ConfigError(config.file, key, values, str(exc)) from None


class AgentService:
    """One running agent. Construct, then ``await run(stop_event)``.

    ``sampler``, ``clock`` and ``library`` are injectable for tests; defaults are the real
    psutil sampler, ``time.time`` and the manifests found in ``remediation.folders``.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        sampler: Sampler | None = None,
        clock: Callable[[], float] = time.time,
        library: Mapping[str, Remediation] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.sampler = sampler or Sampler(config.sampler)
        if library is None:
            library, errors = load_library(config.remediation.folders)
            for err in errors:
                # One bad manifest never stops the others (or the agent).
                log.error("remediation not loaded: %s", err)
        self.library = dict(library)
        check_library(config, self.library)
        self.identity: Identity = load_identity(
            config.state_dir, hostname=config.hostname, labels=config.labels
        )
        self.outbox = Outbox(
            config.outbox.path,
            max_bytes=config.outbox.max_bytes,
            max_age_s=config.outbox.max_age_s,
            on_put=self._stored,
        )
        sh = config.shipping
        self.shipper = Shipper(
            config.collector,
            self.outbox,
            self.identity,
            agent_version=__version__,
            batch_max_events=config.outbox.batch_max_events,
            batch_max_bytes=config.outbox.batch_max_bytes,
            backoff_base_s=sh.backoff_base_s,
            backoff_cap_s=sh.backoff_cap_s,
            drain_batches_per_s=sh.drain_batches_per_s,
            # Routine deliveries are a report interval apart at least: hold the connection
            # only when that is short enough for it to be reused.
            hold_connection=config.intervals.report_s < KEEPALIVE_S,
        )
        # The first delivery waits a random part of the start jitter (at most one report
        # interval) so a fleet that boots together does not flush its backlogs in step.
        self.first_ship_delay_s = random.uniform(
            0, min(sh.start_jitter_s, config.intervals.report_s)
        )
        self._clock_reading: ClockReading | None = None
        self.gate = RunGate(config.remediation.max_concurrent)
        # Manifest triggers of the enabled remediations only: check id -> manifests, and
        # detection scripts as checks.
        enabled = {i: self.library[i] for i in config.remediation.enable}
        self._triggered_by = index_triggers(enabled)
        self._busy: set[str] = set()  # remediation ids promised or running
        self._last_outcome: dict[str, str] = {}  # check id -> outcome of its last run
        self.detectors: dict[str, tuple[CheckSpec, Remediation]] = {
            (spec := detection_spec(rem)).id: (spec, rem)
            for rem in enabled.values()
            if rem.detection_for() is not None
        }
        self.statuses: dict[str, CheckStatus] = {}
        self.latest: dict[str, float] = {}
        # Per-check intervals: the main cycle evaluates the checks without their own
        # interval; the others run in one job per distinct interval (command checks alone).
        sample_s = config.intervals.sample_s
        self.main_checks: tuple[CheckSpec, ...] = tuple(
            c for c in config.checks if not c.is_command and c.interval_s in (None, sample_s)
        )
        self.interval_groups: dict[float, list[CheckSpec]] = {}
        for c in config.checks:
            if not c.is_command and c.interval_s not in (None, sample_s):
                self.interval_groups.setdefault(c.interval_s, []).append(c)  # type: ignore[arg-type]
        # The sources the main cycle's checks read; all are sampled for a metrics summary.
        self.main_sources: frozenset[str] = frozenset(
            source for c in self.main_checks if (source := source_of(c.metric)) is not None
        )
        iv = config.intervals
        # Heartbeat and summary ride on the sample cycle when it comes often enough.
        self._fold_heartbeat = iv.heartbeat_s >= sample_s
        self._fold_metrics = iv.metrics_s >= sample_s
        # Monotonic due times, set when the agent starts (run); never due before that.
        self._next_heartbeat = self._next_summary = float("inf")
        self._sampled_all = False
        # One sample at a time, so a blocking one on a worker never stalls the loop on the
        # sampler's own lock.
        self._sampling = asyncio.Lock()
        self._timers: Timers | None = None
        self._ship_armed = False
        self._in_cycle = False
        # Monotonic time before which the cycle leaves routine events to the ship job:
        # the jittered first delivery (exactly), then one report interval after each
        # delivery (less half a sample interval, for timer jitter).
        self._ship_not_before = float("inf")
        self._ship_slack = 0.0
        self.plugin_values: dict[str, float] = {}
        self._remediating: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down cleanly (bounded final flush)."""
        iv = self.config.intervals
        timers = Timers()
        timers.add("sample", self.cycle, iv.sample_s)
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
        self._next_heartbeat = time.monotonic()  # the first heartbeat goes at once
        self._next_summary = time.monotonic() + iv.metrics_s
        self._ship_not_before = time.monotonic() + self.first_ship_delay_s
        if not self._fold_heartbeat:
            timers.add("heartbeat", self.heartbeat, iv.heartbeat_s)
        if not self._fold_metrics:
            timers.add("metrics", self.metrics_summary, iv.metrics_s, first_in_s=iv.metrics_s)
        self._add_detection_jobs(timers)
        self._timers = timers
        timers.start()
        log.info(
            "agent %s (%s) started: %d checks, %d remediations, reporting to %s",
            self.identity.agent_id,
            self.identity.hostname,
            len(self.config.checks),
            len(self.library),
            self.config.collector.url,
        )
        try:
            await stop.wait()
        finally:
            self._timers = None
            await timers.stop()
            await self._shutdown()

    async def _shutdown(self) -> None:
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

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ jobs

    async def cycle(self) -> None:
        """Look for a clock jump, record a heartbeat when due, sample, evaluate every
        check, record transitions, start remediations, record a metrics summary when due.

        Samples only :attr:`main_sources`, except on the first cycle and for a summary
        (and every cycle when the summary has a job of its own), which sample everything.
        """
        self._in_cycle = True
        try:
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
        every = summary or not self._sampled_all or not self._fold_metrics
        values = await self._sample(None if every else self.main_sources)
        if every:
            self._sampled_all = True
            # Plugin perfdata arrives on the command checks' own schedule; keep the latest.
            self.latest = {**self.plugin_values, **values}
        else:
            self.latest.update(values)
        self._evaluate_all(self.main_checks, values)
        if summary:
            await self.metrics_summary()

    async def sample_group(self, specs: Sequence[CheckSpec]) -> None:
        """A per-check-interval job: sample only the sources ``specs`` need, evaluate them."""
        sources = {source_of(spec.metric) or "" for spec in specs}
        values = await self._sample(sources)
        self.latest = {**self.latest, **values}
        self._evaluate_all(specs, values)

    async def _sample(self, sources: Iterable[str] | None) -> dict[str, float]:
        """``sampler.sample(sources)``: on the loop when the sampler says it will not block
        (a few ``/proc`` reads cost less than handing them to a thread and back), else on
        a worker thread. A sampler without ``blocking()`` always runs on a worker."""
        async with self._sampling:
            blocking = getattr(self.sampler, "blocking", None)
            if blocking is not None and not blocking(sources):
                return self.sampler.sample(sources)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, self.sampler.sample, sources)

    def _evaluate_all(self, specs: Sequence[CheckSpec], values: Mapping[str, float]) -> None:
        now = self.clock()
        urgent = False
        reason_for = getattr(self.sampler, "reason_for", None)
        for spec in specs:
            if spec.id in self._remediating:
                continue  # the remediation task owns this check until it has verified
            value = values.get(spec.metric)
            reason = reason_for(spec.metric) if value is None and reason_for else None
            urgent |= self._evaluate(spec, value, now, may_remediate=True, reason=reason)
        if urgent:
            self._spawn(self.ship())

    async def command_check(self, spec: CheckSpec) -> None:
        """Run one Nagios-plugin check; its exit status is the level, perfdata the values."""
        if spec.id in self._remediating:
            return
        result = await run_plugin(spec.command, timeout_s=spec.timeout_s)
        perf = result.series(spec.id)
        for key in [k for k in self.plugin_values if k.endswith(f"[{spec.id}]")]:
            del self.plugin_values[key]
        self.plugin_values.update(perf)
        value = next(iter(perf.values()), None)
        now = self.clock()
        if self._evaluate(
            spec, value, now, may_remediate=True, level=result.state, text=result.text
        ):
            self._spawn(self.ship())

    def _add_check_jobs(self, timers: Timers) -> None:
        """Per-check intervals: one job per distinct interval, one per command check."""
        for interval, specs in sorted(self.interval_groups.items()):
            timers.add(
                f"checks@{interval:g}s", functools.partial(self.sample_group, specs), interval
            )
        for spec in self.config.checks:
            if spec.is_command:
                interval = spec.interval_s or self.config.intervals.sample_s
                # The job outlives the plugin's timeout plus the kill grace, never less.
                bound = max(interval, spec.timeout_s + 10.0)
                timers.add(
                    f"command:{spec.id}",
                    functools.partial(self.command_check, spec),
                    interval,
                    timeout_s=bound,
                )

    def _evaluate(
        self,
        spec: CheckSpec,
        value: float | None,
        now: float,
        *,
        may_remediate: bool,
        level: CheckState | None = None,
        reason: str | None = None,
        text: str | None = None,
    ) -> bool:
        """Evaluate one check; record a transition; return whether it is urgent."""
        status, transition = evaluate(
            spec, self.statuses.get(spec.id), value, now, level=level, reason=reason, text=text
        )
        self.statuses[spec.id] = status
        if transition is None:
            if may_remediate:
                self._maybe_retry(spec, status, value)
            return False
        rem = promise = skip_reason = None
        if may_remediate:
            rem = self._remediation_for(spec, transition.state)
        if rem is not None:
            skip_reason = self._gate_check(spec, rem)
            promise = rem.id if skip_reason is None else None
        self._record_transition(transition, now, promise)
        if rem is not None and skip_reason is not None:
            # Cooldown or already running: record the skip; the incident path takes over.
            skipped = RemediationOutcome("skipped", value, value, None, skip_reason)
            self._record_remediation(spec, rem, skipped, now, now)
            # Busy with another check's run: this check's turn comes once it is free.
            busy = skip_reason == "already running"
            self._last_outcome[spec.id] = "skipped:busy" if busy else "skipped"
            return True
        if promise:
            assert rem is not None
            self._remediating.add(spec.id)
            self._busy.add(rem.id)
            self._spawn(self.remediate(spec, rem, transition))
            return False  # the outcome decides urgency, not the detection
        return transition.state == "critical"

    def _record_transition(self, t: Transition, now: float, promise: str | None) -> None:
        log.info("check %s: %s -> %s (%s)", t.check, t.previous, t.state, t.message)
        self.outbox.put(
            wire.CheckEvent(
                event_id=new_event_id(),
                seq=0,
                time=now,
                check=t.check,
                state=t.state,  # type: ignore[arg-type]
                previous_state=t.previous,  # type: ignore[arg-type]
                value=t.value,
                message=t.message,
                remediation=promise,
                flapping=t.flapping,
            ),
            urgent=t.state == "critical" and promise is None,
        )

    async def ship(self) -> None:
        """Deliver what the outbox holds (the shipper serialises overlapping calls); pause
        the ship job once the outbox is empty."""
        iv = self.config.intervals
        self._ship_not_before = time.monotonic() + iv.report_s
        self._ship_slack = iv.sample_s / 2
        result = await self.shipper.ship()
        if result.error and result.error != "backing off":
            log.warning("delivery pending (%d events queued): %s", self._depth(), result.error)
        if self._ship_armed and self.outbox.pending == 0:
            self._set_ship_job(armed=False)
        elif not self._ship_armed and self.outbox.pending:
            self._set_ship_job(armed=True)  # left over (a failure, a long backlog): retry

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
        """Record the liveness check result that tells the collector we are alive."""
        ttl = self.config.intervals.heartbeat_s * HEARTBEAT_TTL_INTERVALS
        self.outbox.put(
            wire.CheckEvent(
                event_id=new_event_id(),
                seq=0,
                time=self.clock(),
                check=wire.HEARTBEAT_CHECK,
                state="ok",
                previous_state=None,
                value=None,
                message=f"agent {__version__} alive",
                ttl_s=ttl,
            )
        )
        if not self.statuses.get(wire.HEARTBEAT_CHECK):
            # The first heartbeat goes out with the (jittered) first delivery, so a new host
            # appears within one report interval.
            self.statuses[wire.HEARTBEAT_CHECK] = CheckStatus("ok", self.clock(), None)

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
                wire.CheckEvent(
                    event_id=new_event_id(),
                    seq=0,
                    time=now.wall,
                    check=wire.CLOCK_CHECK,
                    state="ok",
                    previous_state=None,
                    value=round(jump.seconds, 3),
                    message=message,
                )
            )
        if jumps:
            self.shipper.wake()
            self._spawn(self.ship())

    async def metrics_summary(self) -> None:
        """Record the latest sampled values as one metrics event."""
        if self.latest:
            # The outbox's own state travels too, so drops are reported, not silent.
            ob = self.outbox.stats()
            values = dict(self.latest)
            values["agent.outbox_events"] = float(ob.depth)
            values["agent.outbox_bytes"] = float(ob.payload_bytes)
            values["agent.outbox_dropped_total"] = float(ob.dropped_total)
            self.outbox.put(
                wire.MetricsEvent(event_id=new_event_id(), seq=0, time=self.clock(), values=values)
            )

    # ------------------------------------------------------------------ remediation

    def _remediation_for(self, spec: CheckSpec, state: str) -> Remediation | None:
        """The remediation to run when ``spec`` enters ``state``, if any.

        A check that names a remediation in the agent config runs it on ``critical`` (or
        on the states that manifest's trigger lists for this check); otherwise the first
        manifest (by id) whose ``trigger.checks`` names this check and state runs.
        """
        if spec.remediation is not None:
            rem = self.library[spec.remediation.id]
            return rem if state in (rem.states_for(spec.id) or ("critical",)) else None
        for rem in self._triggered_by.get(spec.id, ()):
            if state in rem.states_for(spec.id):
                return rem
        return None

    def _maybe_retry(self, spec: CheckSpec, status: CheckStatus, value: float | None) -> None:
        """Run the remediation again while the check stays bad after a failed attempt.

        Only after ``not_fixed``, ``error`` or ``timeout``, or a skip because another
        check's run of the same remediation was in progress (never after a declared
        ``needs_*``, a dry run, or a skip for cooldown or attempts), and only when the
        gate allows it: cooldown elapsed and attempts left (Monit's "N restarts within M
        cycles"). An exhausted budget stops retrying quietly: the incident is open.
        """
        if self._last_outcome.get(spec.id) not in RETRY_OUTCOMES:
            return
        rem = self._remediation_for(spec, status.state)
        if rem is None or self._gate_check(spec, rem) is not None:
            return
        retry = Transition(
            check=spec.id,
            previous=status.state,
            state=status.state,
            value=value,
            message=f"retrying after {self._last_outcome[spec.id]}",
        )
        log.info("remediation %s for %s: %s", rem.id, spec.id, retry.message)
        self._remediating.add(spec.id)
        self._busy.add(rem.id)
        self._spawn(self.remediate(spec, rem, retry))

    def _gate_check(self, spec: CheckSpec, rem: Remediation) -> str | None:
        """Why ``rem`` may not start now (running, cooldown, attempts), else ``None``."""
        if rem.id in self._busy:
            # One run per remediation at a time (also while a promised run's task has not
            # entered the gate yet).
            return "already running"
        return self.gate.check(
            self._gate_key(spec, rem),
            rem.cooldown_s,
            max_attempts=rem.max_attempts,
            window_s=rem.attempts_window_s,
        )

    @staticmethod
    def _gate_key(spec: CheckSpec, rem: Remediation) -> str:
        """Cooldown and attempts count per (remediation, check) on this host, so one
        service restarted too often does not use up another's budget."""
        return f"{rem.id}:{spec.id}"

    def _add_detection_jobs(self, timers: Timers) -> None:
        """One interval job per remediation with a detection script for this platform."""
        for spec, rem in self.detectors.values():
            # The job outlives the script's own timeout plus the kill grace, so a slow
            # detection ends as a recorded timeout rather than a cancelled job.
            bound = max(rem.detect_every_s, rem.timeout_s + 10.0)
            timers.add(
                spec.id,
                functools.partial(self.detect, spec.id),
                rem.detect_every_s,
                timeout_s=bound,
            )

    async def detect(self, spec_id: str) -> None:
        """Run one detection script and treat its verdict like a check result.

        Exit 1 means the issue is present (critical), exit 0 that it is not (ok); anything
        else is ``unknown``. The remediation then runs on the critical transition exactly
        as for a threshold check, so the collector sees the same promise/record/recovery.
        """
        spec, rem = self.detectors[spec_id]
        if spec.id in self._remediating:
            return  # the remediation task owns this check until it has verified
        value = await self._detect_value(rem)
        if self._evaluate(spec, value, self.clock(), may_remediate=True):
            self._spawn(self.ship())

    async def _detect_value(self, rem: Remediation) -> float | None:
        script = rem.detection_for()
        if script is None:
            return None
        result = await run_script(
            script,
            allowed_roots=self.config.remediation.folders,
            env=self._env(rem, self._params(None, rem), phase="detect", dry_run=False),
            timeout_s=rem.timeout_s,
            output_cap_bytes=rem.output_cap_bytes,
            cwd=rem.folder,
            run_as=rem.run_as,
        )
        if result.error or result.timed_out or result.exit_code not in (0, 1):
            why = result.error or ("timed out" if result.timed_out else f"exit {result.exit_code}")
            log.warning("detection for %s failed: %s: %s", rem.id, why, result.output[-200:])
            return None
        return float(result.exit_code)  # type: ignore[arg-type]

    def _env(
        self, rem: Remediation, params: Mapping[str, str], *, phase: str, dry_run: bool
    ) -> dict[str, str]:
        env = rem.script_env(params, dry_run=dry_run)
        env["VIGIL_PHASE"] = phase
        return env

    def _params(self, spec: CheckSpec | None, rem: Remediation) -> dict[str, str]:
        """Values for ``rem``'s parameters: ``remediation.params.<id>`` from the agent
        config, overridden by the triggering check's own ``remediation.params``."""
        params = dict(self.config.remediation.params.get(rem.id, {}))
        ref = spec.remediation if spec is not None else None
        if ref is not None and ref.id == rem.id:
            params.update(ref.params)
        return params

    def _dry_run(self, rem: Remediation) -> bool:
        return self.config.remediation.dry_run or rem.dry_run

    async def remediate(self, spec: CheckSpec, rem: Remediation, trigger: Transition) -> None:
        """Run ``rem`` for ``spec``, verify, and record the corrective-action record."""
        started = self.clock()
        try:
            result = await self._attempt(spec, rem, trigger)
            now = self.clock()
            self._record_remediation(spec, rem, result, started, now)
            self._last_outcome[spec.id] = result.outcome
            # Re-evaluate with the verification value so the recovery (if any) follows
            # the record in the outbox. No value measured: the next cycle decides.
            if result.value_after is not None or result.level_after is not None:
                self._evaluate(
                    spec, result.value_after, now, may_remediate=False, level=result.level_after
                )
            # Failures are urgent; a prevention is shipped promptly too, so the service
            # desk sees it while it is fresh.
            self._spawn(self.ship())
        finally:
            self._remediating.discard(spec.id)
            self._busy.discard(rem.id)

    async def _attempt(
        self, spec: CheckSpec, rem: Remediation, trigger: Transition
    ) -> RemediationOutcome:
        before = trigger.value
        script = rem.script_for()
        if script is None:
            return RemediationOutcome("error", before, before, None, "no script for this platform")
        dry_run = self._dry_run(rem)
        params = self._params(spec, rem)
        env = self._env(rem, params, phase="remediate", dry_run=dry_run)
        env.update(
            VIGIL_CHECK_ID=spec.id,
            VIGIL_CHECK_STATE=trigger.state,
            VIGIL_CHECK_VALUE="" if before is None else repr(before),
        )
        async with self.gate.slot(self._gate_key(spec, rem)):
            log.info("remediation %s for %s: running %s", rem.id, spec.id, script)
            result = await run_script(
                script,
                allowed_roots=self.config.remediation.folders,
                env=env,
                timeout_s=rem.timeout_s,
                output_cap_bytes=rem.output_cap_bytes,
                cwd=rem.folder,
                run_as=rem.run_as,
            )
        early = run_outcome(rem, result, dry_run=dry_run)
        if early is not None:
            outcome, reason = early
            # Nothing ran, or nothing was meant to change: the value is as it was. Else
            # measure once (no delay) so the record shows where the failure left things.
            if result.error is not None or dry_run:
                return RemediationOutcome(outcome, before, before, result, reason)
            after, level = await self._measure(spec)
            return RemediationOutcome(outcome, before, after, result, reason, level)
        delay = rem.verify_delay_s
        await asyncio.sleep(self.config.remediation.verify_delay_s if delay is None else delay)
        after, level = await self._measure(spec)
        if (verify := rem.verify_for()) is not None:
            cleared, detail = await self._verify_script(rem, verify, env)
        else:
            state = level or classify(spec, after, recovering=True)
            cleared = state not in (rem.states_for(spec.id) or ("critical",)) and state != "unknown"
            detail = f"after: {state}"
        outcome, reason = verified_outcome(cleared, detail)
        return RemediationOutcome(outcome, before, after, result, reason, level)

    async def _verify_script(
        self, rem: Remediation, script: Path, env: Mapping[str, str]
    ) -> tuple[bool, str]:
        """(cleared, detail) from the verification script: exit 0 means fixed."""
        result = await run_script(
            script,
            allowed_roots=self.config.remediation.folders,
            env={**env, "VIGIL_PHASE": "verify"},
            timeout_s=rem.timeout_s,
            output_cap_bytes=rem.output_cap_bytes,
            cwd=rem.folder,
            run_as=rem.run_as,
        )
        if result.error or result.timed_out:
            return False, f"verification did not run: {result.error or 'timed out'}"
        return result.exit_code == 0, f"verification exit {result.exit_code}"

    async def _measure(self, spec: CheckSpec) -> tuple[float | None, CheckState | None]:
        """Measure ``spec`` again: (value, level). The level is set for a command check
        (its plugin's state); otherwise it is None and the value decides."""
        if spec.id in self.detectors:
            return await self._detect_value(self.detectors[spec.id][1]), None
        if spec.is_command:
            result = await run_plugin(spec.command, timeout_s=spec.timeout_s)
            return next(iter(result.series(spec.id).values()), None), result.state
        return await self._resample(spec.metric), None

    async def _resample(self, metric: str) -> float | None:
        if metric.startswith("path."):
            async with self._sampling:
                loop = asyncio.get_running_loop()
                values = await loop.run_in_executor(None, self.sampler.sample_paths)
        else:
            # Only the source this series comes from: a verification should not cost a
            # full sample (and must not disturb rates more than needed).
            source = source_of(metric)
            values = await self._sample(None if source is None else {source})
        return values.get(metric)

    def _record_remediation(
        self, spec: CheckSpec, rem: Remediation, r: RemediationOutcome, started: float, now: float
    ) -> None:
        res = r.result
        log.log(
            logging.INFO if r.outcome == "fixed" else logging.WARNING,
            "remediation %s for %s: %s (%s) %s -> %s",
            rem.id,
            spec.id,
            r.outcome,
            r.reason,
            r.value_before,
            r.value_after,
        )
        # The script's own output when it has any; else why it did not run or was skipped.
        output = res.output if res is not None and res.output else r.reason
        self.outbox.put(
            wire.RemediationEvent(
                event_id=new_event_id(),
                seq=0,
                time=now,
                remediation=rem.id,
                check=spec.id,
                outcome=r.outcome,  # type: ignore[arg-type]
                exit_code=res.exit_code if res else None,
                started_at=started,
                duration_s=round(now - started, 3),
                value_before=r.value_before,
                value_after=r.value_after,
                output=output[: wire.MAX_OUTPUT],
                output_truncated=bool(res and res.truncated),
                script_sha256=res.script_sha256 if res else "",
                dry_run=self._dry_run(rem),
            ),
            urgent=r.outcome != "fixed",
        )


def detection_spec(rem: Remediation) -> CheckSpec:
    """The check that stands for ``rem``'s detection script: ``detect.<id>``, critical
    while the script exits 1 (issue present), ok while it exits 0."""
    return CheckSpec(
        id=f"detect.{rem.id}",
        metric=f"detect.{rem.id}",
        op=">",
        critical=0.5,
        description=f"detection script of remediation {rem.id}",
        remediation=RemediationRef(id=rem.id),
    )


def index_triggers(library: Mapping[str, Remediation]) -> dict[str, list[Remediation]]:
    """Check id → the manifests whose ``trigger.checks`` name it, in id order."""
    index: dict[str, list[Remediation]] = {}
    for rem_id in sorted(library):
        for t in library[rem_id].trigger_checks:
            index.setdefault(t.check, []).append(library[rem_id])
    return index


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
