"""Operator accounts: add, list, rotate, remove — each with its audit record in the same
transaction — and loading what authentication needs.

Blocking storage calls: the API runs them on the storage thread, the CLI directly.
A token is returned once, by :func:`add_operator` or :func:`rotate_operator`; only its
hash is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vigil.collector.identity.audit import AuditEntry, append_audit
from vigil.collector.identity.roles import (
    ADMIN,
    NAME_PATTERN,
    ROLES,
    Directory,
    Principal,
    hash_token,
    new_token,
)
from vigil.collector.storage.protocols import Storage


class OperatorError(ValueError):
    """A refused operator change; ``field`` names the input at fault (``name``/``role``)
    and ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, field: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


def check_name(name: str) -> None:
    """Raise :class:`OperatorError` unless ``name`` matches :data:`NAME_PATTERN`."""
    if not NAME_PATTERN.fullmatch(name):
        raise OperatorError(
            "name must be 1-64 characters: lower-case letters, digits and . _ @ -,"
            " starting with a letter or digit",
            "name",
        )


def add_operator(
    storage: Storage, name: str, role: str, *, actor: str, peer: str, now: float
) -> str:
    """Create operator ``name`` with ``role``; returns its token (shown once).

    Raises :class:`OperatorError` for a bad name or role (400) or a taken name (409).
    """
    check_name(name)
    if role not in ROLES:
        raise OperatorError(f"role must be one of {list(ROLES)}, got {role!r}", "role")
    token = new_token()
    with storage.session() as uow, uow.transaction():
        if not uow.operators.add(name, role, hash_token(token), now):
            raise OperatorError(f"operator {name!r} exists", "name", status=409)
        append_audit(
            uow,
            AuditEntry(actor, "operator.add", f"operator:{name}", peer, now, {"role": role}),
        )
    return token


def rotate_operator(storage: Storage, name: str, *, actor: str, peer: str, now: float) -> str:
    """Give operator ``name`` a new token (the old one stops working); returns it.
    Raises :class:`OperatorError` (404) for an unknown name."""
    token = new_token()
    with storage.session() as uow, uow.transaction():
        if not uow.operators.set_token(name, hash_token(token), now):
            raise OperatorError(f"no operator named {name!r}", "name", status=404)
        append_audit(uow, AuditEntry(actor, "operator.rotate", f"operator:{name}", peer, now))
    return token


def remove_operator(storage: Storage, name: str, *, actor: str, peer: str, now: float) -> None:
    """Delete operator ``name`` (its token stops working; its audit records stay).
    Raises :class:`OperatorError` (404) for an unknown name."""
    with storage.session() as uow, uow.transaction():
        if not uow.operators.remove(name):
            raise OperatorError(f"no operator named {name!r}", "name", status=404)
        append_audit(uow, AuditEntry(actor, "operator.remove", f"operator:{name}", peer, now))


def list_operators(storage: Storage) -> list[dict[str, Any]]:
    """Every operator (``name, role, created_at, rotated_at``), by name."""
    with storage.session() as uow:
        return uow.operators.list()


def config_principals(admin_tokens: Sequence[str]) -> list[tuple[str, Principal]]:
    """``auth.admin_tokens`` from the config file as admins named
    ``config:admin_tokens.N``: the shared tokens of older configs keep working."""
    return [
        (hash_token(token), Principal(f"config:admin_tokens.{i}", ADMIN))
        for i, token in enumerate(admin_tokens)
    ]


def load_directory(
    storage: Storage, directory: Directory, admin_tokens: Sequence[str]
) -> dict[str, int]:
    """Reload ``directory`` from the stored operators plus ``admin_tokens``; returns the
    audit counts per action read in the same session (both are refreshed together)."""
    with storage.session() as uow:
        stored = uow.operators.credentials()
        counts = uow.audit.counts()
    entries = config_principals(admin_tokens)
    entries += [(h, Principal(name, role)) for name, role, h in stored]
    directory.replace(entries)
    return counts
