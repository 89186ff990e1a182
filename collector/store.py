"""The collector's SQLite store: durable, idempotent ingest plus the aggregates for /metrics.

Durability: WAL journal with ``synchronous=FULL``, so a report is on disk once
:meth:`SqliteStore.ingest` returns and the handler may acknowledge it (an acknowledged
batch is deleted by the agent; losing it here would lose it for good).

Exactly-once effect: a whole report is applied in ONE transaction. A ``batch_id`` already
stored for the agent makes the report a duplicate and nothing is applied; every event id is
recorded too, so an event re-sent inside a different batch is not applied twice. Both are
unique per agent (``agent_id``), not globally, so two agents that happen to reuse ids
cannot swallow each other's data. :meth:`SqliteStore.prune_seen` bounds those tables.

Time: incidents, timelines and the host's ``last_seen`` use the collector's receive time
(``received_at``), which tolerates agent clock skew; the agent's own timestamps are kept
next to it (``time`` on check results and remediation runs) and the skew is estimated as
``received_at - sent_at`` (``clock_offset_s``, includes network delay).

Heartbeats (:data:`agent.wire.HEARTBEAT_CHECK`) only refresh the host's ``last_seen`` and
``heartbeat_ttl_s``; they are not stored as check results (one per minute per host would
dwarf the useful history) and never open incidents.

Aggregates: :meth:`SqliteStore.metrics_snapshot` returns counters and gauges held in
memory, loaded from the database at open and changed only after a commit succeeded, so a
scrape never waits for the disk and never sees a rolled-back report.

One connection guarded by a lock: the app calls the store from one worker thread, and
the lock keeps that safe from any thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent import wire
from collector import incidents
from collector.incidents import (
    AddTimeline,
    KeyState,
    OpenIncident,
    RecordPrevented,
    ResolveIncident,
)

log = logging.getLogger("vigil.collector.store")

_SCHEMA_VERSION = 1

INCIDENT_STATES: tuple[str, ...] = ("open", "resolved", "prevented")
MAX_LIMIT = 1000  # rows per page in list_* calls

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    agent_id        TEXT PRIMARY KEY,
    hostname        TEXT NOT NULL,
    labels          TEXT NOT NULL,  -- JSON object
    agent_version   TEXT NOT NULL,
    first_seen      REAL NOT NULL,
    last_seen       REAL NOT NULL,  -- collector receive time of the last report
    last_sent_at    REAL NOT NULL,  -- agent clock
    clock_offset_s  REAL NOT NULL,  -- received_at - sent_at of the last report
    heartbeat_ttl_s REAL
);
CREATE TABLE IF NOT EXISTS batches (
    host        TEXT NOT NULL,
    batch_id    TEXT NOT NULL,
    received_at REAL NOT NULL,
    events      INTEGER NOT NULL,
    PRIMARY KEY (host, batch_id)
);
CREATE INDEX IF NOT EXISTS batches_received ON batches (received_at);
CREATE TABLE IF NOT EXISTS events_seen (
    host        TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (host, event_id)
);
CREATE INDEX IF NOT EXISTS events_seen_received ON events_seen (received_at);
CREATE TABLE IF NOT EXISTS metrics_latest (
    host        TEXT NOT NULL,
    series      TEXT NOT NULL,
    value       REAL NOT NULL,
    time        REAL NOT NULL,  -- agent clock
    received_at REAL NOT NULL,
    PRIMARY KEY (host, series)
);
CREATE TABLE IF NOT EXISTS check_results (
    id             INTEGER PRIMARY KEY,
    host           TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    time           REAL NOT NULL,  -- agent clock
    received_at    REAL NOT NULL,
    check_id       TEXT NOT NULL,
    state          TEXT NOT NULL,
    previous_state TEXT,
    value          REAL,
    message        TEXT NOT NULL,
    remediation    TEXT,
    ttl_s          REAL
);
CREATE INDEX IF NOT EXISTS check_results_key ON check_results (host, check_id, id);
CREATE TABLE IF NOT EXISTS check_state (
    host           TEXT NOT NULL,
    check_id       TEXT NOT NULL,
    state          TEXT NOT NULL,
    value          REAL,
    message        TEXT NOT NULL,
    updated_at     REAL NOT NULL,
    awaiting       TEXT,
    awaiting_since REAL,
    incident_id    INTEGER,
    PRIMARY KEY (host, check_id)
);
CREATE INDEX IF NOT EXISTS check_state_awaiting ON check_state (host, check_id)
    WHERE awaiting IS NOT NULL;
CREATE TABLE IF NOT EXISTS remediation_runs (
    id               INTEGER PRIMARY KEY,
    host             TEXT NOT NULL,
    hostname         TEXT NOT NULL,
    received_at      REAL NOT NULL,
    event_id         TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    time             REAL NOT NULL,
    remediation      TEXT NOT NULL,
    check_id         TEXT,
    outcome          TEXT NOT NULL,
    exit_code        INTEGER,
    started_at       REAL NOT NULL,
    duration_s       REAL NOT NULL,
    value_before     REAL,
    value_after      REAL,
    output           TEXT NOT NULL,
    output_truncated INTEGER NOT NULL,
    script_sha256    TEXT NOT NULL,
    dry_run          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS remediation_runs_host ON remediation_runs (host, id);
CREATE INDEX IF NOT EXISTS remediation_runs_name ON remediation_runs (remediation, id);
CREATE TABLE IF NOT EXISTS incidents (
    id                  INTEGER PRIMARY KEY,
    host                TEXT NOT NULL,
    hostname            TEXT NOT NULL,
    check_id            TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('open', 'resolved', 'prevented')),
    priority            TEXT NOT NULL,
    opened_at           REAL NOT NULL,
    resolved_at         REAL,
    value               REAL,
    message             TEXT NOT NULL,
    remediation         TEXT,
    remediation_outcome TEXT,
    resolution          TEXT
);
CREATE INDEX IF NOT EXISTS incidents_state ON incidents (state, id);
CREATE INDEX IF NOT EXISTS incidents_key ON incidents (host, check_id, id);
CREATE TABLE IF NOT EXISTS incident_timeline (
    id          INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    at          REAL NOT NULL,
    text        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incident_timeline_incident ON incident_timeline (incident_id, id);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

_INCIDENT_COLUMNS = (
    "id, host, hostname, check_id, state, priority, opened_at, resolved_at, value, message,"
    " remediation, remediation_outcome, resolution"
)
_RUN_COLUMNS = (
    "host, hostname, received_at, event_id, seq, time, remediation, check_id, outcome,"
    " exit_code, started_at, duration_s, value_before, value_after, output, output_truncated,"
    " script_sha256, dry_run"
)


class StoreError(Exception):
    """The database file cannot be used (not a database, newer schema, unwritable)."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one :meth:`SqliteStore.ingest` did.

    ``duplicate``: the batch was stored before and nothing was applied. ``events``: events
    newly applied (events already seen in an earlier batch are not counted). ``opened``,
    ``resolved``, ``prevented``: incident ids opened, resolved, recorded as prevented.
    """

    duplicate: bool
    events: int
    opened: tuple[int, ...]
    resolved: tuple[int, ...]
    prevented: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """In-memory aggregates for /metrics; building one does no I/O.

    Times are Unix seconds (collector clock). Totals count since the database was created.
    ``checks_failing`` counts hosts whose last state for the check is ``critical``.
    """

    host_last_seen: dict[str, float]
    host_ttl: dict[str, float]
    incidents_open: dict[tuple[str, str], int]
    incidents_opened_total: int
    incidents_resolved_total: int
    incidents_prevented_total: int
    checks_failing: dict[str, int]
    remediation_runs: dict[tuple[str, str], int]
    reports_accepted_total: int
    reports_duplicate_total: int
    events_total: int


@dataclass(slots=True)
class _Aggregates:
    """Mutable aggregates; a fresh instance holds the deltas of one transaction."""

    host_last_seen: dict[str, float] = field(default_factory=dict)
    host_ttl: dict[str, float] = field(default_factory=dict)
    incidents_open: Counter[tuple[str, str]] = field(default_factory=Counter)
    checks_failing: Counter[str] = field(default_factory=Counter)
    remediation_runs: Counter[tuple[str, str]] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)

    def merge(self, delta: _Aggregates) -> None:
        self.host_last_seen.update(delta.host_last_seen)
        self.host_ttl.update(delta.host_ttl)
        for mine, theirs in (
            (self.incidents_open, delta.incidents_open),
            (self.checks_failing, delta.checks_failing),
            (self.remediation_runs, delta.remediation_runs),
            (self.counters, delta.counters),
        ):
            mine.update(theirs)
            # Gauges drop to zero when the last incident closes: forget the key so the
            # label set stays bounded by what is currently true.
            for key in [k for k, v in mine.items() if v <= 0]:
                del mine[key]


@dataclass(slots=True)
class _Changes:
    """Incident ids touched by one transaction."""

    opened: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    prevented: list[int] = field(default_factory=list)


class SqliteStore:
    """The embedded storage backend. See the module docstring for guarantees."""

    def __init__(self, path: Path, *, remediation_wait_s: float = 600.0) -> None:
        if not math.isfinite(remediation_wait_s) or remediation_wait_s < 0:
            raise ValueError(
                f"remediation_wait_s: must be a non-negative number, got {remediation_wait_s!r}"
            )
        self._path = Path(path)
        self._wait = remediation_wait_s
        self._lock = threading.Lock()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(self._path, f"cannot open database: {exc}") from None
        try:
            self._setup()
            self._agg = self._load_aggregates()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(self._path, f"cannot open database: {exc}") from None

    def _setup(self) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this collector supports"
                f" ({_SCHEMA_VERSION})"
            )
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is fsynced before ingest returns, so the ack to the agent is true.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        with self._transaction():
            # Not executescript(): it would COMMIT first and escape the transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # IMMEDIATE takes the write lock up front, so the batch_id check and the writes
        # cannot interleave with another writer on the same file.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _load_aggregates(self) -> _Aggregates:
        db = self._db
        agg = _Aggregates()
        for agent_id, last_seen, ttl in db.execute(
            "SELECT agent_id, last_seen, heartbeat_ttl_s FROM hosts"
        ):
            agg.host_last_seen[agent_id] = last_seen
            if ttl is not None:
                agg.host_ttl[agent_id] = ttl
        for priority, check, n in db.execute(
            "SELECT priority, check_id, COUNT(*) FROM incidents WHERE state = 'open'"
            " GROUP BY priority, check_id"
        ):
            agg.incidents_open[(priority, check)] = n
        for check, n in db.execute(
            "SELECT check_id, COUNT(*) FROM check_state WHERE state = 'critical' GROUP BY check_id"
        ):
            agg.checks_failing[check] = n
        for name, outcome, n in db.execute(
            "SELECT remediation, outcome, COUNT(*) FROM remediation_runs"
            " GROUP BY remediation, outcome"
        ):
            agg.remediation_runs[(name, outcome)] = n
        for name, value in db.execute("SELECT name, value FROM counters"):
            agg.counters[name] = value
        # Incident totals come from the incidents table itself (incidents are never
        # deleted), so they cannot drift from what the API shows.
        for state, n in db.execute("SELECT state, COUNT(*) FROM incidents GROUP BY state"):
            if state == "prevented":
                agg.counters["incidents_prevented"] = n
            else:
                agg.counters["incidents_opened"] += n
                if state == "resolved":
                    agg.counters["incidents_resolved"] = n
        return agg

    # ----------------------------------------------------------------- ingest

    def ingest(self, report: wire.Report, received_at: float) -> IngestResult:
        """Apply ``report`` durably, exactly once, and say what it changed.

        ``received_at``: collector receive time (Unix seconds). Events are applied in
        ``seq`` order. Returns ``duplicate=True`` and changes nothing (except the duplicate
        counter) when this agent's ``batch_id`` was stored before. Raises ``sqlite3.Error``
        if the database fails, in which case nothing was applied and the report must not
        be acknowledged.
        """
        if not math.isfinite(received_at):
            raise ValueError(f"received_at: must be a finite number, got {received_at!r}")
        host = report.agent_id
        delta = _Aggregates()
        changes = _Changes()
        applied = 0
        with self._lock:
            with self._transaction():
                seen = self._db.execute(
                    "SELECT 1 FROM batches WHERE host = ? AND batch_id = ?",
                    (host, report.batch_id),
                ).fetchone()
                if seen is not None:
                    self._bump("reports_duplicate", 1, delta)
                else:
                    self._upsert_host(report, received_at, delta)
                    for event in sorted(report.events, key=lambda e: e.seq):
                        if self._apply_event(report, event, received_at, delta, changes):
                            applied += 1
                    self._db.execute(
                        "INSERT INTO batches (host, batch_id, received_at, events)"
                        " VALUES (?, ?, ?, ?)",
                        (host, report.batch_id, received_at, applied),
                    )
                    self._bump("reports_accepted", 1, delta)
                    self._bump("events", applied, delta)
            self._agg.merge(delta)
        return IngestResult(
            duplicate=seen is not None,
            events=applied,
            opened=tuple(changes.opened),
            resolved=tuple(changes.resolved),
            prevented=tuple(changes.prevented),
        )

    def _bump(self, name: str, n: int, delta: _Aggregates) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )
        delta.counters[name] += n

    def _upsert_host(self, report: wire.Report, received_at: float, delta: _Aggregates) -> None:
        self._db.execute(
            "INSERT INTO hosts (agent_id, hostname, labels, agent_version, first_seen,"
            " last_seen, last_sent_at, clock_offset_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (agent_id) DO UPDATE SET hostname = excluded.hostname,"
            " labels = excluded.labels, agent_version = excluded.agent_version,"
            " last_seen = excluded.last_seen,"
            " last_sent_at = excluded.last_sent_at, clock_offset_s = excluded.clock_offset_s",
            (
                report.agent_id,
                report.hostname,
                json.dumps(report.labels, sort_keys=True),
                report.agent_version,
                received_at,
                received_at,
                report.sent_at,
                received_at - report.sent_at,
            ),
        )
        delta.host_last_seen[report.agent_id] = received_at

    def _apply_event(
        self,
        report: wire.Report,
        event: wire.Event,
        received_at: float,
        delta: _Aggregates,
        changes: _Changes,
    ) -> bool:
        """Apply one event unless this agent sent it before; True if it was applied."""
        host = report.agent_id
        cur = self._db.execute(
            "INSERT OR IGNORE INTO events_seen (host, event_id, received_at) VALUES (?, ?, ?)",
            (host, event.event_id, received_at),
        )
        if cur.rowcount == 0:
            return False
        if isinstance(event, wire.MetricsEvent):
            self._store_metrics(host, event, received_at)
        elif isinstance(event, wire.CheckEvent):
            self._store_check(report, event, received_at, delta, changes)
        else:
            self._store_run(report, event, received_at, delta, changes)
        return True

    def _store_metrics(self, host: str, event: wire.MetricsEvent, received_at: float) -> None:
        # Only the latest value per series is kept; an older event (a late retry) must not
        # overwrite a newer one, hence the WHERE on the agent's own timestamp.
        self._db.executemany(
            "INSERT INTO metrics_latest (host, series, value, time, received_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (host, series) DO UPDATE SET"
            " value = excluded.value, time = excluded.time, received_at = excluded.received_at"
            " WHERE excluded.time >= metrics_latest.time",
            [(host, s, v, event.time, received_at) for s, v in event.values.items()],
        )

    def _store_check(
        self,
        report: wire.Report,
        event: wire.CheckEvent,
        received_at: float,
        delta: _Aggregates,
        changes: _Changes,
    ) -> None:
        host = report.agent_id
        if event.check == wire.HEARTBEAT_CHECK:
            if event.ttl_s is not None:
                self._db.execute(
                    "UPDATE hosts SET heartbeat_ttl_s = ? WHERE agent_id = ?",
                    (event.ttl_s, host),
                )
                delta.host_ttl[host] = event.ttl_s
            return
        self._db.execute(
            "INSERT INTO check_results (host, event_id, seq, time, received_at, check_id,"
            " state, previous_state, value, message, remediation, ttl_s)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                host,
                event.event_id,
                event.seq,
                event.time,
                received_at,
                event.check,
                event.state,
                event.previous_state,
                event.value,
                event.message,
                event.remediation,
                event.ttl_s,
            ),
        )
        old = self._load_key(host, event.check)
        new, actions = incidents.on_check(old or KeyState(), event, received_at)
        self._carry_out(
            host, report.hostname, event.check, old, new, actions, received_at, delta, changes
        )

    def _store_run(
        self,
        report: wire.Report,
        event: wire.RemediationEvent,
        received_at: float,
        delta: _Aggregates,
        changes: _Changes,
    ) -> None:
        host = report.agent_id
        self._db.execute(
            f"INSERT INTO remediation_runs ({_RUN_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                host,
                report.hostname,
                received_at,
                event.event_id,
                event.seq,
                event.time,
                event.remediation,
                event.check,
                event.outcome,
                event.exit_code,
                event.started_at,
                event.duration_s,
                event.value_before,
                event.value_after,
                event.output,
                int(event.output_truncated),
                event.script_sha256,
                int(event.dry_run),
            ),
        )
        delta.remediation_runs[(event.remediation, event.outcome)] += 1
        if event.check is None:
            return  # triggered by a detection script, not a check: no incident key
        old = self._load_key(host, event.check)
        new, actions = incidents.on_remediation(old or KeyState(), event, received_at)
        self._carry_out(
            host, report.hostname, event.check, old, new, actions, received_at, delta, changes
        )

    # ----------------------------------------------------------------- engine state

    def _load_key(self, host: str, check: str) -> KeyState | None:
        row = self._db.execute(
            "SELECT state, awaiting, awaiting_since, incident_id, value, message"
            " FROM check_state WHERE host = ? AND check_id = ?",
            (host, check),
        ).fetchone()
        if row is None:
            return None
        return KeyState(
            check_state=row[0],
            awaiting=row[1],
            awaiting_since=row[2],
            incident_id=row[3],
            value=row[4],
            message=row[5],
        )

    def _carry_out(
        self,
        host: str,
        hostname: str,
        check: str,
        old: KeyState | None,
        new: KeyState,
        actions: list[incidents.Action],
        now: float,
        delta: _Aggregates,
        changes: _Changes,
    ) -> None:
        """Perform the engine's actions for one key, then save the key's new state."""
        target = old.incident_id if old is not None else None
        for action in actions:
            if isinstance(action, OpenIncident):
                priority = incidents.default_priority(check, new.check_state)
                target = self._insert_incident(
                    host=host,
                    hostname=hostname,
                    check_id=check,
                    state="open",
                    priority=priority,
                    opened_at=now,
                    value=action.value,
                    message=action.message,
                    remediation=action.remediation,
                    remediation_outcome=action.remediation_outcome,
                )
                self._timeline(target, now, f"opened: {action.reason}")
                new = replace(new, incident_id=target)
                delta.incidents_open[(priority, check)] += 1
                delta.counters["incidents_opened"] += 1
                changes.opened.append(target)
            elif isinstance(action, RecordPrevented):
                priority = incidents.default_priority(check, "critical")
                prevented = self._insert_incident(
                    host=host,
                    hostname=hostname,
                    check_id=check,
                    state="prevented",
                    priority=priority,
                    opened_at=now,
                    resolved_at=now,
                    value=action.value_before,
                    message=action.message,
                    remediation=action.remediation,
                    remediation_outcome="fixed",
                    resolution=f"prevented by {action.remediation}",
                )
                before, after = _num(action.value_before), _num(action.value_after)
                self._timeline(
                    prevented,
                    now,
                    f"prevented: {action.remediation} fixed it ({before} -> {after})",
                )
                delta.counters["incidents_prevented"] += 1
                changes.prevented.append(prevented)
            elif target is None:
                # A resolve or note with no open incident: the engine never asks for
                # that, so it is a bug worth seeing, not a reason to fail the report.
                log.warning(
                    "incident action %r for %s/%s without an open incident", action, host, check
                )
            elif isinstance(action, ResolveIncident):
                self._resolve(target, now, action.reason, delta)
                changes.resolved.append(target)
                target = None
            elif isinstance(action, AddTimeline):
                self._timeline(target, now, action.text)
        # A key with no row yet is saved only once it differs from the default, so a run
        # for a check that never reported leaves no phantom "ok" state behind.
        if (old or KeyState()) != new:
            self._save_key(host, check, old, new, now, delta)

    def _save_key(
        self,
        host: str,
        check: str,
        old: KeyState | None,
        new: KeyState,
        now: float,
        delta: _Aggregates,
    ) -> None:
        self._db.execute(
            "INSERT INTO check_state (host, check_id, state, value, message, updated_at,"
            " awaiting, awaiting_since, incident_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (host, check_id) DO UPDATE SET state = excluded.state,"
            " value = excluded.value, message = excluded.message,"
            " updated_at = excluded.updated_at, awaiting = excluded.awaiting,"
            " awaiting_since = excluded.awaiting_since, incident_id = excluded.incident_id",
            (
                host,
                check,
                new.check_state,
                new.value,
                new.message,
                now,
                new.awaiting,
                new.awaiting_since,
                new.incident_id,
            ),
        )
        was_failing = old is not None and old.check_state == "critical"
        is_failing = new.check_state == "critical"
        if is_failing != was_failing:
            delta.checks_failing[check] += 1 if is_failing else -1

    def _insert_incident(self, **row: Any) -> int:
        """Insert an incident from column=value pairs (names are ours, never user input)."""
        columns = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        cur = self._db.execute(
            f"INSERT INTO incidents ({columns}) VALUES ({marks})", tuple(row.values())
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def _resolve(self, incident_id: int, now: float, reason: str, delta: _Aggregates) -> None:
        row = self._db.execute(
            "UPDATE incidents SET state = 'resolved', resolved_at = ?, resolution = ?"
            " WHERE id = ? AND state = 'open' RETURNING priority, check_id",
            (now, reason, incident_id),
        ).fetchall()  # not fetchone(): a RETURNING statement must run to completion
        if not row:
            log.warning("incident %d to resolve is not open", incident_id)
            return
        self._timeline(incident_id, now, f"resolved: {reason}")
        ((priority, check),) = row
        delta.incidents_open[(priority, check)] -= 1
        delta.counters["incidents_resolved"] += 1

    def _timeline(self, incident_id: int, at: float, text: str) -> None:
        self._db.execute(
            "INSERT INTO incident_timeline (incident_id, at, text) VALUES (?, ?, ?)",
            (incident_id, at, text),
        )

    # ----------------------------------------------------------------- tick

    def tick(self, now: float) -> tuple[int, ...]:
        """Run :func:`collector.incidents.on_tick` over every key awaiting a remediation.

        ``now``: collector time (Unix seconds). Returns the ids of incidents opened because
        a promised remediation result did not arrive within ``remediation_wait_s``.
        """
        delta = _Aggregates()
        changes = _Changes()
        with self._lock:
            with self._transaction():
                rows = self._db.execute(
                    "SELECT c.host, c.check_id, COALESCE(h.hostname, c.host) FROM check_state c"
                    " LEFT JOIN hosts h ON h.agent_id = c.host WHERE c.awaiting IS NOT NULL"
                ).fetchall()
                for host, check, hostname in rows:
                    old = self._load_key(host, check)
                    assert old is not None
                    new, actions = incidents.on_tick(old, now, self._wait)
                    if old != new or actions:
                        self._carry_out(
                            host, hostname, check, old, new, actions, now, delta, changes
                        )
            self._agg.merge(delta)
        return tuple(changes.opened)

    # ----------------------------------------------------------------- retention

    def prune_seen(self, before: float) -> int:
        """Forget batch and event ids received before ``before`` (Unix seconds).

        Deduplication only needs ids for as long as an agent may retry a batch; without
        pruning these tables grow with every event. Returns the number of rows deleted.
        A batch retried after its id was pruned would be applied again.
        """
        with self._lock, self._transaction():
            n = self._db.execute("DELETE FROM batches WHERE received_at < ?", (before,)).rowcount
            n += self._db.execute(
                "DELETE FROM events_seen WHERE received_at < ?", (before,)
            ).rowcount
        return n

    # ----------------------------------------------------------------- reads

    def list_incidents(
        self,
        *,
        state: str | None = None,
        host: str | None = None,
        check: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Incidents, newest first, optionally filtered by state, host (agent_id), check.

        Raises ``ValueError`` naming the argument for an unknown ``state`` or a ``limit``
        outside 1..:data:`MAX_LIMIT` or a negative ``offset``.
        """
        if state is not None and state not in INCIDENT_STATES:
            raise ValueError(f"state: must be one of {list(INCIDENT_STATES)}, got {state!r}")
        _check_page(limit, offset)
        where, args = _where(("state", state), ("host", host), ("check_id", check))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_INCIDENT_COLUMNS} FROM incidents{where}"
                " ORDER BY id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [_incident_dict(row) for row in rows]

    def get_incident(self, incident_id: int) -> dict[str, Any] | None:
        """One incident with its ``timeline`` (``[{"at", "text"}]``, oldest first), or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE id = ?", (incident_id,)
            ).fetchone()
            if row is None:
                return None
            timeline = self._db.execute(
                "SELECT at, text FROM incident_timeline WHERE incident_id = ? ORDER BY id",
                (incident_id,),
            ).fetchall()
        incident = _incident_dict(row)
        incident["timeline"] = [{"at": at, "text": text} for at, text in timeline]
        return incident

    def list_hosts(self) -> list[dict[str, Any]]:
        """Every host that ever reported, by agent_id, with current check states
        (heartbeat excluded) and its number of open incidents."""
        with self._lock:
            hosts = self._db.execute(
                "SELECT agent_id, hostname, labels, agent_version, first_seen, last_seen,"
                " clock_offset_s, heartbeat_ttl_s FROM hosts ORDER BY agent_id"
            ).fetchall()
            checks = self._db.execute(
                "SELECT host, check_id, state FROM check_state ORDER BY host, check_id"
            ).fetchall()
            open_counts = dict(
                self._db.execute(
                    "SELECT host, COUNT(*) FROM incidents WHERE state = 'open' GROUP BY host"
                ).fetchall()
            )
        by_host: dict[str, dict[str, str]] = {}
        for host, check, state in checks:
            by_host.setdefault(host, {})[check] = state
        return [
            {
                "agent_id": agent_id,
                "hostname": hostname,
                "labels": json.loads(labels),
                "agent_version": version,
                "first_seen": first_seen,
                "last_seen": last_seen,
                "clock_offset_s": offset,
                "heartbeat_ttl_s": ttl,
                "open_incidents": open_counts.get(agent_id, 0),
                "checks": by_host.get(agent_id, {}),
            }
            for agent_id, hostname, labels, version, first_seen, last_seen, offset, ttl in hosts
        ]

    def latest_metrics(self, agent_id: str) -> dict[str, float]:
        """The latest value of every metric series a host reported (empty if unknown)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT series, value FROM metrics_latest WHERE host = ? ORDER BY series",
                (agent_id,),
            ).fetchall()
        return dict(rows)

    def list_remediation_runs(
        self,
        *,
        host: str | None = None,
        remediation: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Remediation runs, newest first: every RemediationEvent field plus ``host``
        (agent_id), ``hostname`` and ``received_at``. ``ValueError`` for a bad page."""
        _check_page(limit, offset)
        where, args = _where(("host", host), ("remediation", remediation))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_RUN_COLUMNS} FROM remediation_runs{where}"
                " ORDER BY id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [_run_dict(row) for row in rows]

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Copy the in-memory aggregates (no I/O; cost proportional to their size)."""
        with self._lock:
            agg = self._agg
            return MetricsSnapshot(
                host_last_seen=dict(agg.host_last_seen),
                host_ttl=dict(agg.host_ttl),
                incidents_open=dict(agg.incidents_open),
                incidents_opened_total=agg.counters["incidents_opened"],
                incidents_resolved_total=agg.counters["incidents_resolved"],
                incidents_prevented_total=agg.counters["incidents_prevented"],
                checks_failing=dict(agg.checks_failing),
                remediation_runs=dict(agg.remediation_runs),
                reports_accepted_total=agg.counters["reports_accepted"],
                reports_duplicate_total=agg.counters["reports_duplicate"],
                events_total=agg.counters["events"],
            )

    def close(self) -> None:
        """Close the database; safe to call twice."""
        with self._lock:
            self._db.close()


# --------------------------------------------------------------------------- helpers


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: must be between 1 and {MAX_LIMIT}, got {limit!r}")
    if offset < 0:
        raise ValueError(f"offset: must be 0 or more, got {offset!r}")


def _where(*filters: tuple[str, str | None]) -> tuple[str, list[str]]:
    """`` WHERE a = ? AND b = ?`` for the filters that are set (column names are ours)."""
    used = [(column, value) for column, value in filters if value is not None]
    if not used:
        return "", []
    return " WHERE " + " AND ".join(f"{c} = ?" for c, _ in used), [v for _, v in used]


def _keys(columns: str) -> tuple[str, ...]:
    """Dict keys for a column list: the API says ``check`` where SQL says ``check_id``."""
    names = (c.strip() for c in columns.split(","))
    return tuple("check" if n == "check_id" else n for n in names)


_INCIDENT_KEYS = _keys(_INCIDENT_COLUMNS)
_RUN_KEYS = _keys(_RUN_COLUMNS)


def _incident_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_INCIDENT_KEYS, row, strict=True))


def _run_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    run = dict(zip(_RUN_KEYS, row, strict=True))
    run["output_truncated"] = bool(run["output_truncated"])
    run["dry_run"] = bool(run["dry_run"])
    run["type"] = "remediation"
    return run


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"
