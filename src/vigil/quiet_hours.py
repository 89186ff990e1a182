"""Quiet hours: a daily window of local time in which nobody is disturbed.

Shared by the agent (it holds a survey notification until the window ends) and the
collector (it does not hand a survey to an agent whose local time is inside the window).
Pure: local time is passed in as seconds since local midnight, never read from a clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DAY_S = 86400
_WINDOW = re.compile(r"^\s*([01]\d|2[0-3]):([0-5]\d)\s*-\s*([01]\d|2[0-3]):([0-5]\d)\s*$")


@dataclass(frozen=True, slots=True)
class QuietHours:
    """``[start_s, end_s)`` in seconds after local midnight; ``start_s > end_s`` wraps
    past midnight (``22:00-07:00``); ``start_s == end_s`` is an empty window."""

    start_s: int
    end_s: int

    def contains(self, local_s: float) -> bool:
        """Whether ``local_s`` (seconds after local midnight, any value: it is taken
        modulo a day) falls inside the window."""
        t = local_s % DAY_S
        if self.start_s == self.end_s:
            return False
        if self.start_s < self.end_s:
            return self.start_s <= t < self.end_s
        return t >= self.start_s or t < self.end_s

    def __str__(self) -> str:
        return f"{_hhmm(self.start_s)}-{_hhmm(self.end_s)}"


def parse_quiet_hours(value: object) -> QuietHours | None:
    """``"HH:MM-HH:MM"`` (24-hour local time) as :class:`QuietHours`; ``None``, ``""`` or
    ``"off"`` mean no quiet hours. Raises ``ValueError`` with the expected form."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "off")):
        return None
    match = _WINDOW.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            'expected "HH:MM-HH:MM" in 24-hour local time (e.g. "20:00-08:00") or "off"'
        )
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    return QuietHours(h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60)


def local_seconds(epoch_s: float, utc_offset_s: float) -> float:
    """Seconds after local midnight at ``epoch_s`` for a clock ``utc_offset_s`` seconds
    east of UTC (``time.localtime().tm_gmtoff``)."""
    return (epoch_s + utc_offset_s) % DAY_S


def _hhmm(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"
