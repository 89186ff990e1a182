"""The cached process table: identity by pid + create time, counts, presence, top N."""

from __future__ import annotations

import os
from collections import namedtuple
from contextlib import nullcontext
from typing import Any

import psutil
import pytest

from vigil.agent.config import ProcessSpec
from vigil.agent.sampling.processes import ProcessTable

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
        return Times(self.cpu, 0.0)

    def memory_info(self) -> Mem:
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


def table(ps: FakePs, *specs: ProcessSpec, top_n: int = 5) -> ProcessTable:
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
