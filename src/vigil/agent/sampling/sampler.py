"""The sampler: one cheap psutil read of the workstation's health as flat series.

:meth:`Sampler.sample` returns ``{series: value}`` in base units (bytes, seconds, percent
0-100). Series names are ``source.metric`` with an optional instance in brackets, e.g.
``cpu.busy_percent`` or ``disk.used_percent[/home]`` (see ``vigil/wire.py``
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
``probe.up[<name>]``, ``probe.http_status[<name>]``, ``probe.answer_ok[<name>]``,
``clock.offset_s``, ``clock.offset_signed_s``, ``print.queue_jobs``,
``print.oldest_job_age_s``, ``print.queues_disabled`` (and per ``[<queue>]``),
``uptime_seconds``,
``boot_time_seconds``, ``path.{size_bytes,count,age_seconds}[<path>]``,
``agent.cpu_seconds_total``, ``agent.rss_bytes`` and ``agent.sample_duration_seconds``.
Rates (``*_per_second``) start from the second sample. ``process.top_*[<name>]`` covers
the top N names plus every name a check reads (``SamplerConfig.watched_names``), which
reads 0 when no such process runs; zombies never count as running processes.

Why a series is missing is kept in :meth:`Sampler.reason_for` (access denied, a mount
that timed out, no battery, a vanished process), so a check on it reads ``unknown``
with that reason instead of a silent ok.

Each source lives in a module of its own in this package (``cpu``, ``memory``,
``disks``, ``network``, ``sensors``, ``processes``, ``services``, ``probes``, ``uptime``,
``agent_process``, ``paths``, ``clock_offset``, ``printing``), with the rate maths pure
in ``rates``; this facade runs them, keeps the reasons and serialises callers.

Cost: without configured paths, processes, services or probes one sample is a handful of
small ``/proc`` reads and one bounded ``statvfs`` per mount; sensors and battery are read
every ``slow_interval``, the full process table every ``process_scan``. Path walks cost
in proportion to the entries walked, bounded by :data:`MAX_PATH_ENTRIES`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from vigil.agent import svc
from vigil.agent.config import SamplerConfig
from vigil.agent.sampling.agent_process import AgentProcess
from vigil.agent.sampling.clock_offset import ClockOffset
from vigil.agent.sampling.cpu import Cpu, read_load
from vigil.agent.sampling.disks import DiskIO, DiskUsage
from vigil.agent.sampling.memory import Memory
from vigil.agent.sampling.network import Network
from vigil.agent.sampling.paths import Paths
from vigil.agent.sampling.printing import PrintQueues
from vigil.agent.sampling.probes import Prober, Probes
from vigil.agent.sampling.processes import Processes
from vigil.agent.sampling.sensors import Battery, Sensors
from vigil.agent.sampling.series import FailureLog, Item, describe, put, source_of
from vigil.agent.sampling.services import Services
from vigil.agent.sampling.slow import SlowReads
from vigil.agent.sampling.uptime import Uptime

_REFRESHABLE = frozenset({"clock", "print"})  # sources cached per their own interval


class Sampler:
    """Reads the series listed in the module docstring.

    ``ps`` is the psutil module or a look-alike object with the functions used
    (``cpu_times``, ``cpu_count``, ``getloadavg``, ``virtual_memory``, ``swap_memory``,
    ``disk_partitions``, ``disk_usage``, ``boot_time``, ``Process``); a missing function
    just omits its series. ``clock`` is monotonic (times the sample itself);
    ``wall_clock`` gives epoch seconds for uptime and file ages.

    ``prober`` runs the probes and ``services`` is :func:`agent.svc.service_states` (both
    replaceable in tests); ``clock_seams`` and ``print_seams`` are keyword arguments
    for :class:`ClockOffset` and :class:`PrintQueues` (``which``, ``run``, ``caller``).
    Keeps previous snapshots (CPU, NICs, disks, the process table)
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
        clock_seams: dict[str, Any] | None = None,
        print_seams: dict[str, Any] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self.reasons: dict[str, str] = {}
        """Why a series or a source has no value: ``{series or source: reason}``."""
        # Re-entrant: sample() calls sample_paths(), which a remediation may also call.
        self._lock = threading.RLock()
        self._failures = FailureLog()
        reasons = self.reasons
        self._slow = SlowReads(clock, reasons, config.slow_s)
        self._memory = Memory(ps)
        self._disks = DiskUsage(
            config,
            ps=ps,
            clock=clock,
            slow=self._slow,
            failures=self._failures,
            reasons=reasons,
        )
        self._processes = Processes(config, ps=ps, clock=clock, reasons=reasons)
        self._paths = Paths(
            config.paths,
            clock=clock,
            wall_clock=wall_clock,
            failures=self._failures,
            reasons=reasons,
        )
        self._clock_offset = ClockOffset(
            config.clock,
            slow=self._slow,
            reasons=reasons,
            wall_clock=wall_clock,
            **(clock_seams or {}),
        )
        self._print = PrintQueues(
            config.printing,
            slow=self._slow,
            reasons=reasons,
            wall_clock=wall_clock,
            **(print_seams or {}),
        )
        # In the order they are read; each reader returns its source's items.
        self._readers: tuple[tuple[str, Callable[[], Iterable[Item]]], ...] = (
            ("cpu", Cpu(ps, self._slow, per_core=config.per_core).read),
            ("load", lambda: read_load(ps)),
            ("memory", self._memory.memory),
            ("swap", self._memory.swap),
            ("disk", self._disks.read),
            ("diskio", DiskIO(ps=ps, clock=clock).read),
            ("net", Network(ps=ps, clock=clock).read),
            ("battery", Battery(ps=ps, slow=self._slow, reasons=reasons).read),
            ("sensors", Sensors(ps=ps, slow=self._slow, reasons=reasons).read),
            ("processes", self._processes.read),
            (
                "services",
                Services(
                    config.services,
                    states=services,
                    reasons=reasons,
                    fallbacks=config.service_fallbacks,
                ).read,
            ),
            ("probes", Probes(config.probes, prober or Prober()).read),
            ("clock", self._clock_offset.read),
            ("print", self._print.read),
            ("uptime", Uptime(ps=ps, wall_clock=wall_clock, slow=self._slow).read),
            ("agent", AgentProcess(ps=ps, failures=self._failures).read),
        )

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
        self._memory.new_sample()  # read /proc/meminfo again in this sample, if needed
        wanted = None if sources is None else set(sources)
        if wanted is None or "disk" in wanted:
            self._disks.start()
        values: dict[str, float] = {}
        for source, read in self._readers:
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
                self._failures.failed(source, exc)
                self.reasons[source] = describe(exc)
                continue
            self._failures.recovered(source)
            put(values, items)
        if wanted is None or "paths" in wanted:
            values.update(self.sample_paths(fresh=False))
        values["agent.sample_duration_seconds"] = max(0.0, self._clock() - started)
        return values

    def blocking(self, sources: Iterable[str] | None = None) -> bool:
        """Whether :meth:`sample` of ``sources`` (``None``: all) may take long *now*, so a
        caller with an event loop should run it on a worker thread rather than inline.

        True when it would run services or probes (subprocesses, network timeouts), or
        when a full process scan, a path walk, a battery or sensor read, a clock-offset
        query or a print-queue read is due. Every
        other source is a few small ``/proc`` reads or syscalls; disk usage waits at most
        ``disk_timeout`` in all (once: a hung mount is then refused at once until its
        read returns, see ``sampling/bounded.py``).
        """
        wanted = None if sources is None else set(sources)
        config = self._config
        now = self._clock()

        def want(source: str) -> bool:
            return wanted is None or source in wanted

        if (want("services") and config.services) or (want("probes") and config.probes):
            return True
        if want("processes") and self._processes.full_scan_due(now):
            return True
        if want("paths") and self._paths.walk_due(now):
            return True
        if (want("clock") and self._clock_offset.due(now)) or (
            want("print") and self._print.due(now)
        ):
            return True
        return any(want(slow) and self._slow.due(slow, now) for slow in ("battery", "sensors"))

    def refresh(self, sources: Iterable[str]) -> None:
        """Make the next :meth:`sample` read ``sources`` anew even where a read is cached
        for an interval (the clock offset, the print queues): a verification after a fix
        must see the state now, not the reading that triggered the fix."""
        with self._lock:
            for source in set(sources) & _REFRESHABLE:
                self._slow.forget(source)

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

        An unreadable path, and a missing one unless its spec says ``missing: empty``
        (then size 0, count 0 and no age), gives no series and a reason.
        ``path.age_seconds`` is the time since the newest regular file's mtime (clamped at
        0 for files dated in the future). ``fresh=False`` (the regular sample) reuses a
        walk younger than the path's ``interval``; a verification always walks again.
        """
        with self._lock:
            return self._paths.read(fresh=fresh)
