"""The collector's SQLite store: durable, idempotent ingest plus the aggregates for /metrics.

Durability: WAL journal with ``synchronous=FULL``, so a report is on disk once
:meth:`SqliteStore.ingest` returns and the handler may acknowledge it (an acknowledged
batch is deleted by the agent; losing it here would lose it for good).

Exactly-once effect: a whole report is applied in ONE transaction. A ``batch_id`` already
stored for the agent makes the report a duplicate and nothing is applied; every event id is
recorded too, so an event re-sent inside a different batch is not applied twice. Both are
unique per agent (``agent_id``), not globally, so two agents that happen to reuse ids
cannot swallow each other's data. :meth:`SqliteStore.prune_seen` bounds that table, so
each host row also keeps the agent's last applied ``batch_id``: the only batch an agent
retries is its oldest unacknowledged one, so a retry however late (a laptop that shut
down between sending and the ack, back after weeks) is recognised after its ids expired.

Time: incidents, timelines and the host's ``last_seen`` use the collector's receive time
(``received_at``), which tolerates agent clock skew; the agent's own timestamps are kept
next to it (``time`` on check results and remediation runs) and the skew is estimated from
``received_at - sent_at`` (``clock_offset_s``: the smallest recent sample, so network and
queueing delay add as little as possible; see ``_upsert_host``).

Heartbeats (:data:`agent.wire.HEARTBEAT_CHECK`) only refresh the host's ``last_seen`` and
``heartbeat_ttl_s``; they are not stored as check results (one per minute per host would
dwarf the useful history) and never open incidents.

Aggregates: :meth:`SqliteStore.metrics_snapshot` returns counters and gauges held in
memory, loaded from the database at open and changed only after a commit succeeded, so a
scrape never waits for the disk and never sees a rolled-back report. They have their own
lock, never held across a database call, so a snapshot does not queue behind a commit.

One connection guarded by a lock: the app calls the store from one worker thread, and
the lock keeps that safe from any thread.
"""

from __future__ import annotations

import array
import contextlib
import functools
import itertools
import json
import logging
import math
import sqlite3
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vigil import wire
from vigil.collector import incidents
from vigil.collector.catalog import EMPTY_CATALOG, Catalog, Classification
from vigil.collector.incidents import (
    AddTimeline,
    IncidentRules,
    KeyState,
    OpenIncident,
    RecordPrevented,
    ResolveIncident,
)
from vigil.collector.metrics import (
    AGENT_CPU_BUCKETS,
    AGENT_CPU_SERIES,
    AGENT_RSS_BUCKETS,
    AGENT_RSS_SERIES,
    CLOCK_OFFSET_BUCKETS_S,
    RESTORE_BUCKETS_S,
    RUN_BUCKETS_S,
    AgentFootprint,
    BucketCounts,
    FleetDistribution,
    LivenessIndex,
    LivenessView,
)

log = logging.getLogger("vigil.collector.store")

# 2: host_metrics (one row per host) replaces metrics_latest; seen replaces batches and
# events_seen (fewer statements and page writes per report).
_SCHEMA_VERSION = 2

INCIDENT_STATES: tuple[str, ...] = ("open", "resolved", "prevented")
# Counters the ingest path keeps in the ``counters`` table, written once per group commit.
_INGEST_COUNTERS = ("reports_accepted", "reports_duplicate", "events")
_JSON_MEMO_SIZE = 4096  # distinct label sets / series-name lists kept as JSON text
_SEEN_BATCH, _SEEN_EVENT = 0, 1  # seen.kind
# The clock-offset estimate (see SqliteStore._upsert_host): a sample further than this
# from it replaces it (seconds), and it may rise this much per second without one (100 ppm,
# more than a quartz clock drifts).
CLOCK_STEP_S = 5.0
CLOCK_DRIFT_PER_S = 1e-4
# States a list can filter on: ``open`` (all not yet resolved) and its refinements.
LIST_STATES: tuple[str, ...] = ("open", "acknowledged", "flapping", "resolved", "prevented")
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
    clock_offset_s  REAL NOT NULL,  -- estimate from received_at - sent_at (see _upsert_host)
    heartbeat_ttl_s REAL
);
-- Idempotency: every batch id (kind 0) and event id (kind 1) an agent sent, keyed by
-- host first so one report's ids share a page of the key index. (A rowid table: WITHOUT
-- ROWID would copy the whole key into the received_at index, measured slower.)
CREATE TABLE IF NOT EXISTS seen (
    host        TEXT NOT NULL,
    kind        INTEGER NOT NULL,  -- 0 batch id, 1 event id
    id          TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (host, kind, id)
);
CREATE INDEX IF NOT EXISTS seen_received ON seen (received_at);
CREATE TABLE IF NOT EXISTS host_metrics (
    host        TEXT PRIMARY KEY,
    time        REAL NOT NULL,  -- agent clock of the summary
    received_at REAL NOT NULL,
    agent_cpu   REAL,           -- the agent's own footprint, read at start-up for /metrics
    agent_rss   REAL,
    names       TEXT NOT NULL,  -- JSON array of series names
    vals        BLOB NOT NULL   -- the values in the same order, float64 little-endian
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
    " remediation, remediation_outcome, resolution, service, impact, urgency, sla_due,"
    " acknowledged_at, acknowledged_by, flapping, root_cause, corrective_action,"
    " preventive_action"
)

# Incident desk (issue 6): problems, silences, and the incident columns added to schema 1
# databases in place (ALTER TABLE ADD COLUMN is cheap and keeps existing rows).
_DESK_SCHEMA = """
CREATE TABLE IF NOT EXISTS problems (
    id                  INTEGER PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('recurring', 'fleet')),
    check_id            TEXT NOT NULL,
    host                TEXT,           -- NULL for a fleet problem
    hostname            TEXT,
    service             TEXT,
    impact              TEXT NOT NULL,
    urgency             TEXT NOT NULL,
    priority            TEXT NOT NULL,
    sla_due             REAL,
    state               TEXT NOT NULL CHECK (state IN ('open', 'resolved')),
    opened_at           REAL NOT NULL,
    resolved_at         REAL,
    acknowledged_at     REAL,
    acknowledged_by     TEXT,
    summary             TEXT NOT NULL,
    resolution          TEXT,
    root_cause          TEXT,
    corrective_action   TEXT,
    preventive_action   TEXT,
    notified_at         REAL,
    resolve_notified_at REAL
);
CREATE INDEX IF NOT EXISTS problems_key ON problems (kind, check_id, state);
CREATE TABLE IF NOT EXISTS problem_incidents (
    problem_id  INTEGER NOT NULL REFERENCES problems (id),
    incident_id INTEGER NOT NULL REFERENCES incidents (id),
    PRIMARY KEY (problem_id, incident_id)
);
CREATE INDEX IF NOT EXISTS problem_incidents_incident ON problem_incidents (incident_id);
CREATE TABLE IF NOT EXISTS problem_timeline (
    id         INTEGER PRIMARY KEY,
    problem_id INTEGER NOT NULL REFERENCES problems (id),
    at         REAL NOT NULL,
    text       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS problem_timeline_problem ON problem_timeline (problem_id, id);
CREATE TABLE IF NOT EXISTS silences (
    id         INTEGER PRIMARY KEY,
    matcher    TEXT NOT NULL,
    value      TEXT NOT NULL,
    starts_at  REAL NOT NULL,
    ends_at    REAL NOT NULL,
    comment    TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_check_open ON incidents (check_id, state, opened_at);
CREATE INDEX IF NOT EXISTS check_state_flapping ON check_state (host, check_id)
    WHERE flapping = 1;
"""
_DESK_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "incidents": (
        ("service", "TEXT"),
        ("impact", "TEXT"),
        ("urgency", "TEXT"),
        ("sla_due", "REAL"),
        ("groups", "TEXT NOT NULL DEFAULT '[]'"),  # JSON list of catalog group names
        ("acknowledged_at", "REAL"),
        ("acknowledged_by", "TEXT"),
        ("flapping", "INTEGER NOT NULL DEFAULT 0"),
        ("root_cause", "TEXT"),
        ("corrective_action", "TEXT"),
        ("preventive_action", "TEXT"),
        ("notified_at", "REAL"),
        ("resolve_notified_at", "REAL"),
    ),
    "check_state": (("flapping", "INTEGER NOT NULL DEFAULT 0"),),
    # The agent's last applied batch: its retry is a duplicate even after prune_seen.
    "hosts": (("last_batch_id", "TEXT"),),
    # The agent said the check is flapping (it then holds the worse state and sends no
    # more changes, so the collector cannot count them itself).
    "check_results": (("flapping", "INTEGER NOT NULL DEFAULT 0"),),
}
_PROBLEM_COLUMNS = (
    "id, kind, check_id, host, hostname, service, impact, urgency, priority, sla_due, state,"
    " opened_at, resolved_at, acknowledged_at, acknowledged_by, summary, resolution,"
    " root_cause, corrective_action, preventive_action"
)
_SILENCE_COLUMNS = "id, matcher, value, starts_at, ends_at, comment, created_by, created_at"
_TABLES = {"incident": "incidents", "problem": "problems"}  # names are ours, never input
_CAPA = ("root_cause", "corrective_action", "preventive_action")
_RUN_COLUMNS = (
    "host, hostname, received_at, event_id, seq, time, remediation, check_id, outcome,"
    " exit_code, started_at, duration_s, value_before, value_after, output, output_truncated,"
    " script_sha256, dry_run"
)


class StateError(Exception):
    """An operation does not apply to the record's current state (e.g. acknowledging a
    resolved incident)."""


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
    """In-memory aggregates for /metrics; building one does no I/O and costs O(buckets +
    label values + itemized hosts), not O(hosts).

    Times are Unix seconds (collector clock). Totals count since the database was created.
    ``checks_failing`` counts hosts whose last state for the check is ``critical``;
    ``incidents_open`` is keyed ``(priority, check)``. ``host_detail`` lists the first
    ``host_series`` hosts (first-seen order, so a host keeps its series) as ``(agent_id,
    hostname, last_seen)``; ``host_overflow`` is ``(hosts not listed, oldest last_seen
    among them or None)``.

    ``incidents_acknowledged``, ``incidents_past_sla`` and ``problems_open`` are counted by
    SQL in :meth:`SqliteStore.refresh_metrics_figures`, off the scrape path.
    ``remediations_paused`` waits for the blast-radius guard and stays empty until then.
    ``liveness_silence_expected`` covers the hosts the catalog expects to go quiet.
    """

    liveness: LivenessView
    incidents_open: dict[tuple[str, str], int]
    incidents_opened_total: int
    incidents_resolved_total: int
    incidents_prevented_total: int
    checks_failing: dict[str, int]
    remediation_runs: dict[tuple[str, str], int]
    reports_accepted_total: int
    reports_duplicate_total: int
    events_total: int
    clock_offsets: BucketCounts = field(
        default_factory=lambda: BucketCounts.empty(CLOCK_OFFSET_BUCKETS_S)
    )
    time_to_restore: dict[str, BucketCounts] = field(default_factory=dict)
    remediation_durations: dict[str, BucketCounts] = field(default_factory=dict)
    agent_cpu: BucketCounts = field(default_factory=lambda: BucketCounts.empty(AGENT_CPU_BUCKETS))
    agent_rss: BucketCounts = field(default_factory=lambda: BucketCounts.empty(AGENT_RSS_BUCKETS))
    host_detail: tuple[tuple[str, str, float], ...] = ()
    host_overflow: tuple[int, float | None] = (0, None)
    # Every host's last_seen and heartbeat TTL: O(hosts) to copy, so left empty when
    # metrics_snapshot(host_maps=False) (the /metrics path does not need them).
    host_last_seen: dict[str, float] = field(default_factory=dict)
    host_ttl: dict[str, float] = field(default_factory=dict)
    # ---- refreshed by refresh_metrics_figures() (at most one tick old)
    incidents_acknowledged: dict[str, int] = field(default_factory=dict)  # open, by priority
    incidents_past_sla: dict[str, int] = field(default_factory=dict)  # open, by priority
    problems_open: dict[str, int] = field(default_factory=dict)  # by kind (recurring, fleet)
    # ---- filled by later stages; empty until then
    remediations_paused: tuple[str, ...] = ()  # remediation ids paused fleet-wide
    # Hosts in a catalog group whose silence is expected (laptops): silent means asleep.
    liveness_silence_expected: LivenessView = field(default_factory=LivenessView)


@dataclass(slots=True)
class _Aggregates:
    """Mutable aggregates; a fresh instance holds the deltas of one transaction.

    The long-lived instance also keeps derived, incrementally updated structures
    (``liveness``, ``clock_skew``, ``footprint``) that :meth:`merge` maintains from a
    delta's ``host_*`` maps and ``footprint_samples``; a delta leaves them empty.
    """

    host_last_seen: dict[str, float] = field(default_factory=dict)
    host_ttl: dict[str, float] = field(default_factory=dict)
    host_names: dict[str, str] = field(default_factory=dict)
    host_clock_offset: dict[str, float] = field(default_factory=dict)
    host_silence_expected: dict[str, bool] = field(default_factory=dict)
    incidents_open: Counter[tuple[str, str]] = field(default_factory=Counter)
    checks_failing: Counter[str] = field(default_factory=Counter)
    remediation_runs: Counter[tuple[str, str]] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)
    time_to_restore: dict[str, BucketCounts] = field(default_factory=dict)
    run_durations: dict[str, BucketCounts] = field(default_factory=dict)
    footprint_samples: list[tuple[str, float, dict[str, float]]] = field(default_factory=list)
    liveness: LivenessIndex = field(default_factory=LivenessIndex)
    asleep_liveness: LivenessIndex = field(default_factory=LivenessIndex)
    clock_skew: FleetDistribution = field(
        default_factory=lambda: FleetDistribution(CLOCK_OFFSET_BUCKETS_S)
    )
    footprint: AgentFootprint = field(default_factory=AgentFootprint)
    # Replaced whole by SqliteStore.refresh_metrics_figures(), never merged.
    incidents_acknowledged: dict[str, int] = field(default_factory=dict)
    incidents_past_sla: dict[str, int] = field(default_factory=dict)
    problems_open: dict[str, int] = field(default_factory=dict)
    # Guards the long-lived instance between merge() and metrics_snapshot(). Not the
    # store's lock: that one is held across COMMIT (an fsync), and a scrape must never
    # wait for the disk.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def observe_restore(self, priority: str, seconds: float) -> None:
        """Count one incident restored after ``seconds`` (time to restore, by priority)."""
        hist = self.time_to_restore.setdefault(priority, BucketCounts.empty(RESTORE_BUCKETS_S))
        hist.observe(max(seconds, 0.0))

    def observe_run_duration(self, remediation: str, seconds: float) -> None:
        """Count one remediation run that took ``seconds``."""
        hist = self.run_durations.setdefault(remediation, BucketCounts.empty(RUN_BUCKETS_S))
        hist.observe(seconds)

    def note_footprint(self, host: str, at: float, values: dict[str, float]) -> None:
        """Keep a metrics summary's agent-footprint values, if it has any."""
        own = {k: values[k] for k in (AGENT_CPU_SERIES, AGENT_RSS_SERIES) if k in values}
        if own:
            self.footprint_samples.append((host, at, own))

    def merge(self, delta: _Aggregates) -> None:
        with self.lock:
            self._merge(delta)

    def _merge(self, delta: _Aggregates) -> None:
        self.host_last_seen.update(delta.host_last_seen)
        self.host_ttl.update(delta.host_ttl)
        self.host_names.update(delta.host_names)
        self.host_silence_expected.update(delta.host_silence_expected)
        for host in delta.host_last_seen.keys() | delta.host_ttl.keys():
            seen = self.host_last_seen.get(host)
            if seen is not None:
                self.liveness.update(host, seen, self.host_ttl.get(host))
                if self.host_silence_expected.get(host):
                    self.asleep_liveness.update(host, seen, self.host_ttl.get(host))
                else:
                    self.asleep_liveness.discard(host)
        for host, offset in delta.host_clock_offset.items():
            self.clock_skew.set(host, abs(offset))
        for host, at, values in delta.footprint_samples:
            self.footprint.update(host, at, values)
        for mine, theirs in (
            (self.time_to_restore, delta.time_to_restore),
            (self.run_durations, delta.run_durations),
        ):
            for key, hist in theirs.items():
                if key in mine:
                    mine[key].add(hist)
                else:
                    mine[key] = hist.copy()
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

    def __init__(
        self,
        path: Path,
        *,
        remediation_wait_s: float = 600.0,
        catalog: Catalog = EMPTY_CATALOG,
        rules: IncidentRules | None = None,
    ) -> None:
        if not math.isfinite(remediation_wait_s) or remediation_wait_s < 0:
            raise ValueError(
                f"remediation_wait_s: must be a non-negative number, got {remediation_wait_s!r}"
            )
        self._path = Path(path)
        self._wait = remediation_wait_s
        self._catalog = catalog
        self._rules = rules or IncidentRules(remediation_wait_s=remediation_wait_s)
        self._lock = threading.Lock()
        # JSON text of label sets and series-name lists seen lately (see _labels_json).
        self._json_memo: dict[tuple[Any, ...], str] = {}
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
            self._migrate_desk()
            self._migrate_host_metrics()
            self._migrate_seen()
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

    def _migrate_desk(self) -> None:
        """Create the incident-desk tables and add its columns to older databases."""
        for table, columns in _DESK_COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns:
                if name not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        for statement in _DESK_SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def _migrate_host_metrics(self) -> None:
        """Schema 1 kept one ``metrics_latest`` row per (host, series); fold each host's
        rows into its ``host_metrics`` row (newest time per host) and drop the table."""
        exists = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'metrics_latest'"
        ).fetchone()
        if exists is None:
            return
        by_host: dict[str, tuple[float, float, dict[str, float]]] = {}
        for host, series, value, at, received_at in self._db.execute(
            "SELECT host, series, value, time, received_at FROM metrics_latest ORDER BY host"
        ):
            old_at, old_received, values = by_host.get(host, (at, received_at, {}))
            values[series] = value
            by_host[host] = (max(old_at, at), max(old_received, received_at), values)
        for host, (at, received_at, values) in by_host.items():
            self._write_host_metrics(host, at, received_at, values)
        self._db.execute("DROP TABLE metrics_latest")

    def _migrate_seen(self) -> None:
        """Schema 1 kept batch ids and event ids in two tables; move them into ``seen``."""
        for table, kind, column in (
            ("batches", _SEEN_BATCH, "batch_id"),
            ("events_seen", _SEEN_EVENT, "event_id"),
        ):
            exists = self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            if exists is not None:
                self._db.execute(
                    f"INSERT OR IGNORE INTO seen (host, kind, id, received_at)"
                    f" SELECT host, {kind}, {column}, received_at FROM {table}"
                )
                self._db.execute(f"DROP TABLE {table}")

    def _write_host_metrics(
        self, host: str, at: float, received_at: float, values: dict[str, float]
    ) -> None:
        # A late retry of an older summary must not overwrite a newer one, hence the WHERE
        # on the agent's own timestamp. One row per host (not per series): a summary costs
        # one B-tree write instead of ~40, which is most of what ingest spends in SQLite.
        self._db.execute(
            "INSERT INTO host_metrics (host, time, received_at, agent_cpu, agent_rss, names,"
            " vals) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host) DO UPDATE SET"
            " time = excluded.time, received_at = excluded.received_at,"
            " agent_cpu = excluded.agent_cpu, agent_rss = excluded.agent_rss,"
            " names = excluded.names, vals = excluded.vals"
            " WHERE excluded.time >= host_metrics.time",
            (
                host,
                at,
                received_at,
                values.get(AGENT_CPU_SERIES),
                values.get(AGENT_RSS_SERIES),
                self._names_json(values),
                _pack_floats(values.values()),
            ),
        )

    def _labels_json(self, labels: dict[str, str]) -> str:
        """``labels`` as stored (sorted JSON); memoised, a fleet has few distinct sets."""
        key = tuple(labels.items())
        text = self._json_memo.get(key)
        if text is None:
            text = json.dumps(labels, sort_keys=True)
            self._memoise(key, text)
        return text

    def _names_json(self, values: dict[str, float]) -> str:
        """The series names of a summary as a JSON array; memoised like the labels."""
        key = tuple(values)
        text = self._json_memo.get(key)
        if text is None:
            text = json.dumps(key)
            self._memoise(key, text)
        return text

    def _memoise(self, key: tuple[Any, ...], text: str) -> None:
        if len(self._json_memo) >= _JSON_MEMO_SIZE:  # bounded: hosts may all differ
            self._json_memo.clear()
        self._json_memo[key] = text

    def _load_aggregates(self) -> _Aggregates:
        db = self._db
        agg = _Aggregates()
        # ORDER BY rowid: first-seen order, which decides which hosts get per-host series.
        for agent_id, hostname, labels, last_seen, ttl, offset in db.execute(
            "SELECT agent_id, hostname, labels, last_seen, heartbeat_ttl_s, clock_offset_s"
            " FROM hosts ORDER BY rowid"
        ):
            agg.host_last_seen[agent_id] = last_seen
            agg.host_names[agent_id] = hostname
            agg.clock_skew.set(agent_id, abs(offset))
            if ttl is not None:
                agg.host_ttl[agent_id] = ttl
            if self._catalog.groups and self._catalog.silence_expected(json.loads(labels)):
                agg.host_silence_expected[agent_id] = True
        agg.liveness.load(
            (host, seen, agg.host_ttl.get(host)) for host, seen in agg.host_last_seen.items()
        )
        agg.asleep_liveness.load(
            (host, agg.host_last_seen[host], agg.host_ttl.get(host))
            for host in agg.host_silence_expected
        )
        for host, at, cpu, rss in db.execute(
            "SELECT host, time, agent_cpu, agent_rss FROM host_metrics"
            " WHERE agent_cpu IS NOT NULL OR agent_rss IS NOT NULL"
        ):
            own = {AGENT_CPU_SERIES: cpu, AGENT_RSS_SERIES: rss}
            agg.footprint.update(host, at, {k: v for k, v in own.items() if v is not None})
        for priority, seconds in db.execute(
            "SELECT priority, resolved_at - opened_at FROM incidents"
            " WHERE state = 'resolved' AND resolved_at IS NOT NULL"
        ):
            agg.observe_restore(priority, seconds)
        for name, seconds in db.execute("SELECT remediation, duration_s FROM remediation_runs"):
            agg.observe_run_duration(name, seconds)
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
        be acknowledged. One report, one transaction; see :meth:`ingest_many` for several.
        """
        (result,) = self.ingest_many([(report, received_at)])
        if isinstance(result, Exception):
            raise result
        return result

    def ingest_many(
        self, items: Sequence[tuple[wire.Report, float]]
    ) -> list[IngestResult | Exception]:
        """Group commit: apply several ``(report, received_at)`` in ONE transaction and fsync.

        Reports are applied in the given order, so a batch repeated within the same call
        is a duplicate of the first. A report that fails (a bad ``received_at``, a database
        error on its rows) fails alone: its slot in the returned list holds the exception
        and the others are applied. Nothing is durable (and nothing may be acknowledged)
        until this returns; if the COMMIT itself fails it raises and none was applied.
        """
        with self._lock:
            try:
                with self._transaction():
                    results, deltas = self._apply_group(items, isolate=False)
            except Exception as exc:
                # One report spoiled the shared transaction, which was rolled back whole.
                # Redo with each report in its own SAVEPOINT so only the culprit fails
                # (SAVEPOINTs cost two statements a report, so only on this rare path).
                log.warning("group of %d reports failed (%r); retrying one by one", len(items), exc)
                with self._transaction():
                    results, deltas = self._apply_group(items, isolate=True)
            self._merge_deltas(deltas)
        return results

    def begin_group(
        self, items: Sequence[tuple[wire.Report, float]]
    ) -> Callable[[], list[IngestResult | Exception]] | None:
        """Group commit in two steps: apply now, on the calling thread; COMMIT later.

        Why: the statements are CPU work that holds the GIL, while the COMMIT mostly waits
        for the disk (fsync) with the GIL released. Running the statements on the event
        loop's own thread and only the COMMIT on another saves a thread switch per
        statement on a busy collector (measured: ~100 us of CPU per report on one core).

        Returns ``finish``, which COMMITs, publishes the aggregates and returns one result
        per item like :meth:`ingest_many` (call it exactly once, from any thread; it raises
        if the COMMIT fails, and then none was applied). The store stays locked until then.
        Returns None, having done nothing, if the store is busy (another thread holds it)
        or a report spoiled the shared transaction (rolled back): the caller then uses
        :meth:`ingest_many`, which isolates the culprit, on the store's thread.
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                results, deltas = self._apply_group(items, isolate=False)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except Exception as exc:
            self._lock.release()
            log.info("group of %d reports not applied inline (%r)", len(items), exc)
            return None
        except BaseException:
            self._lock.release()
            raise

        def finish() -> list[IngestResult | Exception]:
            try:
                try:
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._merge_deltas(deltas)
            finally:
                self._lock.release()
            return results

        return finish

    def _merge_deltas(self, deltas: list[_Aggregates]) -> None:
        # Only after the COMMIT: a scrape never sees a rolled-back report.
        for delta in deltas:
            self._agg.merge(delta)

    def _apply_group(
        self, items: Sequence[tuple[wire.Report, float]], *, isolate: bool
    ) -> tuple[list[IngestResult | Exception], list[_Aggregates]]:
        """The statements of a group commit, inside the caller's open transaction."""
        results: list[IngestResult | Exception] = []
        # One delta for the whole group when it commits or fails as a whole; with
        # ``isolate`` a report's delta must vanish with its SAVEPOINT, so one each.
        deltas = [] if isolate else [_Aggregates()]
        for report, received_at in items:
            if not math.isfinite(received_at):
                results.append(
                    ValueError(f"received_at: must be a finite number, got {received_at!r}")
                )
                continue
            if not isolate:
                results.append(self._ingest_one(report, received_at, deltas[0]))
                continue
            delta = _Aggregates()
            self._db.execute("SAVEPOINT report")
            try:
                result = self._ingest_one(report, received_at, delta)
            except Exception as exc:
                self._db.execute("ROLLBACK TO report")
                self._db.execute("RELEASE report")
                log.error("report %s not applied: %r", report.batch_id, exc)
                results.append(exc)
                continue
            self._db.execute("RELEASE report")
            results.append(result)
            deltas.append(delta)
        # The ingest counters once per group rather than per report (fewer statements).
        totals: Counter[str] = Counter()
        for delta in deltas:
            for name in _INGEST_COUNTERS:
                totals[name] += delta.counters[name]
        for name, n in totals.items():
            if n:
                self._db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    (name, n),
                )
        return results, deltas

    def _ingest_one(
        self, report: wire.Report, received_at: float, delta: _Aggregates
    ) -> IngestResult:
        """Apply one report inside the caller's transaction, adding its effects to ``delta``."""
        events = report.events
        if any(a.seq > b.seq for a, b in itertools.pairwise(events)):
            events = tuple(sorted(events, key=lambda e: e.seq))
        new_ids = (
            None
            if self._is_last_batch(report.agent_id, report.batch_id)
            else self._record_seen(report, events, received_at)
        )
        changes = _Changes()
        fresh: list[wire.Event] = []
        if new_ids is None:
            delta.counters["reports_duplicate"] += 1
        else:
            for event in events:
                if event.event_id in new_ids:
                    new_ids.discard(event.event_id)  # an id twice in one batch counts once
                    fresh.append(event)
            ttl = None
            for event in fresh:
                if (
                    isinstance(event, wire.CheckEvent)
                    and event.check == wire.HEARTBEAT_CHECK
                    and event.ttl_s is not None
                ):
                    ttl = event.ttl_s
            self._upsert_host(report, received_at, ttl, delta)
            for event in fresh:
                self._apply_event(report, event, received_at, delta, changes)
            delta.counters["reports_accepted"] += 1
            delta.counters["events"] += len(fresh)
        return IngestResult(
            duplicate=new_ids is None,
            events=len(fresh),
            opened=tuple(changes.opened),
            resolved=tuple(changes.resolved),
            prevented=tuple(changes.prevented),
        )

    def _is_last_batch(self, host: str, batch_id: str) -> bool:
        """Whether ``batch_id`` is the last batch applied for ``host`` (see the module
        docstring: a late retry whose ids :meth:`prune_seen` already forgot)."""
        row = self._db.execute(
            "SELECT last_batch_id FROM hosts WHERE agent_id = ?", (host,)
        ).fetchone()
        return row is not None and row[0] == batch_id

    def _record_seen(
        self, report: wire.Report, events: Sequence[wire.Event], received_at: float
    ) -> set[str] | None:
        """Record the batch id and event ids; the event ids not seen before, or None if the
        batch was (then nothing is recorded). One statement for the common case."""
        host = report.agent_id
        params: list[Any] = [host, _SEEN_BATCH, report.batch_id, received_at]
        for event in events:
            params += (host, _SEEN_EVENT, event.event_id, received_at)
        rows = self._db.execute(_seen_insert_sql(1 + len(events)), params).fetchall()
        batch_is_new = False
        new_ids: set[str] = set()
        for kind, ident in rows:  # RETURNING yields only the rows actually inserted
            if kind == _SEEN_BATCH:
                batch_is_new = True
            else:
                new_ids.add(ident)
        if batch_is_new:
            return new_ids
        if new_ids:  # a reused batch id with new events: an agent bug; record nothing
            self._db.execute(
                "DELETE FROM seen WHERE host = ? AND kind = ? AND id IN"
                f" ({', '.join('?' * len(new_ids))})",
                (host, _SEEN_EVENT, *new_ids),
            )
        return None

    def _upsert_host(
        self, report: wire.Report, received_at: float, ttl: float | None, delta: _Aggregates
    ) -> None:
        """Insert or refresh the host row; ``ttl`` is a new heartbeat's (None: keep).

        ``clock_offset_s`` is an estimate, not the last sample. A sample, ``received_at -
        sent_at``, is the agent's clock error plus the network and queueing delay, which
        only ever adds; so the estimate is the smallest recent sample (as NTP's clock
        filter does), aged by :data:`CLOCK_DRIFT_PER_S` so that drift is followed, and a
        sample more than :data:`CLOCK_STEP_S` away replaces it at once (a stepped clock).
        """
        (offset,) = self._db.execute(
            "INSERT INTO hosts (agent_id, hostname, labels, agent_version, first_seen,"
            " last_seen, last_sent_at, clock_offset_s, heartbeat_ttl_s, last_batch_id)"
            " VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8, ?11)"
            " ON CONFLICT (agent_id) DO UPDATE SET hostname = excluded.hostname,"
            " last_batch_id = excluded.last_batch_id,"
            " labels = excluded.labels, agent_version = excluded.agent_version,"
            " last_seen = excluded.last_seen, last_sent_at = excluded.last_sent_at,"
            # SET reads the row as it was: hosts.* are the previous values.
            " clock_offset_s = CASE WHEN abs(?7 - hosts.clock_offset_s) > ?9 THEN ?7"
            "  ELSE min(?7, hosts.clock_offset_s + max(?5 - hosts.last_seen, 0) * ?10) END,"
            " heartbeat_ttl_s = COALESCE(excluded.heartbeat_ttl_s, hosts.heartbeat_ttl_s)"
            " RETURNING clock_offset_s",
            (
                report.agent_id,
                report.hostname,
                self._labels_json(report.labels),
                report.agent_version,
                received_at,
                report.sent_at,
                received_at - report.sent_at,
                ttl,
                CLOCK_STEP_S,
                CLOCK_DRIFT_PER_S,
                report.batch_id,
            ),
        ).fetchone()
        if ttl is not None:
            delta.host_ttl[report.agent_id] = ttl
        delta.host_last_seen[report.agent_id] = received_at
        delta.host_names[report.agent_id] = report.hostname
        delta.host_clock_offset[report.agent_id] = offset
        delta.host_silence_expected[report.agent_id] = self._catalog.silence_expected(report.labels)

    def _apply_event(
        self,
        report: wire.Report,
        event: wire.Event,
        received_at: float,
        delta: _Aggregates,
        changes: _Changes,
    ) -> None:
        """Apply one event this agent had not sent before (see :meth:`_record_seen`)."""
        host = report.agent_id
        if isinstance(event, wire.MetricsEvent):
            self._store_metrics(host, event, received_at)
            delta.note_footprint(host, event.time, event.values)
        elif isinstance(event, wire.CheckEvent):
            self._store_check(report, event, received_at, delta, changes)
        else:
            self._store_run(report, event, received_at, delta, changes)

    def _store_metrics(self, host: str, event: wire.MetricsEvent, received_at: float) -> None:
        self._write_host_metrics(host, event.time, received_at, event.values)

    def _store_check(
        self,
        report: wire.Report,
        event: wire.CheckEvent,
        received_at: float,
        delta: _Aggregates,
        changes: _Changes,
    ) -> None:
        host = report.agent_id
        if event.check == wire.HEARTBEAT_CHECK:  # its ttl_s went into the host row
            old = self._load_key(host, event.check)
            if old is not None and old.incident_id is not None:
                new, actions = incidents.on_liveness(
                    old, silent=False, expected=False, silent_for_s=0.0
                )
                self._carry_out(
                    host, report.hostname, event.check, old, new, actions, received_at, delta,
                    changes,
                )  # fmt: skip
            return
        self._db.execute(
            "INSERT INTO check_results (host, event_id, seq, time, received_at, check_id,"
            " state, previous_state, value, message, remediation, ttl_s, flapping)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                int(event.flapping),
            ),
        )
        if event.check == wire.CLOCK_CHECK:
            return  # a reported clock jump: history only, never an incident
        old = self._load_key(host, event.check)
        flapping = self._flapping_now(host, event.check, received_at)
        new, actions = incidents.on_check(old or KeyState(), event, received_at, flapping=flapping)
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
        delta.observe_run_duration(event.remediation, event.duration_s)
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
            "SELECT state, awaiting, awaiting_since, incident_id, value, message, flapping"
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
            flapping=bool(row[6]),
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
                target, c = self._insert_classified(
                    host,
                    hostname,
                    check,
                    now,
                    state="open",
                    value=action.value,
                    message=action.message,
                    remediation=action.remediation,
                    remediation_outcome=action.remediation_outcome,
                    flapping=int(new.flapping),
                )
                priority = c.priority
                self._timeline(target, now, f"opened: {action.reason}")
                self._note_silences(target, host, hostname, check, c.service, now)
                self._after_open(host, check, target, now, prevented=False)
                new = replace(new, incident_id=target)
                delta.incidents_open[(priority, check)] += 1
                delta.counters["incidents_opened"] += 1
                changes.opened.append(target)
            elif isinstance(action, RecordPrevented):
                prevented, _ = self._insert_classified(
                    host,
                    hostname,
                    check,
                    now,
                    state="prevented",
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
                self._after_open(host, check, prevented, now, prevented=True)
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
        if (old or KeyState()).flapping != new.flapping:
            self._set_flapping(target, new.flapping)
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
            " awaiting, awaiting_since, incident_id, flapping)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (host, check_id) DO UPDATE SET state = excluded.state,"
            " value = excluded.value, message = excluded.message,"
            " updated_at = excluded.updated_at, awaiting = excluded.awaiting,"
            " awaiting_since = excluded.awaiting_since, incident_id = excluded.incident_id,"
            " flapping = excluded.flapping",
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
                int(new.flapping),
            ),
        )
        was_failing = old is not None and old.check_state == "critical"
        is_failing = new.check_state == "critical"
        if is_failing != was_failing:
            delta.checks_failing[check] += 1 if is_failing else -1

    def _insert_classified(
        self, host: str, hostname: str, check: str, now: float, **row: Any
    ) -> tuple[int, Classification]:
        """Insert an incident for (host, check) opened at ``now``, with the catalog's
        priority, service, impact, urgency and the host's groups filled in. An open
        incident gets its SLA deadline; a prevented one has none to miss."""
        c = self._classify(host, check)
        incident_id = self._insert_incident(
            host=host,
            hostname=hostname,
            check_id=check,
            priority=c.priority,
            opened_at=now,
            service=c.service,
            impact=c.impact,
            urgency=c.urgency,
            groups=json.dumps(self._catalog.group_names(self._host_info(host)[1])),
            **({"sla_due": now + c.sla_s} if row.get("state") == "open" else {}),
            **row,
        )
        return incident_id, c

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
            " WHERE id = ? AND state = 'open' RETURNING priority, check_id, opened_at",
            (now, reason, incident_id),
        ).fetchall()  # not fetchone(): a RETURNING statement must run to completion
        if not row:
            log.warning("incident %d to resolve is not open", incident_id)
            return
        self._timeline(incident_id, now, f"resolved: {reason}")
        self._close_fleet_problems(incident_id, now)
        ((priority, check, opened_at),) = row
        delta.incidents_open[(priority, check)] -= 1
        delta.observe_restore(priority, now - opened_at)
        delta.counters["incidents_resolved"] += 1

    def _timeline(self, incident_id: int, at: float, text: str) -> None:
        self._db.execute(
            "INSERT INTO incident_timeline (incident_id, at, text) VALUES (?, ?, ?)",
            (incident_id, at, text),
        )

    # ----------------------------------------------------------------- tick

    def tick(self, now: float) -> tuple[int, ...]:
        """Run :func:`collector.incidents.on_tick` over every key awaiting a remediation or
        flapping, and :func:`collector.incidents.on_liveness` over every host.

        ``now``: collector time (Unix seconds). Returns the ids of incidents opened because
        a promised remediation result did not arrive within ``remediation_wait_s`` or a
        host went silent. Liveness needs no timer state: it is judged from each host's
        stored ``last_seen`` and TTL, so it survives a collector restart. Keys of a silent
        host are skipped: per-check incidents are not opened for a host that cannot report.
        """
        delta = _Aggregates()
        changes = _Changes()
        with self._lock:
            with self._transaction():
                silent = self._liveness_tick(now, delta, changes)
                # UNION, not OR: each half uses its partial index instead of a full scan.
                key = (
                    "SELECT c.host, c.check_id, COALESCE(h.hostname, c.host) FROM check_state c"
                    " LEFT JOIN hosts h ON h.agent_id = c.host WHERE "
                )
                rows = self._db.execute(
                    f"{key}c.awaiting IS NOT NULL UNION {key}c.flapping = 1"
                ).fetchall()
                for host, check, hostname in rows:
                    if host in silent or check == wire.HEARTBEAT_CHECK:
                        continue
                    old = self._load_key(host, check)
                    assert old is not None
                    flapping = self._flapping_now(host, check, now) if old.flapping else None
                    new, actions = incidents.on_tick(old, now, self._wait, flapping=flapping)
                    if old != new or actions:
                        self._carry_out(
                            host, hostname, check, old, new, actions, now, delta, changes
                        )
            self._agg.merge(delta)
        return tuple(changes.opened)

    # ----------------------------------------------------------------- incident desk
    # Problems, silences, acknowledgement, manual resolution and notification state.
    # Owned by the incident engine (issue 6); every write takes the lock and one transaction.

    def _host_info(self, host: str) -> tuple[str, dict[str, str]]:
        row = self._db.execute(
            "SELECT hostname, labels FROM hosts WHERE agent_id = ?", (host,)
        ).fetchone()
        return (host, {}) if row is None else (row[0], json.loads(row[1]))

    def _classify(self, host: str, check: str, *, fleet: bool = False) -> Classification:
        return self._catalog.classify(check, self._host_info(host)[1], fleet=fleet)

    def _flapping_now(self, host: str, check: str, now: float) -> bool:
        """Whether the key flaps at ``now``: its latest result says the agent's check is
        flapping, or its stored state changes say so (check results are stored on change
        only, so every row is a change)."""
        latest = self._db.execute(
            "SELECT flapping FROM check_results WHERE host = ? AND check_id = ?"
            " ORDER BY id DESC LIMIT 1",
            (host, check),
        ).fetchone()
        if latest is not None and latest[0]:
            return True
        rules = self._rules
        if rules.flap_changes <= 0:
            return False
        times = [
            t
            for (t,) in self._db.execute(
                "SELECT received_at FROM check_results WHERE host = ? AND check_id = ?"
                " AND received_at >= ? ORDER BY id DESC LIMIT ?",
                (host, check, now - rules.flap_window_s, rules.flap_changes),
            )
        ]
        return incidents.is_flapping(times, now, rules.flap_window_s, rules.flap_changes)

    def _after_open(
        self, host: str, check: str, incident_id: int, now: float, *, prevented: bool
    ) -> None:
        """Recurrence and fleet correlation for an incident just opened (or prevented).

        While a problem is open, a new occurrence only joins it (one insert), so a fleet
        outage of n hosts costs O(n) links, not O(n^2).
        """
        rules = self._rules
        recurring = self._find_problem("recurring", check, host)
        if recurring is not None:
            self._link(recurring, [incident_id], now)
        else:
            since = now - rules.recurrence_window_s
            rows = self._db.execute(
                "SELECT id, opened_at FROM incidents WHERE host = ? AND check_id = ?"
                " AND opened_at >= ?",
                (host, check, since),
            ).fetchall()
            times = [t for _, t in rows]
            if incidents.recurs(times, now, rules.recurrence_window_s, rules.recurrence_count):
                summary = (
                    f"{check} failed {len(times)} times on {self._host_info(host)[0]} within"
                    f" {rules.recurrence_window_s / 86400:g} d: root cause not fixed"
                )
                problem = self._new_problem("recurring", check, host, now, summary)
                self._link(problem, [i for i, _ in rows], now)
        if prevented or check == wire.HEARTBEAT_CHECK:
            return
        fleet = self._find_problem("fleet", check, None)
        if fleet is not None:
            self._link(fleet, [incident_id], now)
            return
        rows = self._db.execute(
            "SELECT id, host FROM incidents WHERE check_id = ? AND state = 'open'"
            " AND opened_at >= ?",
            (check, now - rules.fleet_window_s),
        ).fetchall()
        failing = len({h for _, h in rows})
        scope = 0
        absolute = rules.fleet_min_hosts > 0 and failing >= rules.fleet_min_hosts
        if not absolute and rules.fleet_min_share > 0 and failing >= 2:
            scope = self._scope_size(host)
        if not incidents.fleet_wide(failing, scope, rules.fleet_min_hosts, rules.fleet_min_share):
            return
        summary = f"{check} failing on {failing} hosts at once"
        problem = self._new_problem("fleet", check, None, now, summary)
        self._link(problem, [i for i, _ in rows], now)

    def _scope_size(self, host: str) -> int:
        """Hosts in ``host``'s first catalog group, or every host if it is in none.

        O(hosts): only reached for the share rule, when the absolute count fell short.
        """
        groups = self._catalog.groups_for(self._host_info(host)[1])
        if not groups:
            return int(self._db.execute("SELECT COUNT(*) FROM hosts").fetchone()[0])
        rows = self._db.execute("SELECT labels FROM hosts").fetchall()
        return sum(1 for (labels,) in rows if groups[0].contains(json.loads(labels)))

    def _find_problem(self, kind: str, check: str, host: str | None) -> int | None:
        row = self._db.execute(
            "SELECT id FROM problems WHERE kind = ? AND check_id = ? AND host IS ?"
            " AND state = 'open'",
            (kind, check, host),
        ).fetchone()
        return None if row is None else int(row[0])

    def _new_problem(
        self, kind: str, check: str, host: str | None, now: float, summary: str
    ) -> int:
        """Open a problem of ``kind`` for the check (and host, for a recurring one)."""
        labels = self._host_info(host)[1] if host else {}
        c = self._catalog.classify(check, labels, fleet=kind == "fleet")
        cur = self._db.execute(
            "INSERT INTO problems (kind, check_id, host, hostname, service, impact, urgency,"
            " priority, sla_due, state, opened_at, summary)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)",
            (
                kind,
                check,
                host,
                self._host_info(host)[0] if host else None,
                c.service,
                c.impact,
                c.urgency,
                c.priority,
                now + c.sla_s,
                now,
                summary,
            ),
        )
        assert cur.lastrowid is not None
        self._problem_timeline(cur.lastrowid, now, f"opened: {summary}")
        return cur.lastrowid

    def _link(self, problem: int, incident_ids: list[int], now: float) -> None:
        for incident_id in incident_ids:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO problem_incidents (problem_id, incident_id) VALUES (?, ?)",
                (problem, incident_id),
            )
            if cur.rowcount:
                self._timeline(incident_id, now, f"linked to problem {problem}")
                self._problem_timeline(problem, now, f"incident {incident_id} linked")

    def _problem_timeline(self, problem_id: int, at: float, text: str) -> None:
        self._db.execute(
            "INSERT INTO problem_timeline (problem_id, at, text) VALUES (?, ?, ?)",
            (problem_id, at, text),
        )

    def _close_fleet_problems(self, incident_id: int, now: float) -> None:
        """Resolve open fleet problems of this incident once none of their incidents is open."""
        for (problem,) in self._db.execute(
            "SELECT p.id FROM problems p JOIN problem_incidents l ON l.problem_id = p.id"
            " WHERE l.incident_id = ? AND p.kind = 'fleet' AND p.state = 'open'",
            (incident_id,),
        ).fetchall():
            still = self._db.execute(
                "SELECT 1 FROM problem_incidents l JOIN incidents i ON i.id = l.incident_id"
                " WHERE l.problem_id = ? AND i.state = 'open' LIMIT 1",
                (problem,),
            ).fetchone()
            if still is None:
                self._db.execute(
                    "UPDATE problems SET state = 'resolved', resolved_at = ?,"
                    " resolution = 'every linked incident resolved' WHERE id = ?",
                    (now, problem),
                )
                self._problem_timeline(problem, now, "resolved: every linked incident resolved")

    def _liveness_tick(self, now: float, delta: _Aggregates, changes: _Changes) -> set[str]:
        """Judge every host's liveness; returns the agent_ids that are silent.

        One query for every host and its heartbeat key; the engine runs only for a host
        whose verdict could change something (O(hosts) cheap comparisons per tick).
        """
        silent_hosts: set[str] = set()
        rows = self._db.execute(
            "SELECT h.agent_id, h.hostname, h.labels, h.last_seen, h.heartbeat_ttl_s,"
            " c.state, c.incident_id FROM hosts h LEFT JOIN check_state c"
            " ON c.host = h.agent_id AND c.check_id = ?",
            (wire.HEARTBEAT_CHECK,),
        ).fetchall()
        for host, hostname, labels, last_seen, ttl, key_state, incident_id in rows:
            silent = incidents.is_silent(last_seen, ttl, self._rules.heartbeat_grace_s, now)
            if not silent:
                if key_state in (None, "ok") and incident_id is None:
                    continue
                expected = False
            else:
                silent_hosts.add(host)
                expected = self._catalog.silence_expected(json.loads(labels))
                if incident_id is None and expected and key_state == "unknown":
                    continue  # asleep, already recorded as such
                if incident_id is not None and not expected:
                    continue  # silent, incident already open
            old = self._load_key(host, wire.HEARTBEAT_CHECK)
            new, actions = incidents.on_liveness(
                old or KeyState(), silent=silent, expected=expected, silent_for_s=now - last_seen
            )
            if (old or KeyState()) != new or actions:
                self._carry_out(
                    host, hostname, wire.HEARTBEAT_CHECK, old, new, actions, now, delta, changes
                )
        return silent_hosts

    def _note_silences(
        self,
        incident_id: int,
        host: str,
        hostname: str,
        check: str,
        service: str | None,
        now: float,
    ) -> None:
        """Say on the timeline which active silence holds the new incident's notification
        back (the incident itself is recorded: history and SLA stay true)."""
        groups = self._catalog.group_names(self._host_info(host)[1])
        for row in self._db.execute(
            "SELECT id, matcher, value, starts_at, ends_at, comment FROM silences"
            " WHERE starts_at <= ? AND ends_at > ?",
            (now, now),
        ).fetchall():
            silence = incidents.Silence(*row[:5])
            if incidents.silence_applies(
                silence, host=host, hostname=hostname, groups=groups, service=service,
                check=check, now=now,
            ):  # fmt: skip
                note = f": {row[5]}" if row[5] else ""
                self._timeline(
                    incident_id, now, f"silenced by silence {silence.id}{note}; not notified"
                )

    def _set_flapping(self, incident_id: int | None, flapping: bool) -> None:
        if incident_id is not None:
            self._db.execute(
                "UPDATE incidents SET flapping = ? WHERE id = ?", (int(flapping), incident_id)
            )

    def acknowledge(self, kind: str, item_id: int, by: str, note: str, now: float) -> str:
        """Acknowledge an open incident or problem (``kind`` ``incident``/``problem``).

        Returns ``"acknowledged"``, ``"already"`` (acknowledged before: unchanged) or raises
        :class:`LookupError` (no such id) / :class:`StateError` (not open).
        """
        table = _TABLES[kind]
        with self._lock, self._transaction():
            row = self._db.execute(
                f"SELECT state, acknowledged_at FROM {table} WHERE id = ?", (item_id,)
            ).fetchone()
            if row is None:
                raise LookupError(f"no {kind} with id {item_id}")
            if row[0] != "open":
                raise StateError(f"{kind} {item_id} is {row[0]}, only an open one is acknowledged")
            if row[1] is not None:
                return "already"
            self._db.execute(
                f"UPDATE {table} SET acknowledged_at = ?, acknowledged_by = ? WHERE id = ?",
                (now, by, item_id),
            )
            text = f"acknowledged by {by}" + (f": {note}" if note else "")
            self._item_timeline(kind, item_id, now, text)
        return "acknowledged"

    def resolve_manually(
        self, kind: str, item_id: int, by: str, notes: dict[str, str], now: float
    ) -> None:
        """Resolve an open incident or problem with notes, or add CAPA notes to a resolved
        one. ``notes`` may hold ``note``, ``root_cause``, ``corrective_action``,
        ``preventive_action``. Raises :class:`LookupError` / :class:`StateError`
        (a prevented incident takes no manual resolution)."""
        table = _TABLES[kind]
        delta = _Aggregates()
        with self._lock:
            with self._transaction():
                row = self._db.execute(
                    f"SELECT state FROM {table} WHERE id = ?", (item_id,)
                ).fetchone()
                if row is None:
                    raise LookupError(f"no {kind} with id {item_id}")
                if row[0] not in ("open", "resolved"):
                    raise StateError(f"{kind} {item_id} is {row[0]}: nothing to resolve")
                capa = {k: notes[k] for k in _CAPA if notes.get(k)}
                if capa:
                    sets = ", ".join(f"{k} = ?" for k in capa)
                    self._db.execute(
                        f"UPDATE {table} SET {sets} WHERE id = ?", (*capa.values(), item_id)
                    )
                    for k, v in capa.items():
                        self._item_timeline(kind, item_id, now, f"{k.replace('_', ' ')}: {v}")
                reason = f"resolved manually by {by}" + (
                    f": {notes['note']}" if notes.get("note") else ""
                )
                if row[0] == "open":
                    if kind == "incident":
                        self._resolve(item_id, now, reason, delta)
                        # The key no longer points at it: the next failure opens a new one.
                        self._db.execute(
                            "UPDATE check_state SET incident_id = NULL WHERE incident_id = ?",
                            (item_id,),
                        )
                    else:
                        self._db.execute(
                            "UPDATE problems SET state = 'resolved', resolved_at = ?,"
                            " resolution = ? WHERE id = ?",
                            (now, reason, item_id),
                        )
                        self._problem_timeline(item_id, now, f"resolved: {reason}")
                elif notes.get("note"):
                    self._item_timeline(kind, item_id, now, f"note by {by}: {notes['note']}")
            self._agg.merge(delta)

    def _item_timeline(self, kind: str, item_id: int, at: float, text: str) -> None:
        if kind == "incident":
            self._timeline(item_id, at, text)
        else:
            self._problem_timeline(item_id, at, text)

    def list_problems(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        check: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Problems, newest first; ``state`` open/acknowledged/resolved, ``kind``
        recurring/fleet. ``ValueError`` naming the argument on bad input."""
        if state is not None and state not in ("open", "acknowledged", "resolved"):
            raise ValueError(f"state: must be open, acknowledged or resolved, got {state!r}")
        if kind is not None and kind not in ("recurring", "fleet"):
            raise ValueError(f"kind: must be recurring or fleet, got {kind!r}")
        _check_page(limit, offset)
        where, args = _where(("kind", kind), ("check_id", check))
        extra = _state_clause(state)
        if extra:
            where = f"{where} AND {extra}" if where else f" WHERE {extra}"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_PROBLEM_COLUMNS} FROM problems{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            out = [self._problem_dict(row) for row in rows]
        return out

    def get_problem(self, problem_id: int) -> dict[str, Any] | None:
        """One problem with ``incidents`` (ids) and ``timeline``, or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_PROBLEM_COLUMNS} FROM problems WHERE id = ?", (problem_id,)
            ).fetchone()
            if row is None:
                return None
            problem = self._problem_dict(row)
            problem["timeline"] = [
                {"at": at, "text": text}
                for at, text in self._db.execute(
                    "SELECT at, text FROM problem_timeline WHERE problem_id = ? ORDER BY id",
                    (problem_id,),
                )
            ]
        return problem

    def _problem_dict(self, row: tuple[Any, ...]) -> dict[str, Any]:
        problem = dict(zip(_PROBLEM_KEYS, row, strict=True))
        problem["state"] = incidents.display_state(
            problem["state"], problem["acknowledged_at"], False
        )
        problem["incidents"] = [
            i
            for (i,) in self._db.execute(
                "SELECT incident_id FROM problem_incidents WHERE problem_id = ?"
                " ORDER BY incident_id",
                (problem["id"],),
            )
        ]
        return problem

    def create_silence(
        self,
        matcher: str,
        value: str,
        starts_at: float,
        ends_at: float,
        comment: str,
        by: str,
        now: float,
    ) -> dict[str, Any]:
        """Store a silence (validated by the caller) and return it."""
        with self._lock, self._transaction():
            cur = self._db.execute(
                "INSERT INTO silences (matcher, value, starts_at, ends_at, comment, created_by,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (matcher, value, starts_at, ends_at, comment, by, now),
            )
            silence_id = cur.lastrowid
        assert silence_id is not None
        found = self.get_silence(silence_id)
        assert found is not None
        return found

    def update_silence(
        self, silence_id: int, *, ends_at: float | None, comment: str | None
    ) -> dict[str, Any] | None:
        """Change a silence's end or comment; None if there is no such silence."""
        with self._lock, self._transaction():
            if ends_at is not None:
                self._db.execute(
                    "UPDATE silences SET ends_at = ? WHERE id = ?", (ends_at, silence_id)
                )
            if comment is not None:
                self._db.execute(
                    "UPDATE silences SET comment = ? WHERE id = ?", (comment, silence_id)
                )
        return self.get_silence(silence_id)

    def delete_silence(self, silence_id: int) -> bool:
        """Remove a silence; False if there was none. Held-back incidents still open notify
        at the notifier's next pass (a real, ongoing failure)."""
        with self._lock, self._transaction():
            n = self._db.execute("DELETE FROM silences WHERE id = ?", (silence_id,)).rowcount
        return n > 0

    def get_silence(self, silence_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_SILENCE_COLUMNS} FROM silences WHERE id = ?", (silence_id,)
            ).fetchone()
        return None if row is None else dict(zip(_SILENCE_KEYS, row, strict=True))

    def list_silences(self, *, active_at: float | None = None) -> list[dict[str, Any]]:
        """Every silence (or only those active at ``active_at``), newest first."""
        where = "" if active_at is None else " WHERE starts_at <= ? AND ends_at > ?"
        args = () if active_at is None else (active_at, active_at)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_SILENCE_COLUMNS} FROM silences{where} ORDER BY id DESC", args
            ).fetchall()
        return [dict(zip(_SILENCE_KEYS, row, strict=True)) for row in rows]

    def remediation_stats(self) -> list[dict[str, Any]]:
        """Per remediation: runs by outcome, success rate (fixed / runs that were not dry
        runs or skipped; None when there are none), prevented incidents, hosts."""
        with self._lock:
            runs = self._db.execute(
                "SELECT remediation, outcome, COUNT(*), COUNT(DISTINCT host)"
                " FROM remediation_runs GROUP BY remediation, outcome"
            ).fetchall()
            hosts = dict(
                self._db.execute(
                    "SELECT remediation, COUNT(DISTINCT host) FROM remediation_runs"
                    " GROUP BY remediation"
                ).fetchall()
            )
            prevented = dict(
                self._db.execute(
                    "SELECT remediation, COUNT(*) FROM incidents WHERE state = 'prevented'"
                    " GROUP BY remediation"
                ).fetchall()
            )
        by_name: dict[str, dict[str, int]] = {}
        for name, outcome, n, _ in runs:
            by_name.setdefault(name, {})[outcome] = n
        out = []
        for name in sorted(by_name):
            outcomes = by_name[name]
            attempted = sum(n for o, n in outcomes.items() if o not in ("dry_run", "skipped"))
            out.append(
                {
                    "remediation": name,
                    "runs": sum(outcomes.values()),
                    "outcomes": outcomes,
                    "success_rate": outcomes.get("fixed", 0) / attempted if attempted else None,
                    "prevented": prevented.get(name, 0),
                    "hosts": hosts.get(name, 0),
                }
            )
        return out

    def alertables(self, now: float) -> list[dict[str, Any]]:
        """Incidents and problems the notifier must consider at ``now``: every open one,
        plus resolved ones whose firing was notified and whose resolution was not.

        Each dict: ``ref`` (``incident:12``/``problem:3``), ``kind``, ``id``, ``active``,
        ``held`` (flapping, silenced, or claimed by a fleet problem), ``notified``,
        ``resolve_notified``, ``opened_at``, ``resolved_at`` and the fields notifications
        show (check, host, hostname, service, priority, message, remediation, ...).
        """
        with self._lock:
            silences = [
                incidents.Silence(*row)
                for row in self._db.execute(
                    "SELECT id, matcher, value, starts_at, ends_at FROM silences"
                    " WHERE starts_at <= ? AND ends_at > ?",
                    (now, now),
                )
            ]
            incident_rows = self._db.execute(
                "SELECT i.id, i.host, i.hostname, i.check_id, i.state, i.priority, i.service,"
                " i.groups, i.opened_at, i.resolved_at, i.message, i.remediation,"
                " i.remediation_outcome, i.flapping, i.notified_at, i.resolve_notified_at,"
                " i.resolution, EXISTS (SELECT 1 FROM problem_incidents l JOIN problems p"
                "   ON p.id = l.problem_id WHERE l.incident_id = i.id AND p.kind = 'fleet')"
                " FROM incidents i WHERE i.state = 'open' OR (i.state = 'resolved'"
                " AND i.notified_at IS NOT NULL AND i.resolve_notified_at IS NULL)"
            ).fetchall()
            problem_rows = self._db.execute(
                "SELECT p.id, p.kind, p.host, p.hostname, p.check_id, p.state, p.priority,"
                " p.service, p.opened_at, p.resolved_at, p.summary, p.notified_at,"
                " p.resolve_notified_at, p.resolution,"
                " (SELECT COUNT(*) FROM problem_incidents l WHERE l.problem_id = p.id)"
                " FROM problems p WHERE p.state = 'open' OR (p.state = 'resolved'"
                " AND p.notified_at IS NOT NULL AND p.resolve_notified_at IS NULL)"
            ).fetchall()
        out: list[dict[str, Any]] = []
        for (
            iid, host, hostname, check, state, priority, service, groups, opened_at,
            resolved_at, message, remediation, outcome, flapping, notified, resolve_notified,
            resolution, in_fleet,
        ) in incident_rows:  # fmt: skip
            silenced = any(
                incidents.silence_applies(
                    s, host=host, hostname=hostname, groups=json.loads(groups),
                    service=service, check=check, now=now,
                )
                for s in silences
            )  # fmt: skip
            out.append(
                {
                    "ref": f"incident:{iid}",
                    "kind": "incident",
                    "id": iid,
                    "active": state == "open",
                    "held": bool(flapping) or silenced or bool(in_fleet),
                    "notified": notified is not None,
                    "resolve_notified": resolve_notified is not None,
                    "opened_at": opened_at,
                    "resolved_at": resolved_at,
                    "check": check,
                    "host": host,
                    "hostname": hostname,
                    "service": service,
                    "priority": priority,
                    "summary": f"{check} failing on {hostname}",
                    "description": message,
                    "remediation": (
                        f"{remediation}: {outcome or 'promised, no result'}"
                        if remediation
                        else "none"
                    ),
                    "resolution": resolution,
                }
            )
        for (
            pid, kind, host, hostname, check, state, priority, service, opened_at,
            resolved_at, summary, notified, resolve_notified, resolution, linked,
        ) in problem_rows:  # fmt: skip
            silenced = any(
                incidents.silence_applies(
                    s, host=host or "", hostname=hostname or "", groups=(),
                    service=service, check=check, now=now,
                )
                for s in silences
            )  # fmt: skip
            out.append(
                {
                    "ref": f"problem:{pid}",
                    "kind": f"{kind}_problem",
                    "id": pid,
                    "active": state == "open",
                    "held": silenced,
                    "notified": notified is not None,
                    "resolve_notified": resolve_notified is not None,
                    "opened_at": opened_at,
                    "resolved_at": resolved_at,
                    "check": check,
                    "host": host or "fleet",
                    "hostname": hostname or f"{linked} hosts",
                    "service": service,
                    "priority": priority,
                    "summary": summary,
                    "description": f"{summary}; {linked} linked incidents",
                    "remediation": "see linked incidents",
                    "resolution": resolution,
                }
            )
        return out

    def mark_notified(
        self, fired: list[str], resolved: list[str], targets: str, now: float
    ) -> None:
        """Record that ``fired`` refs were notified firing and ``resolved`` refs resolved,
        to ``targets`` (text for the timeline)."""
        with self._lock, self._transaction():
            for refs, column, what in (
                (fired, "notified_at", "firing"),
                (resolved, "resolve_notified_at", "resolved"),
            ):
                for ref in refs:
                    kind, _, raw = ref.partition(":")
                    table = _TABLES[kind]
                    self._db.execute(
                        f"UPDATE {table} SET {column} = ? WHERE id = ?", (now, int(raw))
                    )
                    self._item_timeline(kind, int(raw), now, f"notified {what}: {targets}")

    def incident_aggregates(self, now: float) -> dict[str, Any]:
        """Figures for /metrics that the in-memory snapshot does not hold (one indexed
        query each): ``problems_open`` by kind (recurring, fleet), ``sla_breached`` open
        incidents past their SLA deadline by priority, ``incidents_acknowledged`` open and
        acknowledged incidents by priority. Meant for the metrics owner to export."""
        with self._lock:
            problems = dict(
                self._db.execute(
                    "SELECT kind, COUNT(*) FROM problems WHERE state = 'open' GROUP BY kind"
                ).fetchall()
            )
            breached = dict(
                self._db.execute(
                    "SELECT priority, COUNT(*) FROM incidents WHERE state = 'open'"
                    " AND sla_due IS NOT NULL AND sla_due < ? GROUP BY priority",
                    (now,),
                ).fetchall()
            )
            acknowledged = dict(
                self._db.execute(
                    "SELECT priority, COUNT(*) FROM incidents WHERE state = 'open'"
                    " AND acknowledged_at IS NOT NULL GROUP BY priority"
                ).fetchall()
            )
        return {
            "problems_open": problems,
            "sla_breached": breached,
            "incidents_acknowledged": acknowledged,
        }

    # ----------------------------------------------------------------- retention

    def prune_seen(self, before: float, *, limit: int | None = None) -> int:
        """Forget batch and event ids received before ``before`` (Unix seconds), oldest
        first, at most ``limit`` of them (None: all). Returns how many were deleted.

        Deduplication only needs ids for as long as an agent may retry a batch; without
        pruning this table grows with every event. A batch retried after its id was
        pruned would be applied again. The collector app calls this every tick with a
        ``limit``, so each call is one short transaction however far behind it is.
        """
        with self._lock, self._transaction():
            if limit is None:
                cur = self._db.execute("DELETE FROM seen WHERE received_at < ?", (before,))
            else:
                cur = self._db.execute(
                    "DELETE FROM seen WHERE rowid IN (SELECT rowid FROM seen"
                    " WHERE received_at < ? ORDER BY received_at LIMIT ?)",
                    (before, limit),
                )
            return cur.rowcount

    # ----------------------------------------------------------------- reads

    def list_incidents(
        self,
        *,
        state: str | None = None,
        host: str | None = None,
        check: str | None = None,
        service: str | None = None,
        priority: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Incidents, newest first, optionally filtered by state (one of
        :data:`LIST_STATES`: ``open`` includes acknowledged and flapping ones), host
        (agent_id), check, service, priority.

        Raises ``ValueError`` naming the argument for an unknown ``state`` or a ``limit``
        outside 1..:data:`MAX_LIMIT` or a negative ``offset``.
        """
        if state is not None and state not in LIST_STATES:
            raise ValueError(f"state: must be one of {list(LIST_STATES)}, got {state!r}")
        _check_page(limit, offset)
        where, args = _where(
            ("host", host), ("check_id", check), ("service", service), ("priority", priority)
        )
        extra = _state_clause(state)
        if extra:
            where = f"{where} AND {extra}" if where else f" WHERE {extra}"
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_INCIDENT_COLUMNS} FROM incidents{where}"
                " ORDER BY id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [_incident_dict(row) for row in rows]

    def get_incident(self, incident_id: int) -> dict[str, Any] | None:
        """One incident with its ``timeline`` (``[{"at", "text"}]``, oldest first), the ids
        of its ``problems``, and ``remediation_runs``: the corrective-action records of its
        key from ``remediation_wait_s`` before it opened (the attempt that failed and
        caused it) until it was resolved. None if there is no such incident."""
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
            problems = [
                p
                for (p,) in self._db.execute(
                    "SELECT problem_id FROM problem_incidents WHERE incident_id = ?"
                    " ORDER BY problem_id",
                    (incident_id,),
                )
            ]
            incident = _incident_dict(row)
            end = incident["resolved_at"] if incident["resolved_at"] is not None else math.inf
            runs = self._db.execute(
                f"SELECT {_RUN_COLUMNS} FROM remediation_runs WHERE host = ? AND check_id = ?"
                " AND received_at >= ? AND received_at <= ? ORDER BY id LIMIT ?",
                (
                    incident["host"],
                    incident["check"],
                    incident["opened_at"] - self._rules.remediation_wait_s,
                    end,
                    MAX_LIMIT,
                ),
            ).fetchall()
        incident["timeline"] = [{"at": at, "text": text} for at, text in timeline]
        incident["problems"] = problems
        incident["remediation_runs"] = [_run_dict(r) for r in runs]
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
        """The host's newest metrics summary (by the agent's timestamp), series sorted by
        name; empty if it never sent one. A series missing from that summary is absent."""
        with self._lock:
            row = self._db.execute(
                "SELECT names, vals FROM host_metrics WHERE host = ?", (agent_id,)
            ).fetchone()
        if row is None:
            return {}
        return dict(sorted(zip(json.loads(row[0]), _unpack_floats(row[1]), strict=True)))

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

    def metrics_snapshot(self, *, host_series: int = 0, host_maps: bool = True) -> MetricsSnapshot:
        """Copy the in-memory aggregates (no I/O), itemizing up to ``host_series`` hosts.

        Cost is O(buckets + label values + ``host_series``) plus a copy of two float
        lists (liveness); with ``host_series`` > 0, one pass over the remaining hosts for
        the overflow row's oldest time; with ``host_maps``, a copy of the per-host maps.
        """
        agg = self._agg
        with agg.lock:  # not self._lock: never wait behind a commit's fsync
            detail: tuple[tuple[str, str, float], ...] = ()
            overflow: tuple[int, float | None] = (0, None)
            if host_series > 0:
                seen = agg.host_last_seen
                names = agg.host_names
                detail = tuple(
                    (h, names.get(h, h), t) for h, t in itertools.islice(seen.items(), host_series)
                )
                rest = len(seen) - len(detail)
                if rest > 0:
                    overflow = (rest, min(itertools.islice(seen.values(), host_series, None)))
            return MetricsSnapshot(
                liveness=agg.liveness.view(),
                liveness_silence_expected=agg.asleep_liveness.view(),
                incidents_open=dict(agg.incidents_open),
                incidents_opened_total=agg.counters["incidents_opened"],
                incidents_resolved_total=agg.counters["incidents_resolved"],
                incidents_prevented_total=agg.counters["incidents_prevented"],
                checks_failing=dict(agg.checks_failing),
                remediation_runs=dict(agg.remediation_runs),
                reports_accepted_total=agg.counters["reports_accepted"],
                reports_duplicate_total=agg.counters["reports_duplicate"],
                events_total=agg.counters["events"],
                clock_offsets=agg.clock_skew.snapshot(),
                time_to_restore={p: h.copy() for p, h in agg.time_to_restore.items()},
                remediation_durations={r: h.copy() for r, h in agg.run_durations.items()},
                agent_cpu=agg.footprint.cpu.snapshot(),
                agent_rss=agg.footprint.rss.snapshot(),
                host_detail=detail,
                host_overflow=overflow,
                host_last_seen=dict(agg.host_last_seen) if host_maps else {},
                host_ttl=dict(agg.host_ttl) if host_maps else {},
                incidents_acknowledged=dict(agg.incidents_acknowledged),
                incidents_past_sla=dict(agg.incidents_past_sla),
                problems_open=dict(agg.problems_open),
            )

    def refresh_metrics_figures(self, now: float) -> None:
        """Count, with :meth:`incident_aggregates`, the /metrics figures that are not kept
        incrementally (open problems by kind; open incidents acknowledged, and past their
        SLA deadline at ``now``, by priority) and keep them in memory for
        :meth:`metrics_snapshot`. The app calls this after opening the store and after
        every tick, on the store thread, so a scrape never queries the database and the
        figures are at most one tick old. Each count is one query over open rows only."""
        figures = self.incident_aggregates(now)
        with self._agg.lock:
            self._agg.problems_open = dict(figures["problems_open"])
            self._agg.incidents_past_sla = dict(figures["sla_breached"])
            self._agg.incidents_acknowledged = dict(figures["incidents_acknowledged"])

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
_PROBLEM_KEYS = _keys(_PROBLEM_COLUMNS)
_SILENCE_KEYS = _keys(_SILENCE_COLUMNS)


def _state_clause(state: str | None) -> str:
    """SQL for a listed state (constants only): acknowledged and flapping refine open."""
    return {
        None: "",
        "open": "state = 'open'",
        "acknowledged": "state = 'open' AND acknowledged_at IS NOT NULL AND flapping = 0",
        "flapping": "state = 'open' AND flapping = 1",
        "resolved": "state = 'resolved'",
        "prevented": "state = 'prevented'",
    }[state]


def _incident_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    incident = dict(zip(_INCIDENT_KEYS, row, strict=True))
    incident["flapping"] = bool(incident["flapping"])
    incident["state"] = incidents.display_state(
        incident["state"], incident["acknowledged_at"], incident["flapping"]
    )
    return incident


def _run_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    run = dict(zip(_RUN_KEYS, row, strict=True))
    run["output_truncated"] = bool(run["output_truncated"])
    run["dry_run"] = bool(run["dry_run"])
    run["type"] = "remediation"
    return run


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _pack_floats(values: Iterable[float]) -> bytes:
    """float64 little-endian, the storage form of a metrics summary's values."""
    packed = array.array("d", values)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tobytes()


def _unpack_floats(blob: bytes) -> list[float]:
    packed = array.array("d")
    packed.frombytes(blob)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tolist()


@functools.lru_cache(maxsize=64)
def _seen_insert_sql(rows: int) -> str:
    """``INSERT OR IGNORE`` of ``rows`` ids into ``seen``, returning those inserted
    (RETURNING needs SQLite 3.35, 2021)."""
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return (
        f"INSERT OR IGNORE INTO seen (host, kind, id, received_at) VALUES {values}"
        " RETURNING kind, id"
    )
