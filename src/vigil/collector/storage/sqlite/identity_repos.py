"""SQLite repositories of identity and access: operators and the audit log. Queries only;
who may do what is decided in ``collector/identity/``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

_AUDIT_COLUMNS = ("id", "at", "actor", "action", "target", "peer", "detail")


class SqliteOperators:
    """:class:`~collector.storage.protocols.OperatorRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def add(self, name: str, role: str, token_hash: str, at: float) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO operators (name, role, token_hash, created_at, rotated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (name, role, token_hash, at, at),
        )
        return cursor.rowcount > 0

    def set_token(self, name: str, token_hash: str, at: float) -> bool:
        cursor = self._db.execute(
            "UPDATE operators SET token_hash = ?, rotated_at = ? WHERE name = ?",
            (token_hash, at, name),
        )
        return cursor.rowcount > 0

    def remove(self, name: str) -> bool:
        return self._db.execute("DELETE FROM operators WHERE name = ?", (name,)).rowcount > 0

    def list(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT name, role, created_at, rotated_at FROM operators ORDER BY name"
        ).fetchall()
        return [{"name": n, "role": r, "created_at": c, "rotated_at": t} for n, r, c, t in rows]

    def credentials(self) -> list[tuple[str, str, str]]:
        return [
            (n, r, h)
            for n, r, h in self._db.execute("SELECT name, role, token_hash FROM operators")
        ]


class SqliteAudit:
    """:class:`~collector.storage.protocols.AuditRepository` on SQLite (triggers in the
    schema refuse any UPDATE or DELETE of a record)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def append(self, row: Mapping[str, Any]) -> int:
        cursor = self._db.execute(
            "INSERT INTO audit (at, actor, action, target, peer, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (
                row["at"],
                row["actor"],
                row["action"],
                row["target"],
                row["peer"],
                json.dumps(row.get("detail") or {}, sort_keys=True),
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def list(
        self, *, limit: int, offset: int, action: str | None, before: int | None = None
    ) -> list[dict[str, Any]]:
        clause, args = ("", ()) if action is None else (" WHERE action = ?", (action,))
        if before is not None:  # keyset paging, newest first
            clause = f"{clause} AND id < ?" if clause else " WHERE id < ?"
            args = (*args, before)
        rows = self._db.execute(
            f"SELECT {', '.join(_AUDIT_COLUMNS)} FROM audit{clause}"
            " ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        out = []
        for row in rows:
            record = dict(zip(_AUDIT_COLUMNS, row, strict=True))
            record["detail"] = json.loads(record["detail"])
            out.append(record)
        return out

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT action, COUNT(*) FROM audit GROUP BY action"))
