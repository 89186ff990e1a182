"""Memory and swap, from one ``/proc/meminfo`` read per sample on Linux.

psutil reads ``/proc/meminfo`` once for ``virtual_memory()`` and again for
``swap_memory()``, plus ``/proc/vmstat`` for swap counters the agent does not report:
three ``/proc`` files where one will do. On Linux with the real psutil the agent parses
the file itself with psutil's formulas; elsewhere (or on kernels without
``MemAvailable``) it asks psutil.
"""

from __future__ import annotations

import sys
from typing import Any

import psutil

from vigil.agent.sampling.rates import usage_percent
from vigil.agent.sampling.series import Item


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
    return total, avail, usage_percent(total - avail, total)


def linux_swap(mems: dict[bytes, int] | None) -> tuple[int, float] | None:
    """(total, used percent) from ``/proc/meminfo`` as psutil's ``swap_memory()`` computes
    them on Linux; ``None`` when the swap lines are missing."""
    if not mems or b"SwapTotal:" not in mems or b"SwapFree:" not in mems:
        return None
    total = mems[b"SwapTotal:"]
    return total, usage_percent(total - mems[b"SwapFree:"], total)


class Memory:
    """``memory.*`` and ``swap.*`` series; :meth:`new_sample` before each sample makes
    both share one fresh ``/proc/meminfo`` read."""

    def __init__(self, ps: Any) -> None:
        self._ps = ps
        self._meminfo: dict[bytes, int] | None = None

    def new_sample(self) -> None:
        """Forget the previous sample's ``/proc/meminfo`` (read again when needed)."""
        self._meminfo = None

    def memory(self) -> list[Item]:
        """``memory.total_bytes``, ``memory.available_bytes``, ``memory.used_percent``."""
        memory = linux_memory(self._read_meminfo()) if self._ps is psutil else None
        if memory is None:
            vm = self._ps.virtual_memory()
            memory = (vm.total, vm.available, vm.percent)
        total, available, percent = memory
        return [
            ("memory.total_bytes", total),
            ("memory.available_bytes", available),
            ("memory.used_percent", percent),
        ]

    def swap(self) -> list[Item]:
        """``swap.total_bytes`` and ``swap.used_percent``."""
        swap = linux_swap(self._read_meminfo()) if self._ps is psutil else None
        if swap is None:
            sw = self._ps.swap_memory()
            swap = (sw.total, sw.percent)
        return [("swap.total_bytes", swap[0]), ("swap.used_percent", swap[1])]

    def _read_meminfo(self) -> dict[bytes, int] | None:
        """``/proc/meminfo``, read at most once per sample; ``None`` where there is none."""
        if self._meminfo is None:
            linux = sys.platform.startswith("linux")
            self._meminfo = read_meminfo(f"{psutil.PROCFS_PATH}/meminfo") if linux else {}
        return self._meminfo or None
