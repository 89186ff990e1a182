"""The console's reads on SQLite: the paged queue, host search, one host, the service
quality figures, and a problem's CAPA record fields. Queries only; the console and the
desk decide what the rows mean.

The SQL is written once for both backends: :class:`ConsoleQueries` takes a small
:class:`Dialect` (placeholder, label extraction, boolean literal); the PostgreSQL
repository subclasses it (``postgres/console_repo.py``). Every list is paged with
``LIMIT``/``OFFSET`` and ordered along an index (schema 9 / migration 5), so a page costs
the same with 50,000 hosts as with 50.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Columns of a queue row, in the order of :data:`QUEUE_KEYS`.
_QUEUE_COLUMNS = (
    "i.id, i.host, i.hostname, i.check_id, i.state, i.priority, i.opened_at, i.sla_due,"
    " i.acknowledged_at, i.acknowledged_by, i.flapping, i.service, i.message"
)
QUEUE_KEYS = (
    "id",
    "host",
    "hostname",
    "check",
    "state",
    "priority",
    "opened_at",
    "sla_due",
    "acknowledged_at",
    "acknowledged_by",
    "flapping",
    "service",
    "message",
    "department",
)
HOST_KEYS = (
    "agent_id",
    "hostname",
    "labels",
    "agent_version",
    "first_seen",
    "last_seen",
    "open_incidents",
)
# Fields of a problem's CAPA record that live beside root cause/corrective/preventive.
RECORD_FIELDS = ("known_error", "verification", "capa_owner", "capa_due")
# Queue refinements of "open" (constants only, never input).
_QUEUE_STATES = {
    None: "",
    "open": "",
    "unacknowledged": " AND i.acknowledged_at IS NULL",
    "acknowledged": " AND i.acknowledged_at IS NOT NULL",
    "flapping": " AND i.flapping = {true}",
}


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the backends' SQL: the parameter placeholder, how a host
    label is read from the ``labels`` column, and the boolean true literal."""

    ph: str
    label_sql: str  # format string with {col} and {key}
    true: str
    floor_sql: str  # format string with {x}: the integer part of a non-negative number

    def label(self, col: str, key: str) -> str:
        return self.label_sql.format(col=col, key=key)

    def floor(self, x: str) -> str:
        return self.floor_sql.format(x=x)


# A label read tolerates a labels text that is not JSON (a hand edit, an older version:
# json_extract alone would raise "malformed JSON", in a query and in an index on it,
# refusing the row). The hosts_department/hosts_os indexes use this same expression.
# SQLite's CAST truncates (its FLOOR needs the optional math functions).
SQLITE = Dialect(
    ph="?",
    label_sql="(CASE WHEN json_valid({col}) THEN json_extract({col}, '$.{key}') END)",
    true="1",
    floor_sql="CAST({x} AS INTEGER)",
)


_ROLLUP_COUNTS = ("prevented", "raised", "with_sla", "within_sla", "resolved")
_ROLLUP_UPSERT = (
    "INSERT INTO incident_rollup (day, service, department, bucket, prevented, raised,"
    " with_sla, within_sla, resolved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (day, service, department, bucket) DO UPDATE SET "
    + ", ".join(f"{c} = incident_rollup.{c} + excluded.{c}" for c in _ROLLUP_COUNTS)
)


def rollup_backfill_sql(d: Dialect) -> str:
    """Fill ``incident_rollup`` from the incidents already stored (run once, by the
    migration that creates it): the same counts :mod:`collector.desk.rollup` adds as
    incidents are recorded and resolved."""
    dur = "(resolved_at - opened_at)"
    bucket = (
        f"CASE WHEN {dur} < 7200 THEN {d.floor(f'{dur} / 60')}"
        f" WHEN {dur} < 172800 THEN 120 + {d.floor(f'{dur} / 3600')}"
        f" ELSE 168 + {d.floor(f'{dur} / 86400')} END"
    )
    day = d.floor("opened_at / 86400")
    svc, dept = "COALESCE(service, '')", "COALESCE(department, '')"
    return (
        "INSERT INTO incident_rollup (day, service, department, bucket, prevented, raised,"
        " with_sla, within_sla, resolved) SELECT day, service, department, bucket,"
        " SUM(prevented), SUM(raised), SUM(with_sla), SUM(within_sla), SUM(resolved) FROM ("
        f"SELECT {day} AS day, {svc} AS service, {dept} AS department, -1 AS bucket,"
        " CASE WHEN state = 'prevented' THEN 1 ELSE 0 END AS prevented,"
        " CASE WHEN state = 'prevented' THEN 0 ELSE 1 END AS raised,"
        " 0 AS with_sla, 0 AS within_sla, 0 AS resolved FROM incidents"
        f" UNION ALL SELECT {day}, {svc}, {dept}, {bucket}, 0, 0,"
        " CASE WHEN sla_due IS NULL THEN 0 ELSE 1 END,"
        " CASE WHEN resolved_at <= sla_due THEN 1 ELSE 0 END, 1"
        " FROM incidents WHERE state = 'resolved') t GROUP BY day, service, department, bucket"
    )


class ConsoleQueries:
    """:class:`~collector.storage.protocols.ConsoleRepository` over a DB-API connection."""

    dialect: Dialect = SQLITE

    def __init__(self, db: Any) -> None:
        self._db = db

    def _q(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        # Column names and dialect fragments are ours; every value goes in as a parameter.
        return list(self._db.execute(sql.replace("?", self.dialect.ph), tuple(args)).fetchall())

    def _labels(self, raw: Any) -> dict[str, str]:
        if isinstance(raw, dict):
            return raw
        try:
            value = json.loads(raw)
        except (TypeError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    # ------------------------------------------------------------------ queue

    def queue(
        self, *, filters: Mapping[str, str | None], state: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        d = self.dialect
        conds, args = ["i.state = 'open'"], []
        for column, key in (("i.service", "service"), ("i.hostname", "host")):
            if filters.get(key):
                conds.append(f"{column} = ?")
                args.append(filters[key])
        if filters.get("department"):
            conds.append("i.department = ?")
            args.append(filters["department"])
        refine = _QUEUE_STATES[state].format(true=d.true)
        # Priority text sorts P1 < P2 < ...; within one, the earliest deadline first (an
        # open incident from before deadlines existed, with none, first of all). The
        # partial index incidents_queue has exactly this order on both backends, so a
        # page reads its rows without sorting the open incidents.
        rows = self._q(
            f"SELECT {_QUEUE_COLUMNS}, i.department FROM incidents i"
            f" WHERE {' AND '.join(conds)}{refine}"
            " ORDER BY i.priority, i.sla_due NULLS FIRST, i.id LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        out = []
        for row in rows:
            item = dict(zip(QUEUE_KEYS, row, strict=True))
            item["flapping"] = bool(item["flapping"])
            out.append(item)
        return out

    def queue_count(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM incidents WHERE state = 'open'")[0][0])

    # ------------------------------------------------------------------ hosts

    def search_hosts(
        self, *, filters: Mapping[str, Any], limit: int, offset: int
    ) -> list[dict[str, Any]]:
        d = self.dialect
        conds: list[str] = []
        args: list[Any] = []
        if filters.get("hostname"):
            # A prefix range rather than LIKE: it uses the hostname index on both backends
            # whatever the collation, and "%" or "_" in the input mean themselves.
            prefix = str(filters["hostname"])
            conds.append("h.hostname >= ? AND h.hostname < ?")
            args += [prefix, prefix + "\U0010ffff"]
        for key in ("department", "os"):
            if filters.get(key):
                conds.append(f"{d.label('h.labels', key)} = ?")
                args.append(filters[key])
        if filters.get("agent_version"):
            conds.append("h.agent_version = ?")
            args.append(filters["agent_version"])
        if filters.get("seen_before") is not None:
            conds.append("h.last_seen < ?")
            args.append(filters["seen_before"])
        if filters.get("seen_after") is not None:
            conds.append("h.last_seen >= ?")
            args.append(filters["seen_after"])
        failing = (
            "EXISTS (SELECT 1 FROM incidents x WHERE x.host = h.agent_id AND x.state = 'open')"
        )
        if filters.get("health") == "failing":
            conds.append(failing)
        elif filters.get("health") == "healthy":
            conds.append(f"NOT {failing}")
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        rows = self._q(
            "SELECT h.agent_id, h.hostname, h.labels, h.agent_version, h.first_seen,"
            " h.last_seen, (SELECT COUNT(*) FROM incidents x WHERE x.host = h.agent_id"
            f" AND x.state = 'open') FROM hosts h{where}"
            " ORDER BY h.hostname, h.agent_id LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [self._host(row) for row in rows]

    def host(self, agent_id: str) -> dict[str, Any] | None:
        rows = self._q(
            "SELECT h.agent_id, h.hostname, h.labels, h.agent_version, h.first_seen,"
            " h.last_seen, (SELECT COUNT(*) FROM incidents x WHERE x.host = h.agent_id"
            " AND x.state = 'open') FROM hosts h WHERE h.agent_id = ?",
            (agent_id,),
        )
        return self._host(rows[0]) if rows else None

    def _host(self, row: tuple[Any, ...]) -> dict[str, Any]:
        host = dict(zip(HOST_KEYS, row, strict=True))
        host["labels"] = self._labels(host["labels"])
        return host

    def host_incidents(self, agent_id: str, limit: int) -> list[dict[str, Any]]:
        rows = self._q(
            "SELECT id, check_id, state, priority, opened_at, resolved_at, message"
            " FROM incidents WHERE host = ? ORDER BY id DESC LIMIT ?",
            (agent_id, limit),
        )
        keys = ("id", "check", "state", "priority", "opened_at", "resolved_at", "message")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # ------------------------------------------------------------------ quality

    def quality_rows(self, since_day: int) -> list[tuple[Any, ...]]:
        """``(service, department, bucket, prevented, raised, with_sla, within_sla,
        resolved)`` summed over the rollup's days from ``since_day`` on."""
        return self._q(
            "SELECT service, department, bucket, SUM(prevented), SUM(raised), SUM(with_sla),"
            " SUM(within_sla), SUM(resolved) FROM incident_rollup WHERE day >= ?"
            " GROUP BY service, department, bucket",
            (since_day,),
        )

    def rollup_add(self, delta: Any) -> None:
        """Add a :class:`~collector.desk.rollup.RollupDelta` to its rollup row."""
        self._db.execute(
            _ROLLUP_UPSERT.replace("?", self.dialect.ph),
            (
                delta.day, delta.service, delta.department, delta.bucket, delta.prevented,
                delta.raised, delta.with_sla, delta.within_sla, delta.resolved,
            ),
        )  # fmt: skip

    def rollup_info(
        self, incident_id: int
    ) -> tuple[float, str | None, str | None, float | None] | None:
        """``(opened_at, service, department, sla_due)`` of an incident, or None."""
        rows = self._q(
            "SELECT opened_at, service, department, sla_due FROM incidents WHERE id = ?",
            (incident_id,),
        )
        return (rows[0][0], rows[0][1], rows[0][2], rows[0][3]) if rows else None

    def remediation_versions(self, since: float) -> list[tuple[str, str, str, int]]:
        """``(remediation, script_sha256, outcome, runs)`` since ``since``."""
        return self._q(
            "SELECT remediation, script_sha256, outcome, COUNT(*) FROM remediation_runs"
            " WHERE received_at >= ? GROUP BY remediation, script_sha256, outcome"
            " ORDER BY remediation, script_sha256, outcome",
            (since,),
        )

    # ------------------------------------------------------------------ problem record

    def problem_record(self, problem_id: int) -> dict[str, Any] | None:
        rows = self._q(
            f"SELECT {', '.join(RECORD_FIELDS)} FROM problems WHERE id = ?", (problem_id,)
        )
        return dict(zip(RECORD_FIELDS, rows[0], strict=True)) if rows else None

    def set_problem_record(self, problem_id: int, fields: Mapping[str, Any]) -> None:
        wanted = {k: v for k, v in fields.items() if k in RECORD_FIELDS}
        if wanted:
            sets = ", ".join(f"{k} = ?" for k in wanted)
            sql = f"UPDATE problems SET {sets} WHERE id = ?"
            self._db.execute(sql.replace("?", self.dialect.ph), (*wanted.values(), problem_id))

    def open_problems(self, limit: int) -> list[tuple[int, str, str]]:
        """``(id, kind, summary)`` of open problems, newest first (the link form)."""
        return [
            (int(r[0]), r[1], r[2])
            for r in self._q(
                "SELECT id, kind, summary FROM problems WHERE state = 'open'"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            )
        ]
