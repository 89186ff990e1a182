"""PostgreSQL repositories of identity and access: operators and the audit log. Queries
only; who may do what is decided in ``collector/identity/``. Mirrors
``sqlite/identity_repos.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

_AUDIT_COLUMNS = ("id", "at", "actor", "action", "target", "peer", "detail")


class PgOperators:
    """:class:`~collector.storage.protocols.OperatorRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def add(self, name: str, role: str, token_hash: str, at: float) -> bool:
        cursor = self._db.execute(
            "INSERT INTO operators (name, role, token_hash, created_at, rotated_at)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (name, role, token_hash, at, at),
        )
        return cursor.rowcount > 0

    def set_token(self, name: str, token_hash: str, at: float) -> bool:
        cursor = self._db.execute(
            "UPDATE operators SET token_hash = %s, rotated_at = %s WHERE name = %s",
            (token_hash, at, name),
        )
        return cursor.rowcount > 0

    def remove(self, name: str) -> bool:
        return self._db.execute("DELETE FROM operators WHERE name = %s", (name,)).rowcount > 0

    def list(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            'SELECT name, role, created_at, rotated_at FROM operators ORDER BY name COLLATE "C"'
        ).fetchall()
        return [{"name": n, "role": r, "created_at": c, "rotated_at": t} for n, r, c, t in rows]

    def credentials(self) -> list[tuple[str, str, str]]:
        return [
            (n, r, h)
            for n, r, h in self._db.execute(
                "SELECT name, role, token_hash FROM operators"
            ).fetchall()
        ]


class PgAudit:
    """:class:`~collector.storage.protocols.AuditRepository` on PostgreSQL (a trigger in
    the schema refuses any UPDATE, DELETE or TRUNCATE of the log)."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def append(self, row: Mapping[str, Any]) -> int:
        found = self._db.execute(
            "INSERT INTO audit (at, actor, action, target, peer, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (
                row["at"],
                row["actor"],
                row["action"],
                row["target"],
                row["peer"],
                Jsonb(dict(row.get("detail") or {})),
            ),
        ).fetchone()
        assert found is not None
        return int(found[0])

    def list(
        self, *, limit: int, offset: int, action: str | None, before: int | None = None
    ) -> list[dict[str, Any]]:
        clause, args = ("", ()) if action is None else (" WHERE action = %s", (action,))
        if before is not None:  # keyset paging, newest first
            clause = f"{clause} AND id < %s" if clause else " WHERE id < %s"
            args = (*args, before)
        rows = self._db.execute(  # type: ignore[call-overload]  # constants only
            f"SELECT {', '.join(_AUDIT_COLUMNS)} FROM audit{clause}"
            " ORDER BY id DESC LIMIT %s OFFSET %s",
            (*args, limit, offset),
        ).fetchall()
        return [dict(zip(_AUDIT_COLUMNS, row, strict=True)) for row in rows]

    def counts(self) -> dict[str, int]:
        return dict(
            self._db.execute("SELECT action, COUNT(*) FROM audit GROUP BY action").fetchall()
        )
