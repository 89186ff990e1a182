"""Enrollment secrets and per-agent credentials on PostgreSQL (tables in ``schema``).
Only hashes are stored; see ``collector/identity/``. Mirrors ``sqlite/enrollment_repo.py``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

_SECRET_KEYS = ("id", "labels", "comment", "created_at", "expires_at", "max_uses", "uses")
_SECRET_COLUMNS = ", ".join((*_SECRET_KEYS, "revoked_at"))
_CREDENTIAL_KEYS = (
    "token_hash",
    "agent_id",
    "secret_id",
    "labels",
    "hostname",
    "issued_at",
    "expires_at",
    "pending",
)
_CREDENTIAL_COLUMNS = ", ".join(_CREDENTIAL_KEYS)


class PgEnrollment:
    """:class:`~collector.storage.protocols.EnrollmentRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def add_secret(self, row: Mapping[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO enroll_secrets (id, secret_hash, labels, comment, created_at,"
            " expires_at, max_uses, uses) VALUES (%s, %s, %s, %s, %s, %s, %s, 0)",
            (
                row["id"],
                row["secret_hash"],
                Jsonb(dict(row["labels"])),
                row["comment"],
                row["created_at"],
                row["expires_at"],
                row["max_uses"],
            ),
        )
        self._bump()

    def secret_by_hash(self, secret_hash: str) -> dict[str, Any] | None:
        row = self._db.execute(  # type: ignore[call-overload]  # constants only
            f"SELECT {_SECRET_COLUMNS} FROM enroll_secrets WHERE secret_hash = %s",
            (secret_hash,),
        ).fetchone()
        return None if row is None else _secret(row)

    def use_secret(self, secret_id: str) -> None:
        self._db.execute("UPDATE enroll_secrets SET uses = uses + 1 WHERE id = %s", (secret_id,))
        self._bump()

    def revoke_secret(self, secret_id: str, at: float) -> int | None:
        cur = self._db.execute(
            "UPDATE enroll_secrets SET revoked_at = COALESCE(revoked_at, %s) WHERE id = %s",
            (at, secret_id),
        )
        if cur.rowcount == 0:
            return None
        deleted = self._db.execute(
            "DELETE FROM agent_credentials WHERE secret_id = %s", (secret_id,)
        ).rowcount
        self._bump()
        return deleted

    def list_secrets(self) -> list[dict[str, Any]]:
        rows = self._db.execute(  # type: ignore[call-overload]  # constants only
            f'SELECT {_SECRET_COLUMNS} FROM enroll_secrets ORDER BY created_at DESC, id COLLATE "C"'
        ).fetchall()
        return [_secret(row) for row in rows]

    def put_credential(self, row: Mapping[str, Any]) -> None:
        self._db.execute(  # type: ignore[call-overload]  # constants only
            f"INSERT INTO agent_credentials ({_CREDENTIAL_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                row["token_hash"],
                row["agent_id"],
                row["secret_id"],
                Jsonb(dict(row["labels"])),
                row["hostname"],
                row["issued_at"],
                row["expires_at"],
                bool(row["pending"]),
            ),
        )
        self._bump()

    def credentials_of(self, agent_id: str) -> list[dict[str, Any]]:
        rows = self._db.execute(  # type: ignore[call-overload]  # constants only
            f"SELECT {_CREDENTIAL_COLUMNS} FROM agent_credentials WHERE agent_id = %s"
            " ORDER BY issued_at",
            (agent_id,),
        ).fetchall()
        return [_credential(row) for row in rows]

    def delete_credentials(self, agent_id: str, *, keep: str | None = None) -> int:
        deleted = self._db.execute(
            "DELETE FROM agent_credentials WHERE agent_id = %s"
            " AND token_hash IS DISTINCT FROM %s::text",
            (agent_id, keep),
        ).rowcount
        if deleted:
            self._bump()
        return deleted

    def activate(self, token_hash: str) -> None:
        self._db.execute(
            "UPDATE agent_credentials SET pending = false WHERE token_hash = %s", (token_hash,)
        )
        self._bump()

    def all_credentials(self) -> list[dict[str, Any]]:
        rows = self._db.execute(  # type: ignore[call-overload]  # constants only
            f"SELECT {_CREDENTIAL_COLUMNS} FROM agent_credentials"
            ' ORDER BY agent_id COLLATE "C", issued_at'
        ).fetchall()
        return [_credential(row) for row in rows]

    def generation(self) -> int:
        row = self._db.execute("SELECT value FROM enroll_generation WHERE id = 0").fetchone()
        return 0 if row is None else int(row[0])

    def _bump(self) -> None:
        self._db.execute(
            "INSERT INTO enroll_generation (id, value) VALUES (0, 1)"
            " ON CONFLICT (id) DO UPDATE SET value = enroll_generation.value + 1"
        )


def _secret(row: tuple[Any, ...]) -> dict[str, Any]:
    # jsonb comes back decoded: labels is already a dict.
    return dict(zip((*_SECRET_KEYS, "revoked_at"), row, strict=True))


def _credential(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_CREDENTIAL_KEYS, row, strict=True))
