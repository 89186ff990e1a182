"""Checks the collector observes itself (the policy blast-radius guard), fed through the
same incident engine as an agent's results, so they open, notify and resolve like any
incident. They live on the pseudo-host :data:`COLLECTOR_HOST`, which never reports and
so never counts as silent."""

from __future__ import annotations

import uuid

from vigil import wire
from vigil.collector.desk import engine
from vigil.collector.desk.actions import carry_out
from vigil.collector.desk.engine import KeyState
from vigil.collector.desk.work import Work, key_state

COLLECTOR_HOST = "vigil-collector"


def apply_collector_check(
    work: Work, check: str, state: wire.CheckState, message: str, now: float
) -> None:
    """Apply one result of the collector's own ``check`` at ``now`` (Unix seconds). An
    ``ok`` for a key never seen is a no-op (nothing to resolve)."""
    old = key_state(work.uow.keys.load(COLLECTOR_HOST, check))
    if old is None and state == "ok":
        return
    event = wire.CheckEvent(
        event_id=uuid.uuid4().hex,
        seq=0,
        time=now,
        check=check,
        state=state,
        previous_state=None if old is None else old.check_state,  # type: ignore[arg-type]
        value=None,
        message=message,
    )
    new, actions = engine.on_check(old or KeyState(), event, now)
    carry_out(work, COLLECTOR_HOST, COLLECTOR_HOST, check, old, new, actions, now)
