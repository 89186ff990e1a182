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
