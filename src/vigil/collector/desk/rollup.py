"""The service-quality rollup: what one incident adds to the per-day counts the console's
quality page reads (``incident_rollup``), so that page never scans the incidents.

An incident counts once when it is recorded (``prevented`` or ``raised``, on the day it
opened) and once more when it resolves (its time to restore, in a :func:`restore_bucket`,
and whether it met its SLA; still on the day it opened, so a period's figures are those
of the incidents opened in it). Pure: plain data in and out.
"""

from __future__ import annotations

from dataclasses import dataclass

DAY_S = 86400.0
NOT_RESOLVED = -1  # the bucket of the "recorded" counts


def day_of(ts: float) -> int:
    """The UTC day number (days since 1970-01-01) of Unix time ``ts``."""
    return int(ts // DAY_S)


def restore_bucket(seconds: float) -> int:
    """The bucket of a time to restore: whole minutes below 2 hours (0-119), whole hours
    below 2 days (120-167), whole days beyond (168-)."""
    s = max(0.0, seconds)
    if s < 7200:
        return int(s // 60)
    if s < 172800:
        return 120 + int(s // 3600)
    return 168 + int(s // 86400)


def restore_bucket_bounds(bucket: int) -> tuple[float, float]:
    """Seconds ``[low, high)`` of a :func:`restore_bucket`."""
    if bucket < 120:
        return bucket * 60.0, (bucket + 1) * 60.0
    if bucket < 168:
        return (bucket - 120) * 3600.0, (bucket - 119) * 3600.0
    return (bucket - 168) * 86400.0, (bucket - 167) * 86400.0


@dataclass(frozen=True, slots=True)
class RollupDelta:
    """One addition to ``incident_rollup``: the key (day, service, department, bucket)
    and the counts to add. ``service``/``department`` are "" when unknown."""

    day: int
    service: str
    department: str
    bucket: int
    prevented: int = 0
    raised: int = 0
    with_sla: int = 0
    within_sla: int = 0
    resolved: int = 0


def recorded(
    opened_at: float, service: str | None, department: str | None, state: str
) -> RollupDelta:
    """What recording an incident adds: ``prevented`` for a prevented one, else ``raised``."""
    prevented = state == "prevented"
    return RollupDelta(
        day_of(opened_at), service or "", department or "", NOT_RESOLVED,
        prevented=int(prevented), raised=int(not prevented),
    )  # fmt: skip


def resolved(
    opened_at: float,
    service: str | None,
    department: str | None,
    sla_due: float | None,
    resolved_at: float,
) -> RollupDelta:
    """What resolving an incident at ``resolved_at`` adds: its restore bucket, and
    whether it had an SLA and met it."""
    return RollupDelta(
        day_of(opened_at), service or "", department or "", restore_bucket(resolved_at - opened_at),
        with_sla=int(sla_due is not None),
        within_sla=int(sla_due is not None and resolved_at <= sla_due),
        resolved=1,
    )  # fmt: skip
