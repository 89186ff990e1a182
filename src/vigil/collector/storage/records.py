"""Plain records the repositories hand back, and the storage error.

Rows the desk needs field by field are small named tuples; rows the API serves as they
are come back as dicts keyed by the API's names (``check``, not ``check_id``), with
booleans as ``bool``. Nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from vigil import wire


class StorageError(Exception):
    """The storage cannot be used (not a database, newer schema, unwritable...).

    ``where`` names the database (a path or URL) and ``message`` says what is wrong.
    """

    def __init__(self, where: object, message: str) -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")


class HostBefore(NamedTuple):
    """What the desk reads of a host before applying one of its reports."""

    last_batch_id: str | None
    clock_offset_s: float
    last_seen: float
    # Sequence dedup: the agent's current epoch (32 hex digits) and the highest seq
    # applied in it; both None until the agent sends a sequenced report.
    epoch: str | None = None
    mark: int | None = None
    # Whether the host's heartbeat key has an incident open (a report may then resolve
    # it); None: not known, the desk reads the key. Read with the host row so a report
    # of a healthy host costs no statement for its heartbeat key (issue #17).
    heartbeat_open: bool | None = None


class HostRefresh(NamedTuple):
    """A known host's liveness and dedup columns after a steady-state report, for
    ``HostRepository.refresh_many``: as ``upsert`` of that report would set them on a
    host whose name, labels and agent version it leaves as they are."""

    agent_id: str
    last_seen: float
    last_sent_at: float
    clock_offset_s: float
    heartbeat_ttl_s: float | None  # None keeps the stored TTL
    last_batch_id: str
    epoch: str  # 32 hex digits
    mark: int


# The columns HostRepository.before_unchanged reads, ``h`` the host and ``c`` its
# heartbeat key (a LEFT JOIN): the rows :func:`unchanged_hosts` takes.
UNCHANGED_COLUMNS = (
    "SELECT h.agent_id, h.hostname, h.labels, h.agent_version, h.last_batch_id,"
    " h.clock_offset_s, h.last_seen, h.epoch, h.mark, c.incident_id IS NOT NULL"
    " FROM hosts h LEFT JOIN check_state c"
)


def unchanged_hosts(
    rows: Iterable[Sequence[Any]],
    reports: Mapping[str, wire.Report],
    stored_labels: Callable[[Mapping[str, str]], Any] | None = None,
) -> dict[str, HostBefore]:
    """``HostRepository.before_unchanged``'s result from the rows of
    :data:`UNCHANGED_COLUMNS`: the hosts whose hostname, agent version and labels are
    their report's (of ``reports`` by agent_id). ``stored_labels`` gives a report's labels
    in the form the backend reads them back (SQLite: the stored JSON text); None: as
    they are (PostgreSQL's jsonb comes back as a dict)."""
    found = {}
    for agent, hostname, labels, version, batch, offset, seen, epoch, mark, open_ in rows:
        report = reports[agent]
        wanted = report.labels if stored_labels is None else stored_labels(report.labels)
        if hostname == report.hostname and version == report.agent_version and labels == wanted:
            epoch_hex = None if epoch is None else bytes(epoch).hex()
            found[agent] = HostBefore(batch, offset, seen, epoch_hex, mark, bool(open_))
    return found


# The liveness read's first half without the silent hosts whose heartbeat key already
# records their silence (HostRepository.liveness with ``noted=False``): ``critical`` with
# an incident open, or ``unknown`` (asleep, also after an incident). A host with no key
# yet (NULLs) stays in. The same text on both backends (SQLite: IS NOT TRUE since 3.23).
SILENCE_NOT_NOTED = (
    " AND (c.state = 'critical' AND c.incident_id IS NOT NULL OR c.state = 'unknown') IS NOT TRUE"
)


class KeyRow(NamedTuple):
    """The stored state of one (host, check) key (``check_state``)."""

    state: str
    awaiting: str | None
    awaiting_since: float | None
    incident_id: int | None
    value: float | None
    message: str
    flapping: bool


class LivenessRow(NamedTuple):
    """A host and its heartbeat key, as the liveness tick reads them."""

    agent_id: str
    hostname: str
    labels: dict[str, str]
    last_seen: float
    heartbeat_ttl_s: float | None
    key_state: str | None
    incident_id: int | None


class SilenceRow(NamedTuple):
    """An active silence, as matching needs it."""

    id: int
    matcher: str
    value: str
    starts_at: float
    ends_at: float
    comment: str


class IncidentAlertRow(NamedTuple):
    """An incident the notifier may have to tell about."""

    id: int
    host: str
    hostname: str
    check: str
    state: str
    priority: str
    service: str | None
    groups: list[str]
    opened_at: float
    resolved_at: float | None
    message: str
    remediation: str | None
    remediation_outcome: str | None
    flapping: bool
    notified_at: float | None
    resolve_notified_at: float | None
    resolution: str | None
    in_fleet_problem: bool


class ProblemAlertRow(NamedTuple):
    """A problem the notifier may have to tell about."""

    id: int
    kind: str
    host: str | None
    hostname: str | None
    check: str
    state: str
    priority: str
    service: str | None
    opened_at: float
    resolved_at: float | None
    summary: str
    notified_at: float | None
    resolve_notified_at: float | None
    resolution: str | None
    linked: int


class ResolvedIncident(NamedTuple):
    """What resolving an open incident tells the aggregates."""

    priority: str
    check: str
    opened_at: float


def host_row(
    report: wire.Report, received_at: float, clock_offset_s: float, heartbeat_ttl_s: float | None
) -> dict[str, Any]:
    """The named parameters both backends write a host row with (``HostRepository.upsert``):
    ``labels`` as the report's dict (each backend encodes it), ``epoch`` as its 16 bytes
    (not 32 characters: the mark is the whole dedup state per agent), ``mark`` the report's
    ``seq_last`` when it carries sequence fields."""
    return {
        "agent": report.agent_id,
        "hostname": report.hostname,
        "labels": report.labels,
        "version": report.agent_version,
        "at": received_at,
        "sent": report.sent_at,
        "offset": clock_offset_s,
        "ttl": heartbeat_ttl_s,
        "batch": report.batch_id,
        "epoch": None if report.epoch is None else bytes.fromhex(report.epoch),
        "mark": report.seq_last if report.epoch is not None else None,
    }
