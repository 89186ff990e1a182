"""The agent process: wires sampler, checks, remediations, outbox and shipper together.

One ``AsyncIOScheduler`` drives every periodic job (sample + evaluate, ship, heartbeat,
metrics summary). Each job has its own timeout and ``max_instances=1`` so a slow cycle
is skipped rather than piled up. Every event goes to the outbox *before* any delivery
attempt; urgent events (a check going critical, a failed fix) trigger an immediate ship.

Flow for a check that names a remediation (detection → remediation → verification):
the check's critical transition is recorded with ``remediation=<id>`` (a promise the
collector waits for), the script runs under the runner's limits, the agent re-samples
after ``verify_delay`` and re-evaluates the check, then records the corrective-action
record *before* the check's recovery so the collector sees "fixed while critical"
(a prevented incident). While a check's remediation is in flight the regular cycle does
not evaluate that check, so the order of its events is always the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from agent import __version__, wire
from agent.checks import CheckStatus, Transition, classify, evaluate
from agent.config import AgentConfig, CheckSpec
from agent.configio import ConfigError
from agent.identity import Identity, load_identity
from agent.outbox import Outbox
from agent.remediation import Remediation, load_library
from agent.runner import RunGate, ScriptResult, run_script
from agent.sampler import Sampler
from agent.shipper import Shipper

log = logging.getLogger("vigil.agent")

# A heartbeat promises the next one within this many intervals (the collector adds grace).
HEARTBEAT_TTL_INTERVALS = 2.5


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


def check_library(config: AgentConfig, library: Mapping[str, Remediation]) -> None:
    """Raise :class:`ConfigError` when a check names a remediation that is not loaded, or
    passes it a parameter its manifest does not declare."""
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
        self.outbox = Outbox(config.outbox.path, max_bytes=config.outbox.max_bytes)
        self.shipper = Shipper(
            config.collector,
            self.outbox,
            self.identity,
            agent_version=__version__,
            batch_max_events=config.outbox.batch_max_events,
        )
        self.gate = RunGate(config.remediation.max_concurrent)
        self.statuses: dict[str, CheckStatus] = {}
        self.latest: dict[str, float] = {}
        self._remediating: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down cleanly (bounded final flush)."""
        iv = self.config.intervals
        scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
        )
        scheduler.add_job(
            self._timed(self.cycle, iv.sample_s),
            "interval",
            seconds=iv.sample_s,
            id="sample",
            next_run_time=_now_dt(),
        )
        scheduler.add_job(
            self._timed(self.ship, iv.report_s), "interval", seconds=iv.report_s, id="ship"
        )
        scheduler.add_job(
            self._timed(self.heartbeat, iv.heartbeat_s),
            "interval",
            seconds=iv.heartbeat_s,
            id="heartbeat",
            next_run_time=_now_dt(),
        )
        scheduler.add_job(
            self._timed(self.metrics_summary, iv.metrics_s),
            "interval",
            seconds=iv.metrics_s,
            id="metrics",
        )
        scheduler.start()
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
            scheduler.shutdown(wait=False)
            await self._shutdown()

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ship(), timeout=3.0)
        await self.shipper.close()
        self.outbox.close()
        log.info("agent stopped; %d events left in the outbox for next time", self._depth())

    def _depth(self) -> int:
        with contextlib.suppress(Exception):
            return self.outbox.depth()
        return -1

    def _timed(self, job: Callable[[], object], period_s: float) -> Callable[[], object]:
        """Wrap a job so it can never outlive its period (or 5 s for very short periods)."""
        timeout = max(period_s, 5.0)

        async def run() -> None:
            try:
                await asyncio.wait_for(job(), timeout=timeout)  # type: ignore[arg-type]
            except TimeoutError:
                log.warning("job %s exceeded %.1fs and was cancelled", job.__name__, timeout)
            except Exception:
                log.exception("job %s failed", job.__name__)

        run.__name__ = job.__name__
        return run

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ jobs

    async def cycle(self) -> None:
        """Sample, evaluate every check, record transitions, start remediations."""
        loop = asyncio.get_running_loop()
        # Sampling does blocking syscalls; keep the event loop free for the shipper.
        values = await loop.run_in_executor(None, self.sampler.sample)
        self.latest = values
        now = self.clock()
        urgent = False
        for spec in self.config.checks:
            if spec.id in self._remediating:
                continue  # the remediation task owns this check until it has verified
            urgent |= self._evaluate(spec, values.get(spec.metric), now, may_remediate=True)
        if urgent:
            self._spawn(self.ship())

    def _evaluate(
        self, spec: CheckSpec, value: float | None, now: float, *, may_remediate: bool
    ) -> bool:
        """Evaluate one check; record a transition; return whether it is urgent."""
        status, transition = evaluate(spec, self.statuses.get(spec.id), value, now)
        self.statuses[spec.id] = status
        if transition is None:
            return False
        rem = promise = skip_reason = None
        if may_remediate and transition.state == "critical" and spec.remediation:
            rem = self.library[spec.remediation.id]
            skip_reason = self.gate.check(self._gate_key(spec), rem.cooldown_s)
            promise = rem.id if skip_reason is None else None
        self._record_transition(transition, now, promise)
        if rem is not None and skip_reason is not None:
            # Cooldown or already running: record the skip; the incident path takes over.
            skipped = RemediationOutcome("skipped", value, value, None, skip_reason)
            self._record_remediation(spec, rem, skipped, now, now)
            return True
        if promise:
            self._remediating.add(spec.id)
            self._spawn(self.remediate(spec, transition))
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
            ),
            urgent=t.state == "critical" and promise is None,
        )

    async def ship(self) -> None:
        """Deliver what the outbox holds (the shipper serialises overlapping calls)."""
        result = await self.shipper.ship()
        if result.error and result.error != "backing off":
            log.warning("delivery pending (%d events queued): %s", self._depth(), result.error)

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
            # The first heartbeat ships at once so a new host appears immediately.
            self.statuses[wire.HEARTBEAT_CHECK] = CheckStatus("ok", self.clock(), None)
            self._spawn(self.ship())

    async def metrics_summary(self) -> None:
        """Record the latest sampled values as one metrics event."""
        if self.latest:
            self.outbox.put(
                wire.MetricsEvent(
                    event_id=new_event_id(), seq=0, time=self.clock(), values=dict(self.latest)
                )
            )

    # ------------------------------------------------------------------ remediation

    @staticmethod
    def _gate_key(spec: CheckSpec) -> str:
        assert spec.remediation is not None
        return f"{spec.remediation.id}:{spec.id}"

    async def remediate(self, spec: CheckSpec, trigger: Transition) -> None:
        """Run the check's remediation, verify, and record the corrective-action record."""
        assert spec.remediation is not None
        rem = self.library[spec.remediation.id]
        started = self.clock()
        try:
            result = await self._attempt(spec, rem, trigger)
            now = self.clock()
            self._record_remediation(spec, rem, result, started, now)
            # Re-evaluate with the verification value so the recovery (if any) follows
            # the record in the outbox.
            self._evaluate(spec, result.value_after, now, may_remediate=False)
            # Failures are urgent; a prevention is shipped promptly too, so the service
            # desk sees it while it is fresh.
            self._spawn(self.ship())
        finally:
            self._remediating.discard(spec.id)

    async def _attempt(
        self, spec: CheckSpec, rem: Remediation, trigger: Transition
    ) -> RemediationOutcome:
        assert spec.remediation is not None
        before = trigger.value
        script = rem.script_for()
        if script is None:
            return RemediationOutcome("error", before, before, None, "no script for this platform")
        dry_run = self.config.remediation.dry_run
        env = rem.script_env(spec.remediation.params, dry_run=dry_run)
        env.update(
            VIGIL_CHECK_ID=spec.id,
            VIGIL_CHECK_STATE=trigger.state,
            VIGIL_CHECK_VALUE="" if before is None else repr(before),
        )
        async with self.gate.slot(self._gate_key(spec)):
            log.info("remediation %s for %s: running %s", rem.id, spec.id, script)
            result = await run_script(
                script,
                allowed_roots=self.config.remediation.folders,
                env=env,
                timeout_s=rem.timeout_s,
                output_cap_bytes=rem.output_cap_bytes,
                cwd=rem.folder,
            )
        if result.error:
            return RemediationOutcome("error", before, before, result, result.error)
        if result.timed_out:
            return RemediationOutcome("timeout", before, before, result, "timed out")
        if dry_run:
            return RemediationOutcome("dry_run", before, before, result, "dry run")
        await asyncio.sleep(self.config.remediation.verify_delay_s)
        after = await self._resample(spec.metric)
        if result.exit_code != 0:
            return RemediationOutcome("error", before, after, result, f"exit {result.exit_code}")
        state = classify(spec, after)
        outcome = "fixed" if state in ("ok", "warning") else "not_fixed"
        return RemediationOutcome(outcome, before, after, result, f"after: {state}")

    async def _resample(self, metric: str) -> float | None:
        loop = asyncio.get_running_loop()
        sample = self.sampler.sample_paths if metric.startswith("path.") else self.sampler.sample
        values = await loop.run_in_executor(None, sample)
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
                output=(res.output if res else r.reason)[: wire.MAX_OUTPUT],
                output_truncated=bool(res and res.truncated),
                script_sha256=res.script_sha256 if res else "",
                dry_run=self.config.remediation.dry_run,
            ),
            urgent=r.outcome != "fixed",
        )


def _now_dt() -> datetime:
    """First-run time for jobs that should start at once rather than one period in."""
    return datetime.now().astimezone()
