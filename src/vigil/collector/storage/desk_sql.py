"""The incident desk's repositories (incidents, problems, silences), shared by both
backends (``sqlite/desk_repos.py``, ``postgres/desk_repos.py``): one text per query, the
backend differences in the hooks of ``storage/sql_hooks.py``. Queries only; which state
means what (acknowledged, flapping...) is the desk's to say."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from vigil.collector.storage.records import (
    IncidentAlertRow,
    ProblemAlertRow,
    ResolvedIncident,
    SilenceRow,
)
from vigil.collector.storage.sql_hooks import SqlHooks, chunks, narrowed, where
from vigil.collector.storage.sqlite.codec import columns_to_keys

# The column lists are the shape the API serves.
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
# SQL for a listed state (constants only): acknowledged and flapping refine open.
# Problems have no flapping column, and are never listed with ``flapping``.
_STATE_CLAUSES: dict[str | None, str] = {
    None: "",
    "open": "state = 'open'",
    "acknowledged": "state = 'open' AND acknowledged_at IS NOT NULL AND NOT flapping",
    "flapping": "state = 'open' AND flapping",
    "resolved": "state = 'resolved'",
    "prevented": "state = 'prevented'",
}
# Open incidents past their SLA, by priority. The engines need different SQL here:
_PAST_SLA = {
    # INDEXED BY: with ANALYZE statistics SQLite prefers incidents_priority, which is not
    # covering (measured 29 ms against 0.1 ms at 200k incidents, every tick); and
    # +sla_due (no index range on it; NULL < x is not true): else it skip-scans the index
    # over every state and priority (233 ms against 1 ms at 1M incidents).
    "sqlite": "SELECT priority, COUNT(*) FROM incidents INDEXED BY incidents_figures"
    " WHERE state = 'open' AND +sla_due < ? GROUP BY priority",
    # PostgreSQL has no hints, and plans the plain predicate well.
    "postgresql": "SELECT priority, COUNT(*) FROM incidents WHERE state = 'open'"
    " AND sla_due IS NOT NULL AND sla_due < ? GROUP BY priority",
}


class _DeskItemsSql(SqlHooks):
    """Pages, state, acknowledgement, CAPA notes and notification marks of one table."""

    _table = ""
    _timeline_table = ""
    _timeline_key = ""

    def _page(
        self,
        columns: str,
        clause: str,
        args: list[Any],
        before: int | None,
        limit: int,
        offset: int,
    ) -> list[tuple[Any, ...]]:
        """A page of ``columns`` of the rows ``clause`` selects, newest first, below the id
        ``before`` if set (keyset paging) or from ``offset``."""
        if before is not None:
            clause, args = narrowed(clause, "id < ?"), [*args, before]
        return list(
            self._run(
                f"SELECT {columns} FROM {self._table}{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        )

    def state_of(self, item_id: int) -> tuple[str, float | None] | None:
        row = self._run(
            f"SELECT state, acknowledged_at FROM {self._table} WHERE id = ?", (item_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def acknowledge(self, item_id: int, at: float, by: str) -> None:
        self._run(
            f"UPDATE {self._table} SET acknowledged_at = ?, acknowledged_by = ? WHERE id = ?",
            (at, by, item_id),
        )

    def set_capa(self, item_id: int, notes: Mapping[str, str]) -> None:
        capa = {k: v for k, v in notes.items() if k in _CAPA}
        if capa:
            sets = ", ".join(f"{k} = ?" for k in capa)
            self._run(f"UPDATE {self._table} SET {sets} WHERE id = ?", (*capa.values(), item_id))

    def add_timeline(self, item_id: int, at: float, text: str) -> None:
        self._run(
            f"INSERT INTO {self._timeline_table} ({self._timeline_key}, at, text) VALUES (?, ?, ?)",
            (item_id, at, text),
        )

    def timeline(self, item_id: int) -> list[dict[str, Any]]:
        return [
            {"at": at, "text": text}
            for at, text in self._run(
                f"SELECT at, text FROM {self._timeline_table} WHERE {self._timeline_key} = ?"
                " ORDER BY id",
                (item_id,),
            ).fetchall()
        ]

    def mark_notified(self, item_id: int, at: float, *, resolved: bool) -> None:
        column = "resolve_notified_at" if resolved else "notified_at"
        self._run(f"UPDATE {self._table} SET {column} = ? WHERE id = ?", (at, item_id))


class IncidentsSql(_DeskItemsSql):
    """:class:`~collector.storage.protocols.IncidentRepository` in SQL both backends run."""

    _table = "incidents"
    _timeline_table = "incident_timeline"
    _timeline_key = "incident_id"

    def insert(self, row: Mapping[str, Any]) -> int:
        if "groups" in row:
            row = {**row, "groups": self._json(list(row["groups"]))}
        if "flapping" in row:
            row = {**row, "flapping": bool(row["flapping"])}
        return self._insert_row("incidents", _INCIDENT_WRITABLE, row)

    def resolve(self, incident_id: int, at: float, resolution: str) -> ResolvedIncident | None:
        rows = self._run(
            "UPDATE incidents SET state = 'resolved', resolved_at = ?, resolution = ?"
            " WHERE id = ? AND state = 'open' RETURNING priority, check_id, opened_at",
            (at, resolution, incident_id),
        ).fetchall()
        return ResolvedIncident(*rows[0]) if rows else None

    def set_flapping(self, incident_id: int, flapping: bool) -> None:
        self._run("UPDATE incidents SET flapping = ? WHERE id = ?", (bool(flapping), incident_id))

    def opened_since(self, host: str, check: str, since: float) -> list[tuple[int, float]]:
        rows = self._run(
            "SELECT id, opened_at FROM incidents WHERE host = ? AND check_id = ?"
            " AND opened_at >= ? ORDER BY id",
            (host, check, since),
        ).fetchall()
        return [(int(i), at) for i, at in rows]

    def open_since(self, check: str, since: float) -> list[tuple[int, str]]:
        return self._ids_hosts("open", check, since)

    def prevented_since(self, check: str, since: float) -> list[tuple[int, str]]:
        return self._ids_hosts("prevented", check, since)

    def _ids_hosts(self, state: str, check: str, since: float) -> list[tuple[int, str]]:
        # ``state`` is one of our constants, in the text so each statement's plan knows it.
        rows = self._run(
            f"SELECT id, host FROM incidents WHERE check_id = ? AND state = '{state}'"
            " AND opened_at >= ? ORDER BY id",
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
        clause = narrowed(clause, _STATE_CLAUSES[state])
        rows = self._page(_INCIDENT_COLUMNS, clause, args, before, limit, offset)
        return [_incident_dict(row) for row in rows]

    def get(self, incident_id: int) -> dict[str, Any] | None:
        row = self._run(
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents WHERE id = ?", (incident_id,)
        ).fetchone()
        return None if row is None else _incident_dict(row)

    def alertable(self) -> list[IncidentAlertRow]:
        rows = self._run(
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
            groups = self._from_json(fields[7])
            fields[7] = groups if isinstance(groups, list) else []
            fields[13] = bool(fields[13])
            fields[17] = bool(fields[17])
            out.append(IncidentAlertRow(*fields))
        return out

    def open_by_host(self, hosts: Sequence[str] | None = None) -> dict[str, int]:
        if hosts is None:
            return dict(
                self._run(
                    "SELECT host, COUNT(*) FROM incidents WHERE state = 'open' GROUP BY host"
                ).fetchall()
            )
        counts: dict[str, int] = {}
        for chunk in chunks(hosts, self.in_max):
            condition, args = self._in("host", chunk)
            counts.update(
                self._run(
                    f"SELECT host, COUNT(*) FROM incidents WHERE state = 'open' AND {condition}"
                    " GROUP BY host",
                    args,
                ).fetchall()
            )
        return counts

    def open_by_priority_check(self) -> list[tuple[str, str, int]]:
        rows = self._run(
            "SELECT priority, check_id, COUNT(*) FROM incidents WHERE state = 'open'"
            " GROUP BY priority, check_id"
        ).fetchall()
        return [tuple(r) for r in rows]

    def by_state(self) -> dict[str, int]:
        return dict(self._run("SELECT state, COUNT(*) FROM incidents GROUP BY state").fetchall())

    def restore_times(self) -> Iterator[tuple[str, float]]:
        yield from self._run(
            "SELECT priority, resolved_at - opened_at FROM incidents"
            " WHERE state = 'resolved' AND resolved_at IS NOT NULL"
        ).fetchall()

    def prevented_by_remediation(self) -> dict[str, int]:
        return dict(
            self._run(
                "SELECT remediation, COUNT(*) FROM incidents WHERE state = 'prevented'"
                " GROUP BY remediation"
            ).fetchall()
        )

    def past_sla(self, now: float) -> dict[str, int]:
        return dict(self._run(_PAST_SLA[self.backend], (now,)).fetchall())

    def acknowledged_open(self) -> dict[str, int]:
        # The hint: see _PAST_SLA (SQLite would pick the non-covering incidents_priority).
        return dict(
            self._run(
                f"SELECT priority, COUNT(*) FROM incidents{self._indexed_by('incidents_figures')}"
                " WHERE state = 'open' AND acknowledged_at IS NOT NULL GROUP BY priority"
            ).fetchall()
        )


class ProblemsSql(_DeskItemsSql):
    """:class:`~collector.storage.protocols.ProblemRepository` in SQL both backends run."""

    _table = "problems"
    _timeline_table = "problem_timeline"
    _timeline_key = "problem_id"

    def find_open(self, kind: str, check: str, host: str | None) -> int | None:
        row = self._run(
            f"SELECT id FROM problems WHERE kind = ? AND check_id = ? AND {self._same('host')}"
            " AND state = 'open' ORDER BY id LIMIT 1",
            (kind, check, host),
        ).fetchone()
        return None if row is None else int(row[0])

    def insert(self, row: Mapping[str, Any]) -> int:
        return self._insert_row("problems", _PROBLEM_WRITABLE | {"state"}, {**row, "state": "open"})

    def link(self, problem_id: int, incident_id: int) -> bool:
        cur = self._run(
            "INSERT INTO problem_incidents (problem_id, incident_id) VALUES (?, ?)"
            " ON CONFLICT DO NOTHING",
            (problem_id, incident_id),
        )
        return bool(cur.rowcount)

    def open_fleet_of(self, incident_id: int) -> list[int]:
        return self._ints(
            "SELECT p.id FROM problems p JOIN problem_incidents l ON l.problem_id = p.id"
            " WHERE l.incident_id = ? AND p.kind = 'fleet' AND p.state = 'open' ORDER BY p.id",
            incident_id,
        )

    def has_open_incident(self, problem_id: int) -> bool:
        return (
            self._run(
                "SELECT 1 FROM problem_incidents l JOIN incidents i ON i.id = l.incident_id"
                " WHERE l.problem_id = ? AND i.state = 'open' LIMIT 1",
                (problem_id,),
            ).fetchone()
            is not None
        )

    def resolve(self, problem_id: int, at: float, resolution: str) -> None:
        self._run(
            "UPDATE problems SET state = 'resolved', resolved_at = ?, resolution = ? WHERE id = ?",
            (at, resolution, problem_id),
        )

    def incident_ids(self, problem_id: int) -> list[int]:
        return self._ints(
            "SELECT incident_id FROM problem_incidents WHERE problem_id = ? ORDER BY incident_id",
            problem_id,
        )

    def incident_ids_of(self, problem_ids: Sequence[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {int(p): [] for p in problem_ids}
        for chunk in chunks(problem_ids, self.in_max):
            condition, args = self._in("problem_id", chunk)
            for problem, incident in self._run(
                f"SELECT problem_id, incident_id FROM problem_incidents WHERE {condition}"
                " ORDER BY problem_id, incident_id",
                args,
            ).fetchall():
                out[int(problem)].append(int(incident))
        return out

    def hosts_linked_of(self, problem_ids: Sequence[int]) -> dict[int, int]:
        out = {int(p): 0 for p in problem_ids}
        for chunk in chunks(problem_ids, self.in_max):
            condition, args = self._in("l.problem_id", chunk)
            for problem, hosts in self._run(
                "SELECT l.problem_id, COUNT(DISTINCT i.host) FROM problem_incidents l"
                f" JOIN incidents i ON i.id = l.incident_id WHERE {condition}"
                " GROUP BY l.problem_id",
                args,
            ).fetchall():
                out[int(problem)] = int(hosts)
        return out

    def of_incident(self, incident_id: int) -> list[int]:
        return self._ints(
            "SELECT problem_id FROM problem_incidents WHERE incident_id = ? ORDER BY problem_id",
            incident_id,
        )

    def hosts_linked(self, problem_id: int) -> int:
        row = self._run(
            "SELECT COUNT(DISTINCT i.host) FROM problem_incidents l"
            " JOIN incidents i ON i.id = l.incident_id WHERE l.problem_id = ?",
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
        clause = narrowed(clause, extra)
        rows = self._page(_PROBLEM_COLUMNS, clause, args, before, limit, offset)
        return [dict(zip(_PROBLEM_KEYS, row, strict=True)) for row in rows]

    def get(self, problem_id: int) -> dict[str, Any] | None:
        row = self._run(
            f"SELECT {_PROBLEM_COLUMNS} FROM problems WHERE id = ?", (problem_id,)
        ).fetchone()
        return None if row is None else dict(zip(_PROBLEM_KEYS, row, strict=True))

    def alertable(self) -> list[ProblemAlertRow]:
        rows = self._run(
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
            self._run(
                "SELECT kind, COUNT(*) FROM problems WHERE state = 'open' GROUP BY kind"
            ).fetchall()
        )

    def _ints(self, sql: str, key: int) -> list[int]:
        """The one integer column of ``sql``'s rows, ``key`` its one argument."""
        return [int(v) for (v,) in self._run(sql, (key,)).fetchall()]


class SilencesSql(SqlHooks):
    """:class:`~collector.storage.protocols.SilenceRepository` in SQL both backends run."""

    def create(self, row: Mapping[str, Any]) -> int:
        return self._insert_row("silences", _SILENCE_WRITABLE, row)

    def update(self, silence_id: int, *, ends_at: float | None, comment: str | None) -> None:
        if ends_at is not None:
            self._run("UPDATE silences SET ends_at = ? WHERE id = ?", (ends_at, silence_id))
        if comment is not None:
            self._run("UPDATE silences SET comment = ? WHERE id = ?", (comment, silence_id))

    def delete(self, silence_id: int) -> bool:
        return bool(self._run("DELETE FROM silences WHERE id = ?", (silence_id,)).rowcount > 0)

    def get(self, silence_id: int) -> dict[str, Any] | None:
        row = self._run(
            f"SELECT {_SILENCE_COLUMNS} FROM silences WHERE id = ?", (silence_id,)
        ).fetchone()
        return None if row is None else dict(zip(_SILENCE_KEYS, row, strict=True))

    def list(self, *, active_at: float | None) -> list[dict[str, Any]]:
        clause = "" if active_at is None else " WHERE starts_at <= ? AND ends_at > ?"
        args = () if active_at is None else (active_at, active_at)
        rows = self._run(
            f"SELECT {_SILENCE_COLUMNS} FROM silences{clause} ORDER BY id DESC", args
        ).fetchall()
        return [dict(zip(_SILENCE_KEYS, row, strict=True)) for row in rows]

    def active(self, at: float) -> list[SilenceRow]:
        return [
            SilenceRow(*row)
            for row in self._run(
                "SELECT id, matcher, value, starts_at, ends_at, comment FROM silences"
                " WHERE starts_at <= ? AND ends_at > ? ORDER BY id",
                (at, at),
            ).fetchall()
        ]


def _incident_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    incident = dict(zip(_INCIDENT_KEYS, row, strict=True))
    incident["flapping"] = bool(incident["flapping"])
    return incident
