"""The cached process table: identity by pid + create time, counts, presence, top N."""

from __future__ import annotations

import os
from collections import namedtuple
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import psutil
import pytest

from vigil.agent.checks import evaluate
from vigil.agent.config import CheckSpec, ProcessSpec, SamplerConfig, load_agent_config
from vigil.agent.sampling.processes import ProcessTable
from vigil.agent.sampling.sampler import Sampler

Times = namedtuple("Times", "user system")
Mem = namedtuple("Mem", "rss vms")


class FakeProc:
    """One process; ``denied`` names the methods that raise AccessDenied."""

    def __init__(
        self,
        pid: int,
        name: str,
        *,
        cmdline: tuple[str, ...] = (),
        user: str = "alice",
        created: float = 1.0,
        cpu: float = 0.0,
        rss: int = 1000,
        status: str = "sleeping",
        denied: tuple[str, ...] = (),
    ) -> None:
        self.table: FakePs | None = None
        self.pid, self._name, self._cmdline, self._user = pid, name, cmdline, user
        self.created, self.cpu, self.rss, self._status, self.denied = (
            created,
            cpu,
            rss,
            status,
            denied,
        )

    def _check(self, what: str) -> None:
        if what in self.denied:
            raise psutil.AccessDenied(self.pid)

    def create_time(self) -> float:
        return self.created

    def is_running(self) -> bool:
        """Like psutil: false once the pid belongs to another process (or none)."""
        return self.table is not None and self.table.procs.get(self.pid) is self

    def name(self) -> str:
        self._check("name")
        return self._name

    def cmdline(self) -> list[str]:
        self._check("cmdline")
        return list(self._cmdline)

    def username(self) -> str:
        self._check("username")
        return self._user

    def oneshot(self) -> Any:
        return nullcontext()

    def cpu_times(self) -> Times:
        self._check("cpu_times")
        return Times(self.cpu, 0.0)

    def memory_info(self) -> Mem:
        self._check("memory_info")
        return Mem(self.rss, 0)

    def status(self) -> str:
        return self._status


class FakePs:
    """``pids`` and ``Process(pid)`` over a dict of fake processes; counts constructions."""

    def __init__(self, *procs: FakeProc) -> None:
        self.procs = {p.pid: p for p in procs}
        for p in procs:
            p.table = self
        self.constructed: list[int] = []

    def pids(self) -> list[int]:
        return list(self.procs)

    def Process(self, pid: int) -> FakeProc:
        self.constructed.append(pid)
        if pid not in self.procs:
            raise psutil.NoSuchProcess(pid)
        return self.procs[pid]


def table(
    ps: FakePs, *specs: ProcessSpec, top_n: int = 5, watched: tuple[str, ...] = ()
) -> ProcessTable:
    if watched:
        return ProcessTable(specs, ps=ps, top_n=top_n, watched=watched)
    return ProcessTable(specs, ps=ps, top_n=top_n)


def test_process_objects_are_cached_across_refreshes() -> None:
    ps = FakePs(FakeProc(1, "init"), FakeProc(2, "sshd"))
    t = table(ps)
    t.refresh(0, full=True)
    t.refresh(15, full=False)
    t.refresh(30, full=True)

    assert sorted(ps.constructed) == [1, 2]


def test_a_vanished_process_is_forgotten() -> None:
    ps = FakePs(FakeProc(1, "init"), FakeProc(2, "sshd"))
    t = table(ps)
    t.refresh(0, full=False)
    del ps.procs[2]
    t.refresh(15, full=False)

    assert t.reading().values["process.count"] == 1


def test_a_reused_pid_is_noticed_by_the_full_scan() -> None:
    ps = FakePs(FakeProc(7, "old"))
    t = table(ps, ProcessSpec("new", exe_name="new"))
    t.refresh(0, full=True)
    ps.procs[7] = FakeProc(7, "new", created=99.0)
    ps.procs[7].table = ps
    t.refresh(60, full=True)

    assert t.reading().values["process.count[new]"] == 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(ProcessSpec("s", exe_name="sshd"), 2, id="by name"),
        pytest.param(ProcessSpec("s", exe_name="SSHD"), 2, id="name is case-insensitive"),
        pytest.param(ProcessSpec("s", cmdline=r"-D\b"), 1, id="by cmdline pattern"),
        pytest.param(ProcessSpec("s", exe_name="sshd", user="root"), 1, id="by name and user"),
        pytest.param(ProcessSpec("s", user="CORP\\bob"), 1, id="domain user matches either form"),
        pytest.param(ProcessSpec("s", exe_name="nginx"), 0, id="absent process counts zero"),
    ],
)
def test_named_process_presence(spec: ProcessSpec, expected: int) -> None:
    ps = FakePs(
        FakeProc(1, "sshd", cmdline=("/usr/sbin/sshd", "-D"), user="root"),
        FakeProc(2, "sshd", cmdline=("sshd: alice",), user="alice"),
        FakeProc(3, "bash", user="CORP\\bob"),
    )
    t = table(ps, spec)
    t.refresh(0, full=False)

    assert t.reading().values["process.count[s]"] == expected


def test_access_denied_makes_an_absent_process_unknown_with_a_reason() -> None:
    ps = FakePs(FakeProc(1, "vpnd", denied=("cmdline",)))
    t = table(ps, ProcessSpec("vpn", cmdline="openconnect"))
    t.refresh(0, full=False)
    reading = t.reading()

    assert "process.count[vpn]" not in reading.values
    assert reading.reasons["process.count[vpn]"].startswith("access denied to 1 processes")


def test_a_process_found_despite_denied_others_is_counted() -> None:
    ps = FakePs(FakeProc(1, "x", denied=("cmdline",)), FakeProc(2, "y", cmdline=("openconnect",)))
    t = table(ps, ProcessSpec("vpn", cmdline="openconnect"))
    t.refresh(0, full=False)

    assert t.reading().values["process.count[vpn]"] == 1


def test_zombies_and_top_n_wait_for_a_full_scan() -> None:
    t = table(FakePs(FakeProc(1, "init")))
    t.refresh(0, full=False)
    reading = t.reading()

    assert "process.zombies" not in reading.values
    assert "waiting for the first full process scan" in reading.reasons["process.zombies"]


def test_full_scan_counts_zombies() -> None:
    ps = FakePs(FakeProc(1, "init"), FakeProc(2, "defunct", status="zombie"))
    t = table(ps)
    t.refresh(0, full=True)

    assert t.reading().values["process.zombies"] == 1


def test_top_cpu_is_percent_of_one_core_between_full_scans_summed_by_name() -> None:
    a, b, c = FakeProc(1, "chrome"), FakeProc(2, "chrome"), FakeProc(3, "idle")
    t = table(FakePs(a, b, c), top_n=1)
    t.refresh(0, full=True)
    a.cpu, b.cpu, c.cpu = 30.0, 15.0, 1.0  # seconds of CPU over the next 60 s
    t.refresh(60, full=True)
    values = t.reading().values

    assert values["process.top_cpu_percent[chrome]"] == pytest.approx(75.0)
    assert "process.top_cpu_percent[idle]" not in values


def test_top_rss_lists_the_biggest_names() -> None:
    ps = FakePs(FakeProc(1, "a", rss=10), FakeProc(2, "b", rss=30), FakeProc(3, "c", rss=20))
    t = table(ps, top_n=2)
    t.refresh(0, full=True)
    values = t.reading().values

    assert {k: v for k, v in values.items() if k.startswith("process.top_rss")} == {
        "process.top_rss_bytes[b]": 30,
        "process.top_rss_bytes[c]": 20,
    }


def test_real_psutil_table_sees_this_process() -> None:
    me = psutil.Process().name()
    t = ProcessTable([ProcessSpec("me", exe_name=me, user=psutil.Process().username())])
    t.refresh(0, full=True)
    values = t.reading().values

    assert values["process.count[me]"] >= 1
    assert values["process.count"] >= 1
    assert os.getpid() > 0


# --- watched names: a process a fix stopped reads 0, not unknown -------------------------


def sampler_over(ps: FakePs, clock: list[float], **config: Any) -> Sampler:
    """A sampler whose only working source here is the process table (the fake has no
    CPU, memory or disks: those sources are simply left out)."""
    return Sampler(SamplerConfig(**config), ps=ps, clock=lambda: clock[0])


def test_a_watched_process_that_was_killed_reads_zero_and_its_check_is_ok() -> None:
    """The shipped kill-runaway stops the process; its series must then say 0 (the fix
    worked), not vanish into unknown, so that the verification sees ok."""
    spinner, other = FakeProc(10, "spinner"), FakeProc(11, "other")
    ps = FakePs(spinner, other)
    clock = [0.0]
    spec = CheckSpec(id="runaway", metric="process.top_cpu_percent[spinner]", critical=90.0)
    s = sampler_over(ps, clock, watched_names=("spinner",), process_scan_s=60.0)
    s.sample({"processes"})
    spinner.cpu = 59.0  # 59 s of CPU in 60 s: 98 % of a core
    clock[0] = 60.0
    status, _ = evaluate(spec, None, s.sample({"processes"})[spec.metric], 60.0)
    assert status.state == "critical"

    del ps.procs[10]  # killed and reaped, 5 s later: no full scan is due yet
    clock[0] = 65.0
    values = s.sample({"processes"})
    status, transition = evaluate(spec, status, values.get(spec.metric), 65.0)

    assert values["process.top_cpu_percent[spinner]"] == 0.0
    assert values["process.top_rss_bytes[spinner]"] == 0.0
    assert status.state == "ok"
    assert transition is not None and transition.previous == "critical"


def test_a_watched_name_outside_the_top_n_is_still_sampled() -> None:
    ps = FakePs(FakeProc(1, "big", rss=900), FakeProc(2, "app", rss=300))
    t = table(ps, top_n=1, watched=("app", "absent"))
    t.refresh(0, full=True)
    values = t.reading().values

    assert values["process.top_rss_bytes[big]"] == 900
    assert values["process.top_rss_bytes[app]"] == 300
    assert values["process.top_rss_bytes[absent]"] == 0.0
    assert values["process.top_cpu_percent[absent]"] == 0.0


def test_a_restarted_watched_process_is_measured_before_the_next_full_scan() -> None:
    """app-memory-restart starts the application again: its memory is read at once (the
    verification needs it) and its CPU reads 0 % (not unknown) until a second reading."""
    ps = FakePs(FakeProc(1, "init"), FakeProc(2, "leaky", rss=4000))
    t = table(ps, top_n=1, watched=("leaky",))
    t.refresh(0, full=True)
    del ps.procs[2]
    ps.procs[3] = FakeProc(3, "leaky", rss=50, created=5.0)
    ps.procs[3].table = ps
    t.refresh(5, full=False)
    reading = t.reading()

    assert reading.values["process.top_rss_bytes[leaky]"] == 50
    assert reading.values["process.top_cpu_percent[leaky]"] == 0.0
    assert "process.top_cpu_percent[leaky]" not in reading.reasons


def test_a_watched_process_first_seen_by_a_full_scan_reads_zero_cpu() -> None:
    t = table(FakePs(FakeProc(1, "app", cpu=500.0), FakeProc(2, "other")), watched=("app",))
    t.refresh(0, full=True)
    values = t.reading().values

    assert values["process.top_cpu_percent[app]"] == 0.0
    assert "process.top_cpu_percent[other]" not in values  # not watched: nothing measured yet


def test_a_watched_process_cpu_is_measured_on_every_refresh() -> None:
    """A runaway that starts spinning between two full scans is seen at the next tick."""
    app = FakeProc(2, "app", cpu=10.0)
    t = table(FakePs(FakeProc(1, "init"), app), watched=("app",))
    t.refresh(0, full=True)
    app.cpu = 10.95  # 0.95 s of CPU in the next second
    t.refresh(1, full=False)
    assert t.reading().values["process.top_cpu_percent[app]"] == pytest.approx(95.0)

    app.cpu = 11.0  # a reading 0.1 s later is too short to rate: the figure stays
    t.refresh(1.1, full=False)
    assert t.reading().values["process.top_cpu_percent[app]"] == pytest.approx(95.0)

    app.cpu = 11.05  # idle again: 0.1 s of CPU over the 1 s since the rated reading
    t.refresh(2, full=False)
    assert t.reading().values["process.top_cpu_percent[app]"] == pytest.approx(10.0)


def test_a_watched_process_first_read_between_scans_gets_its_cpu_over_its_own_interval() -> None:
    ps = FakePs(FakeProc(1, "init"))
    t = table(ps, watched=("app",))
    t.refresh(0, full=True)
    app = ps.procs[2] = FakeProc(2, "app", cpu=100.0, created=40.0)
    app.table = ps
    t.refresh(40, full=False)  # first reading: 100 s of CPU so far
    app.cpu = 110.0
    t.refresh(60, full=True)  # 10 s of CPU in the 20 s since

    assert t.reading().values["process.top_cpu_percent[app]"] == pytest.approx(50.0)


def test_a_killed_top_process_leaves_the_top_n_at_the_next_refresh() -> None:
    ps = FakePs(FakeProc(1, "hog", rss=900), FakeProc(2, "app", rss=300))
    t = table(ps, ProcessSpec("app", exe_name="app"), top_n=1)
    t.refresh(0, full=True)
    assert t.reading().values["process.top_rss_bytes[hog]"] == 900
    del ps.procs[1]
    t.refresh(5, full=False)

    assert "process.top_rss_bytes[hog]" not in t.reading().values


def test_a_watched_process_that_died_into_a_zombie_reads_zero() -> None:
    """Killed but not yet reaped by its parent (PID 1 in many containers)."""
    hog = FakeProc(1, "hog", rss=900)
    t = table(FakePs(hog), watched=("hog",))
    t.refresh(0, full=True)
    hog._status = "zombie"
    t.refresh(5, full=False)
    values = t.reading().values

    assert values["process.top_rss_bytes[hog]"] == 0.0
    assert values["process.zombies"] == 1


def test_a_watched_name_we_cannot_measure_is_unknown_not_zero() -> None:
    """Unreadable data is never reported as ok: a hog whose figures are denied to us."""
    hog = FakeProc(1, "hog", denied=("memory_info",))
    t = table(FakePs(hog, FakeProc(2, "x", denied=("name",))), watched=("hog", "other"))
    t.refresh(0, full=True)
    reading = t.reading()

    assert "process.top_rss_bytes[hog]" not in reading.values
    assert "access denied" in reading.reasons["process.top_rss_bytes[hog]"]
    assert "process.top_rss_bytes[other]" not in reading.values
    assert "cannot tell if other runs" in reading.reasons["process.top_rss_bytes[other]"]


def test_a_watched_process_found_despite_unreadable_names_is_read() -> None:
    ps = FakePs(FakeProc(1, "hog", rss=900), FakeProc(2, "x", denied=("name",)))
    t = table(ps, watched=("hog",))
    t.refresh(0, full=True)

    assert t.reading().values["process.top_rss_bytes[hog]"] == 900


def test_watched_names_wait_for_the_first_full_scan() -> None:
    t = table(FakePs(FakeProc(1, "init")), watched=("hog",))
    t.refresh(0, full=False)

    assert "waiting for the first full" in t.reading().reasons["process.top_cpu_percent[hog]"]


def test_the_loader_watches_the_process_names_checks_read(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "collector: {url: 'http://127.0.0.1:9', token: t}\n"
        "checks:\n"
        "  - {id: a, metric: 'process.top_cpu_percent[spinner]', critical: 90}\n"
        "  - {id: b, metric: 'process.top_rss_bytes[leaky.bin]', critical: 1000000000}\n"
        "  - {id: c, metric: 'process.top_rss_bytes[spinner]', critical: 1000000000}\n"
        "  - {id: d, metric: cpu.busy_percent, critical: 95}\n"
    )

    assert load_agent_config(path).sampler.watched_names == ("spinner", "leaky.bin")


# --- zombies are not running processes --------------------------------------------------


class ZombieProc(FakeProc):
    """A zombie as psutil shows one: its command line raises ZombieProcess (Linux), and
    so does its owner on platforms that refuse every read of a zombie (macOS)."""

    def __init__(self, pid: int, name: str = "defunct", **kw: Any) -> None:
        super().__init__(pid, name, status="zombie", **kw)

    def cmdline(self) -> list[str]:
        raise psutil.ZombieProcess(self.pid, self._name)

    def username(self) -> str:
        raise psutil.ZombieProcess(self.pid, self._name)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(ProcessSpec("svc", cmdline="mydaemon"), id="cmdline"),
        pytest.param(ProcessSpec("svc", user="alice"), id="user"),
        pytest.param(ProcessSpec("svc", exe_name="mydaemon", cmdline="--serve"), id="exe+cmdline"),
    ],
)
def test_a_zombie_anywhere_does_not_blind_a_presence_check(spec: ProcessSpec) -> None:
    """A stopped service must read 0 (so it is restarted), although the dead instance it
    left behind as a zombie cannot be read."""
    t = table(FakePs(FakeProc(1, "init", user="root"), ZombieProc(66, "mydaemon")), spec)
    t.refresh(0, full=False)
    reading = t.reading()

    assert reading.values["process.count[svc]"] == 0
    assert "process.count[svc]" not in reading.reasons


def test_a_zombie_that_raises_on_every_read_is_counted_as_a_zombie_only() -> None:
    class Unreadable(ZombieProc):
        def cpu_times(self) -> Times:
            raise psutil.ZombieProcess(self.pid, self._name)

    t = table(FakePs(Unreadable(5, "mydaemon")), ProcessSpec("svc", exe_name="mydaemon"))
    t.refresh(0, full=True)
    values = t.reading().values

    assert values["process.count[svc]"] == 0
    assert values["process.zombies"] == 1


def test_a_service_that_died_into_a_zombie_stops_counting_before_the_next_full_scan() -> None:
    daemon = FakeProc(7, "mydaemon", cmdline=("mydaemon", "--serve"))
    t = table(FakePs(daemon), ProcessSpec("svc", cmdline="--serve"))
    t.refresh(0, full=True)
    assert t.reading().values["process.count[svc]"] == 1
    daemon._status = "zombie"
    t.refresh(5, full=False)

    assert t.reading().values["process.count[svc]"] == 0


def test_a_stopped_service_is_critical_despite_a_zombie_so_its_fix_runs() -> None:
    """The check a service restart hangs on: count below 1 is critical, not unknown."""
    ps = FakePs(FakeProc(1, "init", user="root"), ZombieProc(66, "mydaemon"))
    clock = [0.0]
    s = sampler_over(ps, clock, processes=(ProcessSpec("svc", cmdline="mydaemon --serve"),))
    spec = CheckSpec(id="svc.up", metric="process.count[svc]", op="<", critical=1.0)

    values = s.sample({"processes"})
    status, _ = evaluate(spec, None, values.get(spec.metric), 0.0, reason=s.reason_for(spec.metric))

    assert status.state == "critical"
