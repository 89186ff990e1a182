"""print-queue-clear against a real, private CUPS scheduler, with a real stuck queue.

Each test starts its own ``cupsd -f`` with a configuration whose every folder (server
root, spool, cache, state, temp, logs) lies in the test's tmp folder and which listens on
127.0.0.1 only, with no browsing and no authentication. The clients and the script reach
it through ``CUPS_SERVER`` (the script's ``cups_server`` parameter), so the machine's own
CUPS, if any, is never touched. The fault is real: a queue that prints to ``/dev/null``,
disabled with ``cupsdisable``, holding jobs submitted with ``lp``. The script runs through
the real runner with its manifest's limits and environment, as the agent runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import procs
from tests.support.peers import free_port, require_binary
from tests.support.procs import running_collector, spawn_agent, wait_for
from vigil.agent.config import PrintSpec, SamplerConfig
from vigil.agent.exec.script import ScriptResult, run_script
from vigil.agent.remediation.manifest import load_manifest
from vigil.agent.remediation.outcome import declared_outcome
from vigil.agent.sampling.sampler import Sampler

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "remediations"
QUEUE = "stuck"
START_WAIT_S = 10.0
CLIENT_TIMEOUT_S = 10.0
CLIENTS = ("lpstat", "lpadmin", "lp", "cupsenable", "cupsdisable", "cancel")

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scripts"),
    pytest.mark.skipif(
        sys.platform.startswith("linux") and os.geteuid() != 0,
        reason="a private cupsd runs its backends as another user, which needs root",
    ),
]


class Cups:
    """A private scheduler: its ``CUPS_SERVER`` address and a way to run its clients."""

    def __init__(self, server: str, folder: Path) -> None:
        self.server = server
        self.folder = folder

    def run(self, *argv: str) -> str:
        """Run a CUPS client against this scheduler only; its stdout, failing on an error."""
        env = {**os.environ, "CUPS_SERVER": self.server, "LANG": "C.UTF-8"}
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, check=False
        )
        assert done.returncode == 0, f"{argv}: {done.stderr}"
        return done.stdout

    def submit(self, count: int, *options: str) -> None:
        """Submit ``count`` small text jobs to the queue."""
        document = self.folder / "page.txt"
        document.write_text("hello\n")
        for _ in range(count):
            self.run("lp", "-d", QUEUE, *options, str(document))

    def jobs(self) -> list[str]:
        """The queue's jobs that are not completed, one ``lpstat -o`` line each."""
        return self.run("lpstat", "-W", "not-completed", "-o", QUEUE).splitlines()

    def status(self) -> str:
        """The queue's ``lpstat -p`` status line(s)."""
        return self.run("lpstat", "-p", QUEUE)


def write_config(folder: Path, port: int) -> tuple[Path, Path]:
    """``cupsd.conf`` and ``cups-files.conf`` keeping everything in ``folder``."""
    dirs = {name: folder / name for name in ("etc", "spool", "cache", "state", "tmp", "log")}
    for d in dirs.values():
        d.mkdir(parents=True)
    files = folder / "cups-files.conf"
    files.write_text(
        f"ServerRoot {dirs['etc']}\n"
        f"RequestRoot {dirs['spool']}\n"
        f"CacheDir {dirs['cache']}\n"
        f"StateDir {dirs['state']}\n"
        f"TempDir {dirs['tmp']}\n"
        f"AccessLog {dirs['log']}/access_log\n"
        f"ErrorLog {dirs['log']}/error_log\n"
        f"PageLog {dirs['log']}/page_log\n"
    )
    conf = folder / "cupsd.conf"
    conf.write_text(
        f"Listen 127.0.0.1:{port}\n"
        "Browsing No\n"
        "BrowseLocalProtocols none\n"
        "DefaultAuthType None\n"
        "WebInterface No\n"
        "LogLevel info\n"
        "<Location />\n  Order allow,deny\n  Allow 127.0.0.1\n</Location>\n"
        "<Policy default>\n  <Limit All>\n    Order deny,allow\n  </Limit>\n</Policy>\n"
    )
    return conf, files


def answering(server: str) -> bool:
    """Whether the scheduler at ``server`` answers ``lpstat -r``."""
    env = {**os.environ, "CUPS_SERVER": server}
    try:
        done = subprocess.run(
            ["lpstat", "-r"], env=env, capture_output=True, text=True, timeout=2, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and "not running" not in done.stdout


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the scheduler's process group, then SIGKILL it; always reap."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait_s)
            return


@pytest.fixture
def cups(tmp_path: Path) -> Iterator[Cups]:
    """A private ``cupsd -f`` on 127.0.0.1 with an empty, enabled queue ``stuck``.

    The queue prints to ``/dev/null``. The scheduler is stopped (SIGTERM, then SIGKILL
    of its process group) after the test, whatever happened.
    """
    cupsd = require_binary("cupsd")
    for client in CLIENTS:
        require_binary(client)
    folder = tmp_path / "cups"
    port = free_port()
    conf, files = write_config(folder, port)
    server = f"127.0.0.1:{port}"
    with (folder / "cupsd.out").open("wb") as out:
        proc = subprocess.Popen(
            [cupsd, "-f", "-c", str(conf), "-s", str(files)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_WAIT_S
        while not answering(server):
            log = folder / "log" / "error_log"
            why = (folder / "cupsd.out").read_text() + (log.read_text() if log.exists() else "")
            assert proc.poll() is None, f"cupsd exited with {proc.returncode}: {why}"
            assert time.monotonic() < deadline, f"cupsd not answering after 10 s: {why}"
            time.sleep(0.1)
        instance = Cups(server, folder)
        instance.run("lpadmin", "-p", QUEUE, "-v", "file:///dev/null", "-E")
        yield instance
    finally:
        stop(proc)


def run_phase(cups: Cups, phase: str, *, dry_run: bool = False, **params: str) -> ScriptResult:
    """Run print-queue-clear's Linux script for ``phase`` as the agent would, on the queue."""
    rem = load_manifest(SHIPPED / "print-queue-clear")
    script = rem.script_for("linux") if phase == "remediate" else rem.detection_for("linux")
    assert script is not None
    values = {"queue": QUEUE, "cups_server": cups.server, **params}
    env = rem.script_env(values, dry_run=dry_run)
    env["VIGIL_PHASE"] = phase
    return asyncio.run(
        run_script(
            script,
            allowed_roots=[SHIPPED],
            env=env,
            timeout_s=rem.timeout_s,
            output_cap_bytes=rem.output_cap_bytes,
            cwd=rem.folder,
        )
    )


@pytest.fixture
def stuck_queue(cups: Cups) -> Cups:
    """The fault: the queue disabled by CUPS's own tool, holding two jobs that never print."""
    cups.run("cupsdisable", QUEUE)
    cups.submit(2)
    assert len(cups.jobs()) == 2
    return cups


def test_detect_reports_a_disabled_queue_as_stuck(stuck_queue: Cups) -> None:
    """A disabled queue is an issue: exit 1, naming the queue."""
    result = run_phase(stuck_queue, "detect")

    assert result.exit_code == 1, result.output
    assert f"queue {QUEUE} is disabled" in result.output


def test_detect_reports_a_job_waiting_longer_than_the_limit(cups: Cups) -> None:
    """An enabled queue with a held job older than the limit is stuck (real lpstat dates)."""
    cups.submit(1, "-H", "hold")
    time.sleep(1.1)  # lpstat shows whole seconds; the job must be strictly older than 0 min

    result = run_phase(cups, "detect", max_job_age_minutes="0")

    assert result.exit_code == 1, result.output
    assert f"job {QUEUE}-1 on {QUEUE} has waited" in result.output


def test_detect_passes_a_healthy_queue(cups: Cups) -> None:
    """An enabled queue with no job is not stuck: exit 0."""
    result = run_phase(cups, "detect")

    assert result.exit_code == 0, result.output
    assert "no stuck queue" in result.output


def test_remediate_cancels_the_jobs_and_declares_needs_user(stuck_queue: Cups) -> None:
    """The fix cancels every job on the queue; their owners must print again."""
    result = run_phase(stuck_queue, "remediate")

    assert result.exit_code == 0, result.output
    assert stuck_queue.jobs() == []
    assert f"cancelled 2 job(s) on {QUEUE}" in result.output
    assert declared_outcome(result.output) == "needs_user"
    assert result.output.rstrip().splitlines()[-1] == "vigil-outcome: needs_user"


def test_remediate_re_enables_the_queue(stuck_queue: Cups) -> None:
    """The fix leaves the queue enabled in the scheduler."""
    run_phase(stuck_queue, "remediate")

    assert "enabled since" in stuck_queue.status()
    assert "disabled" not in stuck_queue.status()


def test_verify_passes_after_the_remediation(stuck_queue: Cups) -> None:
    """Re-running the detection as the verify phase finds nothing stuck: exit 0."""
    run_phase(stuck_queue, "remediate")

    result = run_phase(stuck_queue, "verify")

    assert result.exit_code == 0, result.output


def test_dry_run_changes_nothing(stuck_queue: Cups) -> None:
    """A dry run says what it would do; the jobs stay and the queue stays disabled."""
    result = run_phase(stuck_queue, "remediate", dry_run=True)

    assert result.exit_code == 0, result.output
    assert f"dry run: would cancel 2 job(s) on {QUEUE}" in result.output
    assert len(stuck_queue.jobs()) == 2
    assert "disabled" in stuck_queue.status()
    assert declared_outcome(result.output) is None


def test_a_malformed_cups_server_is_refused_before_cups_is_asked(stuck_queue: Cups) -> None:
    """A server value with shell characters is refused (exit 3) and nothing changes."""
    result = run_phase(stuck_queue, "remediate", cups_server=f"{stuck_queue.server};reboot")

    assert result.exit_code == 3
    assert "bad cups_server" in result.output
    assert len(stuck_queue.jobs()) == 2


# --- the print.* series that trigger print-queue-clear, read from the same real CUPS --------


def print_series(server: str) -> tuple[dict[str, float], Sampler]:
    """One read of the sampler's ``print`` source against the scheduler at ``server``."""
    sampler = Sampler(SamplerConfig(printing=PrintSpec(server=server, timeout_s=CLIENT_TIMEOUT_S)))
    values = sampler.sample(["print"])
    return {k: v for k, v in values.items() if k.startswith("print.")}, sampler


def test_print_series_of_a_healthy_queue_are_zero(cups: Cups) -> None:
    values, _ = print_series(cups.server)
    assert values["print.queue_jobs"] == 0
    assert values["print.queues_disabled"] == 0
    assert values[f"print.queue_disabled[{QUEUE}]"] == 0


def test_print_series_see_a_stuck_queue_and_its_fix(stuck_queue: Cups) -> None:
    """Disabled with two jobs: the series a check triggers print-queue-clear on; after the
    shipped fix they read healthy again (what the agent's verification re-samples)."""
    values, _ = print_series(stuck_queue.server)
    assert values["print.queue_jobs"] == 2
    assert values[f"print.queue_jobs[{QUEUE}]"] == 2
    assert values["print.queues_disabled"] == 1
    assert 0 <= values["print.oldest_job_age_s"] < 120

    assert run_phase(stuck_queue, "remediate").exit_code == 0

    after, _ = print_series(stuck_queue.server)
    assert (after["print.queue_jobs"], after["print.queues_disabled"]) == (0, 0)


def test_print_series_age_a_held_job(cups: Cups) -> None:
    cups.submit(1, "-H", "hold")
    time.sleep(1.1)  # lpstat shows whole seconds
    values, _ = print_series(cups.server)
    assert values["print.oldest_job_age_s"] >= 1


def test_a_scheduler_that_does_not_answer_is_unknown_never_ok() -> None:
    """No cupsd on that port: no print series at all, and the reason says why."""
    require_binary("lpstat")
    values, sampler = print_series(f"127.0.0.1:{free_port()}")
    assert values == {}
    assert "lpstat -o exited" in sampler.reason_for("print.queue_jobs")


# --- a real agent and collector: the fix triggered by a check, or by a rescheduled detection --

AGENT_TOKEN = "print-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "print-admin-token-0123456789abcdef0123456789abcdef"


def start_agent(tmp_path: Path, url: str, cups: Cups, extra: str) -> subprocess.Popen[bytes]:
    """A real agent reading the private scheduler's queues every second."""
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""\
agent: {{state_dir: agent-state}}
collector: {{url: "{url}", token: {AGENT_TOKEN}}}
intervals: {{sample: 300ms, report: 500ms, heartbeat: 2s, metrics: 5s}}
sampler:
  disk_mounts: []
  slow_interval: 1s
  print: {{server: "{cups.server}", interval: 1s}}
remediation:
  folders: [{SHIPPED}]
  verify_delay: 100ms
{extra}"""
    )
    return spawn_agent(
        config, tmp_path / "agent.log", unbuffered=True, env={"CUPS_SERVER": cups.server}
    )


def test_a_check_on_print_queues_disabled_runs_print_queue_clear(
    tmp_path: Path, cups: Cups
) -> None:
    """The queue is disabled while the agent runs: the check on the sampled series fires
    the shipped fix, which is verified by reading the queues anew and recorded fixed."""
    with running_collector(tmp_path, agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN) as collector:
        agent = start_agent(
            tmp_path,
            collector.url,
            cups,
            "checks:\n"
            "  - id: print.disabled\n"
            "    metric: print.queues_disabled\n"
            "    op: '>='\n"
            "    critical: 1\n"
            "    remediation:\n"
            f"      id: print-queue-clear\n"
            f"      params: {{queue: {QUEUE}, cups_server: '{cups.server}'}}\n",
        )
        try:
            wait_for(
                "the check to report ok",
                lambda: (
                    collector.get("/api/v1/hosts")["hosts"][0]["checks"].get("print.disabled")
                    == "ok"
                ),
                retry_on=(OSError, IndexError),
            )
            cups.run("cupsdisable", QUEUE)
            run = wait_for(
                "the remediation record", lambda: collector.get("/api/v1/remediations/runs")["runs"]
            )[0]
            assert (run["remediation"], run["check"]) == ("print-queue-clear", "print.disabled")
            assert (run["outcome"], run["value_before"], run["value_after"]) == ("fixed", 1, 0)
            assert "disabled" not in cups.status()
        finally:
            assert procs.stop(agent) == 0, (tmp_path / "agent.log").read_text()


def test_remediation_schedule_runs_detection_sooner_than_the_manifest(
    tmp_path: Path, cups: Cups
) -> None:
    """The manifest detects every 10 min; `remediation.schedule` makes this host check
    every second, so a queue disabled after start is cleared within seconds."""
    assert load_manifest(SHIPPED / "print-queue-clear").detect_every_s == 600
    with running_collector(tmp_path, agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN) as collector:
        agent = start_agent(
            tmp_path,
            collector.url,
            cups,
            "  enable: [print-queue-clear]\n"
            "  schedule: {print-queue-clear: 1s}\n"
            f"  params: {{print-queue-clear: {{queue: {QUEUE}, cups_server: '{cups.server}'}}}}\n",
        )
        try:
            wait_for(
                "the detection check to report ok",
                lambda: (
                    collector.get("/api/v1/hosts")["hosts"][0]["checks"].get(
                        "detect.print-queue-clear"
                    )
                    == "ok"
                ),
                retry_on=(OSError, IndexError),
            )
            cups.run("cupsdisable", QUEUE)
            run = wait_for(
                "the remediation record",
                lambda: collector.get("/api/v1/remediations/runs")["runs"],
                timeout_s=30,
            )[0]
            assert run["remediation"] == "print-queue-clear"
            assert run["outcome"] == "fixed"
            assert "disabled" not in cups.status()
        finally:
            assert procs.stop(agent) == 0, (tmp_path / "agent.log").read_text()
