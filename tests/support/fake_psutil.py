"""A fake psutil for the sampler's tests: fixed readings the test can change, and
samplers built over it (the real psutil is exercised by the tests marked as such)."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from vigil.agent.config import PathSpec, SamplerConfig
from vigil.agent.sampling.sampler import Sampler

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

Nic = namedtuple(
    "Nic", "bytes_sent bytes_recv packets_sent packets_recv errin errout dropin dropout"
)

DiskIo = namedtuple("DiskIo", "read_count write_count read_bytes write_bytes")

Battery = namedtuple("Battery", "percent secsleft power_plugged")

Temp = namedtuple("Temp", "label current high critical")

Fan = namedtuple("Fan", "label current")

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


def sampler(ps: FakePs | None = None, **config: Any) -> Sampler:
    """A sampler over a fake psutil; bare ``paths`` are watched under their own path as name."""
    if "paths" in config:
        config["paths"] = tuple(
            p if isinstance(p, PathSpec) else PathSpec(str(p), p) for p in config["paths"]
        )
    return Sampler(SamplerConfig(**config), ps=ps or FakePs(), wall_clock=lambda: BOOT + 3600)


def full_sampler(ps: FullFakePs, clock: FakeClock, **config: Any) -> Sampler:
    return Sampler(SamplerConfig(**config), ps=ps, clock=clock, wall_clock=lambda: BOOT + 3600)
