"""Uptime source: the boot time and the seconds since."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vigil.agent.sampling.series import Item
from vigil.agent.sampling.slow import RARE_S, SlowReads


class Uptime:
    """``boot_time_seconds`` (epoch seconds) and ``uptime_seconds`` (on ``wall_clock``)."""

    def __init__(self, *, ps: Any, wall_clock: Callable[[], float], slow: SlowReads) -> None:
        self._ps = ps
        self._wall_clock = wall_clock
        self._slow = slow

    def read(self) -> list[Item]:
        """One reading; the boot time is re-read only every ``RARE_S``."""
        # Boot time only changes with a reboot (psutil re-reads all of /proc/stat for it).
        ((_, boot),) = self._slow.every(
            "boot", lambda: [("boot", float(self._ps.boot_time()))], RARE_S
        )
        return [
            ("boot_time_seconds", boot),
            ("uptime_seconds", max(0.0, self._wall_clock() - boot)),
        ]
