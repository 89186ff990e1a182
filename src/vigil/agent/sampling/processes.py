"""A cached process table: counts, zombies, top N, and named-process presence.

A full process scan (CPU times, memory, status of every process) costs milliseconds, so
the sampler does not do one every tick. :class:`ProcessTable` keeps one ``Process``
object per process across ticks, keyed by pid and identified by pid + create time:

- :meth:`ProcessTable.refresh` with ``full=False`` lists pids (one ``listdir`` on Linux),
  forgets vanished ones and reads only name / command line / user of *new* processes.
  That is all a named-process presence check needs, so it can run every tick.
- ``full=True`` additionally reads CPU times, RSS and status of every process, which
  gives zombies and the top N by CPU and by memory; :class:`Processes`, the sampler's
  source, does this every ``sampler.process_scan``. A full scan also re-checks create
  times, so a pid reused between two cheap refreshes is noticed there (until then it
  keeps its old name).

Races are normal: a process that vanishes mid-read is skipped; a field we may not read
(``AccessDenied``, other users' command lines when not root) is remembered as denied, and
a presence count that might be wrong because of it is reported as unknown with a reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psutil

from vigil.agent.config import ProcessSpec, SamplerConfig
from vigil.agent.sampling.rates import cpu_time_percent
from vigil.agent.sampling.series import Item

_NoSuchProcess = psutil.NoSuchProcess
_AccessDenied = psutil.AccessDenied
_ZombieProcess = psutil.ZombieProcess


@dataclass(slots=True)
class _Entry:
    proc: Any
    create_time: float
    name: str | None  # None: access denied
    cmdline: str | None = None
    user: str | None = None
    details_read: bool = False
    cpu_s: float | None = None
    cpu_percent: float | None = None
    rss: int | None = None
    status: str | None = None


@dataclass(frozen=True, slots=True)
class ProcessReading:
    """Series and unknown reasons from the table, for the sampler to merge."""

    values: dict[str, float]
    reasons: dict[str, str]


def _matches_user(want: str, have: str) -> bool:
    # Windows reports DOMAIN\\user; let admins write either form.
    return want.lower() in (have.lower(), have.rsplit("\\", 1)[-1].lower())


class Processes:
    """The process source over a :class:`ProcessTable`: a full scan every
    ``process_scan_s`` (the first at the first read), and a cheap refresh on every other
    read when named processes are watched (their presence checks need it each tick)."""

    def __init__(
        self,
        config: SamplerConfig,
        *,
        ps: Any,
        clock: Callable[[], float],
        reasons: dict[str, str],
    ) -> None:
        self._table = ProcessTable(config.processes, ps=ps, top_n=config.top_n)
        self._watch_named = bool(config.processes)
        self._scan_s = config.process_scan_s
        self._clock = clock
        self._reasons = reasons
        self._last_full: float | None = None

    def full_scan_due(self, now: float) -> bool:
        """Whether a read at monotonic time ``now`` would do a full scan."""
        return self._last_full is None or now - self._last_full >= self._scan_s

    def read(self) -> list[Item]:
        """The table's series; its reasons replace the previous ``process.*`` ones."""
        now = self._clock()
        full = self.full_scan_due(now)
        if full or self._watch_named:
            self._table.refresh(now, full=full)
            if full:
                self._last_full = now
        reading = self._table.reading()
        for key in [k for k in self._reasons if k.startswith("process.")]:
            del self._reasons[key]
        self._reasons.update(reading.reasons)
        return list(reading.values.items())


class ProcessTable:
    """See the module docstring. ``ps`` is psutil or a look-alike (``pids``, ``Process``).

    Not thread-safe: call from one thread (the sampler's).
    """

    def __init__(self, specs: Iterable[ProcessSpec] = (), *, ps: Any = psutil, top_n: int = 5):
        self.specs = tuple(specs)
        self._patterns = {s.name: re.compile(s.cmdline) for s in self.specs if s.cmdline}
        self._need_details = any(s.cmdline or s.user for s in self.specs)
        self._ps = ps
        self._top_n = top_n
        self._entries: dict[int, _Entry] = {}
        self._last_full: float | None = None
        self._full_done = False
        self._full_values: dict[str, float] | None = None

    def refresh(self, now: float, *, full: bool) -> None:
        """Update the table at monotonic time ``now`` (seconds); see the module docstring."""
        pids = set(self._ps.pids())
        for pid in [p for p in self._entries if p not in pids]:
            del self._entries[pid]
        for pid in pids:
            if pid not in self._entries:
                entry = self._new_entry(pid)
                if entry is not None:
                    self._entries[pid] = entry
        if self._need_details:
            for entry in self._entries.values():
                if not entry.details_read:
                    self._read_details(entry)
        if full:
            self._full_scan(now)

    def reading(self) -> ProcessReading:
        """``process.count``, named counts and (after a full scan) zombies and top N."""
        values: dict[str, float] = {"process.count": float(len(self._entries))}
        reasons: dict[str, str] = {}
        for spec in self.specs:
            key = f"process.count[{spec.name}]"
            count, denied = self._count(spec)
            if count == 0 and denied:
                reasons[key] = f"access denied to {denied} processes; cannot tell if it runs"
            else:
                values[key] = float(count)
        if not self._full_done:
            reason = "waiting for the first full process scan"
            reasons |= {"process.zombies": reason, "process.top_cpu_percent": reason}
            return ProcessReading(values, reasons)
        if self._full_values is None:
            # Zombies and top N only change with a full scan: computed once per scan.
            entries = list(self._entries.values())
            full = {"process.zombies": float(sum(1 for e in entries if e.status == "zombie"))}
            full |= _top(entries, "cpu_percent", "process.top_cpu_percent", self._top_n)
            full |= _top(entries, "rss", "process.top_rss_bytes", self._top_n)
            self._full_values = full
        return ProcessReading(values | self._full_values, reasons)

    # ------------------------------------------------------------------ reads

    def _new_entry(self, pid: int) -> _Entry | None:
        try:
            proc = self._ps.Process(pid)
            create_time = proc.create_time()
        except (_NoSuchProcess, _AccessDenied, ProcessLookupError):
            return None
        try:
            name: str | None = proc.name()
        except _NoSuchProcess:
            return None
        except _AccessDenied:
            name = None
        return _Entry(proc, create_time, name)

    def _read_details(self, entry: _Entry) -> None:
        entry.details_read = True
        try:
            entry.cmdline = " ".join(entry.proc.cmdline())
        except (_NoSuchProcess, _AccessDenied, _ZombieProcess, OSError):
            entry.cmdline = None
        try:
            entry.user = entry.proc.username()
        except (_NoSuchProcess, _AccessDenied, KeyError, OSError):
            # KeyError: a uid with no passwd entry (containers).
            entry.user = None

    def _full_scan(self, now: float) -> None:
        elapsed = None if self._last_full is None else now - self._last_full
        self._last_full = now
        for pid, entry in list(self._entries.items()):
            try:
                with entry.proc.oneshot():
                    # psutil's is_running() compares the create time it cached with a
                    # fresh read: False means the pid now belongs to a different process.
                    if not entry.proc.is_running():
                        del self._entries[pid]
                        fresh = self._new_entry(pid)
                        if fresh is not None:
                            self._entries[pid] = entry = fresh
                            if self._need_details:
                                self._read_details(fresh)
                        continue
                    times = entry.proc.cpu_times()
                    entry.rss = entry.proc.memory_info().rss
                    entry.status = entry.proc.status()
            except _NoSuchProcess:
                self._entries.pop(pid, None)
                continue
            except (_AccessDenied, OSError):
                continue
            cpu_s = float(times.user + times.system)
            percent = cpu_time_percent(entry.cpu_s, cpu_s, elapsed)
            if percent is not None:
                entry.cpu_percent = percent
            entry.cpu_s = cpu_s
        self._full_done = True
        self._full_values = None

    def _count(self, spec: ProcessSpec) -> tuple[int, int]:
        """(matching processes, processes we could not judge for lack of access)."""
        count = denied = 0
        pattern = self._patterns.get(spec.name)
        want_name = spec.exe_name.lower() if spec.exe_name else None
        for entry in self._entries.values():
            unreadable = False
            if want_name is not None:
                if entry.name is None:
                    unreadable = True
                elif entry.name.lower() not in (want_name, f"{want_name}.exe"):
                    continue
            if pattern is not None:
                if entry.cmdline is None:
                    unreadable = True
                elif not pattern.search(entry.cmdline):
                    continue
            if spec.user is not None:
                if entry.user is None:
                    unreadable = True
                elif not _matches_user(spec.user, entry.user):
                    continue
            if unreadable:
                denied += 1
            else:
                count += 1
        return count, denied


def _top(entries: list[_Entry], attr: str, series: str, n: int) -> dict[str, float]:
    """The ``n`` biggest process names by ``attr`` (summed over processes of one name).

    Named by process name rather than pid, so the set of series stays small over days.
    """
    totals: dict[str, float] = {}
    for e in entries:
        value = getattr(e, attr)
        if value is not None and e.name:
            totals[e.name] = totals.get(e.name, 0.0) + float(value)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return {f"{series}[{name}]": value for name, value in ranked}
