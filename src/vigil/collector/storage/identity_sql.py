"""Operators and the audit log, shared by both backends (``sqlite/identity_repos.py``,
``postgres/identity_repos.py``): one text per query, the backend differences in the
hooks of ``storage/sql_hooks.py``. Queries only; who may do what is decided in
``collector/identity/``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vigil.collector.storage.sql_hooks import SqlHooks, narrowed

_AUDIT_COLUMNS = ("id", "at", "actor", "action", "target", "peer", "detail")


class OperatorsSql(SqlHooks):
    """:class:`~collector.storage.protocols.OperatorRepository` in SQL both backends run."""

    def add(self, name: str, role: str, token_hash: str, at: float) -> bool:
        cursor = self._run(
            "INSERT INTO operators (name, role, token_hash, created_at, rotated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (name, role, token_hash, at, at),
        )
        return bool(cursor.rowcount > 0)

    def set_token(self, name: str, token_hash: str, at: float) -> bool:
        cursor = self._run(
            "UPDATE operators SET token_hash = ?, rotated_at = ? WHERE name = ?",
            (token_hash, at, name),
        )
        return bool(cursor.rowcount > 0)

    def remove(self, name: str) -> bool:
        return bool(self._run("DELETE FROM operators WHERE name = ?", (name,)).rowcount > 0)

    def list(self) -> list[dict[str, Any]]:
        rows = self._run(
            "SELECT name, role, created_at, rotated_at FROM operators"
            f" ORDER BY {self._bytewise('name')}"
        ).fetchall()
        return [{"name": n, "role": r, "created_at": c, "rotated_at": t} for n, r, c, t in rows]

    def credentials(self) -> list[tuple[str, str, str]]:
        return [
            (n, r, h)
            for n, r, h in self._run("SELECT name, role, token_hash FROM operators").fetchall()
        ]


class AuditSql(SqlHooks):
    """:class:`~collector.storage.protocols.AuditRepository` in SQL both backends run
    (each schema refuses any UPDATE or DELETE of a record, by triggers)."""

    def append(self, row: Mapping[str, Any]) -> int:
        return self._insert_id(
            "INSERT INTO audit (at, actor, action, target, peer, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (
                row["at"],
                row["actor"],
                row["action"],
                row["target"],
                row["peer"],
                self._json(dict(row.get("detail") or {})),
            ),
        )

    def list(
        self, *, limit: int, offset: int, action: str | None, before: int | None = None
    ) -> list[dict[str, Any]]:
        clause, args = ("", []) if action is None else (" WHERE action = ?", [action])
        if before is not None:  # keyset paging, newest first
            clause, args = narrowed(clause, "id < ?"), [*args, before]
        rows = self._run(
            f"SELECT {', '.join(_AUDIT_COLUMNS)} FROM audit{clause}"
            " ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        out = []
        for row in rows:
            record = dict(zip(_AUDIT_COLUMNS, row, strict=True))
            record["detail"] = self._from_json(record["detail"])
            out.append(record)
        return out

    def counts(self) -> dict[str, int]:
        return dict(self._run("SELECT action, COUNT(*) FROM audit GROUP BY action").fetchall())
