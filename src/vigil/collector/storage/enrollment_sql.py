"""Enrollment secrets and per-agent credentials, shared by both backends
(``sqlite/enrollment_repo.py``, ``postgres/enrollment_repo.py``): one text per query,
the backend differences in the hooks of ``storage/sql_hooks.py``. Only hashes are
stored; see ``collector/identity/``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vigil.collector.storage.sql_hooks import SqlHooks

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


class EnrollmentSql(SqlHooks):
    """:class:`~collector.storage.protocols.EnrollmentRepository` in SQL both backends
    run."""

    def add_secret(self, row: Mapping[str, Any]) -> None:
        self._run(
            "INSERT INTO enroll_secrets (id, secret_hash, labels, comment, created_at,"
            " expires_at, max_uses, uses) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            (
                row["id"],
                row["secret_hash"],
                self._json(dict(row["labels"])),
                row["comment"],
                row["created_at"],
                row["expires_at"],
                row["max_uses"],
            ),
        )
        self._bump()

    def secret_by_hash(self, secret_hash: str) -> dict[str, Any] | None:
        row = self._run(
            f"SELECT {_SECRET_COLUMNS} FROM enroll_secrets WHERE secret_hash = ?", (secret_hash,)
        ).fetchone()
        return None if row is None else self._secret(row)

    def use_secret(self, secret_id: str) -> None:
        self._run("UPDATE enroll_secrets SET uses = uses + 1 WHERE id = ?", (secret_id,))
        self._bump()

    def revoke_secret(self, secret_id: str, at: float) -> int | None:
        cur = self._run(
            "UPDATE enroll_secrets SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
            (at, secret_id),
        )
        if cur.rowcount == 0:
            return None
        deleted = int(
            self._run("DELETE FROM agent_credentials WHERE secret_id = ?", (secret_id,)).rowcount
        )
        self._bump()
        return deleted

    def list_secrets(self) -> list[dict[str, Any]]:
        rows = self._run(
            f"SELECT {_SECRET_COLUMNS} FROM enroll_secrets"
            f" ORDER BY created_at DESC, {self._bytewise('id')}"
        ).fetchall()
        return [self._secret(row) for row in rows]

    def put_credential(self, row: Mapping[str, Any]) -> None:
        self._run(
            f"INSERT INTO agent_credentials ({_CREDENTIAL_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row["token_hash"],
                row["agent_id"],
                row["secret_id"],
                self._json(dict(row["labels"])),
                row["hostname"],
                row["issued_at"],
                row["expires_at"],
                bool(row["pending"]),
            ),
        )
        self._bump()

    def credentials_of(self, agent_id: str) -> list[dict[str, Any]]:
        rows = self._run(
            f"SELECT {_CREDENTIAL_COLUMNS} FROM agent_credentials WHERE agent_id = ?"
            " ORDER BY issued_at",
            (agent_id,),
        ).fetchall()
        return [self._credential(row) for row in rows]

    def delete_credentials(self, agent_id: str, *, keep: str | None = None) -> int:
        deleted = int(
            self._run(
                "DELETE FROM agent_credentials WHERE agent_id = ?"
                f" AND {self._differs('token_hash')}",
                (agent_id, keep),
            ).rowcount
        )
        if deleted:
            self._bump()
        return deleted

    def activate(self, token_hash: str) -> None:
        self._run(
            "UPDATE agent_credentials SET pending = FALSE WHERE token_hash = ?", (token_hash,)
        )
        self._bump()

    def all_credentials(self) -> list[dict[str, Any]]:
        rows = self._run(
            f"SELECT {_CREDENTIAL_COLUMNS} FROM agent_credentials"
            f" ORDER BY {self._bytewise('agent_id')}, issued_at"
        ).fetchall()
        return [self._credential(row) for row in rows]

    def generation(self) -> int:
        row = self._run("SELECT value FROM enroll_generation WHERE id = 0").fetchone()
        return 0 if row is None else int(row[0])

    def _bump(self) -> None:
        self._run(
            "INSERT INTO enroll_generation (id, value) VALUES (0, 1)"
            " ON CONFLICT (id) DO UPDATE SET value = enroll_generation.value + 1"
        )

    def _secret(self, row: tuple[Any, ...]) -> dict[str, Any]:
        secret = dict(zip((*_SECRET_KEYS, "revoked_at"), row, strict=True))
        secret["labels"] = self._from_json(secret["labels"])
        return secret

    def _credential(self, row: tuple[Any, ...]) -> dict[str, Any]:
        credential = dict(zip(_CREDENTIAL_KEYS, row, strict=True))
        credential["labels"] = self._from_json(credential["labels"])
        credential["pending"] = bool(credential["pending"])
        return credential
