"""SQLite repositories of the incident desk: incidents, problems, silences. Queries only;
which state means what (acknowledged, flapping...) is the desk's to say."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from vigil.collector.storage.records import (
    IncidentAlertRow,
    ProblemAlertRow,
    ResolvedIncident,
    SilenceRow,
)
from vigil.collector.storage.sqlite.codec import columns_to_keys
from vigil.collector.storage.sqlite.ingest_repos import where

_INCIDENT_COLUMNS = (
    "id, host, hostname, check_id, state, priority, opened_at, resolved_at, value, message,"
    " remediation, remediation_outcome, resolution, service, impact, urgency, sla_due,"
    " acknowledged_at, acknowledged_by, flapping, root_cause, corrective_action,"
    " preventive_action"
)
_PROBLEM_COLUMNS = (
    "id, kind, check_id, host, hostname, service, impact, urgency, priority, sla_due, state,"
    " opened_at, resolved_at, acknowledged_at, acknowledged_by, summary, resolution,"
    " root_cause, corrective_action, preventive_action"
)
_SILENCE_COLUMNS = "id, matcher, value, starts_at, ends_at, comment, created_by, created_at"
_INCIDENT_KEYS = columns_to_keys(_INCIDENT_COLUMNS)
_PROBLEM_KEYS = columns_to_keys(_PROBLEM_COLUMNS)
_SILENCE_KEYS = columns_to_keys(_SILENCE_COLUMNS)
# Columns a caller may write by name (names are ours, never user input).
_INCIDENT_WRITABLE = frozenset(
    [
        "host",
        "hostname",
        "check_id",
        "state",
        "priority",
        "opened_at",
        "resolved_at",
        "value",
        "message",
        "remediation",
        "remediation_outcome",
        "resolution",
        "service",
        "impact",
        "urgency",
        "sla_due",
        "groups",
        "flapping",
        "department",
    ]
)
_PROBLEM_WRITABLE = frozenset(
    [
        "kind",
        "check_id",
        "host",
        "hostname",
        "service",
        "impact",
        "urgency",
        "priority",
        "sla_due",
        "opened_at",
        "summary",
    ]
)
_SILENCE_WRITABLE = frozenset(
    ["matcher", "value", "starts_at", "ends_at", "comment", "created_by", "created_at"]
)
_CAPA = ("root_cause", "corrective_action", "preventive_action")


def _before(clause: str, args: list[Any], before: int | None) -> tuple[str, list[Any]]:
    """``clause`` narrowed to ids below ``before`` (keyset paging, newest first)."""
    if before is None:
        return clause, args
    return (f"{clause} AND id < ?" if clause else " WHERE id < ?"), [*args, before]


def _state_clause(state: str | None) -> str:
    """SQL for a listed state (constants only): acknowledged and flapping refine open.

    Problems have no flapping column, and are never listed with ``flapping``.
    """
    return {
        None: "",
        "open": "state = 'open'",
        "acknowledged": "state = 'open' AND acknowledged_at IS NOT NULL AND flapping = 0",
        "flapping": "state = 'open' AND flapping = 1",
        "resolved": "state = 'resolved'",
        "prevented": "state = 'prevented'",
    }[state]


def _insert(
    db: sqlite3.Connection, table: str, allowed: frozenset[str], row: Mapping[str, Any]
) -> int:
    unknown = set(row) - allowed
    if unknown:
        raise ValueError(f"{table}: unknown columns {sorted(unknown)}")
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    cur = db.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))
    assert cur.lastrowid is not None
    return cur.lastrowid


class _DeskItems:
    """State, acknowledgement, CAPA notes and notification marks of one table."""

    _table = ""
    _timeline_table = ""
    _timeline_key = ""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def state_of(self, item_id: int) -> tuple[str, float | None] | None:
        row = self._db.execute(
            f"SELECT state, acknowledged_at FROM {self._table} WHERE id = ?", (item_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def acknowledge(self, item_id: int, at: float, by: str) -> None:
        self._db.execute(
            f"UPDATE {self._table} SET acknowledged_at = ?, acknowledged_by = ? WHERE id = ?",
            (at, by, item_id),
        )

    def set_capa(self, item_id: int, notes: Mapping[str, str]) -> None:
        capa = {k: v for k, v in notes.items() if k in _CAPA}
        if capa:
            sets = ", ".join(f"{k} = ?" for k in capa)
            self._db.execute(
                f"UPDATE {self._table} SET {sets} WHERE id = ?", (*capa.values(), item_id)
            )

    def add_timeline(self, item_id: int, at: float, text: str) -> None:
        self._db.execute(
            f"INSERT INTO {self._timeline_table} ({self._timeline_key}, at, text) VALUES (?, ?, ?)",
            (item_id, at, text),
        )

    def timeline(self, item_id: int) -> list[dict[str, Any]]:
        return [
            {"at": at, "text": text}
            for at, text in self._db.execute(
                f"SELECT at, text FROM {self._timeline_table} WHERE {self._timeline_key} = ?"
                " ORDER BY id",
                (item_id,),
            )
        ]

    def mark_notified(self, item_id: int, at: float, *, resolved: bool) -> None:
        column = "resolve_notified_at" if resolved else "notified_at"
        self._db.execute(f"UPDATE {self._table} SET {column} = ? WHERE id = ?", (at, item_id))


class SqliteIncidents(_DeskItems):
    """:class:`~collector.storage.protocols.IncidentRepository` on SQLite."""

    _table = "incidents"
    _timeline_table = "incident_timeline"
    _timeline_key = "incident_id"

    def insert(self, row: Mapping[str, Any]) -> int:
        if "groups" in row:
            row = {**row, "groups": json.dumps(list(row["groups"]))}
        if "flapping" in row:
            row = {**row, "flapping": int(row["flapping"])}
        return _insert(self._db, "incidents", _INCIDENT_WRITABLE, row)

    def resolve(self, incident_id: int, at: float, resolution: str) -> ResolvedIncident | None:
        rows = self._db.execute(
            "UPDATE incidents SET state = 'resolved', resolved_at = ?, resolution = ?"
            " WHERE id = ? AND state = 'open' RETURNING priority, check_id, opened_at",
            (at, resolution, incident_id),
        ).fetchall()  # not fetchone(): a RETURNING statement must run to completion
        return ResolvedIncident(*rows[0]) if rows else None

    def set_flapping(self, incident_id: int, flapping: bool) -> None:
        self._db.execute(
            "UPDATE incidents SET flapping = ? WHERE id = ?", (int(flapping), incident_id)
        )

    def opened_since(self, host: str, check: str, since: float) -> list[tuple[int, float]]:
        return self._db.execute(
            "SELECT id, opened_at FROM incidents WHERE host = ? AND check_id = ?"
            " AND opened_at >= ?",
            (host, check, since),
        ).fetchall()

    def open_since(self, check: str, since: float) -> list[tuple[int, str]]:
        return self._db.execute(
            "SELECT id, host FROM incidents WHERE check_id = ? AND state = 'open'"
            " AND opened_at >= ?",
            (check, since),
        ).fetchall()

    def prevented_since(self, check: str, since: float) -> list[tuple[int, str]]:
        return self._db.execute(
            "SELECT id, host FROM incidents WHERE check_id = ? AND state = 'prevented'"
            " AND opened_at >= ?",
            (check, since),
        ).fetchall()

    def list(
        self,
        *,
        filters: Mapping[str, str | None],
        state: str | None,
        limit: int,
        offset: int,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        clause, args = where(
            ("host", filters.get("host")),
            ("check_id", filters.get("check")),
            ("service", filters.get("service")),
            ("priority", filters.get("priority")),
        )
        extra = _state_clause(state)
        if extra:
            clause = f"{clause} AND {extra}" if clause else f" WHERE {extra}"
        clause, args = _before(clause, args, before)
        rows = self._db.execute(
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return [_incident_dict(row) for row in rows]

    def get(self, incident_id: int) -> dict[str, Any] | None:
        row = self._db.execute(
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE id = ?", (incident_id,)
        ).fetchone()
        return None if row is None else _incident_dict(row)

    def alertable(self) -> list[IncidentAlertRow]:
        rows = self._db.execute(
            "SELECT i.id, i.host, i.hostname, i.check_id, i.state, i.priority, i.service,"
            " i.groups, i.opened_at, i.resolved_at, i.message, i.remediation,"
            " i.remediation_outcome, i.flapping, i.notified_at, i.resolve_notified_at,"
            " i.resolution, EXISTS (SELECT 1 FROM problem_incidents l JOIN problems p"
            "   ON p.id = l.problem_id WHERE l.incident_id = i.id AND p.kind = 'fleet')"
            " FROM incidents i WHERE i.state = 'open' OR (i.state = 'resolved'"
            " AND i.notified_at IS NOT NULL AND i.resolve_notified_at IS NULL)"
        ).fetchall()
        out = []
        for row in rows:
            fields = list(row)
            fields[7] = json.loads(fields[7])
            fields[13] = bool(fields[13])
            fields[17] = bool(fields[17])
            out.append(IncidentAlertRow(*fields))
        return out

    def open_by_host(self, hosts: Sequence[str] | None = None) -> dict[str, int]:
        if hosts is None:
            return dict(
                self._db.execute(
                    "SELECT host, COUNT(*) FROM incidents WHERE state = 'open' GROUP BY host"
                ).fetchall()
            )
        counts: dict[str, int] = {}
        for start in range(0, len(hosts), 500):  # bounded IN lists
            chunk = hosts[start : start + 500]
            counts.update(
                self._db.execute(
                    "SELECT host, COUNT(*) FROM incidents WHERE state = 'open' AND host IN"
                    f" ({', '.join('?' * len(chunk))}) GROUP BY host",
                    chunk,
                ).fetchall()
            )
        return counts

    def open_by_priority_check(self) -> list[tuple[str, str, int]]:
        return self._db.execute(
            "SELECT priority, check_id, COUNT(*) FROM incidents WHERE state = 'open'"
            " GROUP BY priority, check_id"
        ).fetchall()

    def by_state(self) -> dict[str, int]:
        return dict(
            self._db.execute("SELECT state, COUNT(*) FROM incidents GROUP BY state").fetchall()
        )

    def restore_times(self) -> Iterator[tuple[str, float]]:
        yield from self._db.execute(
            "SELECT priority, resolved_at - opened_at FROM incidents"
            " WHERE state = 'resolved' AND resolved_at IS NOT NULL"
        ).fetchall()

    def prevented_by_remediation(self) -> dict[str, int]:
        return dict(
            self._db.execute(
                "SELECT remediation, COUNT(*) FROM incidents WHERE state = 'prevented'"
                " GROUP BY remediation"
            ).fetchall()
        )

    def past_sla(self, now: float) -> dict[str, int]:
        # INDEXED BY: with ANALYZE statistics SQLite prefers incidents_priority, which is
        # not covering (measured 29 ms against 0.1 ms at 200k incidents, every tick); and
        # +sla_due (no index range on it; NULL < x is not true): else it skip-scans the
        # index over every state and priority (233 ms against 1 ms at 1M incidents).
        return dict(
            self._db.execute(
                "SELECT priority, COUNT(*) FROM incidents INDEXED BY incidents_figures"
                " WHERE state = 'open' AND +sla_due < ? GROUP BY priority",
                (now,),
            ).fetchall()
        )

    def acknowledged_open(self) -> dict[str, int]:
        return dict(
            self._db.execute(
                "SELECT priority, COUNT(*) FROM incidents INDEXED BY incidents_figures"
                " WHERE state = 'open'"
                " AND acknowledged_at IS NOT NULL GROUP BY priority"
            ).fetchall()
        )


class SqliteProblems(_DeskItems):
    """:class:`~collector.storage.protocols.ProblemRepository` on SQLite."""

    _table = "problems"
    _timeline_table = "problem_timeline"
    _timeline_key = "problem_id"

    def find_open(self, kind: str, check: str, host: str | None) -> int | None:
        row = self._db.execute(
            "SELECT id FROM problems WHERE kind = ? AND check_id = ? AND host IS ?"
            " AND state = 'open'",
            (kind, check, host),
        ).fetchone()
        return None if row is None else int(row[0])

    def insert(self, row: Mapping[str, Any]) -> int:
        return _insert(
            self._db, "problems", _PROBLEM_WRITABLE | {"state"}, {**row, "state": "open"}
        )

    def link(self, problem_id: int, incident_id: int) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO problem_incidents (problem_id, incident_id) VALUES (?, ?)",
            (problem_id, incident_id),
        )
        return bool(cur.rowcount)

    def open_fleet_of(self, incident_id: int) -> list[int]:
        return [
            p
            for (p,) in self._db.execute(
                "SELECT p.id FROM problems p JOIN problem_incidents l ON l.problem_id = p.id"
                " WHERE l.incident_id = ? AND p.kind = 'fleet' AND p.state = 'open'",
                (incident_id,),
            ).fetchall()
        ]

    def has_open_incident(self, problem_id: int) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM problem_incidents l JOIN incidents i ON i.id = l.incident_id"
                " WHERE l.problem_id = ? AND i.state = 'open' LIMIT 1",
                (problem_id,),
            ).fetchone()
            is not None
        )

    def resolve(self, problem_id: int, at: float, resolution: str) -> None:
        self._db.execute(
            "UPDATE problems SET state = 'resolved', resolved_at = ?, resolution = ? WHERE id = ?",
            (at, resolution, problem_id),
        )

    def incident_ids(self, problem_id: int) -> list[int]:
        return [
            i
            for (i,) in self._db.execute(
                "SELECT incident_id FROM problem_incidents WHERE problem_id = ?"
                " ORDER BY incident_id",
                (problem_id,),
            )
        ]

    def incident_ids_of(self, problem_ids: Sequence[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {p: [] for p in problem_ids}
        marks = ", ".join("?" * len(problem_ids))  # one page of ids: at most 1000
        for problem, incident in self._db.execute(
            f"SELECT problem_id, incident_id FROM problem_incidents WHERE problem_id IN ({marks})"
            " ORDER BY problem_id, incident_id",
            tuple(problem_ids),
        ):
            out[problem].append(incident)
        return out

    def hosts_linked_of(self, problem_ids: Sequence[int]) -> dict[int, int]:
        marks = ", ".join("?" * len(problem_ids))
        rows = self._db.execute(
            "SELECT l.problem_id, COUNT(DISTINCT i.host) FROM problem_incidents l"
            f" JOIN incidents i ON i.id = l.incident_id WHERE l.problem_id IN ({marks})"
            " GROUP BY l.problem_id",
            tuple(problem_ids),
        ).fetchall()
        return {p: 0 for p in problem_ids} | dict(rows)

    def of_incident(self, incident_id: int) -> list[int]:
        return [
            p
            for (p,) in self._db.execute(
                "SELECT problem_id FROM problem_incidents WHERE incident_id = ?"
                " ORDER BY problem_id",
                (incident_id,),
            )
        ]

    def hosts_linked(self, problem_id: int) -> int:
        return int(
            self._db.execute(
                "SELECT COUNT(DISTINCT i.host) FROM problem_incidents l"
                " JOIN incidents i ON i.id = l.incident_id WHERE l.problem_id = ?",
                (problem_id,),
            ).fetchone()[0]
        )

    def list(
        self,
        *,
        filters: Mapping[str, str | None],
        state: str | None,
        limit: int,
        offset: int,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        clause, args = where(("kind", filters.get("kind")), ("check_id", filters.get("check")))
        extra = _state_clause(state)
        if state == "acknowledged":  # problems do not flap
            extra = "state = 'open' AND acknowledged_at IS NOT NULL"
        if extra:
            clause = f"{clause} AND {extra}" if clause else f" WHERE {extra}"
        clause, args = _before(clause, args, before)
        rows = self._db.execute(
            f"SELECT {_PROBLEM_COLUMNS} FROM problems{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        return [dict(zip(_PROBLEM_KEYS, row, strict=True)) for row in rows]

    def get(self, problem_id: int) -> dict[str, Any] | None:
        row = self._db.execute(
            f"SELECT {_PROBLEM_COLUMNS} FROM problems WHERE id = ?", (problem_id,)
        ).fetchone()
        return None if row is None else dict(zip(_PROBLEM_KEYS, row, strict=True))

    def alertable(self) -> list[ProblemAlertRow]:
        rows = self._db.execute(
            "SELECT p.id, p.kind, p.host, p.hostname, p.check_id, p.state, p.priority,"
            " p.service, p.opened_at, p.resolved_at, p.summary, p.notified_at,"
            " p.resolve_notified_at, p.resolution,"
            " (SELECT COUNT(*) FROM problem_incidents l WHERE l.problem_id = p.id)"
            " FROM problems p WHERE p.state = 'open' OR (p.state = 'resolved'"
            " AND p.notified_at IS NOT NULL AND p.resolve_notified_at IS NULL)"
        ).fetchall()
        return [ProblemAlertRow(*row) for row in rows]

    def open_by_kind(self) -> dict[str, int]:
        return dict(
            self._db.execute(
                "SELECT kind, COUNT(*) FROM problems WHERE state = 'open' GROUP BY kind"
            ).fetchall()
        )


class SqliteSilences:
    """:class:`~collector.storage.protocols.SilenceRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def create(self, row: Mapping[str, Any]) -> int:
        return _insert(self._db, "silences", _SILENCE_WRITABLE, row)

    def update(self, silence_id: int, *, ends_at: float | None, comment: str | None) -> None:
        if ends_at is not None:
            self._db.execute("UPDATE silences SET ends_at = ? WHERE id = ?", (ends_at, silence_id))
        if comment is not None:
            self._db.execute("UPDATE silences SET comment = ? WHERE id = ?", (comment, silence_id))

    def delete(self, silence_id: int) -> bool:
        return self._db.execute("DELETE FROM silences WHERE id = ?", (silence_id,)).rowcount > 0

    def get(self, silence_id: int) -> dict[str, Any] | None:
        row = self._db.execute(
            f"SELECT {_SILENCE_COLUMNS} FROM silences WHERE id = ?", (silence_id,)
        ).fetchone()
        return None if row is None else dict(zip(_SILENCE_KEYS, row, strict=True))

    def list(self, *, active_at: float | None) -> list[dict[str, Any]]:
        clause = "" if active_at is None else " WHERE starts_at <= ? AND ends_at > ?"
        args = () if active_at is None else (active_at, active_at)
        rows = self._db.execute(
            f"SELECT {_SILENCE_COLUMNS} FROM silences{clause} ORDER BY id DESC", args
        ).fetchall()
        return [dict(zip(_SILENCE_KEYS, row, strict=True)) for row in rows]

    def active(self, at: float) -> list[SilenceRow]:
        return [
            SilenceRow(*row)
            for row in self._db.execute(
                "SELECT id, matcher, value, starts_at, ends_at, comment FROM silences"
                " WHERE starts_at <= ? AND ends_at > ?",
                (at, at),
            ).fetchall()
        ]


def _incident_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    incident = dict(zip(_INCIDENT_KEYS, row, strict=True))
    incident["flapping"] = bool(incident["flapping"])
    return incident
