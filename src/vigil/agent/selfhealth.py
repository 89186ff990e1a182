"""The agent's own health: loop lag, job overruns, outbox fill, delivery, as a check.

Every heartbeat the agent takes a :class:`SelfHealthReading` of itself (from its
:class:`~vigil.agent.timers.Timers`, outbox and shipper) and :func:`assess` turns it
into a check level for the ``agent.self_health`` check, which the agent's ordinary check
machinery evaluates (transitions, flapping, events), so the collector raises and
resolves an incident for it like for any other check: a heartbeat is just another check
result. The figures also travel in the metrics summary (``agent.loop_lag_seconds`` ...,
see :meth:`SelfHealthMonitor.summary_values`) and the heartbeat's ``value`` is the loop
lag, so no wire change is needed.

Levels (thresholds in the ``self_health`` config section, :class:`SelfHealthConfig`):

- ``critical``: the loop lag exceeded ``loop_lag`` at ``loop_lag_heartbeats`` heartbeats
  in a row (something keeps blocking the event loop: checks and pings run late), or the
  outbox holds at least ``outbox_full`` of its byte bound (samples are about to be dropped).
- ``warning``: no batch acknowledged for ``delivery_stale`` while the agent kept trying
  (the heartbeat that says so arrives once one gets through).
- ``ok`` otherwise.

This module is pure (no clock, no I/O): time comes in as parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from vigil.agent.timers import Timers
from vigil.configio import Section

SELF_HEALTH_CHECK = "agent.self_health"
LOOP_LAG_SERIES = "agent.loop_lag_seconds"
OVERRUNS_SERIES = "agent.job_overruns_total"
SKIPPED_SERIES = "agent.job_skipped_total"
DELIVERY_AGE_SERIES = "agent.last_delivery_age_seconds"
DELIVERY_FAILURES_SERIES = "agent.delivery_failures"


@dataclass(frozen=True, slots=True)
class SelfHealthConfig:
    """Thresholds of the ``agent.self_health`` check (see the module docstring).

    ``loop_lag_s``: seconds a timer may run late; ``loop_lag_heartbeats``: consecutive
    heartbeats over it before ``critical``; ``outbox_full``: fraction (0-1] of
    ``outbox.max_bytes``; ``delivery_stale_s``: seconds without an acknowledged batch
    while events wait. ``enabled: false`` sends no ``agent.self_health`` results.
    """

    enabled: bool = True
    loop_lag_s: float = 5.0
    loop_lag_heartbeats: int = 3
    outbox_full: float = 0.9
    delivery_stale_s: float = 6 * 3600.0


def self_health_config(root: Section) -> SelfHealthConfig:
    """The ``self_health`` section of an agent config (all keys optional)."""
    s = root.section("self_health")
    cfg = SelfHealthConfig(
        enabled=s.get("enabled", bool, True),
        loop_lag_s=s.duration("loop_lag", 5.0, minimum=0.01),
        loop_lag_heartbeats=s.get("loop_lag_heartbeats", int, 3, minimum=1, maximum=1000),
        outbox_full=s.get("outbox_full", float, 0.9, minimum=0.01, maximum=1.0),
        delivery_stale_s=s.duration("delivery_stale", 6 * 3600.0, minimum=1.0),
    )
    s.done()
    return cfg


@dataclass(frozen=True, slots=True)
class SelfHealthReading:
    """The agent's figures at one heartbeat.

    ``loop_lag_s``: the largest timer lateness since the previous heartbeat (seconds).
    ``overruns`` / ``skipped``: per job id, runs that outlived their period and grid
    points skipped because the previous run was still going (counters since start).
    ``outbox_events``/``outbox_bytes``: what waits for delivery; ``outbox_max_bytes``
    its bound. ``delivery_age_s``: seconds since the last acknowledged batch (since start
    when none yet). ``delivery_failures``: failed attempts since the last success.
    """

    loop_lag_s: float
    outbox_events: int
    outbox_bytes: int
    outbox_max_bytes: int
    delivery_age_s: float
    delivery_failures: int
    overruns: Mapping[str, int] = field(default_factory=dict)
    skipped: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Assessment:
    """What :func:`assess` concluded: a check level, why, and the lag streak to carry."""

    level: str
    message: str
    lag_streak: int


def assess(reading: SelfHealthReading, cfg: SelfHealthConfig, lag_streak: int) -> Assessment:
    """The ``agent.self_health`` level for ``reading``; ``lag_streak`` is how many heartbeats
    in a row before this one had a loop lag over ``cfg.loop_lag_s`` (returned updated)."""
    streak = lag_streak + 1 if reading.loop_lag_s > cfg.loop_lag_s else 0
    critical: list[str] = []
    warning: list[str] = []
    # One late wake-up is not a fault (a busy moment; on Windows, whose monotonic clock
    # counts a sleep, a resume): only a lag that keeps coming back is.
    if streak >= cfg.loop_lag_heartbeats:
        critical.append(
            f"event loop lag {reading.loop_lag_s:.1f} s over {cfg.loop_lag_s:g} s "
            f"at {streak} heartbeats in a row"
        )
    fill = reading.outbox_bytes / reading.outbox_max_bytes if reading.outbox_max_bytes else 0.0
    if fill >= cfg.outbox_full:
        critical.append(
            f"outbox {fill:.0%} full ({reading.outbox_events} events, "
            f"{reading.outbox_bytes} of {reading.outbox_max_bytes} bytes)"
        )
    if reading.outbox_events and reading.delivery_age_s >= cfg.delivery_stale_s:
        warning.append(
            f"no delivery for {reading.delivery_age_s:.0f} s "
            f"({reading.delivery_failures} failed attempts in a row)"
        )
    if critical:
        return Assessment("critical", "; ".join(critical + warning), streak)
    if warning:
        return Assessment("warning", "; ".join(warning), streak)
    return Assessment("ok", describe(reading), streak)


def describe(reading: SelfHealthReading) -> str:
    """The figures in one short line, for the heartbeat's and an ok check's message:
    ``lag=0.012s outbox=2/812B delivered=120s ago failures=0 overruns=0`` (outbox: events
    and stored bytes). Kept short: it rides on every heartbeat (docs/benchmarks.md)."""
    overruns = sum(reading.overruns.values())
    return (
        f"lag={reading.loop_lag_s:.3f}s outbox={reading.outbox_events}/{reading.outbox_bytes}B"
        f" delivered={reading.delivery_age_s:.0f}s ago failures={reading.delivery_failures}"
        f" overruns={overruns}"
    )


class SelfHealthMonitor:
    """Carries what spans heartbeats: the lag streak and the summary's largest lag."""

    def __init__(self, cfg: SelfHealthConfig) -> None:
        self.cfg = cfg
        self.lag_streak = 0
        self._summary_lag = 0.0
        self.last: SelfHealthReading | None = None

    def observe(self, reading: SelfHealthReading) -> Assessment:
        """Assess ``reading`` (one per heartbeat) and remember it for the summary."""
        result = assess(reading, self.cfg, self.lag_streak)
        self.lag_streak = result.lag_streak
        self._summary_lag = max(self._summary_lag, reading.loop_lag_s)
        self.last = reading
        return result

    def summary_values(self) -> dict[str, float]:
        """Self-health series for the metrics summary (largest lag since the previous
        summary; per-job counters only for jobs that overran or skipped, to keep the
        summary small). Empty before the first heartbeat."""
        reading = self.last
        if reading is None:
            return {}
        values = {
            LOOP_LAG_SERIES: round(self._summary_lag, 6),
            DELIVERY_AGE_SERIES: round(reading.delivery_age_s, 3),
            DELIVERY_FAILURES_SERIES: float(reading.delivery_failures),
        }
        self._summary_lag = 0.0
        for job, count in reading.overruns.items():
            if count:
                values[f"{OVERRUNS_SERIES}[{job}]"] = float(count)
        for job, count in reading.skipped.items():
            if count:
                values[f"{SKIPPED_SERIES}[{job}]"] = float(count)
        return values


def take_reading(
    timers: Timers,
    *,
    outbox_events: int,
    outbox_bytes: int,
    outbox_max_bytes: int,
    last_delivery: float | None,
    delivery_failures: int,
    started: float,
    now: float,
) -> SelfHealthReading:
    """A :class:`SelfHealthReading` from the agent's ``timers`` (their largest lag since
    the previous reading is taken, and so reset) and the given figures; ``last_delivery``,
    ``started`` and ``now`` are monotonic seconds (no delivery yet: the age counts from
    ``started``)."""
    since = last_delivery if last_delivery is not None else started
    return SelfHealthReading(
        loop_lag_s=max(0.0, timers.take_max_lag()),
        outbox_events=outbox_events,
        outbox_bytes=outbox_bytes,
        outbox_max_bytes=outbox_max_bytes,
        delivery_age_s=max(0.0, now - since),
        delivery_failures=delivery_failures,
        overruns={job.id: job.overruns for job in timers.jobs.values()},
        skipped={job.id: job.skipped for job in timers.jobs.values()},
    )
