"""Per-agent credentials: generation, hashing, and the in-memory cache ingest checks.

A credential is ``vga_`` + 43 URL-safe characters (32 random bytes). The collector keeps
only its SHA-256 (hex): a credential has 256 bits of entropy, so a fast hash is enough
(no password stretching needed) and a verified request costs one hash and one dict
lookup (:meth:`CredentialCache.lookup`). Enrollment secrets use the same scheme with the
``vge_`` prefix.

The cache is the only thing the ingest path reads; it is rebuilt from storage whenever
the storage's enrollment generation moves (an enrollment, rotation or revocation, by this
process or another one, e.g. the ``vigil-collector agent revoke`` CLI).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

CREDENTIAL_PREFIX = "vga_"
SECRET_PREFIX = "vge_"
# 32 random bytes; ``secrets.token_urlsafe`` turns them into 43 characters.
RANDOM_BYTES = 32
# Agent-claimed labels are kept for people to read under this prefix, so they can never
# match a catalog group (``match`` keys are plain label names).
CLAIMED_PREFIX = "agent:"


def new_token(prefix: str) -> str:
    """A fresh random bearer secret: ``prefix`` + 43 URL-safe characters (256 bits)."""
    return prefix + secrets.token_urlsafe(RANDOM_BYTES)


def token_hash(token: str) -> str:
    """The SHA-256 hex digest stored for ``token``; any string hashes (never raises)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class AgentCredential:
    """What the collector knows about one issued credential (not the credential itself).

    ``labels`` are the routing labels granted by the enrollment secret; ``expires_at`` is
    epoch seconds; ``pending`` marks a rotation the agent has not used yet.
    """

    token_hash: str
    agent_id: str
    secret_id: str
    labels: Mapping[str, str]
    hostname: str
    issued_at: float
    expires_at: float
    pending: bool

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AgentCredential:
        return cls(
            token_hash=row["token_hash"],
            agent_id=row["agent_id"],
            secret_id=row["secret_id"],
            labels=MappingProxyType(dict(row["labels"])),
            hostname=row["hostname"],
            issued_at=float(row["issued_at"]),
            expires_at=float(row["expires_at"]),
            pending=bool(row["pending"]),
        )


class CredentialCache:
    """Verified credential hashes in memory: ``hash -> AgentCredential``.

    Replaced wholesale by :meth:`load` (never mutated piecemeal from another thread), so
    a reader on the event loop always sees one consistent generation.
    """

    def __init__(self) -> None:
        self._by_hash: dict[str, AgentCredential] = {}
        self._enrolled: frozenset[str] = frozenset()
        self.generation = -1

    def load(self, rows: Iterable[Mapping[str, Any]], generation: int) -> None:
        """Replace the contents with ``rows`` read at storage ``generation``."""
        by_hash = {r["token_hash"]: AgentCredential.from_row(r) for r in rows}
        enrolled = frozenset(c.agent_id for c in by_hash.values())
        self._by_hash, self._enrolled, self.generation = by_hash, enrolled, generation

    def lookup(self, token: str) -> AgentCredential | None:
        """The credential ``token`` is, or None: one SHA-256 and one dict lookup."""
        return self._by_hash.get(token_hash(token))

    def is_enrolled(self, agent_id: str) -> bool:
        """Whether ``agent_id`` holds a credential (then a shared token may not speak for it)."""
        return agent_id in self._enrolled

    def __len__(self) -> int:
        return len(self._by_hash)


def routing_labels(granted: Mapping[str, str], claimed: Mapping[str, str]) -> dict[str, str]:
    """The labels stored for an enrolled agent's host: the ones its enrollment granted
    (they decide catalog group and priority), plus what the agent claims, kept for people
    under ``agent:<name>`` where no catalog ``match`` can see them."""
    labels = {f"{CLAIMED_PREFIX}{k}": v for k, v in claimed.items()}
    labels.update(granted)
    return labels
