"""The SQLite schema (DDL) and the migrations from older databases.

Schema 3 is what this collector writes (schema 2 plus the problem kind
``self_healed``); schema 1 and 2 databases (``metrics_latest``, ``batches``/``events_seen``,
no desk columns; the older problem kinds) are migrated in place on open, inside one
transaction, without losing a row.
"""

from __future__ import annotations

import json
import sqlite3

from vigil.collector.storage.sqlite.codec import HOST_METRICS_UPSERT, names_id, pack_floats
from vigil.collector.storage.sqlite.console_repo import SQLITE, rollup_backfill_sql
from vigil.collector.storage.sqlite.policy_repo import migrate_policy
from vigil.collector.storage.sqlite.survey_repo import migrate_surveys
from vigil.collector.telemetry.buckets import AGENT_CPU_SERIES, AGENT_RSS_SERIES

# 2: host_metrics (one row per host) replaces metrics_latest; seen replaces batches and
# events_seen (fewer statements and page writes per report).
# 3: problem kind 'self_healed' (a fleet-wide fault every host fixed; see
# _migrate_problem_kinds).
# 4: operators and the append-only audit log (_migrate_identity).
# 5: enrollment secrets and per-agent credentials (migrate_enrollment).
# 6: hosts.epoch and hosts.mark, the sequence dedup high-water mark (desk/sequence.py);
# ``seen`` stays for agents that send no sequence numbers, pruned as before.
# 7: policy bundles, rollouts, halts and run-now requests (migrate_policy).
# 8: satisfaction surveys and the survey link key (sqlite/survey_repo.migrate_surveys).
# 9: the console: a problem's CAPA record fields, the incidents' department, the quality
#    rollup and the queue/host search indexes (migrate_console).
# 10: reads at fleet scale (issue #17): the deadline and filter indexes and the
#     remediation summaries (migrate_scale_reads).
# 11: remediation_runs.run_as_user (_migrate_run_as).
# 12: policy_rollouts.evidence_at and .remediations (migrate_policy): auto-advance on
#     evidence, the guard counting only the new version's remediations.
# 13: surveys.console_user and its index (migrate_surveys): the survey rate limit per
#     person rather than per host (issue #19).
# 14: metric_names; host_metrics rows name their series list by id (_migrate_metric_names,
#     issue #17).
SCHEMA_VERSION = 14
SEEN_BATCH, SEEN_EVENT = 0, 1  # seen.kind

# One row per host: its newest metrics summary. ``names_id``: the list of its series names
# (metric_names), ``vals`` the values in that order. Formatted with the table's name (the
# schema 14 migration builds the new shape beside the old one).
_HOST_METRICS = """CREATE TABLE IF NOT EXISTS {table} (
    host        TEXT PRIMARY KEY,
    time        REAL NOT NULL,  -- agent clock of the summary
    received_at REAL NOT NULL,
    agent_cpu   REAL,           -- the agent's own footprint, read at start-up for /metrics
    agent_rss   REAL,
    names_id    INTEGER NOT NULL REFERENCES metric_names (id),
    vals        BLOB NOT NULL   -- float64 little-endian
)"""

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
CREATE TABLE IF NOT EXISTS metric_names (
    id    INTEGER PRIMARY KEY,
    names TEXT NOT NULL UNIQUE  -- JSON array of series names, stored once per list
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

# The incident desk: problems, silences, and the incident columns added to schema 1
# databases in place (ALTER TABLE ADD COLUMN is cheap and keeps existing rows).
_DESK_SCHEMA = """
CREATE TABLE IF NOT EXISTS problems (
    id                  INTEGER PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('recurring', 'fleet', 'self_healed')),
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
    # The sequence dedup mark (schema 6): the agent's epoch (16 bytes) and the highest
    # seq applied in it. Added columns, NULL for every existing host: an idempotent
    # migration, and hosts keep their ``seen`` ids until those age out.
    "hosts": (("last_batch_id", "TEXT"), ("epoch", "BLOB"), ("mark", "INTEGER")),
    # The agent said the check is flapping (it then holds the worse state and sends no
    # more changes, so the collector cannot count them itself).
    "check_results": (("flapping", "INTEGER NOT NULL DEFAULT 0"),),
}


def create_or_migrate(db: sqlite3.Connection) -> None:
    """Bring ``db`` to :data:`SCHEMA_VERSION` inside the caller's transaction.

    Raises ``sqlite3.DatabaseError`` for a database from a newer collector.
    """
    check_version(db)
    # Not executescript(): it would COMMIT first and escape the transaction.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute(_HOST_METRICS.format(table="host_metrics"))
    _migrate_desk(db)
    _migrate_problem_kinds(db)
    _migrate_host_metrics(db)
    _migrate_seen(db)
    _migrate_identity(db)
    migrate_enrollment(db)
    migrate_surveys(db)
    migrate_policy(db)
    migrate_console(db)
    migrate_scale_reads(db)
    _migrate_run_as(db)
    _migrate_metric_names(db)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def check_version(db: sqlite3.Connection) -> None:
    """Raise ``sqlite3.DatabaseError`` if ``db`` was written by a newer collector."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this collector supports ({SCHEMA_VERSION})"
        )


def _migrate_run_as(db: sqlite3.Connection) -> None:
    """Schema 11: ``remediation_runs.run_as_user``, the user a script ran as when its
    manifest asked for another than the agent's (NULL for older rows and for the rest)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(remediation_runs)")}
    if "run_as_user" not in have:
        db.execute("ALTER TABLE remediation_runs ADD COLUMN run_as_user TEXT")


def _migrate_metric_names(db: sqlite3.Connection) -> None:
    """Schema 14: ``host_metrics`` rows name their series list by ``metric_names`` id
    instead of carrying it (each list stored once). The table is rebuilt in the new
    shape (SQLite cannot change a column in place): same hosts, times and values."""
    have = {row[1] for row in db.execute("PRAGMA table_info(host_metrics)")}
    if "names" not in have:
        return
    db.execute("INSERT OR IGNORE INTO metric_names (names) SELECT DISTINCT names FROM host_metrics")
    db.execute(_HOST_METRICS.format(table="host_metrics_v14"))
    db.execute(
        "INSERT INTO host_metrics_v14 (host, time, received_at, agent_cpu, agent_rss,"
        " names_id, vals) SELECT h.host, h.time, h.received_at, h.agent_cpu, h.agent_rss,"
        " n.id, h.vals FROM host_metrics h JOIN metric_names n ON n.names = h.names"
    )
    db.execute("DROP TABLE host_metrics")
    db.execute("ALTER TABLE host_metrics_v14 RENAME TO host_metrics")


def _migrate_desk(db: sqlite3.Connection) -> None:
    """Create the incident-desk tables and add its columns to older databases."""
    for table, columns in _DESK_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns:
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    for statement in _DESK_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def _migrate_problem_kinds(db: sqlite3.Connection) -> None:
    """Schema 3 adds the problem kind ``self_healed``. SQLite cannot alter a CHECK
    constraint, so an older ``problems`` table is rebuilt: same columns, rows and ids.

    Foreign keys are on and cannot be switched off inside the caller's transaction, so
    the rows pointing at ``problems`` (links, timeline) are set aside while the table is
    swapped and put back after; nothing is ever left dangling.
    """
    row = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'problems'"
    ).fetchone()
    if row is None or "'self_healed'" in row[0]:
        return
    children = ("problem_incidents", "problem_timeline")
    for child in children:
        db.execute(f"CREATE TEMP TABLE keep_{child} AS SELECT * FROM {child}")
        db.execute(f"DELETE FROM {child}")
    columns = ", ".join(r[1] for r in db.execute("PRAGMA table_info(problems)"))
    create = _DESK_SCHEMA[: _DESK_SCHEMA.index(";")]  # the problems table comes first
    db.execute(create.replace("IF NOT EXISTS problems (", "problems_v3 (", 1))
    db.execute(f"INSERT INTO problems_v3 ({columns}) SELECT {columns} FROM problems")
    db.execute("DROP TABLE problems")
    db.execute("ALTER TABLE problems_v3 RENAME TO problems")
    db.execute("CREATE INDEX IF NOT EXISTS problems_key ON problems (kind, check_id, state)")
    for child in children:
        db.execute(f"INSERT INTO {child} SELECT * FROM temp.keep_{child}")
        db.execute(f"DROP TABLE temp.keep_{child}")


def _migrate_host_metrics(db: sqlite3.Connection) -> None:
    """Schema 1 kept one ``metrics_latest`` row per (host, series); fold each host's
    rows into its ``host_metrics`` row (newest time per host) and drop the table."""
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'metrics_latest'"
    ).fetchone()
    if exists is None:
        return
    by_host: dict[str, tuple[float, float, dict[str, float]]] = {}
    for host, series, value, at, received_at in db.execute(
        "SELECT host, series, value, time, received_at FROM metrics_latest ORDER BY host"
    ):
        old_at, old_received, values = by_host.get(host, (at, received_at, {}))
        values[series] = value
        by_host[host] = (max(old_at, at), max(old_received, received_at), values)
    for host, (at, received_at, values) in by_host.items():
        db.execute(
            HOST_METRICS_UPSERT,
            (
                host,
                at,
                received_at,
                values.get(AGENT_CPU_SERIES),
                values.get(AGENT_RSS_SERIES),
                names_id(db, json.dumps(tuple(values))),
                pack_floats(values.values()),
            ),
        )
    db.execute("DROP TABLE metrics_latest")


def _migrate_seen(db: sqlite3.Connection) -> None:
    """Schema 1 kept batch ids and event ids in two tables; move them into ``seen``."""
    for table, kind, column in (
        ("batches", SEEN_BATCH, "batch_id"),
        ("events_seen", SEEN_EVENT, "event_id"),
    ):
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        if exists is not None:
            db.execute(
                f"INSERT OR IGNORE INTO seen (host, kind, id, received_at)"
                f" SELECT host, {kind}, {column}, received_at FROM {table}"
            )
            db.execute(f"DROP TABLE {table}")


_IDENTITY = """
CREATE TABLE IF NOT EXISTS operators (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL,      -- viewer | responder | admin
    token_hash  TEXT NOT NULL,      -- sha256 hex of the token; the token is never stored
    created_at  REAL NOT NULL,
    rotated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      REAL NOT NULL,          -- collector clock, Unix seconds
    actor   TEXT NOT NULL,          -- the authenticated operator (or cli:USER)
    action  TEXT NOT NULL,          -- e.g. incident.acknowledge, operator.add
    target  TEXT NOT NULL,          -- what was written: incident:12, operator:alice
    peer    TEXT NOT NULL,          -- where from: the client address, or "local"
    detail  TEXT NOT NULL           -- JSON object
);
CREATE INDEX IF NOT EXISTS audit_action ON audit (action, id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
"""


def _migrate_identity(db: sqlite3.Connection) -> None:
    """Create the operators and audit tables (idempotent: every statement is IF NOT
    EXISTS, so it runs on a new database and on any older one alike)."""
    # Split on the blank-line-free statement ends; a trigger body holds a ";" of its own.
    for statement in _IDENTITY.split(";\n"):
        if statement.strip():
            db.execute(statement)


# Enrollment (collector/identity/): secrets and credentials, stored as SHA-256 hashes only.
_ENROLLMENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS enroll_secrets (
    id          TEXT PRIMARY KEY,      -- public id shown by the CLI
    secret_hash TEXT NOT NULL UNIQUE,  -- sha256 hex of the secret
    labels      TEXT NOT NULL,         -- JSON object: the routing labels it grants
    comment     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    max_uses    INTEGER NOT NULL,
    uses        INTEGER NOT NULL,
    revoked_at  REAL
);
CREATE TABLE IF NOT EXISTS agent_credentials (
    token_hash TEXT PRIMARY KEY,       -- sha256 hex of the credential
    agent_id   TEXT NOT NULL,
    secret_id  TEXT NOT NULL,          -- the enrollment secret it was issued through
    labels     TEXT NOT NULL,          -- JSON object, copied from the secret
    hostname   TEXT NOT NULL,
    issued_at  REAL NOT NULL,
    expires_at REAL NOT NULL,
    pending    INTEGER NOT NULL        -- 1: a rotation not used yet (the old one still works)
);
CREATE INDEX IF NOT EXISTS agent_credentials_agent ON agent_credentials (agent_id);
CREATE INDEX IF NOT EXISTS agent_credentials_secret ON agent_credentials (secret_id);
CREATE TABLE IF NOT EXISTS enroll_generation (
    id    INTEGER PRIMARY KEY CHECK (id = 0),
    value INTEGER NOT NULL
);
"""


def migrate_enrollment(db: sqlite3.Connection) -> None:
    """Create the enrollment tables if missing (idempotent; older databases simply have
    no secrets and no credentials, so their agents keep using shared tokens)."""
    for statement in _ENROLLMENT_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


# The console (schema 9): the CAPA record fields of a problem beside root cause,
# corrective and preventive action, and indexes for the console's paged reads.
_CONSOLE_COLUMNS = (
    ("known_error", "TEXT"),  # the known-error / workaround text
    ("verification", "TEXT"),  # how the fix was verified: required to close from the console
    ("capa_owner", "TEXT"),
    ("capa_due", "REAL"),  # Unix seconds
)
_CONSOLE_SCHEMA = """
CREATE INDEX IF NOT EXISTS incidents_queue ON incidents (priority, sla_due, id)
    WHERE state = 'open';
CREATE INDEX IF NOT EXISTS incidents_open_host ON incidents (host) WHERE state = 'open';
CREATE INDEX IF NOT EXISTS hosts_hostname ON hosts (hostname, agent_id);
CREATE INDEX IF NOT EXISTS hosts_department ON hosts ({department}, hostname);
CREATE INDEX IF NOT EXISTS hosts_os ON hosts ({os}, hostname);
-- Covering: the quality page's runs per version and outcome without a sort.
CREATE INDEX IF NOT EXISTS remediation_runs_version
    ON remediation_runs (remediation, script_sha256, outcome, received_at)
"""
# Per day the incidents opened, by service, department and restore bucket: what the
# console's quality page sums (collector/desk/rollup.py says what each incident adds).
_ROLLUP_TABLE = """
CREATE TABLE incident_rollup (
    day        INTEGER NOT NULL,  -- UTC days since 1970-01-01 of opened_at
    service    TEXT NOT NULL,     -- '' for none
    department TEXT NOT NULL,     -- '' for none
    bucket     INTEGER NOT NULL,  -- -1: recorded; else the time-to-restore bucket
    prevented  INTEGER NOT NULL,
    raised     INTEGER NOT NULL,
    with_sla   INTEGER NOT NULL,
    within_sla INTEGER NOT NULL,
    resolved   INTEGER NOT NULL,
    PRIMARY KEY (day, service, department, bucket)
)"""


def migrate_console(db: sqlite3.Connection) -> None:
    """Add the console's problem columns, the incidents' department (filled from the
    hosts' labels for incidents opened before) and indexes (idempotent)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(problems)")}
    for name, decl in _CONSOLE_COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE problems ADD COLUMN {name} {decl}")
    if "department" not in {row[1] for row in db.execute("PRAGMA table_info(incidents)")}:
        db.execute("ALTER TABLE incidents ADD COLUMN department TEXT")
        db.execute(
            f"UPDATE incidents SET department = (SELECT {SQLITE.label('h.labels', 'department')}"
            " FROM hosts h WHERE h.agent_id = incidents.host)"
        )
    ddl = _CONSOLE_SCHEMA.format(
        department=SQLITE.label("labels", "department"), os=SQLITE.label("labels", "os")
    )
    for statement in ddl.split(";"):
        if statement.strip():
            db.execute(statement)
    exists = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'incident_rollup'"
    ).fetchone()
    if exists is None:
        db.execute(_ROLLUP_TABLE)
        db.execute(rollup_backfill_sql(SQLITE))


# Schema 10 (issue #17): what reads, the tick and start-up need at 100k hosts.
_SCALE_INDEXES = """
-- The liveness deadline, kept by the index itself whenever a heartbeat moves last_seen
-- or a report changes the TTL (an expression index cannot drift from the row): the tick
-- reads only hosts whose deadline passed. NULL (no TTL) is never due.
CREATE INDEX IF NOT EXISTS hosts_deadline ON hosts (last_seen + heartbeat_ttl_s);
-- Keys that are not plainly ok: with hosts_deadline, all the liveness tick reads.
CREATE INDEX IF NOT EXISTS check_state_abnormal ON check_state (check_id, host)
    WHERE state <> 'ok' OR incident_id IS NOT NULL;
-- Promised remediation results by when the wait began: the tick reads only overdue ones.
CREATE INDEX IF NOT EXISTS check_state_awaiting_since ON check_state (awaiting_since)
    WHERE awaiting IS NOT NULL;
-- Filters the API offers (incidents by service, by priority and state).
CREATE INDEX IF NOT EXISTS incidents_service ON incidents (service, id);
CREATE INDEX IF NOT EXISTS incidents_priority ON incidents (priority, state, id);
CREATE INDEX IF NOT EXISTS problems_check ON problems (check_id, id);
-- Covering indexes for counts taken on every tick (/metrics) and by remediation stats.
CREATE INDEX IF NOT EXISTS incidents_figures
    ON incidents (state, priority, sla_due, acknowledged_at);
CREATE INDEX IF NOT EXISTS incidents_remediation ON incidents (state, remediation);
-- Open incidents of a page of hosts (/hosts): small, only the open ones.
CREATE INDEX IF NOT EXISTS incidents_open_host ON incidents (host) WHERE state = 'open'
"""

# Remediation statistics kept on insert, in the run's own transaction, instead of a
# GROUP BY over every run at each request (8.7 s at 250k runs, issue #17). ``version`` is
# the script's sha256: a new script version starts its own counts.
_SCALE_TABLES: tuple[tuple[str, str, str], ...] = (
    (
        "remediation_outcomes",
        """CREATE TABLE remediation_outcomes (
    remediation TEXT NOT NULL,
    version     TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    runs        INTEGER NOT NULL,
    PRIMARY KEY (remediation, version, outcome)
) WITHOUT ROWID""",
        "INSERT INTO remediation_outcomes (remediation, version, outcome, runs)"
        " SELECT remediation, script_sha256, outcome, COUNT(*) FROM remediation_runs"
        " GROUP BY remediation, script_sha256, outcome",
    ),
    (
        "remediation_hosts",
        """CREATE TABLE remediation_hosts (
    remediation TEXT NOT NULL,
    host        TEXT NOT NULL,
    PRIMARY KEY (remediation, host)
) WITHOUT ROWID""",
        "INSERT INTO remediation_hosts (remediation, host)"
        " SELECT DISTINCT remediation, host FROM remediation_runs",
    ),
    (
        "remediation_totals",
        """CREATE TABLE remediation_totals (
    remediation TEXT PRIMARY KEY,
    hosts       INTEGER NOT NULL   -- distinct hosts that ran it (rows of remediation_hosts)
) WITHOUT ROWID""",
        "INSERT INTO remediation_totals (remediation, hosts)"
        " SELECT remediation, COUNT(*) FROM remediation_hosts GROUP BY remediation",
    ),
    # Histograms (time to restore, remediation durations) kept as values are observed;
    # filled from history by the first collector that starts on it (desk/histograms.py).
    (
        "histograms",
        """CREATE TABLE histograms (
    family TEXT NOT NULL,     -- e.g. time_to_restore/<fingerprint of the bucket bounds>
    label  TEXT NOT NULL,     -- priority, remediation name
    bucket INTEGER NOT NULL,  -- index into the bounds; -1: the sum; -2: family complete
    count  INTEGER NOT NULL,
    total  REAL NOT NULL,
    PRIMARY KEY (family, label, bucket)
) WITHOUT ROWID""",
        "",
    ),
)


def migrate_scale_reads(db: sqlite3.Connection) -> None:
    """Schema 10: the indexes and summary tables of issue #17 (idempotent). A summary
    table created on a database that has runs is filled from them once, here, in the
    caller's transaction; from then on every run added updates it."""
    for statement in _SCALE_INDEXES.split(";"):
        if statement.strip():
            db.execute(statement)
    for table, create, fill in _SCALE_TABLES:
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()
        if exists is None:
            db.execute(create)
            if fill:
                db.execute(fill)
