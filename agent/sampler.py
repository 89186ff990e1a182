"""The sampler: one cheap psutil read of the workstation's health as flat series.

:meth:`Sampler.sample` returns ``{series: value}`` in base units (bytes, seconds, percent
0-100). Series names are ``source.metric`` with an optional instance in brackets, e.g.
``cpu.busy_percent`` or ``disk.used_percent[/home]`` (see ``agent/wire.py``
``MetricsEvent``). Every source is optional: when the platform lacks a reading or psutil
raises, its series are omitted (and logged once) rather than failing the whole sample, so
a check on a missing series reads as ``unknown``.

Series: ``cpu.busy_percent`` (from the second sample on), ``cpu.count``, ``load.1m``,
``load.5m``, ``load.15m``, ``memory.total_bytes``, ``memory.available_bytes``,
``memory.used_percent``, ``swap.total_bytes``, ``swap.used_percent``,
``disk.{used_percent,free_bytes,total_bytes}[<mount>]``, ``uptime_seconds``,
``boot_time_seconds``, ``path.{size_bytes,count,age_seconds}[<path>]``,
``agent.cpu_seconds_total``, ``agent.rss_bytes`` and ``agent.sample_duration_seconds``.

Cost: without configured paths one sample is a handful of small ``/proc`` reads and one
``statvfs`` per mount (well under 5 ms of CPU); there are no process scans. Path walks
cost in proportion to the entries walked, bounded by :data:`MAX_PATH_ENTRIES`.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import psutil

from agent.config import SamplerConfig

log = logging.getLogger(__name__)

MAX_PATH_ENTRIES = 100_000
"""A folder walk stops after this many entries, so one huge folder cannot stall sampling."""

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


def cpu_busy_percent(prev: Any, cur: Any) -> float | None:
    """Percent (0-100) of CPU time that was busy between two ``cpu_times()`` snapshots.

    ``prev`` and ``cur`` are named tuples with the same fields (psutil's ``scputimes`` or a
    look-alike), ``cur`` taken later. Busy is total minus ``idle`` minus ``iowait`` (Linux
    does not count I/O wait as idle; psutil ``_cpu_busy_time`` does the same). ``guest``
    and ``guest_nice`` are left out of the total because Linux already counts them in
    ``user``/``nice`` (psutil PR 940). A field that went backwards counts as 0: kernels do
    that occasionally (psutil issues 392, 645, 1210), and top clamps the same way.

    Returns ``None`` when there is no previous snapshot, the fields differ or have no
    ``idle``, or no CPU time elapsed (the rate is undefined, not 0).
    """
    if prev is None or cur is None:
        return None
    fields = getattr(cur, "_fields", None)
    if not fields or getattr(prev, "_fields", None) != fields or "idle" not in fields:
        return None
    deltas = {f: max(0.0, float(getattr(cur, f)) - float(getattr(prev, f))) for f in fields}
    total = sum(v for f, v in deltas.items() if f not in ("guest", "guest_nice"))
    if total <= 0:
        return None
    busy = total - deltas["idle"] - deltas.get("iowait", 0.0)
    return min(100.0, max(0.0, busy / total * 100.0))


class PathStats(NamedTuple):
    """What :func:`scan_path` found.

    ``size_bytes``: total size of regular files (a file: its size). ``count``: entries seen
    below a folder, of any kind (a file: 1; missing: 0). ``newest_mtime``: newest
    modification time of a regular file, seconds since the epoch (``None`` if none).
    ``truncated``: the walk stopped at ``max_entries``, so the figures are lower bounds.
    """

    size_bytes: int
    count: int
    newest_mtime: float | None
    truncated: bool = False


def scan_path(path: str | os.PathLike[str], *, max_entries: int = MAX_PATH_ENTRIES) -> PathStats:
    """Size, entry count and newest mtime of a file or of everything under a folder.

    The walk uses ``os.scandir`` and never follows symlinks (or Windows junctions) below
    ``path``; ``path`` itself is followed, since an admin named it. A missing ``path``
    gives ``PathStats(0, 0, None)``. Entries that vanish mid-walk and unreadable
    subfolders are skipped (normal races on a live system); an unreadable ``path`` itself
    raises ``OSError``.
    """
    try:
        top = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return PathStats(0, 0, None)
    if not stat.S_ISDIR(top.st_mode):
        size = top.st_size if stat.S_ISREG(top.st_mode) else 0
        return PathStats(size, 1, top.st_mtime)

    size = count = 0
    newest: float | None = None
    root = os.fspath(path)
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:
            if folder == root:
                raise
            continue
        with entries:
            for entry in entries:
                if count >= max_entries:
                    return PathStats(size, count, newest, truncated=True)
                count += 1
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not _is_reparse_point(entry):
                            stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        size += st.st_size
                        newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
                except OSError:
                    continue
    return PathStats(size, count, newest)


def _is_reparse_point(entry: os.DirEntry[str]) -> bool:
    """A Windows junction: ``is_dir(follow_symlinks=False)`` is true for it before 3.12."""
    if os.name != "nt":
        return False
    attributes = getattr(entry.stat(follow_symlinks=False), "st_file_attributes", 0)
    return bool(attributes & stat.FILE_ATTRIBUTE_REPARSE_POINT)


class Sampler:
    """Reads the series listed in the module docstring.

    ``ps`` is the psutil module or a look-alike object with the functions used
    (``cpu_times``, ``cpu_count``, ``getloadavg``, ``virtual_memory``, ``swap_memory``,
    ``disk_partitions``, ``disk_usage``, ``boot_time``, ``Process``); a missing function
    just omits its series. ``clock`` is monotonic (times the sample itself);
    ``wall_clock`` gives epoch seconds for uptime and file ages.

    Keeps the previous CPU snapshot between calls, so call :meth:`sample` from one thread
    at a time; :meth:`sample_paths` keeps no state.
    """

    def __init__(
        self,
        config: SamplerConfig,
        *,
        ps: Any = psutil,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._ps = ps
        self._clock = clock
        self._wall_clock = wall_clock
        self._prev_cpu: Any = None
        self._failing: set[str] = set()
        # One Process object for the agent's lifetime; creating it costs a /proc read.
        self._proc: Any = None
        try:
            self._proc = ps.Process()
        except Exception as exc:
            self._failed("agent", exc)

    def sample(self) -> dict[str, float]:
        """One reading of every source, ``{series: value}`` in base units.

        Never raises for a failing source: its series are left out.
        """
        started = self._clock()
        values: dict[str, float] = {}
        readers: tuple[tuple[str, Callable[[], Iterable[tuple[str, Any]]]], ...] = (
            ("cpu", self._cpu),
            ("load", self._load),
            ("memory", self._memory),
            ("swap", self._swap),
            ("disk", self._disks),
            ("uptime", self._uptime),
            ("agent", self._agent),
        )
        for source, read in readers:
            try:
                # list() first: a source either contributes all its series or none.
                items = list(read())
            except Exception as exc:
                # A sampler must never take the agent down: any failure (missing function,
                # AccessDenied, OSError, a platform quirk) omits that source's series.
                self._failed(source, exc)
                continue
            self._recovered(source)
            _put(values, items)
        values.update(self.sample_paths())
        values["agent.sample_duration_seconds"] = max(0.0, self._clock() - started)
        return values

    def sample_paths(self) -> dict[str, float]:
        """Only the ``path.*`` series, for re-checking quickly after a remediation.

        A missing path gives size 0 and count 0 and no age; an unreadable one no series.
        ``path.age_seconds`` is the time since the newest regular file's mtime (clamped at
        0 for files dated in the future).
        """
        values: dict[str, float] = {}
        now = self._wall_clock()
        for spec in self._config.paths:
            path, name = spec.path, spec.name
            source = f"path {name} ({path})"
            try:
                found = scan_path(path)
            except OSError as exc:
                self._failed(source, exc)
                continue
            self._recovered(source)
            if found.truncated:
                log.debug("path %s: stopped after %d entries", path, found.count)
            items: list[tuple[str, Any]] = [
                (f"path.size_bytes[{name}]", found.size_bytes),
                (f"path.count[{name}]", found.count),
            ]
            if found.newest_mtime is not None:
                items.append((f"path.age_seconds[{name}]", max(0.0, now - found.newest_mtime)))
            _put(values, items)
        return values

    # ------------------------------------------------------------------ sources

    def _cpu(self) -> Iterable[tuple[str, Any]]:
        cur = self._ps.cpu_times()
        busy = cpu_busy_percent(self._prev_cpu, cur)
        self._prev_cpu = cur
        return [("cpu.busy_percent", busy), ("cpu.count", self._ps.cpu_count())]

    def _load(self) -> Iterable[tuple[str, Any]]:
        # On Windows psutil emulates the load average with a background thread started on
        # the first call; its first values are 0.
        one, five, fifteen = self._ps.getloadavg()
        return [("load.1m", one), ("load.5m", five), ("load.15m", fifteen)]

    def _memory(self) -> Iterable[tuple[str, Any]]:
        vm = self._ps.virtual_memory()
        return [
            ("memory.total_bytes", vm.total),
            ("memory.available_bytes", vm.available),
            ("memory.used_percent", vm.percent),
        ]

    def _swap(self) -> Iterable[tuple[str, Any]]:
        sw = self._ps.swap_memory()
        return [("swap.total_bytes", sw.total), ("swap.used_percent", sw.percent)]

    def _disks(self) -> Iterable[tuple[str, Any]]:
        mounts = self._config.disk_mounts
        if mounts is None:
            mounts = _local_mounts(self._ps.disk_partitions(all=False))
        items: list[tuple[str, Any]] = []
        for mount in mounts:
            source = f"disk {mount}"
            try:
                # statvfs on a hung mount can block forever; pseudo and network filesystems
                # are skipped above, and a per-mount timeout is left for a later change.
                usage = self._ps.disk_usage(mount)
            except Exception as exc:
                self._failed(source, exc)
                continue
            self._recovered(source)
            items += [
                (f"disk.used_percent[{mount}]", usage.percent),
                (f"disk.free_bytes[{mount}]", usage.free),
                (f"disk.total_bytes[{mount}]", usage.total),
            ]
        return items

    def _uptime(self) -> Iterable[tuple[str, Any]]:
        boot = float(self._ps.boot_time())
        return [
            ("boot_time_seconds", boot),
            ("uptime_seconds", max(0.0, self._wall_clock() - boot)),
        ]

    def _agent(self) -> Iterable[tuple[str, Any]]:
        if self._proc is None:
            raise LookupError("psutil.Process() was unavailable at start")
        times = self._proc.cpu_times()
        return [
            ("agent.cpu_seconds_total", times.user + times.system),
            ("agent.rss_bytes", self._proc.memory_info().rss),
        ]

    # ------------------------------------------------------------------ failures

    def _failed(self, source: str, exc: BaseException) -> None:
        """Log a failing source once (then at debug level) until it recovers."""
        if source in self._failing:
            log.debug("sampler: %s still unavailable: %r", source, exc)
            return
        self._failing.add(source)
        log.warning("sampler: %s unavailable, omitting its series: %r", source, exc)

    def _recovered(self, source: str) -> None:
        if source in self._failing:
            self._failing.discard(source)
            log.info("sampler: %s available again", source)


def _local_mounts(partitions: Iterable[Any]) -> list[str]:
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


def _put(values: dict[str, float], items: Iterable[tuple[str, Any]]) -> None:
    """Add the items that are real finite numbers (the wire schema rejects NaN and inf)."""
    for name, value in items:
        if value is None or isinstance(value, bool):
            continue
        number = float(value)
        if math.isfinite(number):
            values[name] = number
