"""The sampler: CPU rate from snapshots, tolerant sources, disk filtering, path walks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

import psutil
import pytest

from vigil.agent.config import PathSpec, ProbeSpec, ProcessSpec, SamplerConfig
from vigil.agent.probes import ProbeResult
from vigil.agent.sampler import (
    PathStats,
    Sampler,
    cpu_busy_percent,
    linux_memory,
    linux_swap,
    read_meminfo,
    scan_path,
    source_of,
)
from vigil.agent.svc import ServiceState

LinuxTimes = namedtuple(
    "LinuxTimes", "user nice system idle iowait irq softirq steal guest guest_nice"
)
Times = namedtuple("Times", "user system idle")
Partition = namedtuple("Partition", "device mountpoint fstype opts")
Usage = namedtuple("Usage", "total used free percent")
VirtualMemory = namedtuple("VirtualMemory", "total available percent used free")
Swap = namedtuple("Swap", "total used free percent sin sout")
ProcTimes = namedtuple("ProcTimes", "user system children_user children_system")
MemInfo = namedtuple("MemInfo", "rss vms")

BOOT = 1_700_000_000.0
GIB = 2**30


def linux_times(**fields: float) -> LinuxTimes:
    return LinuxTimes(**{name: fields.get(name, 0.0) for name in LinuxTimes._fields})


class FakeProcess:
    def cpu_times(self) -> ProcTimes:
        return ProcTimes(user=1.5, system=0.25, children_user=9.0, children_system=9.0)

    def memory_info(self) -> MemInfo:
        return MemInfo(rss=48 * 2**20, vms=400 * 2**20)


class FakePs:
    """The slice of the psutil module the sampler uses, with fixed readings."""

    def __init__(self) -> None:
        self.cpu_snapshots = [
            Times(user=100.0, system=50.0, idle=850.0),
            Times(user=130.0, system=70.0, idle=900.0),  # +30 +20 busy of +100 total
        ]
        self.partitions = [Partition("/dev/sda1", "/", "ext4", "rw")]
        self.usage = {"/": Usage(total=500 * GIB, used=400 * GIB, free=100 * GIB, percent=80.0)}
        self.partitions_all: list[bool] = []
        self.usage_reads: list[str] = []

    def cpu_times(self) -> Times:
        return self.cpu_snapshots.pop(0)

    def cpu_count(self) -> int:
        return 8

    def getloadavg(self) -> tuple[float, float, float]:
        return (1.5, 1.25, 0.75)

    def virtual_memory(self) -> VirtualMemory:
        return VirtualMemory(16 * GIB, 4 * GIB, 75.0, 12 * GIB, 1 * GIB)

    def swap_memory(self) -> Swap:
        return Swap(2 * GIB, 1 * GIB, 1 * GIB, 50.0, 0, 0)

    def disk_partitions(self, all: bool = False) -> list[Partition]:
        self.partitions_all.append(all)
        return self.partitions

    def disk_usage(self, path: str) -> Usage:
        self.usage_reads.append(path)
        if path not in self.usage:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.usage[path]

    def boot_time(self) -> float:
        return BOOT

    def Process(self) -> FakeProcess:
        return FakeProcess()


class NoLoadAverage(FakePs):
    """A platform without ``getloadavg``, like a psutil build lacking a sensor function."""

    @property
    def getloadavg(self) -> Any:
        raise AttributeError("module 'psutil' has no attribute 'getloadavg'")


class BrokenSwap(FakePs):
    def swap_memory(self) -> Swap:
        raise RuntimeError("swap accounting unavailable")


class NoProcess(FakePs):
    def Process(self) -> FakeProcess:
        raise PermissionError(13, "Permission denied")


def sampler(ps: FakePs | None = None, **config: Any) -> Sampler:
    """A sampler over a fake psutil; bare ``paths`` are watched under their own path as name."""
    if "paths" in config:
        config["paths"] = tuple(
            p if isinstance(p, PathSpec) else PathSpec(str(p), p) for p in config["paths"]
        )
    return Sampler(SamplerConfig(**config), ps=ps or FakePs(), wall_clock=lambda: BOOT + 3600)


# ------------------------------------------------------------------ cpu_busy_percent


@pytest.mark.parametrize(
    ("prev", "cur", "expected"),
    [
        pytest.param(
            Times(100.0, 50.0, 850.0), Times(130.0, 70.0, 900.0), 50.0, id="normal interval"
        ),
        pytest.param(
            linux_times(user=100, idle=100, steal=10),
            linux_times(user=150, idle=150, steal=5),
            50.0,
            id="counter that went backwards counts as zero",
        ),
        pytest.param(
            Times(100.0, 50.0, 850.0), Times(100.0, 50.0, 850.0), None, id="zero delta is no rate"
        ),
        pytest.param(None, Times(100.0, 50.0, 850.0), None, id="first call has no rate"),
        pytest.param(
            linux_times(user=10, idle=10, iowait=10),
            linux_times(user=20, idle=20, iowait=20),
            pytest.approx(100 / 3),
            id="iowait is not busy",
        ),
        pytest.param(
            linux_times(user=10, idle=10, guest=5),
            linux_times(user=20, idle=20, guest=15),
            50.0,
            id="guest time is already inside user time",
        ),
        pytest.param(
            Times(100.0, 50.0, 850.0),
            linux_times(user=130, system=70, idle=900),
            None,
            id="snapshots with different fields have no rate",
        ),
    ],
)
def test_cpu_busy_percent(prev: Any, cur: Any, expected: float | None) -> None:
    assert cpu_busy_percent(prev, cur) == expected


# ------------------------------------------------------------------ Sampler with a fake psutil


def test_first_sample_has_no_cpu_busy_percent() -> None:
    values = sampler().sample()

    assert "cpu.busy_percent" not in values


def test_second_sample_has_cpu_busy_percent_from_the_two_snapshots() -> None:
    s = sampler()
    s.sample()

    values = s.sample()

    assert values["cpu.busy_percent"] == 50.0


def test_core_series_are_in_base_units() -> None:
    values = sampler().sample()

    assert {k: v for k, v in values.items() if not k.startswith(("disk.", "agent.sample"))} == {
        "cpu.count": 8,
        "load.1m": 1.5,
        "load.5m": 1.25,
        "load.15m": 0.75,
        "memory.total_bytes": 16 * GIB,
        "memory.available_bytes": 4 * GIB,
        "memory.used_percent": 75.0,
        "swap.total_bytes": 2 * GIB,
        "swap.used_percent": 50.0,
        "boot_time_seconds": BOOT,
        "uptime_seconds": 3600.0,
        "agent.cpu_seconds_total": 1.75,
        "agent.rss_bytes": 48 * 2**20,
    }


def test_sample_duration_comes_from_the_monotonic_clock() -> None:
    ticks = iter([10.0, 10.25])
    s = Sampler(SamplerConfig(), ps=FakePs(), clock=lambda: next(ticks))

    assert s.sample(["load"])["agent.sample_duration_seconds"] == 0.25


def test_missing_function_omits_only_its_series() -> None:
    values = sampler(NoLoadAverage()).sample()

    assert not [k for k in values if k.startswith("load.")]
    assert values["memory.total_bytes"] == 16 * GIB


def test_raising_source_omits_only_its_series() -> None:
    values = sampler(BrokenSwap()).sample()

    assert not [k for k in values if k.startswith("swap.")]
    assert values["memory.total_bytes"] == 16 * GIB


def test_unavailable_own_process_omits_only_the_agent_series() -> None:
    values = sampler(NoProcess()).sample()

    assert "agent.rss_bytes" not in values
    assert "agent.cpu_seconds_total" not in values
    assert values["load.1m"] == 1.5


def test_non_finite_readings_are_dropped() -> None:
    """The wire schema rejects NaN and infinity, so they must never reach a report."""
    ps = FakePs()
    ps.usage["/"] = Usage(total=0, used=0, free=0, percent=float("nan"))

    values = sampler(ps).sample()

    assert "disk.used_percent[/]" not in values
    assert values["disk.total_bytes[/]"] == 0


def test_disks_skip_pseudo_network_and_image_filesystems() -> None:
    ps = FakePs()
    ps.partitions = [
        Partition("/dev/nvme0n1p2", "/", "ext4", "rw"),
        Partition("/dev/nvme0n1p3", "/home", "btrfs", "rw"),
        Partition("/dev/sdb1", "/media/usb", "fuseblk", "rw"),
        Partition("tmpfs", "/run", "tmpfs", "rw"),
        Partition("udev", "/dev", "devtmpfs", "rw"),
        Partition("overlay", "/var/lib/docker/overlay2/x/merged", "overlay", "rw"),
        Partition("/dev/loop3", "/snap/core22/1380", "squashfs", "ro"),
        Partition("cgroup2", "/sys/fs/cgroup", "cgroup2", "rw"),
        Partition("nas:/export", "/mnt/nas", "nfs4", "rw"),
        Partition("//server/share", "/mnt/share", "cifs", "rw"),
        Partition("me@host:", "/mnt/ssh", "fuse.sshfs", "rw"),
        Partition("/dev/sr0", "/media/cdrom", "iso9660", "ro"),
    ]
    ps.usage = {p.mountpoint: Usage(100, 40, 60, 40.0) for p in ps.partitions}

    values = sampler(ps).sample()

    prefix = "disk.used_percent["
    mounts = sorted(k.removeprefix(prefix)[:-1] for k in values if k.startswith(prefix))
    assert mounts == ["/", "/home", "/media/usb"]


def test_a_mount_listed_twice_is_read_once() -> None:
    ps = FakePs()
    ps.partitions = [
        Partition("/dev/sda1", "/", "ext4", "rw"),
        Partition("/dev/sda1", "/", "ext4", "rw"),
    ]

    sampler(ps).sample()

    assert ps.usage_reads == ["/"]


def test_disks_ask_psutil_for_physical_partitions_only() -> None:
    ps = FakePs()

    sampler(ps).sample()

    assert ps.partitions_all == [False]


def test_disk_series_are_used_free_and_total() -> None:
    values = sampler().sample()

    assert {k: v for k, v in values.items() if k.startswith("disk.")} == {
        "disk.used_percent[/]": 80.0,
        "disk.free_bytes[/]": 100 * GIB,
        "disk.total_bytes[/]": 500 * GIB,
    }


def test_configured_mounts_are_read_exactly_and_a_missing_one_is_omitted() -> None:
    ps = FakePs()
    ps.usage["/data"] = Usage(total=10, used=1, free=9, percent=10.0)

    values = sampler(ps, disk_mounts=("/data", "/gone")).sample()

    assert sorted(k for k in values if k.startswith("disk.")) == [
        "disk.free_bytes[/data]",
        "disk.total_bytes[/data]",
        "disk.used_percent[/data]",
    ]
    assert ps.partitions_all == []


# ------------------------------------------------------------------ paths


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder with two files (one nested) and symlinks to a big file and folder outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"x" * 10_000)
    os.utime(outside / "big.bin", (BOOT, BOOT))

    watched = tmp_path / "watched"
    (watched / "sub").mkdir(parents=True)
    (watched / "a.txt").write_bytes(b"a" * 100)
    (watched / "sub" / "b.bin").write_bytes(b"b" * 250)
    os.utime(watched / "a.txt", (BOOT + 1000, BOOT + 1000))
    os.utime(watched / "sub" / "b.bin", (BOOT + 1500, BOOT + 1500))
    (watched / "to-folder").symlink_to(outside, target_is_directory=True)
    (watched / "to-file").symlink_to(outside / "big.bin")
    return watched


def test_folder_series_sum_regular_files_and_never_follow_symlinks(tree: Path) -> None:
    values = sampler(paths=(tree,)).sample_paths()

    assert values == {
        f"path.size_bytes[{tree}]": 350,
        f"path.count[{tree}]": 5,  # a.txt, sub, sub/b.bin and the two links themselves
        f"path.age_seconds[{tree}]": 2100.0,  # now is BOOT + 3600, newest file BOOT + 1500
    }


def test_series_are_named_by_the_watch_name_not_the_path(tree: Path) -> None:
    values = sampler(paths=(PathSpec("spool", tree),)).sample_paths()

    assert values["path.size_bytes[spool]"] == 350
    assert not any(str(tree) in k for k in values)


def test_file_series_are_its_size_and_age(tree: Path) -> None:
    path = tree / "a.txt"

    values = sampler(paths=(path,)).sample_paths()

    assert values == {
        f"path.size_bytes[{path}]": 100,
        f"path.count[{path}]": 1,
        f"path.age_seconds[{path}]": 2600.0,
    }


def test_missing_path_is_empty_with_no_age(tmp_path: Path) -> None:
    path = tmp_path / "nothing-here"

    values = sampler(paths=(path,)).sample_paths()

    assert values == {f"path.size_bytes[{path}]": 0, f"path.count[{path}]": 0}


def test_file_dated_in_the_future_has_age_zero(tmp_path: Path) -> None:
    path = tmp_path / "future.log"
    path.write_text("x")
    os.utime(path, (BOOT + 9999, BOOT + 9999))

    values = sampler(paths=(path,)).sample_paths()

    assert values[f"path.age_seconds[{path}]"] == 0.0


def test_sample_includes_the_path_series(tree: Path) -> None:
    values = sampler(paths=(tree,)).sample()

    assert values[f"path.size_bytes[{tree}]"] == 350
    assert values["memory.total_bytes"] == 16 * GIB


def test_sample_paths_returns_only_path_series(tree: Path) -> None:
    values = sampler(paths=(tree,)).sample_paths()

    assert all(k.startswith("path.") for k in values)


def test_folder_walk_stops_at_the_entry_bound(tree: Path) -> None:
    found = scan_path(tree, max_entries=3)

    assert (found.count, found.truncated) == (3, True)


def test_empty_folder_has_no_newest_file(tmp_path: Path) -> None:
    assert scan_path(tmp_path) == PathStats(size_bytes=0, count=0, newest_mtime=None)


# ------------------------------------------------------------------ the real psutil


def test_real_psutil_core_series_are_sane_after_two_samples() -> None:
    s = Sampler(SamplerConfig())
    s.sample()
    values = s.sample()
    deadline = time.monotonic() + 2.0
    # Back-to-back calls can land in the same clock tick: no CPU time elapsed, no rate yet.
    while "cpu.busy_percent" not in values and time.monotonic() < deadline:
        time.sleep(0.02)
        values = s.sample()

    assert 0.0 <= values["cpu.busy_percent"] <= 100.0
    assert values["cpu.count"] >= 1
    assert 0 < values["memory.available_bytes"] <= values["memory.total_bytes"]
    assert 0.0 <= values["memory.used_percent"] <= 100.0
    assert 0.0 <= values["swap.used_percent"] <= 100.0
    assert 0 < values["uptime_seconds"] < 10 * 365 * 86400
    assert values["agent.rss_bytes"] > 1_000_000
    assert values["agent.cpu_seconds_total"] > 0
    disks = [v for k, v in values.items() if k.startswith("disk.used_percent[")]
    assert disks
    assert all(0.0 <= v <= 100.0 for v in disks)


# ------------------------------------------------------------------ more sources

Nic = namedtuple(
    "Nic", "bytes_sent bytes_recv packets_sent packets_recv errin errout dropin dropout"
)
DiskIo = namedtuple("DiskIo", "read_count write_count read_bytes write_bytes")
Battery = namedtuple("Battery", "percent secsleft power_plugged")
Temp = namedtuple("Temp", "label current high critical")
Fan = namedtuple("Fan", "label current")


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FullFakePs(FakePs):
    """Adds NICs, disks, battery, sensors and per-core times, each settable by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_snapshots = [Times(100.0, 50.0, 850.0)] * 20
        self.nics = {
            "lo": Nic(9, 9, 0, 0, 0, 0, 0, 0),
            "eth0": Nic(1000, 5000, 0, 0, 1, 0, 0, 2),
        }
        self.disks = {"sda": DiskIo(0, 0, 4096, 8192), "loop0": DiskIo(0, 0, 1, 1)}
        self.battery: Battery | None = Battery(55.0, 3600, False)
        self.temps = {"coretemp": [Temp("Core 0", 51.0, 90, 100), Temp("Core 1", 63.0, 90, 100)]}
        self.fans = {"thinkpad": [Fan("", 2400)]}
        self.battery_reads = 0
        self.cores = [[Times(1, 1, 8), Times(2, 2, 6)], [Times(2, 1, 17), Times(4, 4, 12)]]

    def cpu_times(self, percpu: bool = False) -> Any:
        return self.cores.pop(0) if percpu else super().cpu_times()

    def net_io_counters(self, pernic: bool = False) -> dict[str, Nic]:
        return dict(self.nics)

    def disk_io_counters(self, perdisk: bool = False) -> dict[str, DiskIo]:
        return dict(self.disks)

    def sensors_battery(self) -> Battery | None:
        self.battery_reads += 1
        return self.battery

    def sensors_temperatures(self) -> dict[str, list[Temp]]:
        return self.temps

    def sensors_fans(self) -> dict[str, list[Fan]]:
        return self.fans


def full_sampler(ps: FullFakePs, clock: FakeClock, **config: Any) -> Sampler:
    return Sampler(SamplerConfig(**config), ps=ps, clock=clock, wall_clock=lambda: BOOT + 3600)


def test_net_rates_per_nic_skip_loopback() -> None:
    ps, clock = FullFakePs(), FakeClock()
    s = full_sampler(ps, clock)
    s.sample(["net"])
    ps.nics["eth0"] = Nic(3000, 15000, 0, 0, 3, 1, 0, 6)
    clock.now += 10

    values = s.sample(["net"])

    assert {k: v for k, v in values.items() if k.startswith("net.")} == pytest.approx(
        {
            "net.recv_bytes_per_second[eth0]": 1000.0,
            "net.sent_bytes_per_second[eth0]": 200.0,
            "net.errors_per_second[eth0]": 0.3,
            "net.drops_per_second[eth0]": 0.4,
        }
    )


def test_first_sample_has_no_rates() -> None:
    values = full_sampler(FullFakePs(), FakeClock()).sample(["net", "diskio"])

    assert not [k for k in values if k.startswith(("net.", "diskio."))]


def test_a_counter_that_went_backwards_gives_no_rate_for_that_nic() -> None:
    ps, clock = FullFakePs(), FakeClock()
    s = full_sampler(ps, clock)
    s.sample(["net"])
    ps.nics["eth0"] = Nic(0, 0, 0, 0, 0, 0, 0, 0)  # re-plugged: counters restart
    clock.now += 10

    assert not [k for k in s.sample(["net"]) if k.startswith("net.")]


def test_disk_io_rates_skip_loop_devices() -> None:
    ps, clock = FullFakePs(), FakeClock()
    s = full_sampler(ps, clock)
    s.sample(["diskio"])
    ps.disks = {"sda": DiskIo(0, 0, 4096 + 2048, 8192 + 4096), "loop0": DiskIo(0, 0, 9, 9)}
    clock.now += 2

    values = s.sample(["diskio"])

    assert {k: v for k, v in values.items() if k.startswith("diskio.")} == {
        "diskio.read_bytes_per_second[sda]": 1024.0,
        "diskio.write_bytes_per_second[sda]": 2048.0,
    }


@pytest.mark.parametrize(
    ("battery", "expected"),
    [
        pytest.param(
            Battery(55.0, 3600, False),
            {"battery.percent": 55.0, "battery.plugged": 0.0, "battery.seconds_left": 3600.0},
            id="discharging",
        ),
        pytest.param(
            Battery(100.0, -2, True),
            {"battery.percent": 100.0, "battery.plugged": 1.0},
            id="plugged: unlimited time left is no series",
        ),
        pytest.param(None, {}, id="desktop: no battery series"),
    ],
)
def test_battery_series(battery: Battery | None, expected: dict[str, float]) -> None:
    ps = FullFakePs()
    ps.battery = battery

    values = full_sampler(ps, FakeClock()).sample(["battery"])

    assert {k: v for k, v in values.items() if k.startswith("battery.")} == expected


def test_a_desktop_battery_check_reads_unknown_with_the_reason() -> None:
    ps = FullFakePs()
    ps.battery = None
    s = full_sampler(ps, FakeClock())
    s.sample(["battery"])

    assert s.reason_for("battery.percent") == (
        "battery unavailable: no battery (a desktop, or not reported by the OS)"
    )


def test_sensors_give_the_hottest_reading_per_chip_and_every_fan() -> None:
    values = full_sampler(FullFakePs(), FakeClock()).sample(["sensors"])

    assert {k: v for k, v in values.items() if k.startswith(("temperature.", "fan."))} == {
        "temperature.celsius[coretemp]": 63.0,
        "fan.rpm[thinkpad:0]": 2400.0,
    }


def test_slow_sources_are_read_once_per_slow_interval() -> None:
    ps, clock = FullFakePs(), FakeClock()
    s = full_sampler(ps, clock, slow_s=60.0)
    for _ in range(3):
        s.sample(["battery"])
        clock.now += 15
    clock.now += 30
    values = s.sample(["battery"])

    assert ps.battery_reads == 2
    assert values["battery.percent"] == 55.0


def test_per_core_busy_percent() -> None:
    ps, clock = FullFakePs(), FakeClock()
    s = full_sampler(ps, clock, per_core=True)
    s.sample(["cpu"])

    values = s.sample(["cpu"])

    assert values["cpu.core_busy_percent[0]"] == pytest.approx(10.0)  # 1 busy of 10
    assert values["cpu.core_busy_percent[1]"] == pytest.approx(40.0)  # 4 busy of 10


def test_only_the_requested_sources_are_read() -> None:
    ps = FullFakePs()

    values = full_sampler(ps, FakeClock()).sample(["memory"])

    assert {k.split(".")[0] for k in values} == {"memory", "agent"}
    assert ps.battery_reads == 0


@pytest.mark.parametrize(
    ("metric", "source"),
    [
        ("cpu.busy_percent", "cpu"),
        ("disk.used_percent[/home]", "disk"),
        ("temperature.celsius[coretemp]", "sensors"),
        ("process.count[sshd]", "processes"),
        ("path.size_bytes[tmp]", "paths"),
        ("uptime_seconds", "uptime"),
        ("plugin.load1[x]", None),
    ],
    ids=lambda v: str(v),
)
def test_source_of_a_series(metric: str, source: str | None) -> None:
    assert source_of(metric) == source


def test_reason_for_a_failed_source_names_it() -> None:
    s = sampler(BrokenSwap())
    s.sample()

    assert s.reason_for("swap.used_percent") == "swap unavailable: swap accounting unavailable"


def test_reason_for_a_missing_function_says_not_available_on_this_platform() -> None:
    s = sampler(NoLoadAverage())
    s.sample()

    assert s.reason_for("load.1m") == "load unavailable: not available on this platform"


def test_reason_for_an_unknown_series_says_so() -> None:
    s = sampler()
    s.sample()

    assert s.reason_for("cpu.bogus").startswith("not sampled on this machine")
    assert s.reason_for("nosuch.thing").startswith("no such series")


# ------------------------------------------------------------------ hung mounts


class HangingDisk(FakePs):
    """``/mnt/nfs`` blocks until released, like statvfs on a dead NFS server."""

    def __init__(self) -> None:
        super().__init__()
        self.partitions.append(Partition("srv:/x", "/mnt/nfs", "ext4", "rw"))
        self.usage["/mnt/nfs"] = Usage(total=GIB, used=0, free=GIB, percent=0.0)
        self.release = threading.Event()
        self.nfs_calls = 0

    def disk_usage(self, path: str) -> Usage:
        if path == "/mnt/nfs":
            self.nfs_calls += 1
            self.release.wait(10)
        return super().disk_usage(path)


@pytest.fixture
def hanging() -> Any:
    ps = HangingDisk()
    yield ps
    ps.release.set()


def test_a_hung_mount_is_unknown_with_a_reason_and_the_rest_is_sampled(hanging: Any) -> None:
    s = sampler(hanging, disk_timeout_s=0.05)

    values = s.sample(["disk"])

    assert values["disk.used_percent[/]"] == 80.0
    assert "disk.used_percent[/mnt/nfs]" not in values
    assert s.reason_for("disk.used_percent[/mnt/nfs]") == "mount /mnt/nfs: timed out after 0.05s"


def test_a_hung_mount_gets_no_second_call_while_the_first_is_stuck(hanging: Any) -> None:
    s = sampler(hanging, disk_timeout_s=0.05)
    for _ in range(3):
        s.sample(["disk"])

    assert hanging.nfs_calls == 1
    assert "an earlier read has not returned" in s.reason_for("disk.free_bytes[/mnt/nfs]")


def test_several_hung_mounts_together_wait_one_disk_timeout(hanging: Any) -> None:
    """Every mount's read starts before any is waited for, so a sample (which may run on
    the agent's event loop) is held up by one timeout, not one per dead mount."""
    for name in ("/mnt/nfs2", "/mnt/nfs3"):
        hanging.partitions.append(Partition("srv:/y", name, "ext4", "rw"))
        hanging.usage[name] = hanging.usage["/mnt/nfs"]
    slow = hanging.disk_usage

    def disk_usage(path: str) -> Usage:
        if path.startswith("/mnt/nfs"):
            hanging.release.wait(10)
        return slow(path) if path == "/" else hanging.usage[path]

    hanging.disk_usage = disk_usage
    s = sampler(hanging, disk_timeout_s=0.3)

    started = time.monotonic()
    values = s.sample(["disk"])

    assert time.monotonic() - started < 0.6
    assert values["disk.used_percent[/]"] == 80.0
    assert all(
        s.reason_for(f"disk.used_percent[{m}]") == f"mount {m}: timed out after 0.3s"
        for m in ("/mnt/nfs", "/mnt/nfs2", "/mnt/nfs3")
    )


def test_a_mount_that_comes_back_is_sampled_again(hanging: Any) -> None:
    s = sampler(hanging, disk_timeout_s=0.05)
    s.sample(["disk"])
    hanging.release.set()
    deadline = time.monotonic() + 2
    values: dict[str, float] = {}
    while "disk.used_percent[/mnt/nfs]" not in values and time.monotonic() < deadline:
        time.sleep(0.01)
        values = s.sample(["disk"])

    assert "disk.used_percent[/mnt/nfs]" not in s.reasons
    assert hanging.nfs_calls == 2


# ------------------------------------------------------------------ processes, services, probes


def test_services_are_one_and_zero_and_unknown_with_the_reason() -> None:
    def services(names: Any) -> dict[str, ServiceState]:
        return {
            "cups": ServiceState(True, "active (running)"),
            "bt": ServiceState(False, "inactive (dead)"),
            "typo": ServiceState(None, "unit typo: LoadState=not-found"),
        }

    s = Sampler(SamplerConfig(services=("cups", "bt", "typo")), ps=FakePs(), services=services)
    values = s.sample(["services"])

    assert {k: v for k, v in values.items() if k.startswith("service.")} == {
        "service.active[cups]": 1.0,
        "service.active[bt]": 0.0,
    }
    assert s.reason_for("service.active[typo]") == "unit typo: LoadState=not-found"


def test_probe_series(tmp_path: Path) -> None:
    class FakeProber:
        def run(self, spec: ProbeSpec) -> ProbeResult:
            return ProbeResult(0.25, True, 200)

    spec = ProbeSpec("intranet", "http", "http://intranet.example/")
    s = Sampler(SamplerConfig(probes=(spec,)), ps=FakePs(), prober=FakeProber())  # type: ignore[arg-type]

    assert s.sample(["probes"]) == {
        "probe.seconds[intranet]": 0.25,
        "probe.up[intranet]": 1.0,
        "probe.http_status[intranet]": 200.0,
        "agent.sample_duration_seconds": pytest.approx(0, abs=1),
    }


def test_path_walk_is_reused_within_its_interval(tmp_path: Path) -> None:
    clock = FakeClock()
    (tmp_path / "a").write_bytes(b"x" * 10)
    spec = PathSpec("t", tmp_path, interval_s=60.0)
    s = Sampler(SamplerConfig(paths=(spec,)), ps=FakePs(), clock=clock)
    s.sample(["paths"])
    (tmp_path / "b").write_bytes(b"x" * 5)

    cached = s.sample(["paths"])["path.size_bytes[t]"]
    clock.now += 60
    walked = s.sample(["paths"])["path.size_bytes[t]"]

    assert (cached, walked) == (10, 15)


def test_sample_paths_for_verification_always_walks_again(tmp_path: Path) -> None:
    spec = PathSpec("t", tmp_path, interval_s=3600.0)
    s = Sampler(SamplerConfig(paths=(spec,)), ps=FakePs(), clock=FakeClock())
    s.sample(["paths"])
    (tmp_path / "b").write_bytes(b"x" * 5)

    assert s.sample_paths()["path.size_bytes[t]"] == 5


def test_real_psutil_full_sample_has_process_and_net_series() -> None:
    s = Sampler(SamplerConfig(processes=(ProcessSpec("me", exe_name="python3"),)))
    s.sample()
    time.sleep(0.05)
    values = s.sample()

    assert values["process.count"] >= 1
    assert "process.zombies" in values
    assert any(k.startswith("process.top_rss_bytes[") for k in values)


# ------------------------------------------------------------------ blocking or inline


CHEAP = ["cpu", "load", "memory", "swap", "disk", "diskio", "net", "uptime", "agent"]


def test_cheap_sources_never_block() -> None:
    s = full_sampler(FullFakePs(), FakeClock())

    assert not s.blocking(CHEAP)


@pytest.mark.parametrize(
    ("config", "sources"),
    [
        ({"services": ("cups",)}, ["services"]),
        ({"probes": (ProbeSpec(name="dns", kind="dns", target="example.org"),)}, ["probes"]),
        ({}, ["processes"]),
        ({}, ["battery"]),
        ({}, ["sensors"]),
        ({}, None),
    ],
    ids=["services", "probes", "first-process-scan", "battery-due", "sensors-due", "everything"],
)
def test_slow_work_that_is_due_blocks(config: dict[str, Any], sources: list[str] | None) -> None:
    s = full_sampler(FullFakePs(), FakeClock(), **config)

    assert s.blocking(sources)


def test_a_path_walk_blocks_only_when_it_is_due(tmp_path: Path) -> None:
    clock = FakeClock()
    s = full_sampler(
        FullFakePs(), clock, paths=(PathSpec(name="logs", path=str(tmp_path), interval_s=300),)
    )
    due_first = s.blocking(["paths"])
    s.sample(["paths"])
    clock.now += 60
    cached = s.blocking(["paths"])
    clock.now += 300

    assert (due_first, cached, s.blocking(["paths"])) == (True, False, True)


def test_slow_sources_block_again_only_when_their_interval_is_up() -> None:
    clock = FakeClock()
    s = full_sampler(FullFakePs(), clock, slow_s=60.0)
    s.sample(["battery", "sensors"])
    clock.now += 30
    between = s.blocking(["battery", "sensors"])
    clock.now += 30

    assert (between, s.blocking(["battery"])) == (False, True)


# ------------------------------------------------------------------ memory and swap


MEMINFO = {
    b"MemTotal:": 16 * GIB,
    b"MemFree:": 2 * GIB,
    b"MemAvailable:": 4 * GIB,
    b"SwapTotal:": 8 * GIB,
    b"SwapFree:": 6 * GIB,
}


@pytest.mark.parametrize(
    ("mems", "memory", "swap"),
    [
        (MEMINFO, (16 * GIB, 4 * GIB, 75.0), (8 * GIB, 25.0)),
        ({**MEMINFO, b"SwapTotal:": 0, b"SwapFree:": 0}, (16 * GIB, 4 * GIB, 75.0), (0, 0.0)),
        ({**MEMINFO, b"MemAvailable:": 20 * GIB}, (16 * GIB, 2 * GIB, 87.5), (8 * GIB, 25.0)),
        ({b"MemTotal:": GIB, b"MemFree:": GIB}, None, None),
        ({}, None, None),
    ],
    ids=["typical", "no-swap", "bogus-available", "old-kernel", "unreadable"],
)
def test_memory_and_swap_from_one_meminfo_read_match_psutils_formulas(
    mems: dict[bytes, int], memory: tuple[int, int, float] | None, swap: tuple[int, float] | None
) -> None:
    """psutil reads /proc/meminfo twice and /proc/vmstat once for the same figures; where a
    figure is missing the caller falls back to psutil (``None``)."""
    assert (linux_memory(mems), linux_swap(mems)) == (memory, swap)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/meminfo")
def test_real_meminfo_gives_psutils_totals() -> None:
    mems = read_meminfo()
    memory, swap = linux_memory(mems), linux_swap(mems)

    assert memory is not None and swap is not None
    assert memory[0] == psutil.virtual_memory().total
    assert swap[0] == psutil.swap_memory().total
    assert abs(memory[2] - psutil.virtual_memory().percent) < 5


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("unshare") is None,
    reason="Linux mount namespaces",
)
def test_the_mount_watch_reports_a_new_mount_once(tmp_path: Path) -> None:
    """A real tmpfs mount, in a private mount namespace so nothing else sees it."""
    code = textwrap.dedent(
        f"""
        import subprocess
        from vigil.agent.sampler import MountWatch
        watch = MountWatch.open()
        before = watch.changed()
        subprocess.run(["mount", "-t", "tmpfs", "none", {str(tmp_path)!r}], check=True)
        print(before, watch.changed(), watch.changed())
        """
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=30,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount in a private namespace here: {proc.stderr.strip()[-200:]}")

    assert proc.stdout.split() == ["False", "True", "False"]
