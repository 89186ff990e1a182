"""The policy repository's queries, shared by both backends (``sqlite/policy_repo.py``,
``postgres/policy_repo.py``): the statements are plain SQL both engines accept, written
with ``?`` placeholders that the PostgreSQL subclass rewrites to ``%s``.

Tables (DDL in ``policy_ddl``): ``policy_versions`` (every uploaded bundle document, as
uploaded), ``policy_rollouts`` (one staged rollout per policy), ``policy_hosts`` (the
version each host last said it runs), ``policy_halts`` (the kill switch: ``*`` halts
every remediation), ``run_now`` and ``run_now_results``. Queries only: what a rollout
does next is decided in ``collector/policy/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_VERSION_COLUMNS = (
    "policy",
    "version",
    "sha256",
    "key_id",
    "target",
    "created_at",
    "expires_at",
    "uploaded_at",
    "uploaded_by",
)
_ROLLOUT_COLUMNS = (
    "policy",
    "version",
    "previous_version",
    "target",
    "rings",
    "canary",
    "soak_s",
    "ring",
    "ring_started_at",
    "started_at",
    "paused",
    "paused_reason",
    "updated_at",
    "evidence_at",
    "remediations",
)
_JSON_COLUMNS = frozenset({"target", "rings", "canary", "params", "labels"})
# JSON columns that may be NULL (added to existing rows by a migration): None stays None.
_NULLABLE_JSON = frozenset({"remediations"})
_RUN_NOW_COLUMNS = (
    "id",
    "remediation",
    "params",
    "host",
    "labels",
    "requested_by",
    "requested_at",
    "expires_at",
)


def _encode(column: str, value: Any) -> Any:
    if column in _NULLABLE_JSON:
        return None if value is None else json.dumps(value, sort_keys=True)
    if column in _JSON_COLUMNS:
        return json.dumps(value, sort_keys=True)
    if column == "paused":
        return int(bool(value))
    return value


def _decode(columns: tuple[str, ...], row: Iterable[Any]) -> dict[str, Any]:
    out = dict(zip(columns, row, strict=True))
    for column in _JSON_COLUMNS.intersection(out):
        out[column] = json.loads(out[column])
    for column in _NULLABLE_JSON.intersection(out):
        out[column] = None if out[column] is None else json.loads(out[column])
    if "paused" in out:
        out["paused"] = bool(out["paused"])
    return out


class PolicySql:
    """:class:`~collector.storage.protocols.PolicyRepository` over a DB-API connection.

    Subclasses set :meth:`_run` for their driver's placeholder style.
    """

    def __init__(self, db: Any) -> None:
        self._db = db

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        return self._db.execute(sql, args)

    # ---------------------------------------------------------------- versions

    def add_version(self, row: Mapping[str, Any], document: bytes) -> bool:
        exists = self._run(
            "SELECT 1 FROM policy_versions WHERE policy = ? AND version = ?",
            (row["policy"], row["version"]),
        ).fetchone()
        if exists is not None:
            return False
        columns = (*_VERSION_COLUMNS, "document")
        values = (*(_encode(c, row[c]) for c in _VERSION_COLUMNS), document)
        self._run(
            f"INSERT INTO policy_versions ({', '.join(columns)})"
            f" VALUES ({', '.join('?' for _ in columns)})",
            values,
        )
        return True

    def latest_version(self, policy: str) -> int | None:
        row = self._run(
            "SELECT MAX(version) FROM policy_versions WHERE policy = ?", (policy,)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def document(self, policy: str, version: int) -> bytes | None:
        row = self._run(
            "SELECT document FROM policy_versions WHERE policy = ? AND version = ?",
            (policy, version),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def versions(self, policy: str | None) -> list[dict[str, Any]]:
        clause, args = ("", ()) if policy is None else (" WHERE policy = ?", (policy,))
        rows = self._run(
            f"SELECT {', '.join(_VERSION_COLUMNS)} FROM policy_versions{clause}"
            " ORDER BY policy, version DESC",
            args,
        ).fetchall()
        return [_decode(_VERSION_COLUMNS, r) for r in rows]

    # ---------------------------------------------------------------- rollouts

    def put_rollout(self, row: Mapping[str, Any]) -> None:
        self._run("DELETE FROM policy_rollouts WHERE policy = ?", (row["policy"],))
        self._run(
            f"INSERT INTO policy_rollouts ({', '.join(_ROLLOUT_COLUMNS)})"
            f" VALUES ({', '.join('?' for _ in _ROLLOUT_COLUMNS)})",
            # The columns added later may be absent from a row: NULL then.
            tuple(_encode(c, row.get(c)) for c in _ROLLOUT_COLUMNS),
        )

    def rollouts(self) -> list[dict[str, Any]]:
        rows = self._run(
            f"SELECT {', '.join(_ROLLOUT_COLUMNS)} FROM policy_rollouts ORDER BY policy"
        ).fetchall()
        return [_decode(_ROLLOUT_COLUMNS, r) for r in rows]

    # ------------------------------------------------------------------- hosts

    def set_running(self, rows: Iterable[tuple[str, str | None, int | None, float]]) -> None:
        for agent_id, policy, version, seen_at in rows:
            self._run(
                "INSERT INTO policy_hosts (agent_id, policy, version, seen_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET"
                " policy = excluded.policy, version = excluded.version,"
                " seen_at = excluded.seen_at",
                (agent_id, policy, version, seen_at),
            )

    def running(self, policy: str) -> dict[str, int]:
        rows = self._run(
            "SELECT agent_id, version FROM policy_hosts WHERE policy = ?", (policy,)
        ).fetchall()
        return {a: int(v) for a, v in rows}

    def running_all(self) -> dict[str, tuple[str | None, int | None]]:
        rows = self._run("SELECT agent_id, policy, version FROM policy_hosts").fetchall()
        return {a: (p, None if v is None else int(v)) for a, p, v in rows}

    def guard_counts(
        self, policy: str, version: int, since: float
    ) -> list[tuple[str, str, int, int]]:
        rows = self._run(
            "SELECT r.remediation, r.outcome, COUNT(*), COUNT(DISTINCT r.host)"
            " FROM remediation_runs r JOIN policy_hosts h ON h.agent_id = r.host"
            " WHERE h.policy = ? AND h.version = ? AND r.received_at >= ? AND NOT r.dry_run"
            " GROUP BY r.remediation, r.outcome ORDER BY r.remediation, r.outcome",
            (policy, version, since),
        ).fetchall()
        return [(r, o, int(n), int(h)) for r, o, n, h in rows]

    # ------------------------------------------------------------------- halts

    def halt(self, remediation: str, at: float, by: str, reason: str) -> bool:
        cursor = self._run(
            "INSERT INTO policy_halts (remediation, halted_at, halted_by, reason)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (remediation) DO NOTHING",
            (remediation, at, by, reason),
        )
        return bool(cursor.rowcount > 0)

    def unhalt(self, remediation: str) -> bool:
        cursor = self._run("DELETE FROM policy_halts WHERE remediation = ?", (remediation,))
        return bool(cursor.rowcount > 0)

    def halts(self) -> list[dict[str, Any]]:
        rows = self._run(
            "SELECT remediation, halted_at, halted_by, reason FROM policy_halts"
            " ORDER BY remediation"
        ).fetchall()
        return [
            {"remediation": r, "halted_at": a, "halted_by": b, "reason": why}
            for r, a, b, why in rows
        ]

    # ----------------------------------------------------------------- run-now

    def add_run_now(self, row: Mapping[str, Any]) -> None:
        self._run(
            f"INSERT INTO run_now ({', '.join(_RUN_NOW_COLUMNS)})"
            f" VALUES ({', '.join('?' for _ in _RUN_NOW_COLUMNS)})",
            tuple(_encode(c, row[c]) for c in _RUN_NOW_COLUMNS),
        )

    def run_now_open(self, now: float) -> list[dict[str, Any]]:
        rows = self._run(
            f"SELECT {', '.join(_RUN_NOW_COLUMNS)} FROM run_now WHERE expires_at > ?"
            " ORDER BY requested_at, id",
            (now,),
        ).fetchall()
        out = [_decode(_RUN_NOW_COLUMNS, r) for r in rows]
        done: dict[str, set[str]] = {r["id"]: set() for r in out}
        if out:
            for request_id, host in self._run(
                "SELECT s.request_id, s.host FROM run_now_results s"
                " JOIN run_now q ON q.id = s.request_id WHERE q.expires_at > ?",
                (now,),
            ).fetchall():
                done[request_id].add(host)
        for r in out:
            r["done_hosts"] = sorted(done[r["id"]])
        return out

    def get_run_now(self, request_id: str) -> dict[str, Any] | None:
        row = self._run(
            f"SELECT {', '.join(_RUN_NOW_COLUMNS)} FROM run_now WHERE id = ?", (request_id,)
        ).fetchone()
        if row is None:
            return None
        out = _decode(_RUN_NOW_COLUMNS, row)
        results = self._run(
            "SELECT host, event_id, outcome, at FROM run_now_results WHERE request_id = ?"
            " ORDER BY at, host",
            (request_id,),
        ).fetchall()
        out["results"] = [
            {"host": h, "event_id": e, "outcome": o, "at": a} for h, e, o, a in results
        ]
        return out

    def requests_for(self, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        ids = list(dict.fromkeys(event_ids))
        for start in range(0, len(ids), 500):  # bounded statement size
            chunk = ids[start : start + 500]
            rows = self._run(
                "SELECT s.event_id, q.id, q.requested_by, q.requested_at FROM run_now_results s"
                " JOIN run_now q ON q.id = s.request_id"
                f" WHERE s.event_id IN ({', '.join('?' for _ in chunk)})",
                tuple(chunk),
            ).fetchall()
            for event_id, request_id, by, at in rows:
                out[event_id] = {"request_id": request_id, "requested_by": by, "requested_at": at}
        return out

    def add_run_now_result(
        self, request_id: str, host: str, event_id: str, outcome: str, at: float
    ) -> bool:
        known = self._run("SELECT 1 FROM run_now WHERE id = ?", (request_id,)).fetchone()
        if known is None:
            return False
        cursor = self._run(
            "INSERT INTO run_now_results (request_id, host, event_id, outcome, at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (request_id, host) DO NOTHING",
            (request_id, host, event_id, outcome, at),
        )
        return bool(cursor.rowcount > 0)


POLICY_DDL = """
CREATE TABLE IF NOT EXISTS policy_versions (
    policy      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    sha256      TEXT NOT NULL,        -- of the document: what the ETag stands for
    key_id      TEXT NOT NULL,        -- the trusted key whose signature verified
    target      TEXT NOT NULL,        -- JSON: the manifest's target ({"labels": {...}})
    created_at  DOUBLE PRECISION NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL,
    uploaded_at DOUBLE PRECISION NOT NULL,
    uploaded_by TEXT NOT NULL,
    document    {blob} NOT NULL,      -- the signed bundle exactly as uploaded
    PRIMARY KEY (policy, version)
);
CREATE TABLE IF NOT EXISTS policy_rollouts (
    policy           TEXT PRIMARY KEY,
    version          BIGINT NOT NULL,  -- the version being rolled out
    previous_version BIGINT,           -- what hosts outside the reached rings keep
    target           TEXT NOT NULL,    -- JSON, the new version's target
    rings            TEXT NOT NULL,    -- JSON list of cumulative shares, last 1.0
    canary           TEXT NOT NULL,    -- JSON list of agent ids always in ring 0
    soak_s           DOUBLE PRECISION NOT NULL,
    ring             BIGINT NOT NULL,  -- index of the last ring reached
    ring_started_at  DOUBLE PRECISION NOT NULL,
    started_at       DOUBLE PRECISION NOT NULL,
    paused           INTEGER NOT NULL,
    paused_reason    TEXT NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL
    -- evidence_at and remediations: added by POLICY_ROLLOUT_COLUMNS below
);
CREATE TABLE IF NOT EXISTS policy_hosts (
    agent_id TEXT PRIMARY KEY,
    policy   TEXT,                     -- NULL: the agent runs no policy
    version  BIGINT,
    seen_at  DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS policy_hosts_version ON policy_hosts (policy, version);
CREATE TABLE IF NOT EXISTS policy_halts (
    remediation TEXT PRIMARY KEY,      -- '*' halts every remediation
    halted_at   DOUBLE PRECISION NOT NULL,
    halted_by   TEXT NOT NULL,         -- the operator, or 'guard' (blast-radius guard)
    reason      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_now (
    id           TEXT PRIMARY KEY,
    remediation  TEXT NOT NULL,
    params       TEXT NOT NULL,        -- JSON object
    host         TEXT,                 -- one agent id, or NULL for a label selector
    labels       TEXT NOT NULL,        -- JSON object, empty with a host
    requested_by TEXT NOT NULL,
    requested_at DOUBLE PRECISION NOT NULL,
    expires_at   DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS run_now_results (
    request_id TEXT NOT NULL,
    host       TEXT NOT NULL,
    event_id   TEXT NOT NULL,          -- the RemediationEvent that carried request_id
    outcome    TEXT NOT NULL,
    at         DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (request_id, host)
)
"""


# Added to policy_rollouts after its first release (SQLite schema 12, PostgreSQL 8):
# ``evidence_at``, when the current ring's hosts showed the new version running (the
# ring's soak counts from it; NULL: not yet, the rollout waits); ``remediations``, JSON
# list of the remediation ids the version enables, schedules or ships (only their runs
# count towards the guard; NULL for rollouts published before: every run counts).
POLICY_ROLLOUT_COLUMNS = (("evidence_at", "DOUBLE PRECISION"), ("remediations", "TEXT"))


def policy_ddl(blob: str) -> list[str]:
    """The statements creating the policy tables (idempotent), ``blob`` being the
    backend's binary type (``BLOB`` or ``bytea``)."""
    return [s.strip() for s in POLICY_DDL.replace("{blob}", blob).split(";") if s.strip()]
