"""A cached process table: counts, zombies, top N, watched names and presence.

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

Zombies (exited, not yet reaped by their parent) are not running processes: they are
counted in ``process.zombies`` and nowhere else, so a presence check never counts a dead
service's zombie as running, and a zombie's unreadable command line (psutil raises
``ZombieProcess``) never blinds a presence check. Between full scans the status of the
processes a presence check matches is re-read on every refresh (a handful of reads), so
a service that died into a zombie stops counting at once.

Watched names (``SamplerConfig.watched_names``: the names whose ``process.top_*[name]``
series a check reads) are sampled on every refresh whether or not they rank in the top
N, and read 0 when no process of that name runs: the process a fix stopped is gone, which
is the fix working, not a lack of knowledge. Watched processes are measured on every
refresh, not only at full scans: a watched process first seen reads its memory at once
and 0 % CPU (a CPU percent needs two readings; a process that has just started has not
been seen using any, and "unknown" would hold up the verification of a restart), and from
its second reading on its CPU over the time since the previous one (at least
:data:`MIN_CPU_INTERVAL_S`, so a reading taken right after another does not turn the
10 ms granularity of CPU time into noise: it keeps the previous figure). A process that
vanished stops counting at the next refresh rather than the next full scan.

Races are normal: a process that vanishes mid-read is skipped; a field we may not read
(``AccessDenied``, other users' command lines when not root) is remembered as denied, and
a presence count or a watched name's series that might be wrong because of it is reported
as unknown with a reason.
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
_ZOMBIE = psutil.STATUS_ZOMBIE
# The series a watched name gets, and the _Entry field each one sums.
_TOP_SERIES = (("process.top_cpu_percent", "cpu_percent"), ("process.top_rss_bytes", "rss"))
# Shortest interval (seconds) a per-process CPU percent is computed over: CPU time moves in
# 10 ms ticks, so over 0.5 s the figure is within 2 % of a core.
MIN_CPU_INTERVAL_S = 0.5


@dataclass(slots=True)
class _Entry:
    proc: Any
    create_time: float
    name: str | None  # None: access denied
    cmdline: str | None = None
    user: str | None = None
    details_read: bool = False
    cpu_s: float | None = None
    cpu_at: float | None = None  # monotonic time cpu_s was read
    cpu_percent: float | None = None
    rss: int | None = None
    status: str | None = None

    @property
    def zombie(self) -> bool:
        """Exited but not reaped: not a running process."""
        return self.status == _ZOMBIE


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
        self._table = ProcessTable(
            config.processes, ps=ps, top_n=config.top_n, watched=config.watched_names
        )
        self._watch_named = bool(config.processes or config.watched_names)
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

    def __init__(
        self,
        specs: Iterable[ProcessSpec] = (),
        *,
        ps: Any = psutil,
        top_n: int = 5,
        watched: Iterable[str] = (),
    ):
        self.specs = tuple(specs)
        self._watched = tuple(dict.fromkeys(watched))
        self._patterns = {s.name: re.compile(s.cmdline) for s in self.specs if s.cmdline}
        self._need_details = any(s.cmdline or s.user for s in self.specs)
        self._ps = ps
        self._top_n = top_n
        self._entries: dict[int, _Entry] = {}
        self._full_done = False
        self._full_values: dict[str, float] | None = None

    def refresh(self, now: float, *, full: bool) -> None:
        """Update the table at monotonic time ``now`` (seconds); see the module docstring."""
        pids = set(self._ps.pids())
        gone = [p for p in self._entries if p not in pids]
        for pid in gone:
            del self._entries[pid]
        if gone:
            # Top N and zombies are recomputed without the vanished processes: a process
            # a fix stopped leaves them now, not at the next full scan.
            self._full_values = None
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
        else:
            self._refresh_watched(now)

    def reading(self) -> ProcessReading:
        """``process.count``, named counts and (after a full scan) zombies, top N and the
        watched names' series."""
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
            for name in self._watched:
                reasons |= {f"{series}[{name}]": reason for series, _ in _TOP_SERIES}
            return ProcessReading(values, reasons)
        if self._full_values is None:
            # Zombies and top N change with a full scan or a vanished process: computed
            # once per change rather than on every reading.
            entries = list(self._entries.values())
            full = {"process.zombies": float(sum(1 for e in entries if e.zombie))}
            full |= _top(entries, "cpu_percent", "process.top_cpu_percent", self._top_n)
            full |= _top(entries, "rss", "process.top_rss_bytes", self._top_n)
            self._full_values = full
        values |= self._full_values
        for name in self._watched:
            for series, attr in _TOP_SERIES:
                key = f"{series}[{name}]"
                value, reason = self._watched_value(name, attr)
                if value is None:
                    values.pop(key, None)
                    reasons[key] = reason
                else:
                    values[key] = value
        return ProcessReading(values, reasons)

    # ------------------------------------------------------------------ reads

    def _new_entry(self, pid: int) -> _Entry | None:
        try:
            proc = self._ps.Process(pid)
            create_time = proc.create_time()
        except (_NoSuchProcess, _AccessDenied, ProcessLookupError):
            return None
        entry = _Entry(proc, create_time, None)
        with proc.oneshot():
            try:
                entry.name = proc.name()
            except _ZombieProcess:
                entry.status = _ZOMBIE
            except _NoSuchProcess:
                return None
            except _AccessDenied:
                pass
            if entry.status is None and (self.specs or self._watched):
                # Presence and watched names skip zombies from the start; on Linux the
                # status comes from the same small read as the name.
                self._read_status(entry)
        return entry

    def _read_status(self, entry: _Entry) -> None:
        """Re-read ``entry.status``; unreadable leaves it as it was."""
        try:
            entry.status = entry.proc.status()
        except _ZombieProcess:
            entry.status = _ZOMBIE
        except (_NoSuchProcess, _AccessDenied, OSError):
            pass

    def _read_details(self, entry: _Entry) -> None:
        entry.details_read = True
        try:
            entry.cmdline = " ".join(entry.proc.cmdline())
        except _ZombieProcess:
            # Exited: its command line is gone for good. Not running, so never counted.
            entry.cmdline = None
            entry.status = _ZOMBIE
        except (_NoSuchProcess, _AccessDenied, OSError):
            entry.cmdline = None
        try:
            entry.user = entry.proc.username()
        except _ZombieProcess:
            entry.user = None
            entry.status = _ZOMBIE
        except (_NoSuchProcess, _AccessDenied, KeyError, OSError):
            # KeyError: a uid with no passwd entry (containers).
            entry.user = None

    def _full_scan(self, now: float) -> None:
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
            except _ZombieProcess:
                # Some platforms refuse every read of a zombie; it stays listed as one.
                entry.status = _ZOMBIE
                entry.cpu_percent = entry.rss = None
                continue
            except _NoSuchProcess:
                self._entries.pop(pid, None)
                continue
            except (_AccessDenied, OSError):
                continue
            self._update_cpu(entry, float(times.user + times.system), now)
        self._full_done = True
        self._full_values = None

    def _refresh_watched(self, now: float) -> None:
        """Between full scans: measure watched-name processes (CPU, memory, status: a
        restarted application, a runaway's load) and re-read the status of processes a
        presence check matches (one may have died into a zombie)."""
        if not self.specs and not self._watched:
            return
        for entry in self._entries.values():
            if entry.zombie:
                continue
            if entry.name is not None and entry.name in self._watched:
                self._measure_watched(entry, now)
            elif any(self._matches(s, entry) for s in self.specs):
                self._read_status(entry)
            if entry.zombie:
                self._full_values = None  # it left the top N and joined the zombies

    def _measure_watched(self, entry: _Entry, now: float) -> None:
        """One reading of a watched process between full scans: RSS, status and CPU (see
        :meth:`_update_cpu`). The top N keep their full-scan figures."""
        new = entry.cpu_s is None
        try:
            with entry.proc.oneshot():
                times = entry.proc.cpu_times()
                entry.rss = entry.proc.memory_info().rss
                entry.status = entry.proc.status()
        except _ZombieProcess:
            entry.status = _ZOMBIE
            return
        except (_NoSuchProcess, _AccessDenied, OSError):
            return
        self._update_cpu(entry, float(times.user + times.system), now)
        if new:
            self._full_values = None  # a new process with a memory figure: top N may change

    def _update_cpu(self, entry: _Entry, cpu_s: float, now: float) -> None:
        """Take the CPU time ``cpu_s`` read at monotonic ``now`` into ``entry``.

        The percent is over the interval since the entry's previous reading (a full scan
        or a watched refresh), once that is at least :data:`MIN_CPU_INTERVAL_S`; a shorter
        one keeps the previous percent and baseline. The first reading of a watched name
        reads 0 % (see the module docstring); of any other process, nothing yet.
        """
        if entry.cpu_s is None or entry.cpu_at is None:
            entry.cpu_s, entry.cpu_at = cpu_s, now
            if entry.name is not None and entry.name in self._watched:
                entry.cpu_percent = 0.0
            return
        elapsed = now - entry.cpu_at
        if elapsed < MIN_CPU_INTERVAL_S:
            return
        percent = cpu_time_percent(entry.cpu_s, cpu_s, elapsed)
        if percent is not None:
            entry.cpu_percent = percent
        entry.cpu_s, entry.cpu_at = cpu_s, now

    def _watched_value(self, name: str, attr: str) -> tuple[float | None, str]:
        """(value, reason when None) of ``attr`` summed over running processes ``name``."""
        total = 0.0
        found = unnamed = unmeasured = 0
        for entry in self._entries.values():
            if entry.zombie:
                continue
            if entry.name is None:
                unnamed += 1
            elif entry.name == name:
                found += 1
                value = getattr(entry, attr)
                if value is None:
                    unmeasured += 1
                else:
                    total += float(value)
        if unmeasured:
            what = "CPU" if attr == "cpu_percent" else "memory"
            return None, (
                f"no {what} reading yet for {unmeasured} {name} processes "
                "(started since the last process scan, or access denied)"
            )
        if not found and unnamed:
            # Like a presence count: no match is only known when every name was read.
            return None, f"access denied to {unnamed} process names; cannot tell if {name} runs"
        return total, ""

    def _count(self, spec: ProcessSpec) -> tuple[int, int]:
        """(matching running processes, processes we could not judge for lack of access).

        Zombies are neither: they are not running, whatever their name or command line.
        """
        count = denied = 0
        for entry in self._entries.values():
            if entry.zombie:
                continue
            match = self._matches(spec, entry)
            if match is None:
                denied += 1
            elif match:
                count += 1
        return count, denied

    def _matches(self, spec: ProcessSpec, entry: _Entry) -> bool | None:
        """Whether ``entry`` matches every criterion of ``spec``; ``None`` when some
        criterion cannot be judged (access denied) and none rules it out."""
        unreadable = False
        if spec.exe_name is not None:
            want = spec.exe_name.lower()
            if entry.name is None:
                unreadable = True
            elif entry.name.lower() not in (want, f"{want}.exe"):
                return False
        pattern = self._patterns.get(spec.name)
        if pattern is not None:
            if entry.cmdline is None:
                unreadable = True
            elif not pattern.search(entry.cmdline):
                return False
        if spec.user is not None:
            if entry.user is None:
                unreadable = True
            elif not _matches_user(spec.user, entry.user):
                return False
        return None if unreadable else True


def _top(entries: list[_Entry], attr: str, series: str, n: int) -> dict[str, float]:
    """The ``n`` biggest process names by ``attr`` (summed over processes of one name).

    Named by process name rather than pid, so the set of series stays small over days.
    """
    totals: dict[str, float] = {}
    for e in entries:
        value = getattr(e, attr)
        if value is not None and e.name and not e.zombie:
            totals[e.name] = totals.get(e.name, 0.0) + float(value)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return {f"{series}[{name}]": value for name, value in ranked}
