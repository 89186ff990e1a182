"""PostgreSQL repositories of the incident desk: incidents, problems, silences. Queries
only; which state means what (acknowledged, flapping...) is the desk's to say.

Mirrors ``sqlite/desk_repos.py``: same column lists, same orders, same results.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from vigil.collector.storage.postgres.ingest_repos import where
from vigil.collector.storage.records import (
    IncidentAlertRow,
    ProblemAlertRow,
    ResolvedIncident,
    SilenceRow,
)

# The column lists are the shape the API serves; shared so both backends serve the same.
from vigil.collector.storage.sqlite.desk_repos import (
    _CAPA,
    _INCIDENT_COLUMNS,
    _INCIDENT_KEYS,
    _INCIDENT_WRITABLE,
    _PROBLEM_COLUMNS,
    _PROBLEM_KEYS,
    _PROBLEM_WRITABLE,
    _SILENCE_COLUMNS,
    _SILENCE_KEYS,
    _SILENCE_WRITABLE,
)

_STATE_CLAUSES: dict[str | None, str] = {
    None: "",
    "open": "state = 'open'",
    "acknowledged": "state = 'open' AND acknowledged_at IS NOT NULL AND NOT flapping",
    "flapping": "state = 'open' AND flapping",
    "resolved": "state = 'resolved'",
    "prevented": "state = 'prevented'",
}


def _before(clause: str, args: list[Any], before: int | None) -> tuple[str, list[Any]]:
    """``clause`` narrowed to ids below ``before`` (keyset paging, newest first)."""
    if before is None:
        return clause, args
    return (f"{clause} AND id < %s" if clause else " WHERE id < %s"), [*args, before]


def _with_state(clause: str, extra: str) -> str:
    if not extra:
        return clause
    return f"{clause} AND {extra}" if clause else f" WHERE {extra}"


def _insert(
    db: psycopg.Connection, table: str, allowed: frozenset[str], row: Mapping[str, Any]
) -> int:
    unknown = set(row) - allowed
    if unknown:
        raise ValueError(f"{table}: unknown columns {sorted(unknown)}")
    columns = ", ".join(row)
    marks = ", ".join("%s" for _ in row)
    found = db.execute(  # type: ignore[call-overload]  # names checked against ours above
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING id", tuple(row.values())
    ).fetchone()
    assert found is not None
    return int(found[0])


class _DeskItems:
    """State, acknowledgement, CAPA notes and notification marks of one table."""

    _table = ""
    _timeline_table = ""
    _timeline_key = ""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> psycopg.Cursor[Any]:
        # Table and column names come from the class constants, never from input.
        return self._db.execute(sql, params)  # type: ignore[call-overload,no-any-return]

    def state_of(self, item_id: int) -> tuple[str, float | None] | None:
        row = self._run(
            f"SELECT state, acknowledged_at FROM {self._table} WHERE id = %s", (item_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def acknowledge(self, item_id: int, at: float, by: str) -> None:
        self._run(
            f"UPDATE {self._table} SET acknowledged_at = %s, acknowledged_by = %s WHERE id = %s",
            (at, by, item_id),
        )

    def set_capa(self, item_id: int, notes: Mapping[str, str]) -> None:
        capa = {k: v for k, v in notes.items() if k in _CAPA}
        if capa:
            sets = ", ".join(f"{k} = %s" for k in capa)
            self._run(f"UPDATE {self._table} SET {sets} WHERE id = %s", (*capa.values(), item_id))

    def add_timeline(self, item_id: int, at: float, text: str) -> None:
        self._run(
            f"INSERT INTO {self._timeline_table} ({self._timeline_key}, at, text)"
            " VALUES (%s, %s, %s)",
            (item_id, at, text),
        )

    def timeline(self, item_id: int) -> list[dict[str, Any]]:
        return [
            {"at": at, "text": text}
            for at, text in self._run(
                f"SELECT at, text FROM {self._timeline_table} WHERE {self._timeline_key} = %s"
                " ORDER BY id",
                (item_id,),
            ).fetchall()
        ]

    def mark_notified(self, item_id: int, at: float, *, resolved: bool) -> None:
        column = "resolve_notified_at" if resolved else "notified_at"
        self._run(f"UPDATE {self._table} SET {column} = %s WHERE id = %s", (at, item_id))


class PgIncidents(_DeskItems):
    """:class:`~collector.storage.protocols.IncidentRepository` on PostgreSQL."""

    _table = "incidents"
    _timeline_table = "incident_timeline"
    _timeline_key = "incident_id"

    def insert(self, row: Mapping[str, Any]) -> int:
        if "groups" in row:
            row = {**row, "groups": Jsonb(list(row["groups"]))}
        if "flapping" in row:
            row = {**row, "flapping": bool(row["flapping"])}
        return _insert(self._db, "incidents", _INCIDENT_WRITABLE, row)

    def resolve(self, incident_id: int, at: float, resolution: str) -> ResolvedIncident | None:
        row = self._db.execute(
            "UPDATE incidents SET state = 'resolved', resolved_at = %s, resolution = %s"
            " WHERE id = %s AND state = 'open' RETURNING priority, check_id, opened_at",
            (at, resolution, incident_id),
        ).fetchone()
        return None if row is None else ResolvedIncident(*row)

    def set_flapping(self, incident_id: int, flapping: bool) -> None:
        self._db.execute(
            "UPDATE incidents SET flapping = %s WHERE id = %s", (bool(flapping), incident_id)
        )

    def opened_since(self, host: str, check: str, since: float) -> list[tuple[int, float]]:
        rows = self._db.execute(
            "SELECT id, opened_at FROM incidents WHERE host = %s AND check_id = %s"
            " AND opened_at >= %s ORDER BY id",
            (host, check, since),
        ).fetchall()
        return [(int(i), at) for i, at in rows]

    def open_since(self, check: str, since: float) -> list[tuple[int, str]]:
        rows = self._db.execute(
            "SELECT id, host FROM incidents WHERE check_id = %s AND state = 'open'"
            " AND opened_at >= %s ORDER BY id",
            (check, since),
        ).fetchall()
        return [(int(i), h) for i, h in rows]

    def prevented_since(self, check: str, since: float) -> list[tuple[int, str]]:
        rows = self._db.execute(
            "SELECT id, host FROM incidents WHERE check_id = %s AND state = 'prevented'"
            " AND opened_at >= %s ORDER BY id",
            (check, since),
        ).fetchall()
        return [(int(i), h) for i, h in rows]

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
        clause = _with_state(clause, _STATE_CLAUSES[state])
        clause, args = _before(clause, args, before)
        rows = self._run(
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents{clause}"
            " ORDER BY id DESC LIMIT %s OFFSET %s",
            (*args, limit, offset),
        ).fetchall()
        return [_incident_dict(row) for row in rows]

    def get(self, incident_id: int) -> dict[str, Any] | None:
        row = self._run(
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE id = %s", (incident_id,)
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
            " ORDER BY i.id"
        ).fetchall()
        out = []
        for row in rows:
            fields = list(row)
            fields[7] = fields[7] if isinstance(fields[7], list) else []
            out.append(IncidentAlertRow(*fields))
        return out

    def open_by_host(self, hosts: Sequence[str] | None = None) -> dict[str, int]:
        if hosts is None:
            return dict(
                self._db.execute(
                    "SELECT host, COUNT(*) FROM incidents WHERE state = 'open' GROUP BY host"
                ).fetchall()
            )
        return dict(
            self._db.execute(
                "SELECT host, COUNT(*) FROM incidents WHERE state = 'open'"
                " AND host = ANY(%s) GROUP BY host",
                (list(hosts),),
            ).fetchall()
        )

    def open_by_priority_check(self) -> list[tuple[str, str, int]]:
        rows = self._db.execute(
            "SELECT priority, check_id, COUNT(*) FROM incidents WHERE state = 'open'"
            " GROUP BY priority, check_id"
        ).fetchall()
        return [tuple(r) for r in rows]

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
        return dict(
            self._db.execute(
                "SELECT priority, COUNT(*) FROM incidents WHERE state = 'open'"
                " AND sla_due IS NOT NULL AND sla_due < %s GROUP BY priority",
                (now,),
            ).fetchall()
        )

    def acknowledged_open(self) -> dict[str, int]:
        return dict(
            self._db.execute(
                "SELECT priority, COUNT(*) FROM incidents WHERE state = 'open'"
                " AND acknowledged_at IS NOT NULL GROUP BY priority"
            ).fetchall()
        )


class PgProblems(_DeskItems):
    """:class:`~collector.storage.protocols.ProblemRepository` on PostgreSQL."""

    _table = "problems"
    _timeline_table = "problem_timeline"
    _timeline_key = "problem_id"

    def find_open(self, kind: str, check: str, host: str | None) -> int | None:
        row = self._db.execute(
            "SELECT id FROM problems WHERE kind = %s AND check_id = %s"
            " AND host IS NOT DISTINCT FROM %s::text AND state = 'open' ORDER BY id LIMIT 1",
            (kind, check, host),
        ).fetchone()
        return None if row is None else int(row[0])

    def insert(self, row: Mapping[str, Any]) -> int:
        return _insert(
            self._db, "problems", _PROBLEM_WRITABLE | {"state"}, {**row, "state": "open"}
        )

    def link(self, problem_id: int, incident_id: int) -> bool:
        cur = self._db.execute(
            "INSERT INTO problem_incidents (problem_id, incident_id) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            (problem_id, incident_id),
        )
        return bool(cur.rowcount)

    def open_fleet_of(self, incident_id: int) -> list[int]:
        return [
            int(p)
            for (p,) in self._db.execute(
                "SELECT p.id FROM problems p JOIN problem_incidents l ON l.problem_id = p.id"
                " WHERE l.incident_id = %s AND p.kind = 'fleet' AND p.state = 'open'"
                " ORDER BY p.id",
                (incident_id,),
            ).fetchall()
        ]

    def has_open_incident(self, problem_id: int) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM problem_incidents l JOIN incidents i ON i.id = l.incident_id"
                " WHERE l.problem_id = %s AND i.state = 'open' LIMIT 1",
                (problem_id,),
            ).fetchone()
            is not None
        )

    def resolve(self, problem_id: int, at: float, resolution: str) -> None:
        self._db.execute(
            "UPDATE problems SET state = 'resolved', resolved_at = %s, resolution = %s"
            " WHERE id = %s",
            (at, resolution, problem_id),
        )

    def incident_ids(self, problem_id: int) -> list[int]:
        return [
            int(i)
            for (i,) in self._db.execute(
                "SELECT incident_id FROM problem_incidents WHERE problem_id = %s"
                " ORDER BY incident_id",
                (problem_id,),
            ).fetchall()
        ]

    def incident_ids_of(self, problem_ids: Sequence[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {int(p): [] for p in problem_ids}
        for problem, incident in self._db.execute(
            "SELECT problem_id, incident_id FROM problem_incidents WHERE problem_id = ANY(%s)"
            " ORDER BY problem_id, incident_id",
            (list(problem_ids),),
        ).fetchall():
            out[int(problem)].append(int(incident))
        return out

    def hosts_linked_of(self, problem_ids: Sequence[int]) -> dict[int, int]:
        rows = self._db.execute(
            "SELECT l.problem_id, COUNT(DISTINCT i.host) FROM problem_incidents l"
            " JOIN incidents i ON i.id = l.incident_id WHERE l.problem_id = ANY(%s)"
            " GROUP BY l.problem_id",
            (list(problem_ids),),
        ).fetchall()
        return {int(p): 0 for p in problem_ids} | {int(p): int(n) for p, n in rows}

    def of_incident(self, incident_id: int) -> list[int]:
        return [
            int(p)
            for (p,) in self._db.execute(
                "SELECT problem_id FROM problem_incidents WHERE incident_id = %s"
                " ORDER BY problem_id",
                (incident_id,),
            ).fetchall()
        ]

    def hosts_linked(self, problem_id: int) -> int:
        row = self._db.execute(
            "SELECT COUNT(DISTINCT i.host) FROM problem_incidents l"
            " JOIN incidents i ON i.id = l.incident_id WHERE l.problem_id = %s",
            (problem_id,),
        ).fetchone()
        return int(row[0]) if row else 0

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
        extra = _STATE_CLAUSES[state]
        if state == "acknowledged":  # problems do not flap
            extra = "state = 'open' AND acknowledged_at IS NOT NULL"
        clause = _with_state(clause, extra)
        clause, args = _before(clause, args, before)
        rows = self._run(
            f"SELECT {_PROBLEM_COLUMNS} FROM problems{clause} ORDER BY id DESC LIMIT %s OFFSET %s",
            (*args, limit, offset),
        ).fetchall()
        return [dict(zip(_PROBLEM_KEYS, row, strict=True)) for row in rows]

    def get(self, problem_id: int) -> dict[str, Any] | None:
        row = self._run(
            f"SELECT {_PROBLEM_COLUMNS} FROM problems WHERE id = %s", (problem_id,)
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
            " ORDER BY p.id"
        ).fetchall()
        return [ProblemAlertRow(*row) for row in rows]

    def open_by_kind(self) -> dict[str, int]:
        return dict(
            self._db.execute(
                "SELECT kind, COUNT(*) FROM problems WHERE state = 'open' GROUP BY kind"
            ).fetchall()
        )


class PgSilences:
    """:class:`~collector.storage.protocols.SilenceRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def create(self, row: Mapping[str, Any]) -> int:
        return _insert(self._db, "silences", _SILENCE_WRITABLE, row)

    def update(self, silence_id: int, *, ends_at: float | None, comment: str | None) -> None:
        if ends_at is not None:
            self._db.execute(
                "UPDATE silences SET ends_at = %s WHERE id = %s", (ends_at, silence_id)
            )
        if comment is not None:
            self._db.execute(
                "UPDATE silences SET comment = %s WHERE id = %s", (comment, silence_id)
            )

    def delete(self, silence_id: int) -> bool:
        cur = self._db.execute("DELETE FROM silences WHERE id = %s", (silence_id,))
        return cur.rowcount > 0

    def get(self, silence_id: int) -> dict[str, Any] | None:
        row = self._db.execute(  # type: ignore[call-overload]
            f"SELECT {_SILENCE_COLUMNS} FROM silences WHERE id = %s", (silence_id,)
        ).fetchone()
        return None if row is None else dict(zip(_SILENCE_KEYS, row, strict=True))

    def list(self, *, active_at: float | None) -> list[dict[str, Any]]:
        clause = "" if active_at is None else " WHERE starts_at <= %s AND ends_at > %s"
        args = () if active_at is None else (active_at, active_at)
        rows = self._db.execute(  # type: ignore[call-overload]
            f"SELECT {_SILENCE_COLUMNS} FROM silences{clause} ORDER BY id DESC", args
        ).fetchall()
        return [dict(zip(_SILENCE_KEYS, row, strict=True)) for row in rows]

    def active(self, at: float) -> list[SilenceRow]:
        return [
            SilenceRow(*row)
            for row in self._db.execute(
                "SELECT id, matcher, value, starts_at, ends_at, comment FROM silences"
                " WHERE starts_at <= %s AND ends_at > %s ORDER BY id",
                (at, at),
            ).fetchall()
        ]


def _incident_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    incident = dict(zip(_INCIDENT_KEYS, row, strict=True))
    incident["flapping"] = bool(incident["flapping"])
    return incident
