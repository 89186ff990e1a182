"""Operator roles and what each may do: pure data, no I/O.

Roles are ordered; each one may do everything the one below it may:

* ``viewer``: the read API (``GET /api/v1/...``) and ``/metrics``;
* ``responder``: also acknowledge and resolve incidents and problems, create, change
  and end silences;
* ``admin``: also operators, the audit log, and (with enrollment) agent credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

VIEWER, RESPONDER, ADMIN = "viewer", "responder", "admin"
ROLES: tuple[str, ...] = (VIEWER, RESPONDER, ADMIN)
_RANK = {role: rank for rank, role in enumerate(ROLES)}

# Operator names: short, printable, safe in a URL path and a log line.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
# Prefix of every operator token: makes a leaked one recognisable to secret scanners.
TOKEN_PREFIX = "vigil_op_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the operator's ``name`` (the actor recorded on every write)
    and ``role``."""

    name: str
    role: str


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may (``admin`` allows everything)."""
    return _RANK.get(role, -1) >= _RANK[needed]


def new_token() -> str:
    """A fresh operator token: :data:`TOKEN_PREFIX` and 256 random bits (43 characters)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The stored form of a token: its SHA-256, hex.

    A plain hash (no salt, no slow KDF) is enough because every token is 256 random bits
    made by :func:`new_token` or checked for length at config load: nothing to guess or
    look up in a table, and it keeps an authenticated request cheap.
    """
    # surrogatepass: header text that is not valid UTF-8 still hashes (and never matches).
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class Directory:
    """Token hashes → principals, held in memory so a request is authenticated without
    a database round trip. Replaced as a whole by :meth:`replace` (atomic reference
    swap: safe to read from the event loop while the storage thread reloads it)."""

    def __init__(self, entries: Iterable[tuple[str, Principal]] = ()) -> None:
        self._entries: tuple[tuple[bytes, Principal], ...] = ()
        self.replace(entries)

    def replace(self, entries: Iterable[tuple[str, Principal]]) -> None:
        """Use ``(token_hash, principal)`` pairs from now on."""
        self._entries = tuple((h.encode("ascii"), p) for h, p in entries)

    def find(self, token: str) -> Principal | None:
        """The principal whose token this is, or None.

        Compares the token's hash with every stored hash using ``hmac.compare_digest``
        and no early exit, so timing reveals neither how much matched nor which entry.
        """
        given = hash_token(token).encode("ascii")
        found: Principal | None = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, given) and found is None:
                found = principal
        return found

    def find_hash(self, token_hash: str) -> Principal | None:
        """The principal whose stored token hash is ``token_hash`` (hex), or None: how a
        console session (which keeps the hash, never the token) finds its operator, so a
        rotated or removed token ends its sessions too. Same constant-time scan as
        :meth:`find`."""
        given = token_hash.encode("ascii", "replace")
        found: Principal | None = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, given) and found is None:
                found = principal
        return found

    def __len__(self) -> int:
        return len(self._entries)
