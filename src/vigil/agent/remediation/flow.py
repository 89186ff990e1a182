"""The detect → fix → verify → retry flow: check results in, transitions and records out.

Every check result of the agent goes through :meth:`RemediationFlow.evaluate`: the pure
check rules (:func:`vigil.agent.checks.evaluate`) turn it into a state, a transition is
recorded, and a transition into a state that a remediation is for starts that
remediation. For a check that names a remediation the flow is:

1. the check's transition is recorded with ``remediation=<id>`` (a promise the
   collector waits for), or, when the gate refuses (already running, cooldown,
   attempts used up), the transition and a ``skipped`` record;
2. the script runs under the exec limits, holding the gate's slot;
3. the check is measured again (or the verification script runs) at once, then 0.2 s
   after a clear reading and at doubling steps (up to 5 s) while it stays bad: two
   consecutive clear readings verify the fix, else the reading at
   ``verify_delay`` (the upper bound) decides; the outcome rules are in
   :mod:`~vigil.agent.remediation.outcome`;
4. the corrective-action record is written *before* the check's recovery, so the
   collector sees "fixed while critical" (a prevented incident);
5. a run that ends ``not_fixed``, ``error``, ``timeout`` (or was skipped because another
   check's run of the same remediation was busy) is retried while the check stays bad,
   as far as the gate's cooldown and attempt budget allow.

While a check's remediation is in flight the flow owns that check (:meth:`owns`): the
agent's cycle does not evaluate it, so the order of its events is always the same.

The same flow serves manifest triggers of the remediations in ``remediation.enable``:
``trigger.checks`` (a check id entering a listed state) and ``trigger.detection`` (a
detection script run every ``trigger.every`` as the check ``detect.<id>``: exit 1 means
critical). See ``docs/remediations.md``.

Collaborators come in through the constructor with real defaults: the event sink (the
outbox), how to measure a check again (the agent's sampler and plugins), the script
runner, the gate, the wall clock and the sleep before verifying. A test gives fakes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol

from vigil import wire
from vigil.agent.checks import CheckStatus, Transition, classify
from vigil.agent.checks import evaluate as evaluate_check
from vigil.agent.config import CheckSpec, RemediationRef, RemediationSettings
from vigil.agent.events import EventSink, new_event_id
from vigil.agent.exec.script import ScriptResult, run_script
from vigil.agent.remediation.gate import RunGate
from vigil.agent.remediation.manifest import Remediation
from vigil.agent.remediation.outcome import RemediationOutcome, run_outcome, verified_outcome
from vigil.wire import CheckState

log = logging.getLogger("vigil.agent")

# Outcomes after which a check that stays bad gets another attempt (gate permitting).
RETRY_OUTCOMES = frozenset({"not_fixed", "error", "timeout", "skipped:busy"})

# Event-driven verification (see RemediationFlow._verify): a fix counts as verified after
# this many consecutive clear readings of its check, taken this many seconds apart, and
# the manifest's ``verify.delay`` is only the upper bound. Two readings, not one: a value
# read the instant a fix exits can be a transient (a service that dies again at once).
# While the check stays bad the step doubles up to VERIFY_STEP_MAX_S: a slow fix under a
# 60 s ``verify.delay`` costs ~17 readings (a verification script runs that often), not
# 300; a clear reading is confirmed one short step later.
VERIFY_STEP_S = 0.2
VERIFY_STEP_MAX_S = 5.0
VERIFY_CLEAR_READINGS = 2

Measure = Callable[[CheckSpec], Awaitable[tuple[float | None, CheckState | None]]]
"""Measure a check again: ``(value, level)``; ``level`` is set for a command check (its
plugin's state), else ``None`` and the value decides."""


class ScriptRunner(Protocol):
    """Runs one script under the exec limits (:func:`vigil.agent.exec.script.run_script`)."""

    def __call__(
        self,
        script: Path,
        *,
        allowed_roots: tuple[Path, ...],
        env: Mapping[str, str] | None,
        timeout_s: float,
        output_cap_bytes: int,
        cwd: Path | None,
        run_as: str | None,
    ) -> Awaitable[ScriptResult]: ...


async def _no_measure(spec: CheckSpec) -> tuple[float | None, CheckState | None]:
    return None, None


def _nothing() -> None:
    return None


class RemediationFlow:
    """Check results in; transitions, remediation runs and their records out.

    ``settings`` is the agent config's ``remediation`` section and ``library`` the loaded
    manifests (checked against the config beforehand, see
    :func:`~vigil.agent.remediation.manifest.check_library`). Events go to ``sink``.
    ``measure`` re-reads a check that is not a detection script (default: nothing
    measured, so the next cycle decides); ``run_script``, ``gate`` (default: a
    :class:`RunGate` with ``settings.max_concurrent`` slots), ``clock`` (wall seconds for
    the records) and ``sleep`` (the wait before verifying) are the real ones by default.
    ``deliver_now`` is called when a run has been recorded, to ship it while it is fresh;
    it is also settable as the attribute, by the owner that ships.
    """

    def __init__(
        self,
        settings: RemediationSettings,
        library: Mapping[str, Remediation],
        sink: EventSink,
        *,
        measure: Measure = _no_measure,
        run_script: ScriptRunner = run_script,
        gate: RunGate | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        deliver_now: Callable[[], None] = _nothing,
    ) -> None:
        self.settings = settings
        self.library = dict(library)
        self.sink = sink
        self.measure = measure
        self.run_script = run_script
        self.gate = gate if gate is not None else RunGate(settings.max_concurrent)
        self.clock = clock
        self.sleep = sleep
        self.deliver_now = deliver_now
        self.statuses: dict[str, CheckStatus] = {}
        # Manifest triggers of the enabled remediations only: check id -> manifests, and
        # detection scripts as checks.
        enabled = {i: self.library[i] for i in settings.enable}
        self._triggered_by = index_triggers(enabled)
        self.detectors: dict[str, tuple[CheckSpec, Remediation]] = {
            (spec := detection_spec(rem)).id: (spec, rem)
            for rem in enabled.values()
            if rem.detection_for() is not None
        }
        self._busy: set[str] = set()  # remediation ids promised or running
        self._last_outcome: dict[str, str] = {}  # check id -> outcome of its last run
        self._remediating: set[str] = set()  # check ids whose remediation is in flight
        self.tasks: set[asyncio.Task[None]] = set()
        # The collector's kill switch (agent/policy/sync.py sets these at once on each
        # ack): a halted remediation starts no run and no detection; runs in flight end.
        self.halted: frozenset[str] = frozenset()
        self.halt_all = False

    def is_halted(self, rem_id: str) -> bool:
        """Whether the collector halted ``rem_id`` (or every remediation)."""
        return self.halt_all or rem_id in self.halted

    # ------------------------------------------------------------------ check results

    def owns(self, check_id: str) -> bool:
        """Whether a remediation of ``check_id`` is in flight: the flow evaluates that
        check itself once it has verified, and nobody else should until then."""
        return check_id in self._remediating

    def evaluate(
        self,
        spec: CheckSpec,
        value: float | None,
        now: float,
        *,
        level: CheckState | None = None,
        reason: str | None = None,
        text: str | None = None,
    ) -> bool:
        """Evaluate one check result, record a transition, start (or retry) a remediation.

        ``now`` is wall seconds; ``level``, ``reason`` and ``text`` are as for
        :func:`vigil.agent.checks.evaluate`. Returns whether what was recorded is urgent
        (ship at once): a check going critical with no fix promised, or a skip.
        """
        return self._evaluate(
            spec, value, now, may_remediate=True, level=level, reason=reason, text=text
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
        status, transition = evaluate_check(
            spec, self.statuses.get(spec.id), value, now, level=level, reason=reason, text=text
        )
        self.statuses[spec.id] = status
        if transition is None:
            if may_remediate:
                self._maybe_retry(spec, status, value)
            return False
        rem = promise = skip_reason = None
        if may_remediate:
            rem = self.remediation_for(spec, transition.state)
        if rem is not None:
            skip_reason = self._gate_check(spec, rem)
            promise = rem.id if skip_reason is None else None
        self.record_transition(transition, now, promise)
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
            self._start(spec, rem, transition)
            return False  # the outcome decides urgency, not the detection
        return transition.state == "critical"

    def record_transition(self, t: Transition, now: float, promise: str | None) -> None:
        """Write ``t`` as a check event; ``promise`` names the remediation that will run."""
        log.info("check %s: %s -> %s (%s)", t.check, t.previous, t.state, t.message)
        self.sink.put(
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

    def remediation_for(self, spec: CheckSpec, state: str) -> Remediation | None:
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
        rem = self.remediation_for(spec, status.state)
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
        self._start(spec, rem, retry)

    def _gate_check(self, spec: CheckSpec, rem: Remediation) -> str | None:
        """Why ``rem`` may not start now (running, cooldown, attempts), else ``None``."""
        if self.is_halted(rem.id):
            return "halted by the collector (kill switch)"
        if rem.id in self._busy:
            # One run per remediation at a time (also while a promised run's task has not
            # entered the gate yet).
            return "already running"
        return self.gate.check(
            gate_key(spec, rem),
            rem.cooldown_s,
            max_attempts=rem.max_attempts,
            window_s=rem.attempts_window_s,
        )

    # ------------------------------------------------------------------ detection scripts

    async def detect(self, spec_id: str) -> bool:
        """Run one detection script and treat its verdict like a check result; return
        whether what was recorded is urgent.

        Exit 1 means the issue is present (critical), exit 0 that it is not (ok); anything
        else is ``unknown``. The remediation then runs on the critical transition exactly
        as for a threshold check, so the collector sees the same promise/record/recovery.
        """
        spec, rem = self.detectors[spec_id]
        if self.owns(spec.id) or self.is_halted(rem.id):
            # Owned: the remediation task evaluates it once verified. Halted: nothing of
            # a halted remediation runs, its detection script included.
            return False
        value = await self._detect_value(rem)
        return self.evaluate(spec, value, self.clock())

    async def _detect_value(self, rem: Remediation) -> float | None:
        script = rem.detection_for()
        if script is None:
            return None
        result = await self._run(rem, script, self._env(rem, self._params(None, rem), "detect"))
        if result.error or result.timed_out or result.exit_code not in (0, 1):
            why = result.error or ("timed out" if result.timed_out else f"exit {result.exit_code}")
            log.warning("detection for %s failed: %s: %s", rem.id, why, result.output[-200:])
            return None
        return float(result.exit_code)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ one run

    def _start(self, spec: CheckSpec, rem: Remediation, trigger: Transition) -> None:
        self._remediating.add(spec.id)
        self._busy.add(rem.id)
        self._spawn(self.remediate(spec, rem, trigger))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

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
            self.deliver_now()
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
        env = self._env(rem, self._params(spec, rem), "remediate", dry_run=dry_run)
        env.update(
            VIGIL_CHECK_ID=spec.id,
            VIGIL_CHECK_STATE=trigger.state,
            VIGIL_CHECK_VALUE="" if before is None else repr(before),
        )
        async with self.gate.slot(gate_key(spec, rem)):
            log.info("remediation %s for %s: running %s", rem.id, spec.id, script)
            result = await self._run(rem, script, env)
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
        bound = self.settings.verify_delay_s if delay is None else delay
        cleared, detail, after, level = await self._verify(spec, rem, env, bound)
        outcome, reason = verified_outcome(cleared, detail)
        return RemediationOutcome(outcome, before, after, result, reason, level)

    async def _verify(
        self, spec: CheckSpec, rem: Remediation, env: Mapping[str, str], bound_s: float
    ) -> tuple[bool, str, float | None, CheckState | None]:
        """Verify event-driven: (cleared, detail, value, level) of the deciding reading.

        The check is read at once when the fix has exited, then :data:`VERIFY_STEP_S`
        after a clear reading, and after a bad one at a step that doubles with each bad
        reading in a row (capped at :data:`VERIFY_STEP_MAX_S`).
        :data:`VERIFY_CLEAR_READINGS` consecutive clear readings confirm the fix early;
        otherwise the reading at ``bound_s`` (the manifest's ``verify.delay``, else the
        agent's) decides, as a single reading after the delay always did. A reading is
        clear when the verification script exits 0, or else when the check's state is
        known and not one the remediation is for (``unknown`` never counts as fixed).
        ``bound_s`` is counted in the sleeps taken and on the monotonic clock, whichever
        runs out first, and the number of readings is bounded too.
        """
        started = time.monotonic()
        waited = 0.0
        streak = misses = 0
        for _ in range(int(bound_s / VERIFY_STEP_S) + 2):
            after, level = await self._measure(spec)
            if (verify := rem.verify_for()) is not None:
                cleared, detail = await self._verify_script(rem, verify, env)
            else:
                state = level or classify(spec, after, recovering=True)
                bad = rem.states_for(spec.id) or ("critical",)
                cleared = state not in bad and state != "unknown"
                detail = f"after: {state}"
            streak, misses = (streak + 1, 0) if cleared else (0, misses + 1)
            left = bound_s - max(waited, time.monotonic() - started)
            if streak >= VERIFY_CLEAR_READINGS or left <= 1e-9:
                break
            backoff = VERIFY_STEP_S * 2 ** max(misses - 1, 0)
            step = min(backoff, VERIFY_STEP_MAX_S, left)
            await self.sleep(step)
            waited += step
        return cleared, detail, after, level

    async def _verify_script(
        self, rem: Remediation, script: Path, env: Mapping[str, str]
    ) -> tuple[bool, str]:
        """(cleared, detail) from the verification script: exit 0 means fixed."""
        result = await self._run(rem, script, {**env, "VIGIL_PHASE": "verify"})
        if result.error or result.timed_out:
            return False, f"verification did not run: {result.error or 'timed out'}"
        return result.exit_code == 0, f"verification exit {result.exit_code}"

    async def _measure(self, spec: CheckSpec) -> tuple[float | None, CheckState | None]:
        """Measure ``spec`` again: a detection check by its script, any other through
        the injected ``measure``."""
        if spec.id in self.detectors:
            return await self._detect_value(self.detectors[spec.id][1]), None
        return await self.measure(spec)

    def _run(
        self, rem: Remediation, script: Path, env: Mapping[str, str]
    ) -> Awaitable[ScriptResult]:
        """One script of ``rem`` under its manifest's limits, inside the library folders."""
        return self.run_script(
            script,
            allowed_roots=self.settings.folders,
            env=env,
            timeout_s=rem.timeout_s,
            output_cap_bytes=rem.output_cap_bytes,
            cwd=rem.folder,
            run_as=rem.run_as,
        )

    def _env(
        self, rem: Remediation, params: Mapping[str, str], phase: str, *, dry_run: bool = False
    ) -> dict[str, str]:
        env = rem.script_env(params, dry_run=dry_run)
        env["VIGIL_PHASE"] = phase
        return env

    def _params(self, spec: CheckSpec | None, rem: Remediation) -> dict[str, str]:
        """Values for ``rem``'s parameters: ``remediation.params.<id>`` from the agent
        config, overridden by the triggering check's own ``remediation.params``."""
        params = dict(self.settings.params.get(rem.id, {}))
        ref = spec.remediation if spec is not None else None
        if ref is not None and ref.id == rem.id:
            params.update(ref.params)
        return params

    def _dry_run(self, rem: Remediation) -> bool:
        return self.settings.dry_run or rem.dry_run

    def _record_remediation(
        self,
        spec: CheckSpec | None,
        rem: Remediation,
        r: RemediationOutcome,
        started: float,
        now: float,
        *,
        request_id: str | None = None,
    ) -> None:
        """Write the corrective-action record; ``spec`` is ``None`` for a run no check
        triggered (a run-now request, whose id is ``request_id``, or a schedule)."""
        res = r.result
        log.log(
            logging.INFO if r.outcome == "fixed" else logging.WARNING,
            "remediation %s for %s: %s (%s) %s -> %s",
            rem.id,
            spec.id if spec is not None else f"request {request_id}",
            r.outcome,
            r.reason,
            r.value_before,
            r.value_after,
        )
        # The script's own output when it has any; else why it did not run or was skipped.
        output = res.output if res is not None and res.output else r.reason
        self.sink.put(
            wire.RemediationEvent(
                event_id=new_event_id(),
                seq=0,
                time=now,
                remediation=rem.id,
                check=spec.id if spec is not None else None,
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
                request_id=request_id,
                run_as_user=res.ran_as if res is not None and rem.run_as else None,
            ),
            urgent=r.outcome != "fixed",
        )

    # ------------------------------------------------------------------ lifecycle

    async def idle(self) -> None:
        """Wait until no remediation is in flight (a retry started meanwhile included)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def close(self) -> None:
        """Cancel every run in flight (its process tree is killed) and wait for them."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def gate_key(spec: CheckSpec, rem: Remediation) -> str:
    """Cooldown and attempts count per (remediation, check) on this host, so one service
    restarted too often does not use up another's budget."""
    return f"{rem.id}:{spec.id}"


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
