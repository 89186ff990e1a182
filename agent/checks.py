"""The check engine: thresholds and for-duration over plain values, with time as a parameter.

Pure on purpose (no psutil, asyncio or clock here): the agent loop passes in the sampled
value and ``now`` and keeps the returned :class:`CheckStatus` for the next call, so every
rule below is tested over plain sequences of ``(now, value)``.

Rules of :func:`evaluate`
-------------------------
- The *level* of a value is :func:`classify`: ``critical``, ``warning``, ``ok`` or
  ``unknown`` (no value).
- Getting worse obeys ``spec.for_s``: ``warning`` is reported once the value has been at
  warning-or-worse for ``for_s`` seconds without a break, ``critical`` once it has been
  critical for ``for_s`` seconds. Until then the worse level is *pending*. A value that
  touches critical while warning is pending does not restart the warning's timer.
- Getting better is immediate: critical -> warning, anything -> ``ok``. Moving to
  ``unknown`` (the value is missing) is immediate too, and breaks any running timer.
- The first evaluation reports its level at once, except a warning/critical level while
  ``for_s > 0``: that one is pending and the check reports ``unknown`` until the level
  has held. Reporting ``ok`` there would claim health we have not seen, and after an
  agent restart it would resolve a still-open incident at the collector (which neither
  opens nor resolves incidents on ``unknown``).
- A :class:`Transition` is returned exactly when the reported state changes (and on the
  first evaluation, with ``previous=None``). ``CheckStatus.value`` always updates.

There is no hysteresis or flap damping yet: a value oscillating around a threshold with
``for_s == 0`` produces a transition on every crossing.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from agent.config import CheckSpec
from agent.wire import CheckState

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
# Only warning and critical are ordered; ok and unknown both rank below them.
_RANK: dict[str, int] = {"unknown": 0, "ok": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True, slots=True)
class CheckStatus:
    """What the agent remembers about one check between evaluations.

    ``state`` is the reported state and ``since`` the ``now`` at which it was reported.
    ``value`` is the latest value (``None`` when missing). ``pending`` is a worse level
    that is being seen but has not held for ``spec.for_s`` yet, and ``pending_since`` is
    when that level began holding. ``bad_since`` is when the value last became
    warning-or-worse without a break (``None`` while ok/unknown); it keeps the warning's
    timer running while a critical level is pending.
    """

    state: CheckState
    since: float
    value: float | None
    pending: CheckState | None = None
    pending_since: float | None = None
    bad_since: float | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of the reported state, to be recorded as a ``wire.CheckEvent``.

    ``previous`` is ``None`` on the first evaluation. ``message`` is a sentence for people,
    e.g. ``disk.used_percent[/] = 97.2 > 95 (critical)``.
    """

    check: str
    previous: CheckState | None
    state: CheckState
    value: float | None
    message: str


def classify(spec: CheckSpec, value: float | None) -> CheckState:
    """The level of ``value`` for ``spec``, ignoring the for-duration.

    ``critical`` when ``value <op> spec.critical``, else ``warning`` when
    ``value <op> spec.warning``, else ``ok``. A missing or NaN value is ``unknown`` (a NaN
    would otherwise compare false against every threshold and read as ``ok``). A level
    whose threshold is ``None`` is never reached.
    """
    if value is None or math.isnan(value):
        return "unknown"
    compare = _OPS[spec.op]
    if spec.critical is not None and compare(value, spec.critical):
        return "critical"
    if spec.warning is not None and compare(value, spec.warning):
        return "warning"
    return "ok"


def evaluate(
    spec: CheckSpec, status: CheckStatus | None, value: float | None, now: float
) -> tuple[CheckStatus, Transition | None]:
    """Fold one sampled ``value`` at time ``now`` (seconds) into the check's status.

    ``status`` is what the previous call returned, or ``None`` for the first evaluation.
    Returns the new status and a :class:`Transition` when the reported state changed. The
    rules are in this module's docstring. ``now`` should not go backwards; if it does, a
    pending level simply waits longer.
    """
    level = classify(spec, value)
    bad = _RANK[level] > 0

    # When did the current level (and warning-or-worse) begin holding without a break?
    bad_since: float | None = None
    critical_since: float | None = None
    if bad:
        bad_since = now if status is None or status.bad_since is None else status.bad_since
        if level == "critical":
            critical_since = now
            if status is not None and status.pending == "critical":
                # A critical level that was already pending keeps its start time.
                critical_since = status.pending_since

    def held(start: float | None) -> bool:
        return start is not None and (spec.for_s <= 0 or start + spec.for_s <= now)

    # The worst level that has held long enough to be reported (None: nothing bad held).
    due: CheckState | None = None
    if level == "critical" and held(critical_since):
        due = "critical"
    elif bad and held(bad_since):
        due = "warning"

    previous = status.state if status is not None else None
    state: CheckState
    if not bad:
        state = level  # ok and unknown are reported at once
    elif previous is not None and _RANK[previous] >= _RANK[level]:
        state = level  # as bad or better than reported: de-escalation is immediate
    elif due is not None and (previous is None or _RANK[due] > _RANK[previous]):
        state = due
    else:
        state = previous if previous is not None else "unknown"

    pending: CheckState | None = level if _RANK[level] > _RANK[state] else None
    pending_since = None
    if pending is not None:
        pending_since = critical_since if pending == "critical" else bad_since

    changed = state != previous
    new_status = CheckStatus(
        state=state,
        since=now if changed or status is None else status.since,
        value=value,
        pending=pending,
        pending_since=pending_since,
        bad_since=bad_since,
    )
    if not changed:
        return new_status, None
    return new_status, Transition(
        check=spec.id,
        previous=previous,
        state=state,
        value=value,
        message=_message(spec, state, value, pending),
    )


def _message(
    spec: CheckSpec, state: CheckState, value: float | None, pending: CheckState | None
) -> str:
    """One sentence describing the reported state, for people reading the timeline."""
    if value is None or math.isnan(value):
        return f"{spec.metric} has no value (unknown)"
    shown = f"{spec.metric} = {_number(value)}"
    if pending is not None and state == "unknown":
        limit = spec.critical if pending == "critical" else spec.warning
        return (
            f"{shown} {spec.op} {_number(limit)}, {pending} for less than "
            f"{_duration(spec.for_s)} so far (unknown)"
        )
    if state in ("critical", "warning"):
        limit = spec.critical if state == "critical" else spec.warning
        return f"{shown} {spec.op} {_number(limit)} ({state})"
    return f"{shown} ({state})"


def _number(value: float | None) -> str:
    """Short human form: ``97.2``, ``95``, ``1073741824``, ``0.00123``."""
    if value is None:
        return "none"
    if math.isfinite(value) and value == int(value) and abs(value) < 1e18:
        return str(int(value))
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("0", "-0") else f"{value:.3g}"


def _duration(seconds: float) -> str:
    """``120`` -> ``2m``, ``7200`` -> ``2h``, ``45`` -> ``45s``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{_number(seconds)}s"
