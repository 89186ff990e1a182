"""remediation.flow on fakes: no process, no sampler, no outbox, no waiting.

A fake script runner answers with scripted results and records what it was asked to
run, a fake measure says what the check reads after the fix, a list is the event sink,
the gate runs on a fake clock and the wait before verifying is recorded, not slept.
``tests/unit/test_remediation_flow.py`` runs the same flow for real, inside the agent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vigil import wire
from vigil.agent.config import CheckSpec, RemediationRef, RemediationSettings
from vigil.agent.exec.script import ScriptResult
from vigil.agent.remediation.flow import (
    VERIFY_CLEAR_READINGS,
    VERIFY_STEP_MAX_S,
    VERIFY_STEP_S,
    RemediationFlow,
    detection_spec,
    index_triggers,
)
from vigil.agent.remediation.gate import RunGate
from vigil.agent.remediation.manifest import CheckTrigger, Remediation, current_platform
from vigil.wire import CheckState

T = TypeVar("T")
T0 = 1_700_000_000.0
LIB = Path("/lib/vigil")  # never touched: the runner is a fake
HERE = current_platform()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def ran(exit_code: int | None = 0, output: str = "", **kwargs: Any) -> ScriptResult:
    """A script result as the real runner would give it."""
    fields: dict[str, Any] = {
        "exit_code": exit_code,
        "output": output,
        "truncated": False,
        "duration_s": 0.1,
        "timed_out": False,
        "error": None,
        "script_sha256": "ab" * 32,
    }
    return ScriptResult(**(fields | kwargs))


@dataclass
class Call:
    script: Path
    env: dict[str, str]
    kwargs: dict[str, Any]


class FakeRunner:
    """Answers each run with the next scripted result per script name; records calls."""

    def __init__(self, **results: list[ScriptResult]) -> None:
        self.results = {name: list(r) for name, r in results.items()}
        self.calls: list[Call] = []

    async def __call__(
        self, script: Path, *, env: Mapping[str, str] | None, **kwargs: Any
    ) -> ScriptResult:
        self.calls.append(Call(script, dict(env or {}), kwargs))
        return self.results[script.name].pop(0)

    def names(self) -> list[str]:
        return [c.script.name for c in self.calls]


@dataclass
class FakeMeasure:
    """What the check reads when measured again, one value per call; the last one stays
    (verification reads the check several times, see ``VERIFY_STEP_S``)."""

    values: list[float | None]
    level: CheckState | None = None
    asked: list[str] = field(default_factory=list)

    async def __call__(self, spec: CheckSpec) -> tuple[float | None, CheckState | None]:
        self.asked.append(spec.id)
        return (self.values.pop(0) if len(self.values) > 1 else self.values[0]), self.level


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[wire.Event, bool]] = []

    def put(self, event: wire.Event, *, urgent: bool = False) -> None:
        self.events.append((event, urgent))

    def story(self) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        for e, _ in self.events:
            if isinstance(e, wire.CheckEvent):
                out.append(("check", e.check, e.state, e.remediation or "-"))
            elif isinstance(e, wire.RemediationEvent):
                out.append(("remediation", e.remediation, e.check or "-", e.outcome))
        return out

    def records(self) -> list[wire.RemediationEvent]:
        return [e for e, _ in self.events if isinstance(e, wire.RemediationEvent)]


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def remediation(rem_id: str = "fix", **overrides: Any) -> Remediation:
    fields: dict[str, Any] = {
        "id": rem_id,
        "title": "Fix it",
        "description": "Fixes it.",
        "folder": LIB / rem_id,
        "platforms": (HERE,),
        "scripts": {HERE: LIB / rem_id / "fix.sh"},
        "timeout_s": 30.0,
        "output_cap_bytes": 4096,
        "cooldown_s": 0.0,
        "params": {"unit": "the service"},
    }
    return Remediation(**(fields | overrides))


LEVEL = CheckSpec(id="level.high", metric="level", critical=10.0)


def with_fix(spec: CheckSpec = LEVEL, rem_id: str = "fix", **params: str) -> CheckSpec:
    return CheckSpec(
        id=spec.id,
        metric=spec.metric,
        critical=spec.critical,
        remediation=RemediationRef(rem_id, params),
    )


class Harness:
    """One flow on fakes; ``flow`` is built on first use so a test can adjust first."""

    def __init__(
        self, *rems: Remediation, runner: FakeRunner, measure: FakeMeasure, **settings: Any
    ) -> None:
        self.sink = Sink()
        self.runner = runner
        self.measure = measure
        self.wall = FakeClock(T0)
        self.mono = FakeClock(1000.0)
        self.slept: list[float] = []
        self.delivered = 0
        folders = (LIB,)
        self.settings = RemediationSettings(folders=folders, verify_delay_s=1.0, **settings)

        async def sleep(seconds: float) -> None:
            self.slept.append(seconds)

        def deliver() -> None:
            self.delivered += 1

        self.flow = RemediationFlow(
            self.settings,
            {r.id: r for r in rems},
            self.sink,
            measure=measure,
            run_script=runner,
            gate=RunGate(2, clock=self.mono),
            clock=self.wall,
            sleep=sleep,
            deliver_now=deliver,
        )

    async def observe(self, spec: CheckSpec, value: float | None) -> bool:
        urgent = self.flow.evaluate(spec, value, self.wall())
        await self.flow.idle()
        return urgent


# --- one run ------------------------------------------------------------------------------


def test_a_fix_that_clears_the_check_is_promise_record_recovery_in_that_order() -> None:
    h = Harness(
        remediation(),
        runner=FakeRunner(**{"fix.sh": [ran(0, "done\n")]}),
        measure=FakeMeasure([3.0]),
    )

    urgent = run(h.observe(with_fix(), 50.0))

    assert not urgent  # the outcome decides urgency, not the detection
    assert h.sink.story() == [
        ("check", "level.high", "critical", "fix"),
        ("remediation", "fix", "level.high", "fixed"),
        ("check", "level.high", "ok", "-"),
    ]
    (record,) = h.sink.records()
    assert (record.value_before, record.value_after, record.output) == (50.0, 3.0, "done\n")
    # Read at once and confirmed one step later, not after the agent's verify_delay (1 s).
    assert h.slept == [VERIFY_STEP_S]
    assert h.measure.asked == ["level.high"] * VERIFY_CLEAR_READINGS
    assert h.delivered == 1


def test_the_script_gets_phase_params_and_the_trigger_in_its_environment() -> None:
    h = Harness(remediation(), runner=FakeRunner(**{"fix.sh": [ran()]}), measure=FakeMeasure([3.0]))

    run(h.observe(with_fix(unit="cups"), 50.0))

    (call,) = h.runner.calls
    assert {k: v for k, v in call.env.items() if k.startswith("VIGIL_")} == {
        "VIGIL_REMEDIATION": "fix",
        "VIGIL_DRY_RUN": "0",
        "VIGIL_PARAM_UNIT": "cups",
        "VIGIL_PHASE": "remediate",
        "VIGIL_CHECK_ID": "level.high",
        "VIGIL_CHECK_STATE": "critical",
        "VIGIL_CHECK_VALUE": "50.0",
    }
    assert call.kwargs == {
        "allowed_roots": (LIB,),
        "timeout_s": 30.0,
        "output_cap_bytes": 4096,
        "cwd": LIB / "fix",
        "run_as": None,
    }


def test_a_fix_that_leaves_the_check_bad_is_not_fixed_and_urgent() -> None:
    h = Harness(
        remediation(), runner=FakeRunner(**{"fix.sh": [ran()]}), measure=FakeMeasure([50.0])
    )

    run(h.observe(with_fix(), 50.0))

    assert h.sink.story() == [
        ("check", "level.high", "critical", "fix"),
        ("remediation", "fix", "level.high", "not_fixed"),
    ]
    ((_, urgent),) = [(e, u) for e, u in h.sink.events if isinstance(e, wire.RemediationEvent)]
    assert urgent


def test_a_manifest_verify_delay_wins_over_the_agents() -> None:
    rem = remediation(verify_delay_s=0.25)
    h = Harness(rem, runner=FakeRunner(**{"fix.sh": [ran()]}), measure=FakeMeasure([50.0]))

    run(h.observe(with_fix(), 50.0))

    # A check that stays bad is read until the manifest's delay (not the agent's 1 s).
    assert h.slept == pytest.approx([0.2, 0.05])
    assert h.measure.asked == ["level.high"] * 3
    (record,) = h.sink.records()
    assert record.outcome == "not_fixed"


# --- event-driven verification -----------------------------------------------------------


def verify_with(*readings: float | None, delay: float | None = None) -> Harness:
    """Run one fix whose check then reads ``readings`` (the last one stays)."""
    h = Harness(
        remediation(verify_delay_s=delay),
        runner=FakeRunner(**{"fix.sh": [ran()]}),
        measure=FakeMeasure(list(readings)),
    )
    run(h.observe(with_fix(), 50.0))
    return h


def test_verification_waits_for_the_check_to_clear_then_confirms_once() -> None:
    h = verify_with(50.0, 50.0, 3.0, 3.0)

    (record,) = h.sink.records()
    assert (record.outcome, record.value_after) == ("fixed", 3.0)
    # Bad at 0 s and 0.2 s (the step doubles), clear at 0.6 s, confirmed one short step
    # later (0.8 s): well within 1 s.
    assert h.slept == pytest.approx([VERIFY_STEP_S, 2 * VERIFY_STEP_S, VERIFY_STEP_S])
    assert h.sink.story()[-1] == ("check", "level.high", "ok", "-")


def test_one_clear_reading_followed_by_a_bad_one_is_not_verified() -> None:
    h = verify_with(3.0, 50.0)  # a transient: the check goes bad again after one reading

    (record,) = h.sink.records()
    assert (record.outcome, record.value_after) == ("not_fixed", 50.0)
    assert sum(h.slept) == pytest.approx(1.0)  # read until the verify delay, no longer
    # 0 (clear), 0.2 (bad), 0.4 (bad: the step doubles), 0.8, and the deadline at 1.0.
    assert h.slept == pytest.approx([0.2, 0.2, 0.4, 0.2])
    assert len(h.measure.asked) == 5


def test_a_check_that_stays_bad_is_read_rarely_under_a_long_verify_delay() -> None:
    """Backoff: a 60 s delay costs a handful of readings (a verify script runs once per
    reading), the steps never exceed the cap, and the last reading is at the delay."""
    h = verify_with(50.0, delay=60.0)

    (record,) = h.sink.records()
    assert record.outcome == "not_fixed"
    assert sum(h.slept) == pytest.approx(60.0)
    assert max(h.slept) == pytest.approx(VERIFY_STEP_MAX_S)
    assert h.slept[:5] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2])
    assert len(h.measure.asked) <= 20


def test_a_single_clear_reading_at_the_delay_still_verifies_as_before() -> None:
    # Readings at 0, 0.2, 0.6 (bad, the step doubling) and at the 1 s delay (clear).
    h = verify_with(50.0, 50.0, 50.0, 3.0)

    (record,) = h.sink.records()
    assert (record.outcome, record.value_after) == ("fixed", 3.0)
    assert h.slept == pytest.approx([0.2, 0.4, 0.4])


def test_unknown_readings_never_confirm_a_fix() -> None:
    h = verify_with(None)

    (record,) = h.sink.records()
    assert record.outcome == "not_fixed"
    assert (record.output, record.value_after) == ("after: unknown", None)
    assert sum(h.slept) == pytest.approx(1.0)


def test_a_zero_verify_delay_reads_once_at_once() -> None:
    h = verify_with(3.0, delay=0.0)

    (record,) = h.sink.records()
    assert record.outcome == "fixed"
    assert h.slept == []
    assert len(h.measure.asked) == 1


def test_a_failed_script_is_measured_at_once_and_recorded_as_an_error() -> None:
    h = Harness(
        remediation(),
        runner=FakeRunner(**{"fix.sh": [ran(2, "boom\n")]}),
        measure=FakeMeasure([49.0]),
    )

    run(h.observe(with_fix(), 50.0))

    (record,) = h.sink.records()
    assert (record.outcome, record.exit_code, record.value_after) == ("error", 2, 49.0)
    assert h.slept == []  # nothing to wait for before measuring


def test_a_script_that_could_not_run_keeps_the_value_and_says_why() -> None:
    refused = ran(None, error="script not found: /lib/vigil/fix/fix.sh", script_sha256="")
    h = Harness(remediation(), runner=FakeRunner(**{"fix.sh": [refused]}), measure=FakeMeasure([]))

    run(h.observe(with_fix(), 50.0))

    (record,) = h.sink.records()
    assert (record.outcome, record.value_after) == ("error", 50.0)
    assert record.output == "script not found: /lib/vigil/fix/fix.sh"
    assert h.measure.asked == []


def test_a_verification_script_decides_and_runs_in_the_verify_phase() -> None:
    rem = remediation(verify_scripts={HERE: LIB / "fix" / "verify.sh"})
    runner = FakeRunner(**{"fix.sh": [ran()], "verify.sh": [ran(1)] * 4})
    h = Harness(rem, runner=runner, measure=FakeMeasure([3.0]))

    run(h.observe(with_fix(), 50.0))

    # The check reads clear, but the script says no at every reading up to the 1 s bound
    # (at 0, 0.2, 0.6 and 1 s: the step doubles while the answer is no).
    assert h.runner.names() == ["fix.sh"] + ["verify.sh"] * 4
    assert h.runner.calls[1].env["VIGIL_PHASE"] == "verify"
    (record,) = h.sink.records()
    assert (record.outcome, record.value_after) == ("not_fixed", 3.0)


def test_dry_run_from_the_agent_config_is_passed_and_never_verified() -> None:
    h = Harness(
        remediation(),
        runner=FakeRunner(**{"fix.sh": [ran(0, "would fix\n")]}),
        measure=FakeMeasure([]),
        dry_run=True,
    )

    run(h.observe(with_fix(), 50.0))

    (record,) = h.sink.records()
    assert (record.outcome, record.dry_run) == ("dry_run", True)
    assert h.runner.calls[0].env["VIGIL_DRY_RUN"] == "1"
    assert h.measure.asked == []


# --- the gate and retries -------------------------------------------------------------------


def test_cooldown_refusal_records_the_transition_and_a_skip_as_urgent() -> None:
    rem = remediation(cooldown_s=300.0)
    runner = FakeRunner(**{"fix.sh": [ran()]})
    h = Harness(rem, runner=runner, measure=FakeMeasure([3.0]))

    async def scenario() -> bool:
        await h.observe(with_fix(), 50.0)  # fixed: the cooldown starts
        h.mono.now += 60
        return await h.observe(with_fix(), 50.0)  # critical again within the cooldown

    urgent = run(scenario())

    assert urgent
    assert h.runner.names() == ["fix.sh"]
    skip = h.sink.records()[-1]
    assert (skip.outcome, skip.output) == ("skipped", "cooldown: 240s left")
    assert h.sink.story()[-2] == ("check", "level.high", "critical", "-")


def test_a_failed_fix_is_retried_while_the_check_stays_bad() -> None:
    runner = FakeRunner(**{"fix.sh": [ran(1, "transient\n"), ran()]})
    h = Harness(remediation(), runner=runner, measure=FakeMeasure([50.0, 3.0]))

    async def scenario() -> None:
        await h.observe(with_fix(), 50.0)  # error
        await h.observe(with_fix(), 50.0)  # still critical: retried, fixed

    run(scenario())

    assert h.sink.story() == [
        ("check", "level.high", "critical", "fix"),
        ("remediation", "fix", "level.high", "error"),
        ("remediation", "fix", "level.high", "fixed"),
        ("check", "level.high", "ok", "-"),
    ]


def test_retries_stop_when_the_attempt_budget_is_spent() -> None:
    runner = FakeRunner(**{"fix.sh": [ran(1), ran(1)]})
    h = Harness(remediation(max_attempts=2), runner=runner, measure=FakeMeasure([50.0, 50.0]))

    async def scenario() -> None:
        for _ in range(4):
            await h.observe(with_fix(), 50.0)

    run(scenario())

    assert h.runner.names() == ["fix.sh", "fix.sh"]
    assert [r.outcome for r in h.sink.records()] == ["error", "error"]


@pytest.mark.parametrize("declared", ["needs_reboot", "needs_user"])
def test_a_declared_outcome_is_recorded_and_never_retried(declared: str) -> None:
    runner = FakeRunner(**{"fix.sh": [ran(0, f"vigil-outcome: {declared}\n")]})
    h = Harness(remediation(), runner=runner, measure=FakeMeasure([50.0]))

    async def scenario() -> None:
        for _ in range(3):
            await h.observe(with_fix(), 50.0)

    run(scenario())

    assert [r.outcome for r in h.sink.records()] == [declared]


def test_the_flow_owns_a_check_while_its_fix_is_in_flight() -> None:
    release = asyncio.Event()
    h = Harness(remediation(), runner=FakeRunner(**{"fix.sh": [ran()]}), measure=FakeMeasure([3.0]))
    inner = h.flow.run_script

    async def slow(script: Path, **kwargs: Any) -> ScriptResult:
        await release.wait()
        return await inner(script, **kwargs)

    h.flow.run_script = slow

    async def scenario() -> list[bool]:
        h.flow.evaluate(with_fix(), 50.0, T0)
        await asyncio.sleep(0)
        during = h.flow.owns("level.high")
        release.set()
        await h.flow.idle()
        return [during, h.flow.owns("level.high")]

    assert run(scenario()) == [True, False]


def test_close_cancels_a_fix_in_flight_and_records_nothing() -> None:
    started = asyncio.Event()
    h = Harness(remediation(), runner=FakeRunner(), measure=FakeMeasure([]))

    async def hang(script: Path, **kwargs: Any) -> ScriptResult:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("not cancelled")

    h.flow.run_script = hang

    async def scenario() -> None:
        h.flow.evaluate(with_fix(), 50.0, T0)
        await started.wait()
        await h.flow.close()

    run(scenario())

    assert h.sink.story() == [("check", "level.high", "critical", "fix")]
    assert not h.flow.tasks and not h.flow.owns("level.high")


# --- manifest triggers and detection scripts ------------------------------------------------


def test_a_manifest_trigger_runs_only_for_enabled_remediations() -> None:
    rem = remediation(trigger_checks=(CheckTrigger("level.high", ("warning", "critical")),))
    spec = CheckSpec(id="level.high", metric="level", warning=5.0, critical=10.0)
    for enable, expected in (((), []), (("fix",), ["fix.sh"])):
        runner = FakeRunner(**{"fix.sh": [ran()]})
        h = Harness(rem, runner=runner, measure=FakeMeasure([3.0]), enable=enable)

        run(h.observe(spec, 7.0))

        assert h.runner.names() == expected


def test_a_detection_script_is_a_check_and_re_runs_to_verify() -> None:
    rem = remediation(detection={HERE: LIB / "fix" / "detect.sh"})
    runner = FakeRunner(**{"detect.sh": [ran(1), ran(0), ran(0)], "fix.sh": [ran()]})
    h = Harness(rem, runner=runner, measure=FakeMeasure([]), enable=("fix",))

    async def scenario() -> bool:
        urgent = await h.flow.detect("detect.fix")
        await h.flow.idle()
        return urgent

    assert run(scenario()) is False
    # Detection re-runs at once and once more to confirm.
    assert h.runner.names() == ["detect.sh", "fix.sh", "detect.sh", "detect.sh"]
    assert h.runner.calls[0].env["VIGIL_PHASE"] == "detect"
    assert h.sink.story() == [
        ("check", "detect.fix", "critical", "fix"),
        ("remediation", "fix", "detect.fix", "fixed"),
        ("check", "detect.fix", "ok", "-"),
    ]
    assert h.measure.asked == []  # a detection check is measured by its script


def test_a_detection_script_that_fails_to_decide_is_unknown() -> None:
    rem = remediation(detection={HERE: LIB / "fix" / "detect.sh"})
    h = Harness(
        rem, runner=FakeRunner(**{"detect.sh": [ran(7)]}), measure=FakeMeasure([]), enable=("fix",)
    )

    run(h.flow.detect("detect.fix"))

    assert h.sink.story() == [("check", "detect.fix", "unknown", "-")]


def test_detection_spec_and_trigger_index() -> None:
    a = remediation("a", trigger_checks=(CheckTrigger("disk"),))
    b = remediation("b", trigger_checks=(CheckTrigger("disk"), CheckTrigger("cpu")))

    spec = detection_spec(a)

    assert (spec.id, spec.metric, spec.op, spec.critical) == ("detect.a", "detect.a", ">", 0.5)
    assert spec.remediation == RemediationRef("a")
    index = index_triggers({"b": b, "a": a})
    assert {k: [r.id for r in v] for k, v in index.items()} == {"disk": ["a", "b"], "cpu": ["b"]}
