"""Desk commands people give: acknowledge, resolve with CAPA notes, and the notifier's
"this was notified" marks. Each runs inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Mapping

from vigil.collector.desk.actions import resolve
from vigil.collector.desk.work import Work
from vigil.collector.storage.protocols import DeskItemRepository, UnitOfWork

CAPA = ("root_cause", "corrective_action", "preventive_action")
ITEM_KINDS = ("incident", "problem")


class StateError(Exception):
    """An operation does not apply to the record's current state (e.g. acknowledging a
    resolved incident)."""


def items(uow: UnitOfWork, kind: str) -> DeskItemRepository:
    """The repository of ``kind`` (``incident`` or ``problem``)."""
    if kind == "incident":
        return uow.incidents
    if kind == "problem":
        return uow.problems
    raise KeyError(kind)


def acknowledge(uow: UnitOfWork, kind: str, item_id: int, by: str, note: str, now: float) -> str:
    """Acknowledge an open incident or problem; ``"acknowledged"`` or ``"already"``.

    Raises :class:`LookupError` (no such id) or :class:`StateError` (not open).
    """
    repo = items(uow, kind)
    found = repo.state_of(item_id)
    if found is None:
        raise LookupError(f"no {kind} with id {item_id}")
    state, acknowledged_at = found
    if state != "open":
        raise StateError(f"{kind} {item_id} is {state}, only an open one is acknowledged")
    if acknowledged_at is not None:
        return "already"
    repo.acknowledge(item_id, now, by)
    repo.add_timeline(item_id, now, f"acknowledged by {by}" + (f": {note}" if note else ""))
    return "acknowledged"


def resolve_manually(
    work: Work, kind: str, item_id: int, by: str, notes: Mapping[str, str], now: float
) -> None:
    """Resolve an open incident or problem with notes, or add CAPA notes to a resolved
    one. ``notes`` may hold ``note``, ``root_cause``, ``corrective_action``,
    ``preventive_action``. Raises :class:`LookupError` / :class:`StateError` (a
    prevented incident takes no manual resolution)."""
    uow = work.uow
    repo = items(uow, kind)
    found = repo.state_of(item_id)
    if found is None:
        raise LookupError(f"no {kind} with id {item_id}")
    state = found[0]
    if state not in ("open", "resolved"):
        raise StateError(f"{kind} {item_id} is {state}: nothing to resolve")
    capa = {k: notes[k] for k in CAPA if notes.get(k)}
    if capa:
        repo.set_capa(item_id, capa)
        for k, v in capa.items():
            repo.add_timeline(item_id, now, f"{k.replace('_', ' ')}: {v}")
    reason = f"resolved manually by {by}" + (f": {notes['note']}" if notes.get("note") else "")
    if state == "open":
        if kind == "incident":
            resolve(work, item_id, now, reason)
            # The key no longer points at it: the next failure opens a new one.
            uow.keys.detach_incident(item_id)
        else:
            uow.problems.resolve(item_id, now, reason)
            uow.problems.add_timeline(item_id, now, f"resolved: {reason}")
    elif notes.get("note"):
        repo.add_timeline(item_id, now, f"note by {by}: {notes['note']}")


def mark_notified(
    uow: UnitOfWork, fired: list[str], resolved: list[str], targets: str, now: float
) -> None:
    """Record that ``fired`` refs (``incident:12``) were notified firing and ``resolved``
    refs resolved, to ``targets`` (text for the timeline)."""
    for refs, is_resolved, what in ((fired, False, "firing"), (resolved, True, "resolved")):
        for ref in refs:
            kind, _, raw = ref.partition(":")
            repo = items(uow, kind)
            repo.mark_notified(int(raw), now, resolved=is_resolved)
            repo.add_timeline(int(raw), now, f"notified {what}: {targets}")
