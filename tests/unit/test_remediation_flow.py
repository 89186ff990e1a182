"""The agent's remediation flow: triggers, gate, verification and the records it writes.

A real agent (``build_service``) with real scripts in a temporary library, a real outbox, a fake
clock and a sampler that reads each value from a file, so a script "fixes" the fault by
writing the file, exactly as a real fix changes what the real sampler reads. Nothing is
shipped: ``ship`` is replaced by a no-op.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.procs import assert_process_gone
from vigil import wire
from vigil.agent.config import load_agent_config
from vigil.agent.service import AgentService, build_service
from vigil.configio import ConfigError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX sh scripts")
T0 = 1_700_000_000.0


class FileSampler:
    """Each series' value is the number written in ``folder/<series>``; absent = missing."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def set(self, metric: str, value: float) -> None:
        (self.folder / metric).write_text(f"{value}\n")

    def sample(self, sources: Iterable[str] | None = None) -> dict[str, float]:
        return {p.name: float(p.read_text()) for p in self.folder.iterdir()}

    def sample_paths(self) -> dict[str, float]:
        return self.sample()

    def reason_for(self, metric: str) -> str:
        return "no such file"


class Env:
    """A temporary agent: library folder, sampler folder, config; builds the service."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.lib = tmp_path / "lib"
        self.lib.mkdir()
        (tmp_path / "values").mkdir()
        self.sampler = FileSampler(tmp_path / "values")
        self.now = T0

    def remediation(self, rem_id: str, script: str, **manifest: Any) -> Path:
        """A linux-only remediation whose fix.sh is ``script``; ``manifest`` overrides."""
        folder = self.lib / rem_id
        folder.mkdir()
        (folder / "fix.sh").write_text(textwrap.dedent(script))
        data: dict[str, Any] = {
            "id": rem_id,
            "title": f"Test remediation {rem_id}",
            "description": "Writes files in a test folder.",
            "platforms": ["linux"],
            "scripts": {"linux": "fix.sh"},
            "timeout": "10s",
            "cooldown": "0s",
            "verify": {"delay": "0s"},
        }
        data.update(manifest)
        (folder / "remediation.yaml").write_text(yaml.safe_dump(data))
        return folder

    def service(self, checks: list[dict[str, Any]], **remediation: Any) -> AgentService:
        config = {
            "agent": {"state_dir": str(self.root / "state")},
            "collector": {"url": "http://127.0.0.1:9", "token": "t"},
            "remediation": {"folders": [str(self.lib)], "verify_delay": "0s", **remediation},
            "checks": checks,
        }
        path = self.root / "agent.yaml"
        path.write_text(yaml.safe_dump(config))
        svc = build_service(load_agent_config(path), sampler=self.sampler, clock=self.clock)

        async def no_ship() -> None:
            return None

        svc.ship = no_ship  # type: ignore[method-assign]
        return svc

    def clock(self) -> float:
        return self.now

    def value_file(self, metric: str) -> Path:
        return self.sampler.folder / metric


async def settle(svc: AgentService, timeout_s: float = 20.0) -> None:
    """Wait until every spawned task (remediations, deliveries) has finished."""
    deadline = time.monotonic() + timeout_s
    while (svc._tasks or svc.flow.tasks) and time.monotonic() < deadline:
        await asyncio.gather(*svc._tasks, *svc.flow.tasks, return_exceptions=True)
    assert not svc._tasks and not svc.flow.tasks, "remediation tasks still running"


async def cycle(svc: AgentService) -> None:
    await svc.cycle()
    await settle(svc)


def events(svc: AgentService) -> list[wire.Event]:
    batch = svc.outbox.next_batch(1000)
    return list(batch.events) if batch else []


def story(svc: AgentService) -> list[tuple[str, ...]]:
    """Check transitions and remediation records, in outbox order, as short tuples."""
    out: list[tuple[str, ...]] = []
    for e in events(svc):
        if isinstance(e, wire.CheckEvent):
            out.append(("check", e.check, e.state, e.remediation or "-"))
        elif isinstance(e, wire.RemediationEvent):
            out.append(("remediation", e.remediation, e.check or "-", e.outcome))
    return out


def records(svc: AgentService) -> list[wire.RemediationEvent]:
    return [e for e in events(svc) if isinstance(e, wire.RemediationEvent)]


FIX_LEVEL = """\
    #!/bin/sh
    echo fixing
    echo 0 > "$VIGIL_PARAM_FILE"
    """
LEVEL_CHECK = {"id": "level.high", "metric": "level", "critical": 10}


def fixing_remediation(env: Env, rem_id: str = "fix-level", **manifest: Any) -> None:
    env.remediation(rem_id, FIX_LEVEL, params={"file": "the value file"}, **manifest)


# --- triggers ---------------------------------------------------------------------------


def test_check_naming_a_remediation_gets_promise_then_record_then_recovery(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path)
    fixing_remediation(env)
    ref = {"id": "fix-level", "params": {"file": str(env.value_file("level"))}}
    svc = env.service([{**LEVEL_CHECK, "remediation": ref}])
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    assert story(svc) == [
        ("check", "level.high", "critical", "fix-level"),
        ("remediation", "fix-level", "level.high", "fixed"),
        ("check", "level.high", "ok", "-"),
    ]


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "not-enabled"])
def test_manifest_check_trigger_runs_only_when_the_agent_enables_it(
    tmp_path: Path, enabled: bool
) -> None:
    env = Env(tmp_path)
    fixing_remediation(env, trigger={"checks": ["level.high"]})
    svc = env.service(
        [LEVEL_CHECK],
        enable=["fix-level"] if enabled else [],
        params={"fix-level": {"file": str(env.value_file("level"))}},
    )
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    ran = [r.outcome for r in records(svc)]
    assert ran == (["fixed"] if enabled else [])


def test_manifest_trigger_can_fire_on_warning(tmp_path: Path) -> None:
    env = Env(tmp_path)
    fixing_remediation(env, trigger={"checks": [{"check": "level.high", "states": ["warning"]}]})
    svc = env.service(
        [{**LEVEL_CHECK, "warning": 5}],
        enable=["fix-level"],
        params={"fix-level": {"file": str(env.value_file("level"))}},
    )
    env.sampler.set("level", 7)

    asyncio.run(cycle(svc))

    assert story(svc)[:2] == [
        ("check", "level.high", "warning", "fix-level"),
        ("remediation", "fix-level", "level.high", "fixed"),
    ]


def test_detection_script_triggers_the_fix_and_verifies_it(tmp_path: Path) -> None:
    """Intune-style: detection exits 1 (issue present), remediation runs, detection re-runs."""
    env = Env(tmp_path)
    flag = tmp_path / "broken"
    flag.write_text("")
    folder = env.remediation(
        "unbreak",
        f'#!/bin/sh\nrm -f "{flag}"\necho removed flag\n',
        trigger={"detection": {"linux": "detect.sh"}, "every": "1s"},
    )
    (folder / "detect.sh").write_text(f'#!/bin/sh\n[ -e "{flag}" ] && exit 1\nexit 0\n')
    svc = env.service([], enable=["unbreak"])

    async def scenario() -> None:
        await svc.detect("detect.unbreak")
        await settle(svc)

    asyncio.run(scenario())

    assert not flag.exists()
    assert story(svc) == [
        ("check", "detect.unbreak", "critical", "unbreak"),
        ("remediation", "unbreak", "detect.unbreak", "fixed"),
        ("check", "detect.unbreak", "ok", "-"),
    ]
    (record,) = records(svc)
    assert (record.value_before, record.value_after) == (1.0, 0.0)


def test_running_agent_schedules_detection_and_fixes_within_seconds(tmp_path: Path) -> None:
    """The real scheduler runs the detection job every second; no test calls it."""
    env = Env(tmp_path)
    flag = tmp_path / "broken"
    folder = env.remediation(
        "unbreak",
        f'#!/bin/sh\nrm -f "{flag}"\n',
        trigger={"detection": {"linux": "detect.sh"}, "every": "1s"},
    )
    (folder / "detect.sh").write_text(f'#!/bin/sh\n[ -e "{flag}" ] && exit 1\nexit 0\n')
    svc = env.service([], enable=["unbreak"])

    async def scenario() -> list[tuple[str, ...]]:
        stop = asyncio.Event()
        runner = asyncio.create_task(svc.run(stop))
        await asyncio.sleep(1.5)  # running, and detection has found nothing yet
        flag.write_text("")
        for _ in range(500):  # at most 10 s
            if not flag.exists():
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the record and the recovery follow the fix
        seen = story(svc)  # before the shutdown closes the outbox
        stop.set()
        await runner
        return seen

    seen = asyncio.run(scenario())

    assert not flag.exists()
    assert seen[-3:] == [
        ("check", "detect.unbreak", "critical", "unbreak"),
        ("remediation", "unbreak", "detect.unbreak", "fixed"),
        ("check", "detect.unbreak", "ok", "-"),
    ]


def test_detection_that_finds_nothing_runs_nothing(tmp_path: Path) -> None:
    env = Env(tmp_path)
    marker = tmp_path / "ran"
    folder = env.remediation(
        "unbreak", f'#!/bin/sh\ntouch "{marker}"\n', trigger={"detection": {"linux": "d.sh"}}
    )
    (folder / "d.sh").write_text("#!/bin/sh\nexit 0\n")
    svc = env.service([], enable=["unbreak"])

    asyncio.run(svc.detect("detect.unbreak"))

    assert story(svc) == [("check", "detect.unbreak", "ok", "-")]
    assert not marker.exists()


# --- verification and outcomes ----------------------------------------------------------


def test_verification_script_has_the_last_word(tmp_path: Path) -> None:
    """The check cleared, but the verification script says the fix did not hold."""
    env = Env(tmp_path)
    folder = env.remediation(
        "fix-level",
        FIX_LEVEL,
        params={"file": "the value file"},
        verify={"delay": "0s", "scripts": {"linux": "verify.sh"}},
    )
    (folder / "verify.sh").write_text('#!/bin/sh\n[ "$VIGIL_PHASE" = verify ] && exit 1\n')
    ref = {"id": "fix-level", "params": {"file": str(env.value_file("level"))}}
    svc = env.service([{**LEVEL_CHECK, "remediation": ref}])
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    (record,) = records(svc)
    assert (record.outcome, record.value_after) == ("not_fixed", 0.0)


def test_a_fix_that_does_not_clear_the_check_is_not_fixed(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.remediation("no-op", "#!/bin/sh\necho did nothing\n")
    svc = env.service([{**LEVEL_CHECK, "remediation": "no-op"}])
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    assert story(svc) == [
        ("check", "level.high", "critical", "no-op"),
        ("remediation", "no-op", "level.high", "not_fixed"),
    ]


def test_a_fix_verifies_as_soon_as_the_check_reads_clear_twice(tmp_path: Path) -> None:
    """The manifest's verify.delay (5 s here) is an upper bound, not a wait: the check is
    re-read when the script exits and confirmed 0.2 s later."""
    env = Env(tmp_path)
    fixing_remediation(env, verify={"delay": "5s"})
    ref = {"id": "fix-level", "params": {"file": str(env.value_file("level"))}}
    svc = env.service([{**LEVEL_CHECK, "remediation": ref}])
    env.sampler.set("level", 50)

    started = time.monotonic()
    asyncio.run(cycle(svc))
    took = time.monotonic() - started

    assert [r.outcome for r in records(svc)] == ["fixed"]
    assert took < 2.5, f"verification took {took:.2f} s of its 5 s bound"


def test_a_fix_that_does_not_clear_is_read_until_the_verify_delay(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.remediation("no-op", "#!/bin/sh\necho did nothing\n", verify={"delay": "600ms"})
    svc = env.service([{**LEVEL_CHECK, "remediation": "no-op"}])
    env.sampler.set("level", 50)

    started = time.monotonic()
    asyncio.run(cycle(svc))

    assert time.monotonic() - started >= 0.6
    assert [r.outcome for r in records(svc)] == ["not_fixed"]


@pytest.mark.parametrize("declared", ["needs_reboot", "needs_user"])
def test_script_declared_outcome_is_recorded(tmp_path: Path, declared: str) -> None:
    env = Env(tmp_path)
    env.remediation("half-fix", f"#!/bin/sh\necho applied\necho 'vigil-outcome: {declared}'\n")
    svc = env.service([{**LEVEL_CHECK, "remediation": "half-fix"}])
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    (record,) = records(svc)
    assert (record.outcome, record.exit_code) == (declared, 0)
    assert record.output.endswith(f"vigil-outcome: {declared}\n")


def test_exit_137_is_an_error_and_the_log_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = Env(tmp_path)
    env.remediation("oom", "#!/bin/sh\necho partial work\nexit 137\n")
    svc = env.service([{**LEVEL_CHECK, "remediation": "oom"}])
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    (record,) = records(svc)
    assert (record.outcome, record.exit_code, record.output) == ("error", 137, "partial work\n")
    assert "remediation oom for level.high: error (exit 137 (likely killed by signal 9))" in (
        caplog.text
    )


def test_hanging_script_with_a_stubborn_grandchild_times_out_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path)
    pidfile = tmp_path / "grandchild.pid"
    env.remediation(
        "hang",
        f"""\
        #!/bin/sh
        sh -c 'trap "" TERM; echo $$ > "{pidfile}"; while :; do sleep 1; done' &
        sleep 600
        """,
        timeout="500ms",
    )
    svc = env.service([{**LEVEL_CHECK, "remediation": "hang"}])
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    (record,) = records(svc)
    assert (record.outcome, record.exit_code) == ("timeout", None)
    pid = int(pidfile.read_text())
    assert_process_gone(pid)


def test_100mb_of_output_is_recorded_as_a_bounded_excerpt(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.remediation(
        "chatty",
        "#!/bin/sh\necho START\nhead -c 100000000 /dev/zero | tr '\\0' x\necho\necho END\n",
        output_cap="4KiB",
    )
    svc = env.service([{**LEVEL_CHECK, "remediation": "chatty"}])
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    (record,) = records(svc)
    assert record.output_truncated
    assert len(record.output) <= 4096
    assert record.output.startswith("START") and record.output.endswith("END\n")


def test_script_deleted_after_loading_is_an_error_and_the_agent_goes_on(tmp_path: Path) -> None:
    env = Env(tmp_path)
    folder = env.remediation("gone", "#!/bin/sh\necho never\n")
    svc = env.service([{**LEVEL_CHECK, "remediation": "gone"}])
    (folder / "fix.sh").unlink()
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    (record,) = records(svc)
    assert record.outcome == "error"
    assert record.output.startswith("script not found:")
    assert record.script_sha256 == ""


# --- the gate: attempts, concurrency, dry run ---------------------------------------------


def test_exhausted_attempt_budget_records_skipped_and_runs_nothing(tmp_path: Path) -> None:
    env = Env(tmp_path)
    runs = tmp_path / "runs"
    env.remediation(
        "flappy",
        f'#!/bin/sh\necho run >> "{runs}"\necho 0 > "$VIGIL_PARAM_FILE"\n',
        params={"file": "value file"},
        attempts={"max": 1, "window": "1h"},
    )
    ref = {"id": "flappy", "params": {"file": str(env.value_file("level"))}}
    svc = env.service([{**LEVEL_CHECK, "remediation": ref}])

    async def scenario() -> None:
        env.sampler.set("level", 50)
        await cycle(svc)  # fixed
        env.sampler.set("level", 50)
        env.now += 60
        await cycle(svc)  # critical again: the budget is spent

    asyncio.run(scenario())

    assert runs.read_text() == "run\n"
    skipped = records(svc)[-1]
    assert skipped.outcome == "skipped"
    assert skipped.output.startswith("attempts: 1 of 1 used in the last 3600s")
    assert story(svc)[-2:] == [
        ("check", "level.high", "critical", "-"),
        ("remediation", "flappy", "level.high", "skipped"),
    ]


SECOND_TIME_LUCKY = """\
    #!/bin/sh
    echo try >> "$VIGIL_PARAM_LOG"
    if [ "$(wc -l < "$VIGIL_PARAM_LOG")" -lt 2 ]; then echo "transient failure"; exit 1; fi
    echo 0 > "$VIGIL_PARAM_FILE"
    """


def test_a_check_that_stays_bad_after_a_failed_fix_is_retried(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.remediation("retry-me", SECOND_TIME_LUCKY, params={"file": "value", "log": "tries"})
    params = {"file": str(env.value_file("level")), "log": str(tmp_path / "tries")}
    svc = env.service([{**LEVEL_CHECK, "remediation": {"id": "retry-me", "params": params}}])

    async def scenario() -> None:
        env.sampler.set("level", 50)
        await cycle(svc)  # critical, promised, fails
        env.now += 15
        await cycle(svc)  # still critical: retried, fixed

    asyncio.run(scenario())

    assert story(svc) == [
        ("check", "level.high", "critical", "retry-me"),
        ("remediation", "retry-me", "level.high", "error"),
        ("remediation", "retry-me", "level.high", "fixed"),
        ("check", "level.high", "ok", "-"),
    ]


def test_retries_stop_quietly_when_the_attempt_budget_is_spent(tmp_path: Path) -> None:
    env = Env(tmp_path)
    tries = tmp_path / "tries"
    env.remediation("hopeless", f'#!/bin/sh\necho try >> "{tries}"\nexit 1\n', attempts={"max": 2})
    svc = env.service([{**LEVEL_CHECK, "remediation": "hopeless"}])

    async def scenario() -> None:
        env.sampler.set("level", 50)
        for _ in range(4):
            await cycle(svc)
            env.now += 15

    asyncio.run(scenario())

    assert tries.read_text() == "try\ntry\n"
    assert [r.outcome for r in records(svc)] == ["error", "error"]


def test_a_declared_outcome_is_not_retried(tmp_path: Path) -> None:
    env = Env(tmp_path)
    tries = tmp_path / "tries"
    env.remediation(
        "ask-user", f'#!/bin/sh\necho try >> "{tries}"\necho "vigil-outcome: needs_user"\n'
    )
    svc = env.service([{**LEVEL_CHECK, "remediation": "ask-user"}])

    async def scenario() -> None:
        env.sampler.set("level", 50)
        for _ in range(3):
            await cycle(svc)
            env.now += 15

    asyncio.run(scenario())

    assert tries.read_text() == "try\n"


def test_two_checks_firing_at_once_run_one_remediation_once(tmp_path: Path) -> None:
    env = Env(tmp_path)
    runs = tmp_path / "runs"
    env.remediation("shared", f'#!/bin/sh\necho run >> "{runs}"\nsleep 0.3\n')
    svc = env.service(
        [
            {"id": "a.high", "metric": "a", "critical": 10, "remediation": "shared"},
            {"id": "b.high", "metric": "b", "critical": 10, "remediation": "shared"},
        ]
    )
    env.sampler.set("a", 50)
    env.sampler.set("b", 50)

    asyncio.run(cycle(svc))

    assert runs.read_text() == "run\n"
    outcomes = sorted((r.check, r.outcome) for r in records(svc))
    assert outcomes == [("a.high", "not_fixed"), ("b.high", "skipped")]
    assert records(svc)[0].output == "already running"


def test_a_check_skipped_while_its_remediation_was_busy_gets_its_turn(tmp_path: Path) -> None:
    """Two services down at once, one restart folder: the second runs when the first ends."""
    env = Env(tmp_path)
    env.remediation(
        "per-param", FIX_LEVEL.replace("fixing", "fixing $VIGIL_CHECK_ID"), params={"file": "f"}
    )
    checks = [
        {
            "id": f"{name}.high",
            "metric": name,
            "critical": 10,
            "remediation": {"id": "per-param", "params": {"file": str(env.value_file(name))}},
        }
        for name in ("a", "b")
    ]
    svc = env.service(checks)

    async def scenario() -> None:
        env.sampler.set("a", 50)
        env.sampler.set("b", 50)
        await cycle(svc)  # a runs, b is skipped as busy
        env.now += 15
        await cycle(svc)  # b's turn

    asyncio.run(scenario())

    assert [(r.check, r.outcome) for r in records(svc)] == [
        ("b.high", "skipped"),
        ("a.high", "fixed"),
        ("b.high", "fixed"),
    ]


def test_cooldown_is_per_check_so_one_service_does_not_block_another(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.remediation("per-param", FIX_LEVEL, params={"file": "f"}, cooldown="1h")
    checks = [
        {
            "id": f"{name}.high",
            "metric": name,
            "critical": 10,
            "remediation": {"id": "per-param", "params": {"file": str(env.value_file(name))}},
        }
        for name in ("a", "b")
    ]
    svc = env.service(checks)

    async def scenario() -> None:
        env.sampler.set("a", 50)
        env.sampler.set("b", 5)
        await cycle(svc)  # a fixed; its cooldown starts
        env.sampler.set("b", 50)
        await cycle(svc)  # b is not held back by a's cooldown

    asyncio.run(scenario())

    assert [(r.check, r.outcome) for r in records(svc)] == [
        ("a.high", "fixed"),
        ("b.high", "fixed"),
    ]


def test_dry_run_in_the_manifest_passes_the_flag_and_changes_nothing(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.remediation(
        "careful",
        """\
        #!/bin/sh
        if [ "$VIGIL_DRY_RUN" = 1 ]; then echo "would fix"; exit 0; fi
        echo 0 > "$VIGIL_PARAM_FILE"
        """,
        params={"file": "value file"},
        dry_run=True,
    )
    ref = {"id": "careful", "params": {"file": str(env.value_file("level"))}}
    svc = env.service([{**LEVEL_CHECK, "remediation": ref}])
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    (record,) = records(svc)
    assert (record.outcome, record.dry_run, record.output) == ("dry_run", True, "would fix\n")
    assert env.value_file("level").read_text().strip() == "50"


def test_config_params_reach_the_script_and_a_checks_own_params_win(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.remediation(
        "echo-params",
        '#!/bin/sh\necho "$VIGIL_PARAM_A $VIGIL_PARAM_B $VIGIL_PHASE $VIGIL_CHECK_ID"\n',
        params={"a": "first", "b": "second"},
    )
    ref = {"id": "echo-params", "params": {"b": "from-check"}}
    svc = env.service(
        [{**LEVEL_CHECK, "remediation": ref}],
        params={"echo-params": {"a": "from-config", "b": "from-config"}},
    )
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    assert records(svc)[0].output == "from-config from-check remediate level.high\n"


def test_a_manifest_with_a_typo_is_logged_and_the_others_still_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = Env(tmp_path)
    fixing_remediation(env)
    env.remediation("typo", "#!/bin/sh\n", cooldwn="5m")
    ref = {"id": "fix-level", "params": {"file": str(env.value_file("level"))}}
    svc = env.service([{**LEVEL_CHECK, "remediation": ref}])
    env.sampler.set("level", 50)

    asyncio.run(cycle(svc))

    assert f"{env.lib / 'typo' / 'remediation.yaml'}: cooldwn: unknown key" in caplog.text
    assert sorted(svc.flow.library) == ["fix-level"]
    assert [r.outcome for r in records(svc)] == ["fixed"]


# --- config errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remediation", "key"),
    [
        ({"enable": ["no-such"]}, "remediation.enable[0]"),
        ({"params": {"no-such": {"a": "1"}}}, "remediation.params.no-such"),
        ({"params": {"fix-level": {"colour": "red"}}}, "remediation.params.fix-level"),
    ],
    ids=["enable-unknown-remediation", "params-for-unknown-remediation", "undeclared-param"],
)
def test_bad_remediation_settings_name_the_key(
    tmp_path: Path, remediation: dict[str, Any], key: str
) -> None:
    env = Env(tmp_path)
    fixing_remediation(env)

    with pytest.raises(ConfigError) as caught:
        env.service([], **remediation)

    assert caught.value.key == key


# --- what the collector makes of a declared outcome -----------------------------------------


@pytest.mark.parametrize("declared", ["needs_reboot", "needs_user"])
def test_collector_opens_an_incident_for_a_declared_outcome(
    declared: str, make_remediation_event: Any
) -> None:
    """A reboot or a person is needed: the service desk must see it, not a prevention."""
    from vigil.collector.desk import engine as incidents

    state = incidents.KeyState(check_state="critical", awaiting="clean-temp", awaiting_since=T0)
    event = make_remediation_event(outcome=declared)

    _, actions = incidents.on_remediation(state, event, T0 + 5)

    (opened,) = actions
    assert isinstance(opened, incidents.OpenIncident)
    assert opened.remediation_outcome == declared
