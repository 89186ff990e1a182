"""Disk sources: usage per local mount (each ``statvfs`` bounded) and I/O rates per disk.

The mount table changes rarely (a USB disk, a share): where the kernel says when it
changes (:class:`MountWatch`), it is re-read then (and at least every
:data:`~vigil.agent.sampling.slow.RARE_S`); elsewhere every ``slow_interval``, rather than
parsed on every sample.
"""

from __future__ import annotations

import os
import select
import sys
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from vigil.agent.config import SamplerConfig
from vigil.agent.sampling.bounded import BoundedCaller, Pending, StillRunning
from vigil.agent.sampling.rates import PerNameRates
from vigil.agent.sampling.series import FailureLog, Item, describe
from vigil.agent.sampling.slow import RARE_S, SlowReads

# Filesystems that are not local disks worth watching: kernel pseudo filesystems, memory
# and container layers, read-only images (always "100 % full": squashfs snaps, ISOs) and
# network mounts (slow, and someone else's disk). ``fuseblk`` (ntfs-3g, exfat) is a local
# disk and is kept; only ``fuse.<subtype>`` userspace filesystems are skipped.
_SKIP_FSTYPES = frozenset(
    {
        "tmpfs",
        "devtmpfs",
        "ramfs",
        "overlay",
        "squashfs",
        "erofs",
        "iso9660",
        "proc",
        "sysfs",
        "devpts",
        "devfs",
        "debugfs",
        "tracefs",
        "securityfs",
        "pstore",
        "bpf",
        "configfs",
        "mqueue",
        "hugetlbfs",
        "efivarfs",
        "binfmt_misc",
        "fusectl",
        "fuse",
        "autofs",
        "cifs",
        "smbfs",
        "smb3",
        "afpfs",
        "webdav",
        "9p",
        "ceph",
        "glusterfs",
    }
)
_SKIP_FSTYPE_PREFIXES = ("cgroup", "nfs", "fuse.")
# Block devices that would only add noise (and many series).
_SKIP_DISK_PREFIXES = ("loop", "ram", "zram", "sr", "fd")

_Started = list[tuple[str, Pending[Any] | Exception]] | Exception


class DiskUsage:
    """``disk.{used_percent,free_bytes,total_bytes}[<mount>]`` for every local mount (or
    exactly ``config.disk_mounts``).

    statvfs on a hung (network) mount can block forever: each mount's read runs on a
    :class:`BoundedCaller` worker, with at most one outstanding call per mount, and all
    mounts together wait at most one ``disk_timeout``. A mount that failed or hung is
    left out, with its reason in ``reasons`` under each of its series names.
    """

    def __init__(
        self,
        config: SamplerConfig,
        *,
        ps: Any,
        clock: Callable[[], float],
        slow: SlowReads,
        failures: FailureLog,
        reasons: dict[str, str],
    ) -> None:
        self._config = config
        self._ps = ps
        self._clock = clock
        self._slow = slow
        self._failures = failures
        self._reasons = reasons
        self._caller = BoundedCaller(name="vigil-disk")
        self._started: _Started | None = None
        self._watch = MountWatch.open() if ps is psutil and config.disk_mounts is None else None
        self._watched_mounts: tuple[float, list[str]] | None = None

    def start(self) -> None:
        """Hand every mount's ``statvfs`` to its worker; :meth:`read` collects them.

        Called before the other sources are read, so the workers run meanwhile (on
        another core, when there is one).
        """
        self._started = self._start()

    def _start(self) -> _Started:
        try:
            mounts = self._config.disk_mounts
            if mounts is None:
                mounts = self._mount_points()
        except Exception as exc:  # reported by read() as the disk source failing
            return exc
        timeout = self._config.disk_timeout_s
        started: list[tuple[str, Pending[Any] | Exception]] = []
        for mount in mounts:
            try:
                read = self._caller.start(mount, lambda m=mount: self._ps.disk_usage(m), timeout)
            except Exception as exc:
                started.append((mount, exc))
            else:
                started.append((mount, read))
        return started

    def read(self) -> list[Item]:
        """The usage series of every mount whose read returned in time."""
        started, self._started = self._started, None
        if started is None:
            started = self._start()
        if isinstance(started, Exception):
            raise started
        deadline = self._clock() + self._config.disk_timeout_s
        items: list[Item] = []
        for mount, read in started:
            source = f"disk {mount}"
            names = [f"disk.{m}[{mount}]" for m in ("used_percent", "free_bytes", "total_bytes")]
            try:
                if isinstance(read, Exception):
                    raise read
                usage = self._caller.wait(read, deadline - self._clock())
            except Exception as exc:
                self._failures.failed(source, exc)
                hung = isinstance(exc, StillRunning)
                reason = f"mount {mount}: " + (str(exc) if hung else describe(exc))
                self._reasons.update(dict.fromkeys(names, reason))
                continue
            self._failures.recovered(source)
            for name in names:
                self._reasons.pop(name, None)
            items += [
                (names[0], usage.percent),
                (names[1], usage.free),
                (names[2], usage.total),
            ]
        return items

    def _mount_points(self) -> list[str]:
        """The local mounts to read (see the module docstring for how often)."""

        def read() -> list[Item]:
            return [(m, 0) for m in local_mounts(self._ps.disk_partitions(all=False))]

        watch = self._watch
        if watch is None:
            return [m for m, _ in self._slow.every("mounts", read)]
        now = self._clock()
        cached = self._watched_mounts
        if watch.changed() or cached is None or now - cached[0] >= RARE_S:
            cached = (now, [m for m, _ in read()])
            self._watched_mounts = cached
        return cached[1]


class DiskIO:
    """``diskio.{read,write}_bytes_per_second[<disk>]`` from the second read on."""

    def __init__(self, *, ps: Any, clock: Callable[[], float]) -> None:
        self._ps = ps
        self._clock = clock
        self._rates = PerNameRates(("read_bytes", "write_bytes"))

    def read(self) -> list[Item]:
        """Rates since the previous read; none for a disk whose counters went back."""
        now = self._clock()
        cur = {
            name: c
            for name, c in (self._ps.disk_io_counters(perdisk=True) or {}).items()
            if not name.startswith(_SKIP_DISK_PREFIXES)
        }
        items: list[Item] = []
        for name, rates in self._rates.update(now, cur):
            items += [
                (f"diskio.read_bytes_per_second[{name}]", rates["read_bytes"]),
                (f"diskio.write_bytes_per_second[{name}]", rates["write_bytes"]),
            ]
        return items


class MountWatch:
    """Whether the mount table changed since the previous :meth:`changed` call.

    Linux marks an open ``/proc/self/mounts`` with ``POLLPRI`` after a mount or an unmount
    (proc(5)), so asking costs one ``poll`` with no timeout instead of reading and parsing
    the table. The descriptor is closed when the watch is garbage-collected.
    """

    def __init__(self, fd: int) -> None:
        self._poll = select.poll()
        self._poll.register(fd, select.POLLPRI)
        weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, path: str = "/proc/self/mounts") -> MountWatch | None:
        """A watch on ``path``; ``None`` where the platform has no pollable mount table."""
        if not sys.platform.startswith("linux") or not hasattr(select, "poll"):
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        return cls(fd)

    def changed(self) -> bool:
        """True once after each change of the table (and never before the first one)."""
        return bool(self._poll.poll(0))


def local_mounts(partitions: Iterable[Any]) -> list[str]:
    """Mount points of local, writable-disk filesystems, each once, in psutil's order."""
    seen: set[str] = set()
    mounts: list[str] = []
    for part in partitions:
        fstype = (part.fstype or "").lower()
        if fstype in _SKIP_FSTYPES or fstype.startswith(_SKIP_FSTYPE_PREFIXES):
            continue
        if part.mountpoint in seen:
            continue
        seen.add(part.mountpoint)
        mounts.append(part.mountpoint)
    return mounts
