"""Disk usage per local mount (bounded reads, hung mounts) and disk I/O rates."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.fake_psutil import (
    GIB,
    DiskIo,
    FakeClock,
    FakePs,
    FullFakePs,
    Partition,
    Usage,
    full_sampler,
    sampler,
)


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


# ------------------------------------------------------------------ the mount table


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("unshare") is None,
    reason="Linux mount namespaces",
)
def test_the_mount_watch_reports_a_new_mount_once(tmp_path: Path) -> None:
    """A real tmpfs mount, in a private mount namespace so nothing else sees it."""
    code = textwrap.dedent(
        f"""
        import subprocess
        from vigil.agent.sampling.disks import MountWatch
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
