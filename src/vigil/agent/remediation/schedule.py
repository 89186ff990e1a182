"""Remediation schedules: ``remediation.schedule.<id>`` in the agent config or a policy.

Forms (``docs/policy.md``, ``docs/configuration.md``):

- ``15m`` or ``{every: 15m, splay: 5m}``: the remediation's detection script runs this
  often (the long-standing form; the remediation needs a detection script), the first
  run a per-host stable offset in ``[0, splay)`` after the job starts (default 0: at
  once), so a fleet that got the schedule at once does not run it in the same second;
- ``{daily: "09:30", splay: 30m}``: once a day at 09:30 local time plus a per-host stable
  offset in ``[0, splay)`` (a fleet does not run it in the same second);
- ``{once: true, splay: 10m}``: once per host, ``splay`` after the agent first starts with
  it (remembered in the state dir, so a restart does not run it again).

A daily or once schedule runs the remediation's detection script when it has one (the fix
follows only when the issue is present), else the fix itself, through the normal gate and
record path. :func:`due` is pure: the agent checks it on its monotonic timers (every
:data:`POLL_S`) against the wall clock, and a laptop that slept through several due times
finds exactly one due instant on wake, so it runs once, not once per missed day.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from vigil.configio import Section, parse_duration

POLL_S = 30.0  # how often the agent looks for a due daily/once schedule
MIN_EVERY_S = 1.0  # the manifest loader's floor for trigger.every
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True, slots=True)
class TimedSchedule:
    """A daily or once schedule. ``at_s``: seconds after local midnight (daily only);
    ``splay_s``: the width of the per-host random offset (seconds)."""

    kind: Literal["daily", "once"]
    at_s: float = 0.0
    splay_s: float = 0.0


class Schedules(NamedTuple):
    """``remediation.schedule`` parsed: ``every`` id -> seconds between detection runs,
    ``timed`` id -> daily/once schedule, ``splay`` id -> the width (seconds) of the
    per-host offset of an ``every`` schedule's first run (only those that have one)."""

    every: dict[str, float]
    timed: dict[str, TimedSchedule]
    splay: dict[str, float]


def parse_schedules(s: Section) -> Schedules:
    """``remediation.schedule`` (see :class:`Schedules`). Errors name the file, the key
    and the value."""
    every: dict[str, float] = {}
    timed: dict[str, TimedSchedule] = {}
    splays: dict[str, float] = {}
    for raw_id, raw in s.data.items():
        rem_id = str(raw_id)
        if not isinstance(raw, dict):
            seconds = s.convert(rem_id, parse_duration)
            if seconds < MIN_EVERY_S:
                raise s.error(rem_id, f"must be at least {MIN_EVERY_S:g}s", raw)
            every[rem_id] = seconds
            continue
        entry = s.section(rem_id)
        kinds = [k for k in ("every", "daily", "once") if entry.has(k)]
        if len(kinds) != 1:
            raise entry.error(
                "every", "give exactly one of every, daily, once", dict(entry.data) or None
            )
        if kinds[0] == "every":
            seconds = entry.duration("every", minimum=MIN_EVERY_S)
            splay = entry.duration("splay", 0.0, minimum=0.0)
            if splay > seconds:
                raise entry.error("splay", "at most the interval (every)", entry.data["splay"])
            entry.done()
            every[rem_id] = seconds
            if splay > 0:
                splays[rem_id] = splay
            continue
        splay = entry.duration("splay", 0.0, minimum=0.0)
        if kinds[0] == "daily":
            at = entry.get("daily", str)
            match = _HHMM.match(at)
            if match is None:
                raise entry.error("daily", "expected a local time HH:MM (24 h)", at)
            if splay > 86400.0:
                raise entry.error("splay", "at most a day for a daily schedule", splay)
            timed[rem_id] = TimedSchedule(
                "daily", int(match[1]) * 3600.0 + int(match[2]) * 60.0, splay
            )
        else:
            if entry.get("once", bool) is not True:
                raise entry.error("once", "only `once: true` means something", False)
            timed[rem_id] = TimedSchedule("once", 0.0, splay)
        entry.done()
    s.done()
    return Schedules(every, timed, splays)


def host_offset(agent_id: str, rem_id: str, splay_s: float) -> float:
    """A stable offset in ``[0, splay_s)`` for this host and remediation (sha256 based,
    so it survives restarts and differs across a fleet)."""
    if splay_s <= 0:
        return 0.0
    digest = hashlib.sha256(f"{agent_id}\0{rem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * splay_s


def latest_instant(sched: TimedSchedule, now: float, offset_s: float, tz: Any = None) -> float:
    """The most recent daily instant (Unix seconds) at or before ``now``: local midnight
    + ``at_s`` + ``offset_s``, today's or yesterday's. ``tz`` (a ``tzinfo``) is for tests;
    ``None`` is the machine's local time zone."""
    local = dt.datetime.fromtimestamp(now, tz) if tz else dt.datetime.fromtimestamp(now)
    for days_back in (0, 1, 2):
        day = local.date() - dt.timedelta(days=days_back)
        midnight = dt.datetime.combine(day, dt.time(), tzinfo=local.tzinfo)
        instant = midnight.timestamp() + sched.at_s + offset_s
        if instant <= now:
            return instant
    return float("-inf")  # unreachable for at_s + offset_s < 2 days


def due(
    sched: TimedSchedule,
    *,
    now: float,
    last_run: float | None,
    offset_s: float,
    started: float,
    tz: Any = None,
) -> bool:
    """Whether ``sched`` is due at wall time ``now`` (Unix seconds).

    Daily: the latest instant (see :func:`latest_instant`) has passed and the last run
    (wall seconds, ``None`` = never) was before it; a week asleep still gives one due
    instant. A last run in the future (the clock was set back) counts as done. Once:
    never run, and ``offset_s`` has passed since ``started`` (when the agent first had
    the schedule).
    """
    if sched.kind == "once":
        return last_run is None and now >= started + offset_s
    instant = latest_instant(sched, now, offset_s, tz)
    return last_run is None or (last_run < instant and last_run <= now)
