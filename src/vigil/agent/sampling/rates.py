"""Rates from two snapshots, computed here rather than by psutil: pure functions.

Each function takes the previous and the current reading (and, for per-second rates, the
seconds between them) and returns the rate, or ``None`` where the rate is undefined: no
previous snapshot, no time elapsed, nothing to divide by. The agent keeps the previous
snapshot itself instead of relying on ``psutil.cpu_percent(None)``, whose first call is a
meaningless 0.0 and whose baseline is kept per thread. Modelled on psutil's
``_cpu_times_deltas``/``_cpu_busy_time``: negative deltas are clamped (or, for counters,
refused) and zero denominators guarded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


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


def cpu_time_percent(prev_s: float | None, cur_s: float, elapsed_s: float | None) -> float | None:
    """Percent of one CPU a process used: CPU seconds consumed per wall second, times 100.

    ``prev_s`` and ``cur_s`` are the process's CPU time (user + system, seconds) at two
    scans ``elapsed_s`` seconds apart. Can exceed 100 for a multi-threaded process (as
    ``top`` shows it). A CPU time that went backwards counts as 0; ``None`` when there is
    no previous reading or no time elapsed.
    """
    if prev_s is None or elapsed_s is None or elapsed_s <= 0:
        return None
    return max(0.0, cur_s - prev_s) / elapsed_s * 100.0


def usage_percent(used: float, total: float) -> float:
    """psutil's ``usage_percent(used, total, round_=1)``: 0.0 for a zero total."""
    return round(used / total * 100, 1) if total else 0.0


class PerNameRates:
    """Per-second rates of per-name counters (one snapshot per disk or NIC) between
    successive :meth:`update` calls; keeps only the previous snapshot.

    The first call returns nothing (no baseline yet); a name whose counters went back, or
    that is new, is left out of that call (see :func:`counter_rates`).
    """

    def __init__(self, fields: tuple[str, ...]) -> None:
        self._fields = fields
        self._prev: tuple[float, dict[str, Any]] | None = None

    def update(self, now: float, cur: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
        """``(name, {field: rate})`` for each name with a rate since the previous call."""
        prev, self._prev = self._prev, (now, cur)
        if prev is None:
            return []
        then, before = prev
        out = []
        for name, counters in cur.items():
            rates = counter_rates(before.get(name), counters, now - then, self._fields)
            if rates is not None:
                out.append((name, rates))
        return out
