"""Enrollment secrets and per-agent credentials on SQLite (tables made by
``schema.migrate_enrollment``). Only hashes are stored; see ``collector/identity/``."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

_SECRET_COLUMNS = "id, labels, comment, created_at, expires_at, max_uses, uses, revoked_at"
_CREDENTIAL_COLUMNS = (
    "token_hash, agent_id, secret_id, labels, hostname, issued_at, expires_at, pending"
)


class SqliteEnrollment:
    """:class:`~collector.storage.protocols.EnrollmentRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def add_secret(self, row: Mapping[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO enroll_secrets (id, secret_hash, labels, comment, created_at,"
            " expires_at, max_uses, uses) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            (
                row["id"],
                row["secret_hash"],
                json.dumps(dict(row["labels"]), sort_keys=True),
                row["comment"],
                row["created_at"],
                row["expires_at"],
                row["max_uses"],
            ),
        )
        self._bump()

    def secret_by_hash(self, secret_hash: str) -> dict[str, Any] | None:
        cur = self._db.execute(
            f"SELECT {_SECRET_COLUMNS} FROM enroll_secrets WHERE secret_hash = ?", (secret_hash,)
        )
        row = cur.fetchone()
        return None if row is None else _secret(row)

    def use_secret(self, secret_id: str) -> None:
        self._db.execute("UPDATE enroll_secrets SET uses = uses + 1 WHERE id = ?", (secret_id,))
        self._bump()

    def revoke_secret(self, secret_id: str, at: float) -> int | None:
        cur = self._db.execute(
            "UPDATE enroll_secrets SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
            (at, secret_id),
        )
        if cur.rowcount == 0:
            return None
        deleted = self._db.execute(
            "DELETE FROM agent_credentials WHERE secret_id = ?", (secret_id,)
        ).rowcount
        self._bump()
        return deleted

    def list_secrets(self) -> list[dict[str, Any]]:
        cur = self._db.execute(
            f"SELECT {_SECRET_COLUMNS} FROM enroll_secrets ORDER BY created_at DESC, id"
        )
        return [_secret(row) for row in cur]

    def put_credential(self, row: Mapping[str, Any]) -> None:
        self._db.execute(
            f"INSERT INTO agent_credentials ({_CREDENTIAL_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row["token_hash"],
                row["agent_id"],
                row["secret_id"],
                json.dumps(dict(row["labels"]), sort_keys=True),
                row["hostname"],
                row["issued_at"],
                row["expires_at"],
                int(bool(row["pending"])),
            ),
        )
        self._bump()

    def credentials_of(self, agent_id: str) -> list[dict[str, Any]]:
        cur = self._db.execute(
            f"SELECT {_CREDENTIAL_COLUMNS} FROM agent_credentials WHERE agent_id = ?"
            " ORDER BY issued_at",
            (agent_id,),
        )
        return [_credential(row) for row in cur]

    def delete_credentials(self, agent_id: str, *, keep: str | None = None) -> int:
        deleted = self._db.execute(
            "DELETE FROM agent_credentials WHERE agent_id = ? AND token_hash IS NOT ?",
            (agent_id, keep),
        ).rowcount
        if deleted:
            self._bump()
        return deleted

    def activate(self, token_hash: str) -> None:
        self._db.execute(
            "UPDATE agent_credentials SET pending = 0 WHERE token_hash = ?", (token_hash,)
        )
        self._bump()

    def all_credentials(self) -> list[dict[str, Any]]:
        cur = self._db.execute(
            f"SELECT {_CREDENTIAL_COLUMNS} FROM agent_credentials ORDER BY agent_id, issued_at"
        )
        return [_credential(row) for row in cur]

    def generation(self) -> int:
        row = self._db.execute("SELECT value FROM enroll_generation WHERE id = 0").fetchone()
        return 0 if row is None else int(row[0])

    def _bump(self) -> None:
        self._db.execute(
            "INSERT INTO enroll_generation (id, value) VALUES (0, 1)"
            " ON CONFLICT (id) DO UPDATE SET value = value + 1"
        )


def _secret(row: tuple[Any, ...]) -> dict[str, Any]:
    secret_id, labels, comment, created_at, expires_at, max_uses, uses, revoked_at = row
    return {
        "id": secret_id,
        "labels": json.loads(labels),
        "comment": comment,
        "created_at": created_at,
        "expires_at": expires_at,
        "max_uses": max_uses,
        "uses": uses,
        "revoked_at": revoked_at,
    }


def _credential(row: tuple[Any, ...]) -> dict[str, Any]:
    token_hash, agent_id, secret_id, labels, hostname, issued_at, expires_at, pending = row
    return {
        "token_hash": token_hash,
        "agent_id": agent_id,
        "secret_id": secret_id,
        "labels": json.loads(labels),
        "hostname": hostname,
        "issued_at": issued_at,
        "expires_at": expires_at,
        "pending": bool(pending),
    }
