"""The audit log: one append-only record per write by an operator, an enrollment or a
revocation — who (the authenticated actor), when (collector clock), what (``action``),
on what (``target``) and from where (``peer``, the client address).

:func:`append_audit` is the one way in. Call it with the write's own unit of work,
inside its transaction, so the record and the write commit (or roll back) together.
The storage refuses to change or delete a record (SQLite triggers).
"""

from __future__ import annotations

import getpass
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from vigil.collector.storage.protocols import UnitOfWork

# The peer of a write made on the collector's machine with ``vigil-collector operator``.
LOCAL_PEER = "local"


def cli_actor() -> str:
    """The audit actor of a collector CLI command: ``cli:<login>`` of whoever ran it
    (``cli:unknown`` without a passwd entry, e.g. a container's arbitrary uid)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One record to append. ``actor``: the authenticated operator name (``cli:USER`` for
    the collector CLI, ``config:admin_tokens.N`` for a token from the config file);
    ``action``: dotted verb such as ``incident.acknowledge``; ``target``: ``kind:id``;
    ``peer``: client address; ``at``: Unix seconds; ``detail``: small JSON object."""

    actor: str
    action: str
    target: str
    peer: str
    at: float
    detail: Mapping[str, Any] = field(default_factory=dict)


def append_audit(uow: UnitOfWork, entry: AuditEntry) -> int:
    """Append ``entry`` in ``uow``'s current transaction; returns the record's id.

    Call it inside the transaction of the write it describes (never in one of its own),
    so that a write without its record, or a record of a write that rolled back, cannot
    exist.
    """
    return uow.audit.append(
        {
            "at": entry.at,
            "actor": entry.actor,
            "action": entry.action,
            "target": entry.target,
            "peer": entry.peer,
            "detail": dict(entry.detail),
        }
    )


class AuditCounts:
    """Records per action as last read from the storage (``AuditRepository.counts``),
    for ``vigil_audit_records_total``. Read from the database, not counted in memory, so
    writes by the CLI or by other collector processes on the same database count too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def set(self, counts: Mapping[str, int]) -> None:
        with self._lock:
            self._counts = dict(counts)

    def get(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class AuditCollector(Collector):
    """Yields ``vigil_audit_records_total{action}`` from an :class:`AuditCounts` at
    scrape time (no I/O: the counts are refreshed by the collector's identity task)."""

    def __init__(self, counts: AuditCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "vigil_audit_records", "Audit log records, by action.", labels=["action"]
        )
        for action, n in sorted(self._counts.get().items()):
            family.add_metric([action], n)
        yield family
