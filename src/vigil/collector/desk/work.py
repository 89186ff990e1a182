"""What one desk transaction carries around: the unit of work, the rules it decides by,
the aggregate deltas it builds and the incident ids it touched."""

from __future__ import annotations

from dataclasses import dataclass, field

from vigil.collector.desk.catalog import Catalog
from vigil.collector.desk.engine import IncidentRules, KeyState
from vigil.collector.desk.satisfaction import DISABLED, SatisfactionPolicy
from vigil.collector.storage.protocols import UnitOfWork
from vigil.collector.storage.records import KeyRow
from vigil.collector.telemetry.aggregates import Aggregates


@dataclass(slots=True)
class Changes:
    """Incident ids touched by one report (or tick)."""

    opened: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    prevented: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Work:
    """One transaction's context. ``delta`` collects what the aggregates gain once the
    transaction commits (never before: a scrape must not see a rolled-back report)."""

    uow: UnitOfWork
    catalog: Catalog
    rules: IncidentRules
    delta: Aggregates
    changes: Changes = field(default_factory=Changes)
    # Whom to ask how it went when an incident resolves (``satisfaction:``).
    satisfaction: SatisfactionPolicy = DISABLED
    # Record sequenced reports' event ids in ``seen`` too (an audit trail, never consulted).
    record_ids: bool = False
    # Who is at the host's console per the report being applied (``Report.console_user``,
    # an opaque id): the survey rate limit is per person when known. None: unknown (an
    # older agent, nobody logged on, a tick or an operator's command).
    console_user: str | None = None

    def host_info(self, host: str) -> tuple[str, dict[str, str]]:
        """``(hostname, labels)``; ``(host, {})`` for a host never seen."""
        info = self.uow.hosts.info(host)
        return (host, {}) if info is None else info


def key_state(row: KeyRow | None) -> KeyState | None:
    """The engine's view of a stored key."""
    if row is None:
        return None
    return KeyState(
        check_state=row.state,
        awaiting=row.awaiting,
        awaiting_since=row.awaiting_since,
        incident_id=row.incident_id,
        value=row.value,
        message=row.message,
        flapping=row.flapping,
    )


def key_row(state: KeyState) -> KeyRow:
    """The stored form of the engine's key state."""
    return KeyRow(
        state.check_state,
        state.awaiting,
        state.awaiting_since,
        state.incident_id,
        state.value,
        state.message,
        state.flapping,
    )
