"""What the agent's parts write their events into, and how an event gets its id.

Every event goes to the outbox before any delivery attempt; parts that record events
(the remediation flow, the service's cycle) take any :class:`EventSink`, so a test can
hand them a list instead of a SQLite file.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from vigil import wire


class EventSink(Protocol):
    """Stores events durably, in order (the agent's outbox is one)."""

    def put(self, event: wire.Event, *, urgent: bool = False) -> object:
        """Store ``event``; ``urgent`` asks for delivery at once rather than at the next
        report interval."""
        ...


def new_event_id() -> str:
    """A globally unique event id (the outbox assigns the per-agent ``seq``)."""
    return uuid.uuid4().hex


def status_event(
    check: str, state: wire.CheckState, message: str, *, time: float, value: float | None = None
) -> wire.CheckEvent:
    """A check result the agent reports about itself (``agent.policy``, ``agent.update``,
    ``agent.remediations``, ``agent.clock``): no previous state (the collector keeps
    it), the message cut to the wire's bound. ``time`` is wall seconds."""
    return wire.CheckEvent(
        event_id=new_event_id(),
        seq=0,
        time=time,
        check=check,
        state=state,
        previous_state=None,
        value=value,
        message=message[: wire.MAX_STR],
    )
