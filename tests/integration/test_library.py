"""The shipped remediation library, run for real against faults injected in a sandbox.

Each Linux script runs through the real runner with its manifest's limits and
environment, as the agent runs it. Faults are real where a sandbox allows it: stale files
in temporary folders, a throwaway daemon killed under its pidfile (there is no systemd in
the test container, so the service-restart facade is driven through its pidfile
manager), busy and bloated throwaway processes, oversized logs. DNS caches, clocks and
CUPS queues belong to the machine, so those scripts run against stand-in tools on PATH
that record how they were called: the logic and safety of the script are tested, the
system daemons themselves are not (dns-flush also meets a real dnsmasq in
test_dns_flush_real.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from vigil import wire
from vigil.agent.config import load_agent_config
from vigil.agent.exec.script import ScriptResult, run_script
from vigil.agent.remediation.manifest import load_library, load_manifest
from vigil.agent.remediation.outcome import declared_outcome
from vigil.agent.service import AgentService, build_service

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "remediations"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scripts")
DAY_S = 86400


def run_rem(
    rem_id: str,
    params: dict[str, str] | None = None,
    *,
    phase: str = "remediate",
    dry_run: bool = False,
    path: str | None = None,
) -> ScriptResult:
    """Run one shipped remediation's Linux script as the agent would."""
    rem = load_manifest(SHIPPED / rem_id)
    script = rem.script_for("linux") if phase == "remediate" else rem.detection_for("linux")
    assert script is not None
    env = rem.script_env(params or {}, dry_run=dry_run)
    env["VIGIL_PHASE"] = phase
    if path is not None:
        env["PATH"] = path
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


def age(path: Path, days: float) -> Path:
    """Set ``path``'s modification time ``days`` into the past (not following links)."""
    then = time.time() - days * DAY_S
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def wait_until(predicate: object, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Throwaway processes started by a test; whatever survives it is killed."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)


def spawn(procs: list[subprocess.Popen[bytes]], program: Path) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([str(program)], start_new_session=True)
    procs.append(p)
    return p


def program(path: Path, body: str) -> Path:
    """An executable sh script; its process name (comm) is its file name."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def toolbox(tmp_path: Path, stubs: dict[str, str]) -> str:
    """A PATH of stand-in tools (``name: sh body``) plus the basic utilities the scripts
    use, and nothing else, so a real daemon tool on this machine is never reached."""
    box = tmp_path / "bin"
    box.mkdir()
    for tool in ("awk", "head", "tr", "uname", "grep", "date", "wc", "cat", "sleep", "mv", "rm"):
        real = shutil.which(tool)
        assert real, tool
        (box / tool).symlink_to(real)
    for name, body in stubs.items():
        program(box / name, body)
    return str(box)


def test_library_has_at_least_eight_real_remediations_besides_the_demo() -> None:
    found, errors = load_library([SHIPPED])

    assert errors == []
    assert len(set(found) - {"demo-cleanup"}) >= 8
    for rem in found.values():
        assert "linux" in rem.platforms


# --- temp-cleanup -------------------------------------------------------------------------


@pytest.fixture
def temp_dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two temp folders with stale and fresh files, a stale link to a stale file outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious.txt"
    precious.write_text("keep me")
    age(precious, 30)
    a, b = tmp_path / "tmp-a", tmp_path / "tmp-b"
    (a / "sub").mkdir(parents=True)
    b.mkdir()
    for f, days in ((a / "old.tmp", 10), (a / "sub" / "old2.tmp", 10), (b / "old3", 9)):
        f.write_text("x" * 100)
        age(f, days)
    (a / "fresh.tmp").write_text("still in use")
    link = a / "old-link"
    link.symlink_to(precious)
    age(link, 30)
    return a, b, outside


def test_temp_cleanup_deletes_only_stale_regular_files(temp_dirs: tuple[Path, Path, Path]) -> None:
    a, b, outside = temp_dirs

    result = run_rem("temp-cleanup", {"dirs": f"{a}:{b}", "min_age_minutes": str(7 * 1440)})

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in a.rglob("*")) == ["fresh.tmp", "old-link", "sub"]
    assert list(b.iterdir()) == []
    assert (outside / "precious.txt").read_text() == "keep me"
    assert "removed 3 files, 300 bytes" in result.output


def test_temp_cleanup_dry_run_deletes_nothing(temp_dirs: tuple[Path, Path, Path]) -> None:
    a, b, _ = temp_dirs

    result = run_rem("temp-cleanup", {"dirs": f"{a}:{b}"}, dry_run=True)

    assert result.exit_code == 0
    assert (a / "old.tmp").exists() and (b / "old3").exists()
    assert "dry run: would remove 3 files" in result.output


@pytest.mark.parametrize(
    "bad", ["/etc", "relative/tmp", "/usr/share"], ids=["system", "relative", "under-usr"]
)
def test_temp_cleanup_refuses_a_bad_folder_before_touching_any(
    temp_dirs: tuple[Path, Path, Path], bad: str
) -> None:
    a, _, _ = temp_dirs

    result = run_rem("temp-cleanup", {"dirs": f"{a}:{bad}"})

    assert result.exit_code == 3
    assert (a / "old.tmp").exists()
    assert "refusing" in result.output


def test_temp_cleanup_refuses_a_folder_name_with_a_line_break(tmp_path: Path) -> None:
    """Such a name could otherwise be split into two folders, one of them unchecked."""
    tricky = tmp_path / "a\n/etc"
    tricky.mkdir(parents=True)

    result = run_rem("temp-cleanup", {"dirs": str(tricky)})

    assert result.exit_code == 3
    assert "line break" in result.output


def test_temp_cleanup_refuses_a_link_that_resolves_to_a_system_folder(tmp_path: Path) -> None:
    (tmp_path / "innocent").symlink_to("/etc")

    result = run_rem("temp-cleanup", {"dirs": str(tmp_path / "innocent")})

    assert result.exit_code == 3
    assert "system folder" in result.output


# --- service-restart (pidfile manager: a throwaway daemon) -----------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Params for a throwaway foreground daemon; kills whatever the pidfile names after."""
    start = program(tmp_path / "vigil-dummyd", "exec sleep 300\n")
    params = {
        "service": "dummyd",
        "manager": "pidfile",
        "pidfile": str(tmp_path / "dummyd.pid"),
        "start": str(start),
        "start_timeout": "5",
    }
    yield params
    pidfile = Path(params["pidfile"])
    if pidfile.exists():
        with_pid = pidfile.read_text().strip()
        if with_pid.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(with_pid), signal.SIGKILL)


def test_service_restart_detects_a_killed_daemon_and_restarts_it(daemon: dict[str, str]) -> None:
    pidfile = Path(daemon["pidfile"])
    pidfile.write_text("999999\n")  # a daemon that died and left its pidfile behind

    detected = run_rem("service-restart", daemon, phase="detect")
    fixed = run_rem("service-restart", daemon)
    verified = run_rem("service-restart", daemon, phase="detect")

    assert (detected.exit_code, fixed.exit_code, verified.exit_code) == (1, 0, 0), fixed.output
    pid = int(pidfile.read_text())
    proc = psutil.Process(pid)
    assert proc.name() == "sleep"
    # Detached in its own session, so the runner's kill of the script's group spared it.
    assert os.getsid(pid) == pid


def test_service_restart_counts_a_zombie_as_down(
    daemon: dict[str, str], procs: list[subprocess.Popen[bytes]]
) -> None:
    """A killed daemon nobody reaps stays a zombie; kill -0 alone would call it alive."""
    zombie = spawn(procs, Path(daemon["start"]))
    zombie.kill()
    assert wait_until(lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE)
    Path(daemon["pidfile"]).write_text(f"{zombie.pid}\n")

    result = run_rem("service-restart", daemon, phase="detect")

    assert result.exit_code == 1
    zombie.wait()


def test_service_restart_leaves_a_running_service_alone(
    daemon: dict[str, str], procs: list[subprocess.Popen[bytes]]
) -> None:
    running = spawn(procs, Path(daemon["start"]))
    Path(daemon["pidfile"]).write_text(f"{running.pid}\n")

    result = run_rem("service-restart", daemon)

    assert result.exit_code == 0
    assert "already running" in result.output
    assert Path(daemon["pidfile"]).read_text().strip() == str(running.pid)


def test_service_restart_waits_for_a_daemon_that_writes_its_own_pidfile(
    tmp_path: Path, daemon: dict[str, str]
) -> None:
    pidfile = daemon["pidfile"]
    daemon["start"] = str(
        program(tmp_path / "selfpid", f'sleep 0.3; echo $$ > "{pidfile}"; exec sleep 300\n')
    )

    result = run_rem("service-restart", {**daemon, "write_pidfile": "no"})

    assert result.exit_code == 0, result.output
    assert psutil.Process(int(Path(pidfile).read_text())).name() == "sleep"


def test_service_restart_dry_run_starts_nothing(daemon: dict[str, str]) -> None:
    result = run_rem("service-restart", daemon, dry_run=True)

    assert result.exit_code == 0
    assert "dry run: would restart dummyd" in result.output
    assert not Path(daemon["pidfile"]).exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"start": "vigil-dummyd"}, "absolute path of the start program"),
        ({"service": "x; reboot"}, "service name has characters"),
        ({"manager": "openrc"}, "needs 'rc-service'"),
        ({"manager": "upstart"}, "unknown manager"),
    ],
    ids=["relative-start-program", "shell-in-service-name", "missing-manager-tool", "unknown"],
)
def test_service_restart_refuses_bad_params(
    daemon: dict[str, str], override: dict[str, str], message: str
) -> None:
    result = run_rem("service-restart", {**daemon, **override})

    assert result.exit_code == 3
    assert message in result.output


# --- kill-runaway -----------------------------------------------------------------------------


def busy(tmp_path: Path, name: str, *, ignore_term: bool = False) -> Path:
    trap = "trap '' TERM\n" if ignore_term else ""
    return program(tmp_path / name, f"{trap}while :; do :; done\n")


def test_kill_runaway_stops_allow_listed_hogs_gracefully_then_forcibly(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    polite = spawn(procs, busy(tmp_path, "vgl-polite"))
    stubborn = spawn(procs, busy(tmp_path, "vgl-stubborn", ignore_term=True))
    bystander = spawn(procs, busy(tmp_path, "vgl-bystander"))
    time.sleep(0.5)  # let ps see them busy

    result = run_rem(
        "kill-runaway",
        {"names": "vgl-polite,vgl-stubborn", "min_cpu_percent": "5", "grace": "1"},
    )

    assert result.exit_code == 0, result.output
    assert polite.wait(5) == -signal.SIGTERM
    assert stubborn.wait(5) == -signal.SIGKILL
    assert bystander.poll() is None
    assert "forcing" in result.output


def test_kill_runaway_leaves_idle_allow_listed_processes_alone(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    idle = spawn(procs, program(tmp_path / "vgl-idle", "exec sleep 300\n"))
    time.sleep(0.2)

    result = run_rem("kill-runaway", {"names": "vgl-idle", "min_cpu_percent": "50"})

    assert result.exit_code == 0
    assert idle.poll() is None
    assert "no allow-listed process" in result.output


def test_kill_runaway_dry_run_stops_nothing(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    hog = spawn(procs, busy(tmp_path, "vgl-hog"))
    time.sleep(0.5)

    result = run_rem("kill-runaway", {"names": "vgl-hog", "min_cpu_percent": "5"}, dry_run=True)

    assert result.exit_code == 0
    assert f"would stop pid {hog.pid}" in result.output
    assert hog.poll() is None


def test_kill_runaway_refuses_an_empty_allow_list() -> None:
    assert run_rem("kill-runaway", {"names": ""}).exit_code == 3


def agent_with_shipped_library(
    tmp_path: Path, checks: list[dict[str, object]], *, top_n: int = 5
) -> AgentService:
    """A real agent (real sampler, real runner) over the shipped library; ships nothing."""
    config = {
        "agent": {"state_dir": str(tmp_path / "state")},
        "collector": {"url": "http://127.0.0.1:9", "token": "t"},
        "sampler": {"process_scan": "1s", "disk_mounts": [], "top_n": top_n},
        "remediation": {"folders": [str(SHIPPED)]},
        "checks": checks,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    svc = build_service(load_agent_config(path))

    async def no_ship() -> None:
        return None

    svc.ship = no_ship  # type: ignore[method-assign]
    return svc


def agent_story(svc: AgentService) -> list[tuple[str, ...]]:
    batch = svc.outbox.next_batch(1000)
    out: list[tuple[str, ...]] = []
    for e in batch.events if batch else ():
        if isinstance(e, wire.CheckEvent):
            out.append(("check", e.check, e.state))
        elif isinstance(e, wire.RemediationEvent):
            out.append(("remediation", e.remediation, e.outcome))
    return out


def test_agent_verifies_kill_runaway_as_fixed_once_the_process_is_gone(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The whole flow: a check on the hog's CPU goes critical, the shipped kill-runaway
    stops it, and the verification reads the hog's series as 0 (it is gone), not as a
    missing series: outcome ``fixed`` and the check back to ok."""
    hog = spawn(procs, busy(tmp_path, "vgl-spin"))
    # Its parent reaps it at once, as on a real desktop, so it vanishes from the table.
    threading.Thread(target=hog.wait, daemon=True).start()
    svc = agent_with_shipped_library(
        tmp_path,
        [
            {
                "id": "spin.cpu",
                "metric": "process.top_cpu_percent[vgl-spin]",
                "critical": 50,
                "remediation": {
                    "id": "kill-runaway",
                    "params": {"names": "vgl-spin", "min_cpu_percent": "5", "grace": "1"},
                },
            }
        ],
    )

    async def scenario() -> None:
        await svc.cycle()  # first full process scan: the CPU baseline
        await asyncio.sleep(1.2)
        await svc.cycle()  # critical: kill-runaway runs, then the verification
        deadline = time.monotonic() + 30
        while (svc._tasks or svc.flow.tasks) and time.monotonic() < deadline:
            await asyncio.gather(*svc._tasks, *svc.flow.tasks, return_exceptions=True)

    try:
        asyncio.run(scenario())
        story = agent_story(svc)
    finally:
        svc.outbox.close()

    assert story[-3:] == [
        ("check", "spin.cpu", "critical"),
        ("remediation", "kill-runaway", "fixed"),
        ("check", "spin.cpu", "ok"),
    ]
    assert hog.wait(5) == -signal.SIGTERM


# --- log-rotate ------------------------------------------------------------------------------


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "app.log").write_bytes(b"line\n" * 400_000)  # 2 MB
    (folder / "small.log").write_text("tiny\n")
    (folder / "notes.txt").write_bytes(b"x" * 2_000_000)  # not matching *.log
    outside = tmp_path / "outside.log"
    outside.write_bytes(b"y" * 2_000_000)
    (folder / "link.log").symlink_to(outside)
    return folder


def test_log_rotate_compresses_and_truncates_in_place(logs: Path) -> None:
    app = logs / "app.log"
    inode = app.stat().st_ino
    (logs / "app.log.1.gz").write_bytes(gzip.compress(b"older\n"))

    result = run_rem("log-rotate", {"dir": str(logs), "max_size": "1000000"})

    assert result.exit_code == 0, result.output
    assert (app.stat().st_size, app.stat().st_ino) == (0, inode)
    assert gzip.decompress((logs / "app.log.1.gz").read_bytes()) == b"line\n" * 400_000
    assert gzip.decompress((logs / "app.log.2.gz").read_bytes()) == b"older\n"
    assert (logs / "small.log").read_text() == "tiny\n"
    assert (logs / "notes.txt").stat().st_size == 2_000_000
    assert (logs.parent / "outside.log").stat().st_size == 2_000_000
    assert not (logs / "link.log.1.gz").exists()


def test_log_rotate_keeps_at_most_keep_rotations(logs: Path) -> None:
    for i in (1, 2):
        (logs / f"app.log.{i}.gz").write_bytes(gzip.compress(f"rotation {i}\n".encode()))

    run_rem("log-rotate", {"dir": str(logs), "max_size": "1000000", "keep": "2"})

    assert sorted(p.name for p in logs.glob("app.log.*")) == ["app.log.1.gz", "app.log.2.gz"]
    assert gzip.decompress((logs / "app.log.2.gz").read_bytes()) == b"rotation 1\n"


def test_log_rotate_dry_run_changes_nothing(logs: Path) -> None:
    result = run_rem("log-rotate", {"dir": str(logs), "max_size": "1000000"}, dry_run=True)

    assert result.exit_code == 0
    assert (logs / "app.log").stat().st_size == 2_000_000
    assert "would rotate" in result.output


@pytest.mark.parametrize(
    "params",
    [{"pattern": "../*.log"}, {"dir": "logs"}, {"keep": "0"}],
    ids=["pattern-with-slash", "relative-dir", "keep-zero"],
)
def test_log_rotate_refuses_bad_params(logs: Path, params: dict[str, str]) -> None:
    result = run_rem("log-rotate", {"dir": str(logs), **params})

    assert result.exit_code == 3
    assert (logs / "app.log").stat().st_size == 2_000_000


# --- app-memory-restart --------------------------------------------------------------------


def bloated(tmp_path: Path, name: str, mib: int) -> Path:
    """A process that holds about ``mib`` MiB in a shell variable, then sleeps."""
    return program(
        tmp_path / name,
        f"x=$(head -c {mib * 1048576} /dev/zero | tr '\\0' a)\nwhile :; do sleep 0.1; done\n",
    )


def test_app_memory_restart_stops_the_bloated_app_and_starts_it_again(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    leaky = spawn(procs, bloated(tmp_path, "vgl-leaky", 40))
    assert wait_until(lambda: psutil.Process(leaky.pid).memory_info().rss > 30 * 2**20)
    restarted = tmp_path / "restarted.pid"
    again = program(tmp_path / "start-again", f'echo $$ > "{restarted}"\nexec sleep 300\n')

    result = run_rem(
        "app-memory-restart",
        {"name": "vgl-leaky", "max_rss": str(20 * 2**20), "grace": "2", "restart": str(again)},
    )

    assert result.exit_code == 0, result.output
    assert leaky.wait(5) == -signal.SIGTERM  # asked politely; no SIGKILL needed
    assert wait_until(restarted.exists)
    new_pid = int(restarted.read_text())
    try:
        assert not gone(new_pid)
    finally:
        os.kill(new_pid, signal.SIGKILL)
    assert declared_outcome(result.output) is None


def test_agent_verifies_app_memory_restart_on_the_restarted_app_outside_the_top_n(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The restarted application is small, so it leaves the top N; the check on its
    memory still reads it (measured at once, before the next full scan): ``fixed``."""
    leaky = spawn(procs, bloated(tmp_path, "vgl-leaky3", 40))
    threading.Thread(target=leaky.wait, daemon=True).start()
    assert wait_until(lambda: psutil.Process(leaky.pid).memory_info().rss > 30 * 2**20)
    (tmp_path / "again").mkdir()
    restarted = tmp_path / "restarted.pid"
    again = program(
        tmp_path / "again" / "vgl-leaky3",
        f'echo $$ > "{restarted}"\nwhile :; do sleep 0.1; done\n',
    )
    svc = agent_with_shipped_library(
        tmp_path,
        [
            {
                "id": "leaky.memory",
                "metric": "process.top_rss_bytes[vgl-leaky3]",
                "critical": 20 * 2**20,
                "remediation": {
                    "id": "app-memory-restart",
                    "params": {
                        "name": "vgl-leaky3",
                        "max_rss": str(20 * 2**20),
                        "grace": "2",
                        "restart": str(again),
                    },
                },
            }
        ],
        top_n=1,
    )

    async def scenario() -> None:
        await svc.cycle()
        deadline = time.monotonic() + 30
        while (svc._tasks or svc.flow.tasks) and time.monotonic() < deadline:
            await asyncio.gather(*svc._tasks, *svc.flow.tasks, return_exceptions=True)

    try:
        asyncio.run(scenario())
        story = agent_story(svc)
    finally:
        svc.outbox.close()
        if restarted.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(restarted.read_text()), signal.SIGKILL)

    assert story[-3:] == [
        ("check", "leaky.memory", "critical"),
        ("remediation", "app-memory-restart", "fixed"),
        ("check", "leaky.memory", "ok"),
    ]
    assert leaky.wait(5) == -signal.SIGTERM


def test_app_memory_restart_without_a_restart_program_declares_needs_user(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    leaky = spawn(procs, bloated(tmp_path, "vgl-leaky2", 40))
    assert wait_until(lambda: psutil.Process(leaky.pid).memory_info().rss > 30 * 2**20)

    result = run_rem("app-memory-restart", {"name": "vgl-leaky2", "max_rss": str(20 * 2**20)})

    assert result.exit_code == 0
    assert leaky.wait(5) == -signal.SIGTERM
    assert declared_outcome(result.output) == "needs_user"


def test_app_memory_restart_leaves_an_app_under_the_limit_alone(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    small = spawn(procs, bloated(tmp_path, "vgl-small", 1))
    time.sleep(0.3)

    result = run_rem("app-memory-restart", {"name": "vgl-small", "max_rss": str(500 * 2**20)})

    assert result.exit_code == 0
    assert small.poll() is None


# --- pid_alive: one definition in every script that waits for a process to exit ------------

PID_ALIVE_SCRIPTS = [
    SHIPPED / "kill-runaway" / "kill.sh",
    SHIPPED / "app-memory-restart" / "restart.sh",
    SHIPPED / "service-restart" / "service.sh",
]
_BEGIN, _END = "# --- pid_alive ", "# --- end pid_alive ---"


def pid_alive_definition(script: Path) -> str:
    """The text between the pid_alive markers of ``script``."""
    text = script.read_text()
    start, end = text.index(_BEGIN), text.index(_END)
    return text[start : end + len(_END)]


def test_every_script_that_waits_for_a_process_shares_one_pid_alive() -> None:
    """A bundle is one self-contained folder (admins copy it; the agent hashes the script
    it runs), so the definition is repeated rather than sourced: the copies must match."""
    first, *others = (pid_alive_definition(s) for s in PID_ALIVE_SCRIPTS)

    assert all(other == first for other in others)


def ps_stub(tmp_path: Path, stat_output: str) -> str:
    """A PATH whose ``ps`` answers ``-o stat=`` with ``stat_output`` and runs the real ps
    for everything else (the scripts also list processes with it)."""
    real_ps = shutil.which("ps")
    assert real_ps
    body = (
        'case " $* " in\n'
        f"    *' -o stat= '*) printf '{stat_output}' ;;\n"
        f'    *) exec {real_ps} "$@" ;;\n'
        "esac\n"
    )
    return toolbox(tmp_path, {"ps": body})


@pytest.mark.parametrize("script", PID_ALIVE_SCRIPTS, ids=lambda p: p.parent.name)
@pytest.mark.parametrize(
    ("stat_output", "alive"),
    [
        pytest.param("", False, id="reaped between kill -0 and ps: gone"),
        pytest.param("Z\\n", False, id="zombie: gone"),
        pytest.param("S\\n", True, id="sleeping: alive"),
    ],
)
def test_pid_alive_of_a_process_that_kill_0_still_reaches(
    tmp_path: Path, script: Path, stat_output: str, alive: bool
) -> None:
    """The pid is this test's own (kill -0 succeeds), so ps alone decides."""
    defined = pid_alive_definition(script)
    probe = f"{defined}\nif pid_alive {os.getpid()}; then echo alive; else echo gone; fi\n"
    env = {"PATH": ps_stub(tmp_path, stat_output)}

    out = subprocess.run(["/bin/sh", "-c", probe], env=env, capture_output=True, text=True)

    assert out.stdout.strip() == ("alive" if alive else "gone"), out.stderr


def test_kill_runaway_reports_a_process_reaped_mid_check_as_stopped(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The race for real: the hog dies at SIGTERM but is not reaped (kill -0 still
    reaches it) while ps has nothing to say about it, as when it is reaped in between."""
    hog = spawn(procs, busy(tmp_path, "vgl-raced"))
    time.sleep(0.5)

    result = run_rem(
        "kill-runaway",
        {"names": "vgl-raced", "min_cpu_percent": "5", "grace": "1"},
        path=ps_stub(tmp_path, ""),
    )

    assert result.exit_code == 0, result.output
    assert "stopped 1 process" in result.output
    assert hog.wait(5) == -signal.SIGTERM


def test_app_memory_restart_reports_a_process_reaped_mid_check_as_stopped(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    leaky = spawn(procs, bloated(tmp_path, "vgl-raced2", 40))
    assert wait_until(lambda: psutil.Process(leaky.pid).memory_info().rss > 30 * 2**20)

    result = run_rem(
        "app-memory-restart",
        {"name": "vgl-raced2", "max_rss": str(20 * 2**20), "grace": "1"},
        path=ps_stub(tmp_path, ""),
    )

    assert result.exit_code == 0, result.output
    assert declared_outcome(result.output) == "needs_user"
    assert leaky.wait(5) == -signal.SIGTERM


# --- dns-flush, clock-resync, print-queue-clear (stand-in tools) -----------------------------


def recorder(log: Path, output: str = "") -> str:
    """A stand-in tool body: append its name and arguments to ``log``, print ``output``."""
    return f'echo "${{0##*/}} $*" >> "{log}"\nprintf "%s" "{output}"\n'


def test_dns_flush_uses_systemd_resolved_when_present(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    path = toolbox(tmp_path, {"resolvectl": recorder(calls)})

    result = run_rem("dns-flush", path=path)

    assert result.exit_code == 0
    assert calls.read_text() == "resolvectl flush-caches\n"
    assert "flushed systemd-resolved" in result.output


def test_dns_flush_dry_run_calls_nothing(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    path = toolbox(tmp_path, {"resolvectl": recorder(calls)})

    result = run_rem("dns-flush", dry_run=True, path=path)

    assert result.exit_code == 0
    assert not calls.exists()


def test_dns_flush_with_no_local_cache_has_nothing_to_do(tmp_path: Path) -> None:
    params = {"dnsmasq_pidfile": str(tmp_path / "no-dnsmasq.pid")}

    result = run_rem("dns-flush", params, path=toolbox(tmp_path, {}))

    assert result.exit_code == 0
    assert "nothing to flush" in result.output


def test_dns_flush_reports_a_failing_flush(tmp_path: Path) -> None:
    path = toolbox(tmp_path, {"resolvectl": "exit 1\n"})

    assert run_rem("dns-flush", path=path).exit_code == 1


def test_dns_flush_refuses_a_relative_dnsmasq_pidfile(tmp_path: Path) -> None:
    """A relative pidfile would depend on the working folder: refused, nothing touched."""
    params = {"dnsmasq_pidfile": "dnsmasq.pid"}

    result = run_rem("dns-flush", params, path=toolbox(tmp_path, {}))

    assert result.exit_code == 3
    assert "must be an absolute path" in result.output


@pytest.mark.parametrize(
    "make",
    [Path.mkdir, lambda p: p.symlink_to("/etc/hostname")],
    ids=["folder", "symlink"],
)
def test_dns_flush_refuses_a_dnsmasq_pidfile_that_is_not_a_regular_file(
    tmp_path: Path, make: Callable[[Path], object]
) -> None:
    """Only a regular file is read for a pid (the real dnsmasq: test_dns_flush_real.py)."""
    pidfile = tmp_path / "dnsmasq.pid"
    make(pidfile)

    result = run_rem("dns-flush", {"dnsmasq_pidfile": str(pidfile)}, path=toolbox(tmp_path, {}))

    assert result.exit_code == 3
    assert "not a regular file" in result.output


@pytest.mark.parametrize(
    "content", ["0\n", "12ab\n", "-1\n", "\n"], ids=["zero", "junk", "neg", "empty"]
)
def test_dns_flush_signals_nothing_for_a_pidfile_without_a_valid_pid(
    tmp_path: Path, content: str
) -> None:
    """Pid 0 would signal the script's own group; junk is never read as a pid."""
    pidfile = tmp_path / "dnsmasq.pid"
    pidfile.write_text(content)

    result = run_rem("dns-flush", {"dnsmasq_pidfile": str(pidfile)}, path=toolbox(tmp_path, {}))

    assert result.exit_code == 1
    assert "holds no valid pid" in result.output


def chrony(calls: Path, seconds: str) -> str:
    return (
        f'echo "chronyc $*" >> "{calls}"\n'
        f'[ "$1" = tracking ] && echo "System time     : {seconds} seconds fast of NTP time"\n'
        "exit 0\n"
    )


@pytest.mark.parametrize(
    ("offset", "code"), [("2.500000", 1), ("0.000120", 0)], ids=["drifted", "in-sync"]
)
def test_clock_resync_detects_drift_from_chrony(tmp_path: Path, offset: str, code: int) -> None:
    path = toolbox(tmp_path, {"chronyc": chrony(tmp_path / "calls", offset)})

    assert run_rem("clock-resync", phase="detect", path=path).exit_code == code


def test_clock_resync_steps_the_clock_through_chrony(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    path = toolbox(tmp_path, {"chronyc": chrony(calls, "2.5")})

    result = run_rem("clock-resync", path=path)

    assert result.exit_code == 0
    assert calls.read_text() == "chronyc makestep\n"


def test_clock_resync_detection_is_unknown_without_a_time_service(tmp_path: Path) -> None:
    result = run_rem("clock-resync", phase="detect", path=toolbox(tmp_path, {}))

    assert result.exit_code == 2
    assert "no time service" in result.output


def cups(calls: Path, *, disabled: bool, jobs: int) -> dict[str, str]:
    state = "disabled since Mon" if disabled else "is idle.  enabled since Mon"
    job_lines = "".join(
        f"office-{i} alice 1024 Mon 01 Jan 2024 00:00:00 UTC\\n" for i in range(jobs)
    )
    return {
        "lpstat": (
            f'echo "lpstat $*" >> "{calls}"\n'
            'case "$1" in\n'
            '  -r) echo "scheduler is running" ;;\n'
            f'  -p) echo "printer office {state}" ;;\n'
            f'  -W) printf "{job_lines}" ;;\n'
            "esac\n"
        ),
        "cancel": recorder(calls),
        "cupsenable": recorder(calls),
    }


def test_print_queue_clear_detects_a_disabled_queue(tmp_path: Path) -> None:
    path = toolbox(tmp_path, cups(tmp_path / "calls", disabled=True, jobs=0))

    result = run_rem("print-queue-clear", {"queue": "office"}, phase="detect", path=path)

    assert result.exit_code == 1
    assert "queue office is disabled" in result.output


def test_print_queue_clear_detects_a_job_stuck_for_too_long(tmp_path: Path) -> None:
    path = toolbox(tmp_path, cups(tmp_path / "calls", disabled=False, jobs=1))

    result = run_rem("print-queue-clear", {"queue": "office"}, phase="detect", path=path)

    assert result.exit_code == 1
    assert "job office-0 on office has waited" in result.output


def test_print_queue_clear_cancels_re_enables_and_declares_needs_user(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    path = toolbox(tmp_path, cups(calls, disabled=True, jobs=2))

    result = run_rem("print-queue-clear", {"queue": "office"}, path=path)

    assert result.exit_code == 0, result.output
    made = [c for c in calls.read_text().splitlines() if not c.startswith("lpstat")]
    assert made == ["cancel -a office", "cupsenable office"]
    assert declared_outcome(result.output) == "needs_user"


def test_print_queue_clear_with_a_healthy_queue_changes_nothing(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    path = toolbox(tmp_path, cups(calls, disabled=False, jobs=0))

    detected = run_rem("print-queue-clear", {"queue": "office"}, phase="detect", path=path)
    fixed = run_rem("print-queue-clear", {"queue": "office"}, path=path)

    assert (detected.exit_code, fixed.exit_code) == (0, 0)
    assert all(c.startswith("lpstat") for c in calls.read_text().splitlines())
