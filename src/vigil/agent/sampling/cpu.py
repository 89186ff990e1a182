"""CPU sources: busy percent (whole machine and per core), CPU count, load average."""

from __future__ import annotations

from typing import Any

from vigil.agent.sampling.rates import cpu_busy_percent
from vigil.agent.sampling.series import Item
from vigil.agent.sampling.slow import RARE_S, SlowReads


class Cpu:
    """``cpu.busy_percent`` (from the second read on), ``cpu.count`` and, with
    ``per_core``, ``cpu.core_busy_percent[<n>]``. Keeps the previous ``cpu_times()``
    snapshots; the busy percent is computed from the two by :func:`cpu_busy_percent`."""

    def __init__(self, ps: Any, slow: SlowReads, *, per_core: bool) -> None:
        self._ps = ps
        self._slow = slow
        self._per_core = per_core
        self._prev: Any = None
        self._prev_cores: Any = None

    def read(self) -> list[Item]:
        """One reading; see the class docstring."""
        cur = self._ps.cpu_times()
        busy = cpu_busy_percent(self._prev, cur)
        self._prev = cur
        items: list[Item] = [
            ("cpu.busy_percent", busy),
            (
                "cpu.count",
                self._slow.every("cpu_count", lambda: [("n", self._ps.cpu_count())], RARE_S)[0][1],
            ),
        ]
        if self._per_core:
            cores = self._ps.cpu_times(percpu=True)
            prev = self._prev_cores or [None] * len(cores)
            if len(prev) == len(cores):  # a CPU went offline: start over
                items += [
                    (f"cpu.core_busy_percent[{i}]", cpu_busy_percent(p, c))
                    for i, (p, c) in enumerate(zip(prev, cores, strict=True))
                ]
            self._prev_cores = cores
        return items


def read_load(ps: Any) -> list[Item]:
    """``load.1m``, ``load.5m`` and ``load.15m`` from ``ps.getloadavg()``."""
    # On Windows psutil emulates the load average with a background thread started on
    # the first call; its first values are 0.
    one, five, fifteen = ps.getloadavg()
    return [("load.1m", one), ("load.5m", five), ("load.15m", fifteen)]
