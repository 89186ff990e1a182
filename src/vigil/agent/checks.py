"""The check engine: thresholds, for-duration, hysteresis and flapping over plain values.

Pure on purpose (no psutil, asyncio or clock here): the agent loop passes in the sampled
value and ``now`` and keeps the returned :class:`CheckStatus` for the next call, so every
rule below is tested over plain sequences of ``(now, value)``.

Rules of :func:`evaluate`
-------------------------
- The *level* of a value is :func:`classify`: ``critical``, ``warning``, ``ok`` or
  ``unknown`` (no value). A command check passes its level in (``level=``) instead.
- Hysteresis: while the check is warning or critical, ``spec.recovery`` (when set)
  replaces the lowest bad level's threshold, so a value must cross ``recovery`` to be
  ok again. Without it, a value hovering at a threshold toggles on every crossing.
- Getting worse obeys ``spec.for_s``: ``warning`` is reported once the value has been at
  warning-or-worse for ``for_s`` seconds without a break, ``critical`` once it has been
  critical for ``for_s`` seconds. Until then the worse level is *pending*. A value that
  touches critical while warning is pending does not restart the warning's timer.
- Getting better is immediate: critical -> warning, anything -> ``ok``. Moving to
  ``unknown`` (the value is missing) is immediate too, and breaks any running timer.
  ``unknown`` always carries a reason (``reason=``, else "no value"), never a silent ok.
- The first evaluation reports its level at once, except a warning/critical level while
  ``for_s > 0``: that one is pending and the check reports ``unknown`` until the level
  has held. Reporting ``ok`` there would claim health we have not seen, and after an
  agent restart it would resolve a still-open incident at the collector (which neither
  opens nor resolves incidents on ``unknown``).
- Flapping (``spec.flap_changes > 0``): the state the rules above give is the *base*
  state. When it changed ``flap_changes`` times within ``flap_window_s`` seconds the
  check is *flapping*: it reports the worse of its last reported state and the base
  state (so an incident stays open instead of opening and closing every minute), and
  it stops flapping once the changes in the window fall to half the limit or fewer.
  Only changes between *known* states count: ``unknown`` is the absence of knowledge,
  not a state, so ok -> unknown -> ok is no change and ok -> unknown -> critical is one
  (ok -> unknown -> ok -> critical -> unknown -> ok is two, not five). Otherwise a
  sampler that misses a reading now and then would hold a recovered check's incident
  open for the whole window (issue #15, item 4).
- A :class:`Transition` is returned exactly when the reported state or the flapping
  flag changes (and on the first evaluation, with ``previous=None``).
  ``CheckStatus.value`` always updates.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

from vigil.agent.config import CheckSpec
from vigil.wire import CheckState

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
# Only warning and critical are ordered; ok and unknown both rank below them.
_RANK: dict[str, int] = {"unknown": 0, "ok": 0, "warning": 1, "critical": 2}
# Flap history is capped so a check changing every second cannot grow its status.
_MAX_FLAP_HISTORY = 1000


@dataclass(frozen=True, slots=True)
class CheckStatus:
    """What the agent remembers about one check between evaluations.

    ``state`` is the reported state and ``since`` the ``now`` at which it was reported.
    ``value`` is the latest value (``None`` when missing). ``pending`` is a worse level
    that is being seen but has not held for ``spec.for_s`` yet, and ``pending_since`` is
    when that level began holding. ``bad_since`` is when the value last became
    warning-or-worse without a break (``None`` while ok/unknown); it keeps the warning's
    timer running while a critical level is pending. ``base`` is the state before flap
    damping (equal to ``state`` unless flapping), ``changes`` the times ``base`` changed
    within the flap window, ``flapping`` whether damping is on. ``message`` describes the
    latest evaluation (for an unknown state: why). ``known`` is the last base state that
    was not ``unknown`` (``None`` until one was seen): flap changes are counted against it.
    """

    state: CheckState
    since: float
    value: float | None
    pending: CheckState | None = None
    pending_since: float | None = None
    bad_since: float | None = None
    base: CheckState | None = None
    changes: tuple[float, ...] = ()
    flapping: bool = False
    message: str = ""
    known: CheckState | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of the reported state, to be recorded as a ``wire.CheckEvent``.

    ``previous`` is ``None`` on the first evaluation. ``message`` is a sentence for people,
    e.g. ``disk.used_percent[/] = 97.2 > 95 (critical)``. ``flapping`` is true while the
    check is flapping (the state may then equal ``previous``: the flag changed).
    """

    check: str
    previous: CheckState | None
    state: CheckState
    value: float | None
    message: str
    flapping: bool = False


def classify(spec: CheckSpec, value: float | None, *, recovering: bool = False) -> CheckState:
    """The level of ``value`` for ``spec``, ignoring the for-duration.

    ``critical`` when ``value <op> spec.critical``, else ``warning`` when
    ``value <op> spec.warning``, else ``ok``. A missing or NaN value is ``unknown`` (a NaN
    would otherwise compare false against every threshold and read as ``ok``). A level
    whose threshold is ``None`` is never reached. ``recovering`` (the check is currently
    warning or critical) replaces the lowest level's threshold with ``spec.recovery``.
    """
    if value is None or math.isnan(value):
        return "unknown"
    compare = _OPS[spec.op]
    warning, critical = spec.warning, spec.critical
    if recovering and spec.recovery is not None:
        if warning is not None:
            warning = spec.recovery
        else:
            critical = spec.recovery
    if critical is not None and compare(value, critical):
        return "critical"
    if warning is not None and compare(value, warning):
        return "warning"
    return "ok"


def evaluate(
    spec: CheckSpec,
    status: CheckStatus | None,
    value: float | None,
    now: float,
    *,
    level: CheckState | None = None,
    reason: str | None = None,
    text: str | None = None,
) -> tuple[CheckStatus, Transition | None]:
    """Fold one observation at time ``now`` (seconds) into the check's status.

    ``status`` is what the previous call returned, or ``None`` for the first evaluation.
    ``value`` is the sampled value; ``level`` overrides :func:`classify` (command checks,
    whose plugin decides); ``reason`` says why there is no value; ``text`` replaces the
    generated message (a plugin's status line). Returns the new status and a
    :class:`Transition` when the reported state or flapping changed. The rules are in
    this module's docstring. ``now`` should not go backwards; if it does, a pending level
    simply waits longer.
    """
    prev_base = None if status is None else (status.base or status.state)
    if level is None:
        level = classify(spec, value, recovering=prev_base in ("warning", "critical"))
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

    base: CheckState
    if not bad:
        base = level  # ok and unknown are reported at once
    elif prev_base is not None and _RANK[prev_base] >= _RANK[level]:
        base = level  # as bad or better than reported: de-escalation is immediate
    elif due is not None and (prev_base is None or _RANK[due] > _RANK[prev_base]):
        base = due
    else:
        base = prev_base if prev_base is not None else "unknown"

    pending: CheckState | None = level if _RANK[level] > _RANK[base] else None
    pending_since = None
    if pending is not None:
        pending_since = critical_since if pending == "critical" else bad_since

    changes, flapping = _flap(spec, status, base, now)
    previous = status.state if status is not None else None
    state = base
    if flapping and previous is not None and _RANK[previous] > _RANK[base]:
        state = previous  # damped: hold the worse state until the flapping stops

    message = text if text is not None else _message(spec, base, value, pending, reason)
    if flapping:
        message = f"flapping ({len(changes)} changes in {_duration(spec.flap_window_s)}): {message}"
    changed = state != previous or flapping != (status is not None and status.flapping)
    new_status = CheckStatus(
        state=state,
        since=now if state != previous or status is None else status.since,
        value=value,
        pending=pending,
        pending_since=pending_since,
        bad_since=bad_since,
        base=base,
        changes=changes,
        flapping=flapping,
        message=message,
        known=_known(status, base),
    )
    if not changed:
        return new_status, None
    return new_status, Transition(
        check=spec.id,
        previous=previous,
        state=state,
        value=value,
        message=message,
        flapping=flapping,
    )


def _known(status: CheckStatus | None, base: CheckState) -> CheckState | None:
    """The last base state that was not ``unknown``, after this evaluation."""
    if base != "unknown":
        return base
    return None if status is None else status.known


def _flap(
    spec: CheckSpec,
    status: CheckStatus | None,
    base: CheckState,
    now: float,
) -> tuple[tuple[float, ...], bool]:
    """(base-state change times inside the window, flapping now).

    A change is a known base state that differs from the last known one: moving into or
    out of ``unknown`` is not counted, and the first known state is no change either.
    """
    if spec.flap_changes <= 0 or status is None:
        return (), False
    changes = status.changes
    if base != "unknown" and status.known is not None and base != status.known:
        changes = (*changes, now)[-_MAX_FLAP_HISTORY:]
    changes = tuple(t for t in changes if t > now - spec.flap_window_s)
    if status.flapping:
        # Leave at half the limit, not just below it, or a steady rhythm at the limit
        # would toggle the flag itself.
        return changes, len(changes) > spec.flap_changes // 2
    return changes, len(changes) >= spec.flap_changes


def _message(
    spec: CheckSpec,
    state: CheckState,
    value: float | None,
    pending: CheckState | None,
    reason: str | None = None,
) -> str:
    """One sentence describing the reported state, for people reading the timeline."""
    name = spec.metric or spec.id
    if value is None or math.isnan(value):
        if reason:
            return f"{name}: {reason} (unknown)"
        return f"{name} has no value (unknown)"
    shown = f"{name} = {_number(value)}"
    if pending is not None and state == "unknown":
        limit = spec.critical if pending == "critical" else spec.warning
        return (
            f"{shown} {spec.op} {_number(limit)}, {pending} for less than "
            f"{_duration(spec.for_s)} so far (unknown)"
        )
    if state in ("critical", "warning"):
        limit = spec.critical if state == "critical" else spec.warning
        if _RANK[classify(spec, value)] < _RANK[state]:
            return f"{shown}, not yet past recovery {_number(spec.recovery)} ({state})"
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
