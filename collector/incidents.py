"""The incident engine: a pure state machine per (host, check), with time as a parameter.

The store loads a :class:`KeyState` for the key an event belongs to, calls
:func:`on_check`, :func:`on_remediation` or :func:`on_tick`, saves the returned state and
carries out the returned actions (:class:`OpenIncident`, :class:`ResolveIncident`,
:class:`RecordPrevented`, :class:`AddTimeline`). Nothing here touches a clock, a database
or the network, so every rule below is tested over plain sequences of events.

Rules
-----
Checks (:func:`on_check`):

- ``critical`` with ``event.remediation`` set: the agent is fixing it, so no incident yet;
  the key remembers ``awaiting`` (the remediation id) and ``awaiting_since`` (``now``). A
  repeated promise of the same remediation keeps the first ``awaiting_since``, so resent
  results cannot postpone the deadline forever. If an incident is already open, the
  promise is noted on its timeline instead.
- ``critical`` without a remediation: :class:`OpenIncident` unless one is open already
  (then a timeline note when the state changed).
- ``ok``: :class:`ResolveIncident` ("check recovered") if one is open; ``awaiting`` is
  cleared either way.
- ``warning`` / ``unknown``: never open or resolve; a state change is noted on an open
  incident's timeline. ``awaiting`` is kept: the promised result may still arrive.
- The heartbeat check (:data:`agent.wire.HEARTBEAT_CHECK`) never produces actions here:
  liveness is judged from the host's last-seen time and TTL, which the store keeps.

Remediation results (:func:`on_remediation`), for the key ``(host, event.check)``:

- ``fixed``: if an incident is open, :class:`AddTimeline` ("fixed by X"); otherwise, if the
  key was awaiting this remediation or the check is ``critical``, :class:`RecordPrevented`
  (a prevented incident: counted, never raised). A ``fixed`` run for a key that was
  neither awaited nor critical (a proactive fix of a warning) produces no action.
- any other outcome (``not_fixed``, ``error``, ``timeout``, ``skipped``, ``dry_run``):
  :class:`AddTimeline` if an incident is open, else :class:`OpenIncident` naming the
  remediation and its outcome when the check is still ``critical``.
- A result clears ``awaiting`` only when it is for the awaited remediation: a promise is
  kept by its own result, not by another script's.

Ticks (:func:`on_tick`): a key ``awaiting`` for longer than ``remediation_wait_s`` (strictly)
stops waiting; if the check is still ``critical`` it gets :class:`OpenIncident` ("remediation
X promised but no result within N s"), or a timeline note if an incident is already open.

Incident ids: the engine cannot know the id of an incident it asks to open. After carrying
out :class:`OpenIncident` the store sets ``incident_id`` on the returned state.
:class:`ResolveIncident` and :class:`AddTimeline` refer to the incident open in the state
*passed in* (the returned state of a resolve already has ``incident_id=None``). The engine
emits :class:`OpenIncident` only when no incident is open and never together with another
incident action, so that bookkeeping stays trivial.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent import wire

DEFAULT_PRIORITY = "P3"


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the engine remembers about one (host, check) between events.

    ``check_state`` is the last reported state; ``value`` and ``message`` the last reported
    value and message (used when an incident is opened later, by a failed fix or a tick).
    ``awaiting`` names the remediation the agent promised to run, since ``awaiting_since``
    (Unix seconds, collector clock). ``incident_id`` is the open incident, if any.
    """

    check_state: str = "ok"
    awaiting: str | None = None
    awaiting_since: float | None = None
    incident_id: int | None = None
    value: float | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class OpenIncident:
    """Open an incident for the key. ``reason`` goes to the timeline, ``message`` describes
    the failure (the check's message); ``remediation``/``remediation_outcome`` name a fix
    that was attempted (or promised, with outcome ``None``)."""

    reason: str
    value: float | None
    message: str
    remediation: str | None
    remediation_outcome: str | None


@dataclass(frozen=True, slots=True)
class ResolveIncident:
    """Resolve the key's open incident; ``reason`` is recorded as its resolution."""

    reason: str


@dataclass(frozen=True, slots=True)
class RecordPrevented:
    """Record a prevented incident: ``remediation`` fixed the failure before it was raised."""

    remediation: str
    value_before: float | None
    value_after: float | None
    message: str


@dataclass(frozen=True, slots=True)
class AddTimeline:
    """Append ``text`` to the key's open incident's timeline."""

    text: str


Action = OpenIncident | ResolveIncident | RecordPrevented | AddTimeline


def default_priority(check: str, state: str) -> str:
    """Priority (``P1`` most urgent .. ``P4``) for an incident on ``check`` in ``state``.

    Always ``P3`` for now: the service catalog's impact x urgency matrix replaces this.
    """
    return DEFAULT_PRIORITY


def on_check(state: KeyState, event: wire.CheckEvent, now: float) -> tuple[KeyState, list[Action]]:
    """Apply a check result received at ``now`` (Unix seconds, collector clock)."""
    new = replace(state, check_state=event.state, value=event.value, message=event.message)
    if event.check == wire.HEARTBEAT_CHECK:
        return new, []
    is_open = state.incident_id is not None
    changed = event.state != state.check_state

    if event.state == "ok":
        new = replace(new, awaiting=None, awaiting_since=None, incident_id=None)
        return new, [ResolveIncident("check recovered")] if is_open else []

    if event.state != "critical":
        note = f"check {event.state}: {event.message}"
        return new, [AddTimeline(note)] if is_open and changed else []

    if event.remediation is not None:
        renewed = state.awaiting == event.remediation and state.awaiting_since is not None
        since = state.awaiting_since if renewed else now
        new = replace(new, awaiting=event.remediation, awaiting_since=since)
        if is_open and (changed or not renewed):
            note = f"check critical: {event.message}; agent is running {event.remediation}"
            return new, [AddTimeline(note)]
        return new, []

    if is_open:
        return new, [AddTimeline(f"check critical: {event.message}")] if changed else []
    opened = OpenIncident(
        reason="check critical, no remediation",
        value=event.value,
        message=event.message,
        remediation=None,
        remediation_outcome=None,
    )
    return new, [opened]


def on_remediation(
    state: KeyState, event: wire.RemediationEvent, now: float
) -> tuple[KeyState, list[Action]]:
    """Apply a remediation run's result for the key ``(host, event.check)``.

    ``now`` is unused today (results carry no deadline) but kept so all three entry points
    share one shape.
    """
    if event.check == wire.HEARTBEAT_CHECK:
        return state, []
    name = event.remediation
    awaited = state.awaiting == name
    new = replace(state, awaiting=None, awaiting_since=None) if awaited else state
    is_open = state.incident_id is not None

    if event.outcome == "fixed":
        if is_open:
            return new, [AddTimeline(f"fixed by {name}{_values(event)}")]
        if awaited or state.check_state == "critical":
            what = state.message or f"{event.check} failed"
            prevented = RecordPrevented(
                remediation=name,
                value_before=event.value_before,
                value_after=event.value_after,
                message=what,
            )
            return new, [prevented]
        return new, []

    result = f"remediation {name} finished {event.outcome}{_exit(event)}"
    if is_open:
        return new, [AddTimeline(result)]
    if state.check_state != "critical":
        return new, []
    opened = OpenIncident(
        reason=result,
        value=event.value_after if event.value_after is not None else state.value,
        message=state.message or result,
        remediation=name,
        remediation_outcome=event.outcome,
    )
    return new, [opened]


def on_tick(
    state: KeyState, now: float, remediation_wait_s: float
) -> tuple[KeyState, list[Action]]:
    """Give up on a promised remediation after ``remediation_wait_s`` seconds.

    A key that is awaiting with no ``awaiting_since`` (should not happen) starts its wait
    at ``now`` rather than expiring at once or never.
    """
    if state.awaiting is None:
        return state, []
    if state.awaiting_since is None:
        return replace(state, awaiting_since=now), []
    if now - state.awaiting_since <= remediation_wait_s:
        return state, []
    name = state.awaiting
    new = replace(state, awaiting=None, awaiting_since=None)
    if state.check_state != "critical":
        return new, []
    reason = f"remediation {name} promised but no result within {remediation_wait_s:g} s"
    if state.incident_id is not None:
        return new, [AddTimeline(reason)]
    opened = OpenIncident(
        reason=reason,
        value=state.value,
        message=state.message or reason,
        remediation=name,
        remediation_outcome=None,
    )
    return new, [opened]


def _values(event: wire.RemediationEvent) -> str:
    if event.value_before is None and event.value_after is None:
        return ""
    return f" (value {_num(event.value_before)} -> {_num(event.value_after)})"


def _exit(event: wire.RemediationEvent) -> str:
    return "" if event.exit_code is None else f" (exit code {event.exit_code})"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"
