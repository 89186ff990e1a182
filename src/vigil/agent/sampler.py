"""The sampler: one cheap psutil read of the workstation's health as flat series.

:meth:`Sampler.sample` returns ``{series: value}`` in base units (bytes, seconds, percent
0-100). Series names are ``source.metric`` with an optional instance in brackets, e.g.
``cpu.busy_percent`` or ``disk.used_percent[/home]`` (see ``agent/wire.py``
``MetricsEvent``). Every source is optional: when the platform lacks a reading or psutil
raises, its series are omitted (and logged once) rather than failing the whole sample, so
a check on a missing series reads as ``unknown``.

Series: ``cpu.busy_percent`` (from the second sample on), ``cpu.count``,
``cpu.core_busy_percent[<n>]`` (``per_core``), ``load.1m``, ``load.5m``, ``load.15m``,
``memory.total_bytes``, ``memory.available_bytes``, ``memory.used_percent``,
``swap.total_bytes``, ``swap.used_percent``,
``disk.{used_percent,free_bytes,total_bytes}[<mount>]``,
``diskio.{read,write}_bytes_per_second[<disk>]``,
``net.{recv,sent}_bytes_per_second[<nic>]``, ``net.{errors,drops}_per_second[<nic>]``,
``battery.percent``, ``battery.plugged``, ``battery.seconds_left``,
``temperature.celsius[<chip>]``, ``fan.rpm[<chip>:<label>]``, ``process.count``,
``process.zombies``, ``process.top_cpu_percent[<name>]``, ``process.top_rss_bytes[<name>]``,
``process.count[<name>]``, ``service.active[<name>]``, ``probe.seconds[<name>]``,
``probe.up[<name>]``, ``probe.http_status[<name>]``, ``uptime_seconds``,
``boot_time_seconds``, ``path.{size_bytes,count,age_seconds}[<path>]``,
``agent.cpu_seconds_total``, ``agent.rss_bytes`` and ``agent.sample_duration_seconds``.
Rates (``*_per_second``) start from the second sample.

Why a series is missing is kept in :meth:`Sampler.reason_for` (access denied, a mount
that timed out, no battery, a vanished process), so a check on it reads ``unknown``
with that reason instead of a silent ok.

Cost: without configured paths, processes, services or probes one sample is a handful of
small ``/proc`` reads and one bounded ``statvfs`` per mount; sensors and battery are read
every ``slow_interval``, the full process table every ``process_scan``. Path walks cost
in proportion to the entries walked, bounded by :data:`MAX_PATH_ENTRIES`.
"""

from __future__ import annotations

import logging
import math
import os
import select
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import psutil

from vigil.agent import svc
from vigil.agent.bounded import BoundedCaller, Pending, StillRunning
from vigil.agent.config import SamplerConfig
from vigil.agent.probes import Prober
from vigil.agent.processes import ProcessTable

log = logging.getLogger(__name__)

RARE_S = 600.0
"""Seconds between re-reads of the CPU count and the boot time, which change only with a
CPU hot-plug, a reboot or a wall-clock step (the boot time is derived from the wall clock),
so a sample cycle need not pay for them every ``slow_interval``."""

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
# Virtual NICs and block devices that would only add noise (and many series).
_SKIP_NIC_PREFIXES = ("lo", "veth", "docker", "br-", "virbr", "vnet", "cali", "flannel")
_SKIP_DISK_PREFIXES = ("loop", "ram", "zram", "sr", "fd")

SOURCES: tuple[str, ...] = (
    "cpu",
    "load",
    "memory",
    "swap",
    "disk",
    "diskio",
    "net",
    "battery",
    "sensors",
    "processes",
    "services",
    "probes",
    "uptime",
    "agent",
    "paths",
)
_SOURCE_OF_PREFIX = {
    "temperature": "sensors",
    "fan": "sensors",
    "process": "processes",
    "service": "services",
    "probe": "probes",
    "path": "paths",
    "uptime_seconds": "uptime",
    "boot_time_seconds": "uptime",
}


def source_of(metric: str) -> str | None:
    """The sampler source that produces series ``metric`` (``None``: no such source)."""
    head = metric.split("[", 1)[0].split(".", 1)[0]
    source = _SOURCE_OF_PREFIX.get(head, head)
    return source if source in SOURCES else None


def counter_rates(
    prev: Any, cur: Any, seconds: float, fields: Iterable[str]
) -> dict[str, float] | None:
    """Per-second rates of monotonic counters between two snapshots.

    ``None`` when there is no previous snapshot, no time passed, or any counter went
    backwards (a reset, a NIC that was re-plugged, a 32-bit wrap): one missing rate is
    better than a huge or negative one.
    """
    if prev is None or cur is None or seconds <= 0:
        return None
    out: dict[str, float] = {}
    for f in fields:
        delta = float(getattr(cur, f)) - float(getattr(prev, f))
        if delta < 0:
            return None
        out[f] = delta / seconds
    return out


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

    ``prober`` runs the probes and ``services`` is :func:`agent.svc.service_states` (both
    replaceable in tests). Keeps previous snapshots (CPU, NICs, disks, the process table)
    between calls, so call :meth:`sample` from one thread at a time; :meth:`sample_paths`
    keeps no state.
    """

    def __init__(
        self,
        config: SamplerConfig,
        *,
        ps: Any = psutil,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        prober: Prober | None = None,
        services: Callable[..., dict[str, svc.ServiceState]] = svc.service_states,
    ) -> None:
        self._config = config
        self._ps = ps
        self._clock = clock
        self._wall_clock = wall_clock
        self._prev_cpu: Any = None
        self._prev_cores: Any = None
        self._prev_net: tuple[float, dict[str, Any]] | None = None
        self._prev_diskio: tuple[float, dict[str, Any]] | None = None
        self._failing: set[str] = set()
        self._meminfo_cache: dict[bytes, int] | None = None
        self._disks_started: list[tuple[str, Pending[Any] | Exception]] | Exception | None = None
        self.reasons: dict[str, str] = {}
        # Re-entrant: sample() calls sample_paths(), which a remediation may also call.
        self._lock = threading.RLock()
        self._disk_caller = BoundedCaller(name="vigil-disk")
        self._path_cache: dict[str, tuple[float, PathStats]] = {}
        self._slow: dict[str, tuple[float, list[tuple[str, Any]], str | None]] = {}
        self._processes = ProcessTable(config.processes, ps=ps, top_n=config.top_n)
        self._mount_watch = (
            MountWatch.open() if ps is psutil and config.disk_mounts is None else None
        )
        self._last_process_scan: float | None = None
        self._prober = prober or Prober()
        self._services = services
        # One Process object for the agent's lifetime; creating it costs a /proc read.
        self._proc: Any = None
        try:
            self._proc = ps.Process()
        except Exception as exc:
            self._failed("agent", exc)

    def sample(self, sources: Iterable[str] | None = None) -> dict[str, float]:
        """One reading of every source (or only of ``sources``), ``{series: value}``.

        Never raises for a failing source: its series are left out and
        :meth:`reason_for` says why. Calls from several threads (jobs with their own
        intervals) are serialised, since rates keep the previous snapshot.
        """
        with self._lock:
            return self._sample(sources)

    def _sample(self, sources: Iterable[str] | None) -> dict[str, float]:
        started = self._clock()
        self._meminfo_cache = None  # read again in this sample, if a source needs it
        wanted = None if sources is None else set(sources)
        if wanted is None or "disk" in wanted:
            self._disks_started = self._start_disks()
        values: dict[str, float] = {}
        readers: tuple[tuple[str, Callable[[], Iterable[tuple[str, Any]]]], ...] = (
            ("cpu", self._cpu),
            ("load", self._load),
            ("memory", self._memory),
            ("swap", self._swap),
            ("disk", self._disks),
            ("diskio", self._diskio),
            ("net", self._net),
            ("battery", self._battery),
            ("sensors", self._sensors),
            ("processes", self._process_table),
            ("services", self._service_states),
            ("probes", self._probes),
            ("uptime", self._uptime),
            ("agent", self._agent),
        )
        for source, read in readers:
            if wanted is not None and source not in wanted:
                continue
            # A reader may set its own reason (no battery, no sensors) while succeeding.
            self.reasons.pop(source, None)
            try:
                # list() first: a source either contributes all its series or none.
                items = list(read())
            except Exception as exc:
                # A sampler must never take the agent down: any failure (missing function,
                # AccessDenied, OSError, a platform quirk) omits that source's series.
                self._failed(source, exc)
                self.reasons[source] = _reason(exc)
                continue
            self._recovered(source)
            _put(values, items)
        if wanted is None or "paths" in wanted:
            values.update(self.sample_paths(fresh=False))
        values["agent.sample_duration_seconds"] = max(0.0, self._clock() - started)
        return values

    def blocking(self, sources: Iterable[str] | None = None) -> bool:
        """Whether :meth:`sample` of ``sources`` (``None``: all) may take long *now*, so a
        caller with an event loop should run it on a worker thread rather than inline.

        True when it would run services or probes (subprocesses, network timeouts), or
        when a full process scan, a path walk, or a battery or sensor read is due. Every
        other source is a few small ``/proc`` reads or syscalls; disk usage waits at most
        ``disk_timeout`` in all (once: a hung mount is then refused at once until its
        read returns, see ``agent/bounded.py``).
        """
        wanted = None if sources is None else set(sources)
        config = self._config
        now = self._clock()

        def want(source: str) -> bool:
            return wanted is None or source in wanted

        if (want("services") and config.services) or (want("probes") and config.probes):
            return True
        if want("processes"):
            last = self._last_process_scan
            if last is None or now - last >= config.process_scan_s:
                return True
        if want("paths"):
            for spec in config.paths:
                cached = self._path_cache.get(spec.name)
                if spec.interval_s is None or cached is None or now - cached[0] >= spec.interval_s:
                    return True
        for slow in ("battery", "sensors"):
            cached_slow = self._slow.get(slow)
            if want(slow) and (cached_slow is None or now - cached_slow[0] >= config.slow_s):
                return True
        return False

    def reason_for(self, metric: str) -> str:
        """Why ``metric`` has no value in the latest sample (for an ``unknown`` check)."""
        if metric in self.reasons:
            return self.reasons[metric]
        source = source_of(metric)
        if source is None:
            return "no such series (see `vigil-agent check --json` for the sampled ones)"
        if source in self.reasons:
            return f"{source} unavailable: {self.reasons[source]}"
        return f"not sampled on this machine ({source} has no {metric})"

    def sample_paths(self, *, fresh: bool = True) -> dict[str, float]:
        """Only the ``path.*`` series, for re-checking quickly after a remediation.

        A missing path gives size 0 and count 0 and no age; an unreadable one no series.
        ``path.age_seconds`` is the time since the newest regular file's mtime (clamped at
        0 for files dated in the future). ``fresh=False`` (the regular sample) reuses a
        walk younger than the path's ``interval``; a verification always walks again.
        """
        with self._lock:
            return self._sample_paths(fresh)

    def _sample_paths(self, fresh: bool) -> dict[str, float]:
        values: dict[str, float] = {}
        now = self._wall_clock()
        mono = self._clock()
        for spec in self._config.paths:
            path, name = spec.path, spec.name
            source = f"path {name} ({path})"
            cached = self._path_cache.get(name)
            if (
                not fresh
                and cached is not None
                and spec.interval_s is not None
                and mono - cached[0] < spec.interval_s
            ):
                found = cached[1]
            else:
                try:
                    found = scan_path(path)
                except OSError as exc:
                    self._failed(source, exc)
                    self.reasons.update(
                        dict.fromkeys(
                            (f"path.{m}[{name}]" for m in ("size_bytes", "count", "age_seconds")),
                            f"cannot read {path}: {_reason(exc)}",
                        )
                    )
                    self._path_cache.pop(name, None)
                    continue
                self._path_cache[name] = (mono, found)
            for m in ("size_bytes", "count", "age_seconds"):
                self.reasons.pop(f"path.{m}[{name}]", None)
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
        items: list[tuple[str, Any]] = [
            ("cpu.busy_percent", busy),
            (
                "cpu.count",
                self._every_slow("cpu_count", lambda: [("n", self._ps.cpu_count())], RARE_S)[0][1],
            ),
        ]
        if self._config.per_core:
            cores = self._ps.cpu_times(percpu=True)
            prev = self._prev_cores or [None] * len(cores)
            if len(prev) == len(cores):  # a CPU went offline: start over
                items += [
                    (f"cpu.core_busy_percent[{i}]", cpu_busy_percent(p, c))
                    for i, (p, c) in enumerate(zip(prev, cores, strict=True))
                ]
            self._prev_cores = cores
        return items

    def _load(self) -> Iterable[tuple[str, Any]]:
        # On Windows psutil emulates the load average with a background thread started on
        # the first call; its first values are 0.
        one, five, fifteen = self._ps.getloadavg()
        return [("load.1m", one), ("load.5m", five), ("load.15m", fifteen)]

    def _memory(self) -> Iterable[tuple[str, Any]]:
        memory = linux_memory(self._meminfo()) if self._ps is psutil else None
        if memory is None:
            vm = self._ps.virtual_memory()
            memory = (vm.total, vm.available, vm.percent)
        total, available, percent = memory
        return [
            ("memory.total_bytes", total),
            ("memory.available_bytes", available),
            ("memory.used_percent", percent),
        ]

    def _swap(self) -> Iterable[tuple[str, Any]]:
        swap = linux_swap(self._meminfo()) if self._ps is psutil else None
        if swap is None:
            sw = self._ps.swap_memory()
            swap = (sw.total, sw.percent)
        return [("swap.total_bytes", swap[0]), ("swap.used_percent", swap[1])]

    def _meminfo(self) -> dict[bytes, int] | None:
        """``/proc/meminfo`` read once per sample for both memory and swap (psutil reads it
        once for each, plus ``/proc/vmstat`` for swap counters the agent does not report:
        three ``/proc`` files where one will do). ``None`` where there is none."""
        if self._meminfo_cache is None:
            linux = sys.platform.startswith("linux")
            self._meminfo_cache = read_meminfo(f"{psutil.PROCFS_PATH}/meminfo") if linux else {}
        return self._meminfo_cache or None

    def _start_disks(self) -> list[tuple[str, Pending[Any] | Exception]] | Exception:
        """Hand every mount's ``statvfs`` to its worker; :meth:`_disks` collects them.

        Started before the other sources are read, so the workers run meanwhile (on
        another core, when there is one) and all mounts together wait at most one
        ``disk_timeout``. statvfs on a hung (network) mount can block forever: bounded per
        mount, with at most one outstanding call each (see agent/bounded.py).
        """
        try:
            mounts = self._config.disk_mounts
            if mounts is None:
                mounts = self._mount_points()
        except Exception as exc:  # reported by _disks as the disk source failing
            return exc
        timeout = self._config.disk_timeout_s
        started: list[tuple[str, Pending[Any] | Exception]] = []
        for mount in mounts:
            try:
                read = self._disk_caller.start(
                    mount, lambda m=mount: self._ps.disk_usage(m), timeout
                )
            except Exception as exc:
                started.append((mount, exc))
            else:
                started.append((mount, read))
        return started

    def _disks(self) -> Iterable[tuple[str, Any]]:
        started, self._disks_started = self._disks_started, None
        if started is None:
            started = self._start_disks()
        if isinstance(started, Exception):
            raise started
        deadline = self._clock() + self._config.disk_timeout_s
        items: list[tuple[str, Any]] = []
        for mount, read in started:
            source = f"disk {mount}"
            names = [f"disk.{m}[{mount}]" for m in ("used_percent", "free_bytes", "total_bytes")]
            try:
                if isinstance(read, Exception):
                    raise read
                usage = self._disk_caller.wait(read, deadline - self._clock())
            except Exception as exc:
                self._failed(source, exc)
                hung = isinstance(exc, StillRunning)
                reason = f"mount {mount}: " + (str(exc) if hung else _reason(exc))
                self.reasons.update(dict.fromkeys(names, reason))
                continue
            self._recovered(source)
            for name in names:
                self.reasons.pop(name, None)
            items += [
                (names[0], usage.percent),
                (names[1], usage.free),
                (names[2], usage.total),
            ]
        return items

    def _mount_points(self) -> list[str]:
        """The local mounts to read. The mount table changes rarely (a USB disk, a share):
        where the kernel says when it changes (:class:`MountWatch`), it is re-read then
        (and at least every :data:`RARE_S`); elsewhere every ``slow_interval``, rather
        than parsed on every sample."""

        def read() -> list[tuple[str, Any]]:
            return [(m, 0) for m in _local_mounts(self._ps.disk_partitions(all=False))]

        watch = self._mount_watch
        if watch is None:
            return [m for m, _ in self._every_slow("mounts", read)]
        now = self._clock()
        cached = self._slow.get("mounts")
        if watch.changed() or cached is None or now - cached[0] >= RARE_S:
            cached = (now, read(), None)
            self._slow["mounts"] = cached
        return [m for m, _ in cached[1]]

    def _diskio(self) -> Iterable[tuple[str, Any]]:
        now = self._clock()
        cur = {
            name: c
            for name, c in (self._ps.disk_io_counters(perdisk=True) or {}).items()
            if not name.startswith(_SKIP_DISK_PREFIXES)
        }
        prev, self._prev_diskio = self._prev_diskio, (now, cur)
        if prev is None:
            return []
        items: list[tuple[str, Any]] = []
        for name, counters in cur.items():
            rates = counter_rates(
                prev[1].get(name), counters, now - prev[0], ("read_bytes", "write_bytes")
            )
            if rates is not None:
                items += [
                    (f"diskio.read_bytes_per_second[{name}]", rates["read_bytes"]),
                    (f"diskio.write_bytes_per_second[{name}]", rates["write_bytes"]),
                ]
        return items

    def _net(self) -> Iterable[tuple[str, Any]]:
        now = self._clock()
        cur = {
            name: c
            for name, c in (self._ps.net_io_counters(pernic=True) or {}).items()
            if not name.startswith(_SKIP_NIC_PREFIXES)
        }
        prev, self._prev_net = self._prev_net, (now, cur)
        if prev is None:
            return []
        fields = ("bytes_recv", "bytes_sent", "errin", "errout", "dropin", "dropout")
        items: list[tuple[str, Any]] = []
        for name, counters in cur.items():
            r = counter_rates(prev[1].get(name), counters, now - prev[0], fields)
            if r is not None:
                items += [
                    (f"net.recv_bytes_per_second[{name}]", r["bytes_recv"]),
                    (f"net.sent_bytes_per_second[{name}]", r["bytes_sent"]),
                    (f"net.errors_per_second[{name}]", r["errin"] + r["errout"]),
                    (f"net.drops_per_second[{name}]", r["dropin"] + r["dropout"]),
                ]
        return items

    def _every_slow(
        self,
        source: str,
        read: Callable[[], list[tuple[str, Any]]],
        period_s: float | None = None,
    ) -> list[tuple[str, Any]]:
        """``read()`` at most once per ``period_s`` (default ``slow_interval``); the cached
        items in between."""
        now = self._clock()
        cached = self._slow.get(source)
        period = self._config.slow_s if period_s is None else max(period_s, self._config.slow_s)
        if cached is not None and now - cached[0] < period:
            if cached[2] is not None:
                self.reasons[source] = cached[2]
            return cached[1]
        items = read()
        self._slow[source] = (now, items, self.reasons.get(source))
        return items

    def _battery(self) -> Iterable[tuple[str, Any]]:
        return self._every_slow("battery", self._read_battery)

    def _read_battery(self) -> list[tuple[str, Any]]:
        battery = self._ps.sensors_battery()
        if battery is None:
            self.reasons["battery"] = "no battery (a desktop, or not reported by the OS)"
            return []
        self.reasons.pop("battery", None)
        items: list[tuple[str, Any]] = [("battery.percent", battery.percent)]
        if battery.power_plugged is not None:
            items.append(("battery.plugged", 1.0 if battery.power_plugged else 0.0))
        # psutil uses negative sentinels for "unlimited" (plugged) and "unknown".
        if isinstance(battery.secsleft, int | float) and battery.secsleft >= 0:
            items.append(("battery.seconds_left", battery.secsleft))
        return items

    def _sensors(self) -> Iterable[tuple[str, Any]]:
        return self._every_slow("sensors", self._read_sensors)

    def _read_sensors(self) -> list[tuple[str, Any]]:
        items: list[tuple[str, Any]] = []
        temps = getattr(self._ps, "sensors_temperatures", None)
        for chip, readings in ((temps() if temps else None) or {}).items():
            # The hottest reading per chip: one series per chip, not per core.
            current = [r.current for r in readings if r.current is not None]
            if current:
                items.append((f"temperature.celsius[{chip}]", max(current)))
        fans = getattr(self._ps, "sensors_fans", None)
        for chip, readings in ((fans() if fans else None) or {}).items():
            for i, r in enumerate(readings):
                items.append((f"fan.rpm[{chip}:{r.label or i}]", r.current))
        if not items:
            self.reasons["sensors"] = "no temperature or fan sensors reported by the OS"
        return items

    def _process_table(self) -> Iterable[tuple[str, Any]]:
        now = self._clock()
        last = self._last_process_scan
        full = last is None or now - last >= self._config.process_scan_s
        if full or self._config.processes:
            # Named-process checks need a fresh (cheap) refresh every tick.
            self._processes.refresh(now, full=full)
            if full:
                self._last_process_scan = now
        reading = self._processes.reading()
        for key in [k for k in self.reasons if k.startswith("process.")]:
            del self.reasons[key]
        self.reasons.update(reading.reasons)
        return list(reading.values.items())

    def _service_states(self) -> Iterable[tuple[str, Any]]:
        names = self._config.services
        items: list[tuple[str, Any]] = []
        for name, state in self._services(names).items():
            key = f"service.active[{name}]"
            if state.active is None:
                self.reasons[key] = state.detail
            else:
                self.reasons.pop(key, None)
                items.append((key, 1.0 if state.active else 0.0))
        return items

    def _probes(self) -> Iterable[tuple[str, Any]]:
        items: list[tuple[str, Any]] = []
        for spec in self._config.probes:
            result = self._prober.run(spec)
            items += [
                (f"probe.seconds[{spec.name}]", result.seconds),
                (f"probe.up[{spec.name}]", 1.0 if result.up else 0.0),
            ]
            if result.status is not None:
                items.append((f"probe.http_status[{spec.name}]", result.status))
            if result.error:
                log.debug("probe %s: %s", spec.name, result.error)
        return items

    def _uptime(self) -> Iterable[tuple[str, Any]]:
        # Boot time only changes with a reboot (psutil re-reads all of /proc/stat for it).
        ((_, boot),) = self._every_slow(
            "boot", lambda: [("boot", float(self._ps.boot_time()))], RARE_S
        )
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


def read_meminfo(path: str = "/proc/meminfo") -> dict[bytes, int]:
    """``/proc/meminfo`` as ``{b"MemTotal:": bytes, ...}``; empty if it cannot be read."""
    mems: dict[bytes, int] = {}
    try:
        with open(path, "rb") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2:
                    mems[fields[0]] = int(fields[1]) * 1024
    except (OSError, ValueError):
        return {}
    return mems


def linux_memory(mems: dict[bytes, int] | None) -> tuple[int, int, float] | None:
    """(total, available, used percent) from ``/proc/meminfo``, exactly as psutil's
    ``virtual_memory()`` computes them on Linux; ``None`` when ``MemAvailable`` is missing
    or 0 (kernels before 3.14), where psutil estimates it and the caller should ask it."""
    if not mems or not mems.get(b"MemAvailable:") or b"MemTotal:" not in mems:
        return None
    total, avail = mems[b"MemTotal:"], mems[b"MemAvailable:"]
    if avail > total:  # psutil's guard against a bogus reading
        avail = mems.get(b"MemFree:", 0)
    return total, avail, _percent(total - avail, total)


def linux_swap(mems: dict[bytes, int] | None) -> tuple[int, float] | None:
    """(total, used percent) from ``/proc/meminfo`` as psutil's ``swap_memory()`` computes
    them on Linux; ``None`` when the swap lines are missing."""
    if not mems or b"SwapTotal:" not in mems or b"SwapFree:" not in mems:
        return None
    total = mems[b"SwapTotal:"]
    return total, _percent(total - mems[b"SwapFree:"], total)


def _percent(used: float, total: float) -> float:
    """psutil's ``usage_percent(used, total, round_=1)``: 0.0 for a zero total."""
    return round(used / total * 100, 1) if total else 0.0


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


def _reason(exc: BaseException) -> str:
    """A short, human reason for an unknown series."""
    if isinstance(exc, psutil.AccessDenied):
        return "access denied (the agent lacks the privilege to read this)"
    if isinstance(exc, psutil.NoSuchProcess):
        return "the process vanished"
    if isinstance(exc, AttributeError | NotImplementedError):
        return "not available on this platform"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _put(values: dict[str, float], items: Iterable[tuple[str, Any]]) -> None:
    """Add the items that are real finite numbers (the wire schema rejects NaN and inf)."""
    for name, value in items:
        if value is None or isinstance(value, bool):
            continue
        number = float(value)
        if math.isfinite(number):
            values[name] = number
