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
  liveness is judged from the host's last-seen time and TTL, which the store keeps, by
  :func:`is_silent` and :func:`on_liveness` on every tick.

Remediation results (:func:`on_remediation`), for the key ``(host, event.check)``:

- ``fixed``: if an incident is open, :class:`AddTimeline` ("fixed by X"); otherwise, if the
  key was awaiting this remediation or the check is ``critical``, :class:`RecordPrevented`
  (a prevented incident: counted, never raised). A ``fixed`` run for a key that was
  neither awaited nor critical (a proactive fix of a warning) produces no action.
- any other outcome (``not_fixed``, ``error``, ``timeout``, ``skipped``, ``dry_run``,
  ``needs_reboot``, ``needs_user``):
  :class:`AddTimeline` if an incident is open, else :class:`OpenIncident` naming the
  remediation and its outcome when the check is still ``critical``.
- A result clears ``awaiting`` only when it is for the awaited remediation: a promise is
  kept by its own result, not by another script's.

Ticks (:func:`on_tick`): a key ``awaiting`` for longer than ``remediation_wait_s`` (strictly)
stops waiting; if the check is still ``critical`` it gets :class:`OpenIncident` ("remediation
X promised but no result within N s"), or a timeline note if an incident is already open.

Flapping: the store passes ``flapping`` (see :func:`is_flapping`) with each check result;
only changes between known states count (:func:`known_changes`: moving into and out of
``unknown`` is not a change).
While a key flaps, a recovery does not resolve its open incident (it is held open, one
incident instead of a new one every few minutes) and notifications are held back; once
the flapping ends, :func:`on_tick` resolves it if the check is ``ok``.

Beyond one key, pure predicates the store calls with what it has stored:
:func:`recurs` (the same key N times in a window: a recurring problem),
:func:`fleet_wide` (one check failing on many hosts: one fleet problem, or one
self-healed problem when every host fixed it),
:func:`silence_applies` (a maintenance window matching an incident) and
:func:`plan_notifications` (what to notify as firing or resolved). The knobs are in
:class:`IncidentRules`; ``docs/incidents.md`` explains the model with examples.

Incident ids: the engine cannot know the id of an incident it asks to open. After carrying
out :class:`OpenIncident` the store sets ``incident_id`` on the returned state.
:class:`ResolveIncident` and :class:`AddTimeline` refer to the incident open in the state
*passed in* (the returned state of a resolve already has ``incident_id=None``). The engine
emits :class:`OpenIncident` only when no incident is open and never together with another
incident action, so that bookkeeping stays trivial.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, replace

from vigil import wire


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
    flapping: bool = False


@dataclass(frozen=True, slots=True)
class IncidentRules:
    """The engine's tunable knobs (``incidents:`` in the collector config), in seconds.

    Flapping: ``flap_changes`` state changes within ``flap_window_s`` (0 disables).
    Recurrence: ``recurrence_count`` occurrences of one key within ``recurrence_window_s``
    open a problem. Correlation: one check failing on at least ``fleet_min_hosts`` hosts
    that are also at least ``fleet_min_share`` of the failing host's group, within
    ``fleet_window_s``, is one fleet problem (one *self-healed* problem when every one of
    those hosts fixed it: see :func:`fleet_wide`). ``heartbeat_grace_s``: silence
    tolerated past a heartbeat TTL.
    """

    remediation_wait_s: float = 600.0
    heartbeat_grace_s: float = 30.0
    flap_window_s: float = 3600.0
    flap_changes: int = 6
    recurrence_window_s: float = 7 * 86400.0
    recurrence_count: int = 3
    fleet_window_s: float = 300.0
    fleet_min_hosts: int = 3
    fleet_min_share: float = 0.5


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


def on_check(
    state: KeyState, event: wire.CheckEvent, now: float, *, flapping: bool = False
) -> tuple[KeyState, list[Action]]:
    """Apply a check result received at ``now`` (Unix seconds, collector clock).

    ``flapping``: the key changed state too often lately (:func:`is_flapping`, computed by
    the caller over the key's history including this result).
    """
    new = replace(
        state,
        check_state=event.state,
        value=event.value,
        message=event.message,
        flapping=flapping,
    )
    if event.check == wire.HEARTBEAT_CHECK:
        return new, []
    is_open = state.incident_id is not None
    changed = event.state != state.check_state
    notes: list[Action] = []
    if is_open and flapping and not state.flapping:
        notes.append(AddTimeline("flapping: notifications held back"))

    if event.state == "ok":
        if is_open and flapping:
            note = AddTimeline("check ok while flapping: held open until the flapping ends")
            return replace(new, awaiting=None, awaiting_since=None), [*notes, note]
        new = replace(new, awaiting=None, awaiting_since=None, incident_id=None)
        return new, [*notes, ResolveIncident("check recovered")] if is_open else []

    if event.state != "critical":
        note = f"check {event.state}: {event.message}"
        return new, [*notes, AddTimeline(note)] if is_open and changed else notes

    if event.remediation is not None:
        renewed = state.awaiting == event.remediation and state.awaiting_since is not None
        since = state.awaiting_since if renewed else now
        new = replace(new, awaiting=event.remediation, awaiting_since=since)
        if is_open and (changed or not renewed):
            note = f"check critical: {event.message}; agent is running {event.remediation}"
            return new, [*notes, AddTimeline(note)]
        return new, notes

    if is_open:
        note = AddTimeline(f"check critical: {event.message}")
        return new, [*notes, note] if changed else notes
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
    state: KeyState, now: float, remediation_wait_s: float, *, flapping: bool | None = None
) -> tuple[KeyState, list[Action]]:
    """Give up on a promised remediation after ``remediation_wait_s`` seconds, and end
    flapping.

    ``flapping``: whether the key still flaps at ``now`` (``None``: not evaluated). When a
    flapping key stops flapping, an incident held open while the check is ``ok`` resolves.
    A key that is awaiting with no ``awaiting_since`` (should not happen) starts its wait
    at ``now`` rather than expiring at once or never.
    """
    if state.flapping and flapping is False:
        new = replace(state, flapping=False)
        if state.incident_id is not None and state.check_state == "ok":
            return replace(new, incident_id=None), [
                ResolveIncident("check recovered; flapping ended")
            ]
        return new, []
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


def on_liveness(
    state: KeyState, *, silent: bool, expected: bool, silent_for_s: float
) -> tuple[KeyState, list[Action]]:
    """Apply a liveness verdict to a host's heartbeat key (:data:`agent.wire.HEARTBEAT_CHECK`).

    ``silent``: the heartbeat TTL plus grace expired (:func:`is_silent`). ``expected``: the
    host's group treats silence as normal (a laptop asleep), so no incident is raised and
    the key just records ``unknown``. A host that reports again resolves its incident.
    ``silent_for_s``: seconds since the host was last seen (for the message).
    """
    is_open = state.incident_id is not None
    if not silent:
        new = replace(state, check_state="ok", incident_id=None)
        return new, [ResolveIncident("agent reporting again")] if is_open else []
    message = f"agent silent for {silent_for_s:.0f} s (heartbeat TTL expired)"
    if expected:
        new = replace(state, check_state="unknown", message=message)
        return new, [AddTimeline("silence expected for this host group")] if (
            is_open and state.check_state != "unknown"
        ) else []
    new = replace(state, check_state="critical", message=message, value=silent_for_s)
    if is_open:
        return new, []
    opened = OpenIncident(
        reason="agent silent: heartbeat TTL expired",
        value=silent_for_s,
        message=message,
        remediation=None,
        remediation_outcome=None,
    )
    return new, [opened]


# --------------------------------------------------------------------------- fleet rules


def known_changes(states: Sequence[tuple[float, str]], before: str = "ok") -> list[float]:
    """The times at which a key's *known* state changed.

    ``states`` are ``(time, state)`` results, oldest first; ``before`` is the known state
    preceding the first (a key starts ``ok``). ``unknown`` results are skipped: unknown is
    the absence of knowledge, not a state, so ok -> unknown -> ok is no change and
    ok -> unknown -> ok -> critical -> unknown -> ok is two (issue #15, item 4). A result
    repeating the known state (e.g. only its flapping flag changed) is no change either.
    """
    times: list[float] = []
    last = before
    for t, state in states:
        if state == "unknown":
            continue
        if state != last:
            times.append(t)
        last = state
    return times


def is_flapping(change_times: Sequence[float], now: float, window_s: float, changes: int) -> bool:
    """Whether a key whose state changed at ``change_times`` (Unix seconds) flaps at ``now``:
    at least ``changes`` state changes within the last ``window_s`` seconds.
    ``changes <= 0`` disables flapping detection."""
    if changes <= 0:
        return False
    return sum(1 for t in change_times if now - window_s <= t <= now) >= changes


def recurs(times: Sequence[float], now: float, window_s: float, count: int) -> bool:
    """Whether a key that failed at ``times`` (incidents opened or prevented, Unix
    seconds) came back ``count`` times within ``window_s`` before ``now``: the root
    cause is not fixed, even if every occurrence was auto-fixed."""
    return count > 0 and sum(1 for t in times if now - window_s <= t <= now) >= count


def fleet_wide(hosts_failing: int, hosts_in_scope: int, min_hosts: int, min_share: float) -> bool:
    """Whether ``hosts_failing`` hosts failing the same check at once is a fleet problem.

    Both rules must hold: at least ``min_hosts`` hosts (never fewer than two: one host is
    never a fleet) *and* at least ``min_share`` (0..1) of the ``hosts_in_scope`` (the
    failing host's group, or the fleet). A share alone made two unrelated failures on
    four hosts a "fleet problem", a count alone makes three of a thousand one (issue #15,
    item 5). ``min_share <= 0`` drops the share rule; ``min_hosts <= 0`` leaves the floor
    of two hosts; both off disables correlation.
    """
    if min_hosts <= 0 and min_share <= 0:
        return False
    if hosts_failing < max(2, min_hosts):
        return False
    if min_share <= 0:
        return True
    return hosts_in_scope > 0 and hosts_failing / hosts_in_scope >= min_share


def is_silent(last_seen: float, ttl_s: float | None, grace_s: float, now: float) -> bool:
    """Whether a host last seen at ``last_seen`` is silent at ``now``: its heartbeat TTL
    plus ``grace_s`` expired. A host that never announced a TTL is never judged silent
    (there is no promise to break)."""
    return ttl_s is not None and now > last_seen + ttl_s + grace_s


SILENCE_MATCHERS: tuple[str, ...] = ("host", "group", "service", "check")


@dataclass(frozen=True, slots=True)
class Silence:
    """A maintenance window: hold back notifications for matching incidents.

    ``matcher`` is one of :data:`SILENCE_MATCHERS`; ``value`` is the agent_id or hostname
    (``host``), group name, service name, or check id / glob (``check``). Active while
    ``starts_at <= now < ends_at`` (Unix seconds).
    """

    id: int
    matcher: str
    value: str
    starts_at: float
    ends_at: float


def silence_applies(
    silence: Silence,
    *,
    host: str,
    hostname: str,
    groups: Sequence[str],
    service: str | None,
    check: str,
    now: float,
) -> bool:
    """Whether ``silence`` is active at ``now`` and matches this incident's subject."""
    if not silence.starts_at <= now < silence.ends_at:
        return False
    if silence.matcher == "host":
        return silence.value in (host, hostname)
    if silence.matcher == "group":
        return silence.value in groups
    if silence.matcher == "service":
        return service is not None and silence.value == service
    return fnmatch.fnmatchcase(check, silence.value)


def display_state(state: str, acknowledged_at: float | None, flapping: bool) -> str:
    """The state a service desk sees: ``flapping`` and ``acknowledged`` refine ``open``."""
    if state != "open":
        return state
    if flapping:
        return "flapping"
    return "acknowledged" if acknowledged_at is not None else "open"


@dataclass(frozen=True, slots=True)
class Alertable:
    """What the notifier needs to know about one incident or problem.

    ``held``: flapping, silenced, or represented by a fleet problem: not notified now.
    ``notified``/``resolve_notified``: a firing / resolved notification was sent.
    """

    ref: str
    active: bool
    opened_at: float
    held: bool
    notified: bool
    resolve_notified: bool


def plan_notifications(
    items: Sequence[Alertable], now: float, delay_s: float
) -> tuple[list[Alertable], list[Alertable]]:
    """Which items to notify as firing and which as resolved, at ``now``.

    Firing: active, not held, open for at least ``delay_s`` (a group wait, so a fleet
    problem can claim host incidents before any of them notifies), never notified.
    Resolved: no longer active and notified as firing before. So an incident that opened
    and resolved inside a silence, or while flapping, never notifies at all: only real
    changes do.
    """
    fire = [
        i
        for i in items
        if i.active and not i.held and not i.notified and now - i.opened_at >= delay_s
    ]
    resolve = [i for i in items if not i.active and i.notified and not i.resolve_notified]
    return fire, resolve


def _values(event: wire.RemediationEvent) -> str:
    if event.value_before is None and event.value_after is None:
        return ""
    return f" (value {_num(event.value_before)} -> {_num(event.value_after)})"


def _exit(event: wire.RemediationEvent) -> str:
    return "" if event.exit_code is None else f" (exit code {event.exit_code})"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"
