"""Enrollment: secrets exchanged for per-agent credentials, rotation and revocation.

Everything here that touches storage is blocking and runs on the storage thread (the
app hands these functions to ``run_in_executor``; the CLI calls them directly).

Decisions, documented in ``docs/security.md`` ("Enrollment and agent credentials"):

* A secret is usable while it is not revoked, not expired and has uses left; each
  successful enrollment uses one. Which of these failed is told to the caller (it holds
  the secret anyway); an unknown secret is just "unknown".
* One live credential per agent id. Enrolling an id that already has one is refused
  (409, ``conflict``): that is a cloned machine or a copied state folder. A re-imaged
  machine that kept its id asks for ``replace``; the old credential then stops working
  at once. A clone should enroll with a fresh id instead (``vigil-agent enroll --new-id``).
* Rotation: the agent asks on an ordinary report; a *pending* credential is issued and
  the old one stays valid until the new one is first used (:func:`activate`), so a lost
  answer loses nothing: the agent asks again with the old credential.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vigil.collector.identity.audit import AuditEntry, append_audit
from vigil.collector.identity.credentials import (
    CREDENTIAL_PREFIX,
    SECRET_PREFIX,
    AgentCredential,
    CredentialCache,
    new_token,
    token_hash,
)
from vigil.collector.storage.protocols import Storage

log = logging.getLogger("vigil.collector.identity")

# What enrollment, rotation and revocation events are counted as
# (``vigil_enrollments_total{outcome}``); fixed so the label set stays bounded.
OUTCOMES: tuple[str, ...] = (
    "enrolled",
    "replaced",
    "rotated",
    "wrong_secret",
    "expired",
    "used_up",
    "revoked",
    "conflict",
    "invalid",
    "rate_limited",
)
# Events logged as warnings: someone tried and was refused.
_REFUSED = frozenset(
    (
        "wrong_secret",
        "expired",
        "used_up",
        "revoked",
        "conflict",
        "invalid",
        "forbidden",
        "rate_limited",
    )
)
# A rotation is granted only in the second half of a credential's life: an agent asking
# on every report must not cause a write per report.
ROTATE_AFTER_FRACTION = 0.5


class EnrollError(Exception):
    """An enrollment refused: HTTP ``status``, counted ``reason``, ``message``, ``field``."""

    def __init__(self, status: int, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class Issued:
    """A credential just issued: the only time its plain text exists on the collector."""

    agent_id: str
    credential: str
    expires_at: float
    labels: dict[str, str]
    replaced: bool = False


class EnrollmentCounters:
    """Enrollment events by outcome; bumped on the loop or the storage thread, read by
    ``/metrics`` (hence the lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(OUTCOMES, 0)

    def add(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    def copy(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def record(counters: EnrollmentCounters | None, event: str, **fields: Any) -> None:
    """The log line and counter of an enrollment, rotation or revocation. The audit
    record is not written here: each write appends its own inside its transaction."""
    if counters is not None and event in OUTCOMES:
        counters.add(event)
    detail = " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
    level = logging.WARNING if event in _REFUSED else logging.INFO
    log.log(level, "identity %s %s", event, detail)


# --------------------------------------------------------------------------- secrets


def create_secret(
    storage: Storage,
    *,
    labels: Mapping[str, str],
    ttl_s: float,
    max_uses: int,
    comment: str,
    now: float,
    actor: str,
    peer: str,
) -> tuple[str, str]:
    """Create an enrollment secret; returns ``(secret id, secret)``. The secret is shown
    once and never stored (only its hash). ``actor``/``peer``: who asked and from where,
    for the audit record written in the same transaction."""
    secret = new_token(SECRET_PREFIX)
    secret_id = secrets.token_hex(4)
    with storage.session() as uow, uow.transaction():
        uow.enrollment.add_secret(
            {
                "id": secret_id,
                "secret_hash": token_hash(secret),
                "labels": dict(labels),
                "comment": comment,
                "created_at": now,
                "expires_at": now + ttl_s,
                "max_uses": max_uses,
            }
        )
        detail = {"labels": dict(labels), "uses": max_uses, "expires_at": now + ttl_s}
        target = f"enroll-secret:{secret_id}"
        append_audit(uow, AuditEntry(actor, "enroll_secret.create", target, peer, now, detail))
    record(None, "secret_created", secret_id=secret_id, labels=dict(labels), uses=max_uses)
    return secret_id, secret


def list_secrets(storage: Storage) -> list[dict[str, Any]]:
    """Every secret (id, labels, expiry, uses; never the secret)."""
    with storage.session() as uow:
        return uow.enrollment.list_secrets()


def revoke_secret(
    storage: Storage, secret_id: str, now: float, *, actor: str, peer: str
) -> int | None:
    """Revoke a secret and every credential issued through it; None if unknown. The
    audit record (by ``actor`` from ``peer``) is written in the same transaction."""
    with storage.session() as uow, uow.transaction():
        deleted = uow.enrollment.revoke_secret(secret_id, now)
        if deleted is not None:
            target = f"enroll-secret:{secret_id}"
            detail = {"credentials_revoked": deleted}
            append_audit(uow, AuditEntry(actor, "enroll_secret.revoke", target, peer, now, detail))
    if deleted is not None:
        record(None, "secret_revoked", secret_id=secret_id, credentials=deleted)
    return deleted


# --------------------------------------------------------------------------- agents


def list_agents(storage: Storage) -> list[dict[str, Any]]:
    """Every credential (agent id, secret id, labels, expiry, pending), without hashes."""
    with storage.session() as uow:
        rows = uow.enrollment.all_credentials()
    return [{k: v for k, v in row.items() if k != "token_hash"} for row in rows]


def revoke_agent(storage: Storage, agent_id: str, *, actor: str, peer: str, now: float) -> int:
    """Delete every credential of ``agent_id``; how many there were. When there were
    any, the audit record (by ``actor`` from ``peer``) is in the same transaction."""
    with storage.session() as uow, uow.transaction():
        deleted = uow.enrollment.delete_credentials(agent_id)
        if deleted:
            detail = {"credentials_revoked": deleted}
            append_audit(
                uow, AuditEntry(actor, "agent.revoke", f"agent:{agent_id}", peer, now, detail)
            )
    if deleted:
        record(None, "agent_revoked", agent_id=agent_id, credentials=deleted)
    return deleted


def secret_refusal(secret: Mapping[str, Any] | None, now: float) -> str | None:
    """Why a secret cannot be used now (an :data:`OUTCOMES` reason), or None if it can."""
    if secret is None:
        return "wrong_secret"
    if secret["revoked_at"] is not None:
        return "revoked"
    if now >= secret["expires_at"]:
        return "expired"
    if secret["uses"] >= secret["max_uses"]:
        return "used_up"
    return None


_REFUSALS = {
    "wrong_secret": (401, "unknown enrollment secret"),
    "revoked": (403, "enrollment secret revoked"),
    "expired": (403, "enrollment secret expired"),
    "used_up": (403, "enrollment secret has no uses left"),
}


def enroll(
    storage: Storage,
    *,
    secret: str,
    agent_id: str,
    hostname: str,
    replace: bool,
    now: float,
    credential_ttl_s: float,
    peer: str,
) -> Issued:
    """Exchange ``secret`` for a credential bound to ``agent_id``; raises
    :class:`EnrollError` (nothing changed) when the secret is unusable or the id is
    already enrolled and ``replace`` is false.

    Either way the outcome is in the audit log with the actor ``agent:<agent_id>`` (the
    id the caller claimed) and ``peer``: a success in the transaction that issues the
    credential, a refusal in a transaction of its own (the refused one rolled back).
    """
    try:
        return _enroll(
            storage,
            secret=secret,
            agent_id=agent_id,
            hostname=hostname,
            replace=replace,
            now=now,
            credential_ttl_s=credential_ttl_s,
            peer=peer,
        )
    except EnrollError as exc:
        detail = {"reason": exc.reason, "hostname": hostname}
        entry = AuditEntry(
            f"agent:{agent_id}", "agent.enroll_refused", f"agent:{agent_id}", peer, now, detail
        )
        with storage.session() as uow, uow.transaction():
            append_audit(uow, entry)
        raise


def _enroll(
    storage: Storage,
    *,
    secret: str,
    agent_id: str,
    hostname: str,
    replace: bool,
    now: float,
    credential_ttl_s: float,
    peer: str,
) -> Issued:
    credential = new_token(CREDENTIAL_PREFIX)
    with storage.session() as uow, uow.transaction():
        row = uow.enrollment.secret_by_hash(token_hash(secret))
        refusal = secret_refusal(row, now)
        if refusal is not None:
            status, message = _REFUSALS[refusal]
            raise EnrollError(status, refusal, message, "secret")
        assert row is not None
        existing = [c for c in uow.enrollment.credentials_of(agent_id) if c["expires_at"] > now]
        if existing and not replace:
            raise EnrollError(
                409,
                "conflict",
                f"agent id {agent_id} is already enrolled (by {existing[0]['hostname']!r}): "
                "a re-imaged machine re-enrolls with replace, a clone with a new agent id",
                "agent_id",
            )
        uow.enrollment.delete_credentials(agent_id)
        uow.enrollment.use_secret(row["id"])
        expires_at = now + credential_ttl_s
        uow.enrollment.put_credential(
            {
                "token_hash": token_hash(credential),
                "agent_id": agent_id,
                "secret_id": row["id"],
                "labels": row["labels"],
                "hostname": hostname,
                "issued_at": now,
                "expires_at": expires_at,
                "pending": False,
            }
        )
        action = "agent.reenroll" if existing else "agent.enroll"
        detail = {"secret_id": row["id"], "hostname": hostname, "labels": dict(row["labels"])}
        target = f"agent:{agent_id}"
        append_audit(uow, AuditEntry(f"agent:{agent_id}", action, target, peer, now, detail))
    return Issued(agent_id, credential, expires_at, dict(row["labels"]), bool(existing))


def rotate(
    storage: Storage, current: AgentCredential, now: float, credential_ttl_s: float
) -> Issued | None:
    """Issue a pending successor of ``current`` (replacing an earlier unused one); None
    when ``current`` is in the first half of its life or no longer stored (revoked)."""
    lifetime = current.expires_at - current.issued_at
    if now < current.issued_at + lifetime * ROTATE_AFTER_FRACTION:
        return None
    credential = new_token(CREDENTIAL_PREFIX)
    expires_at = now + credential_ttl_s
    with storage.session() as uow, uow.transaction():
        rows = uow.enrollment.credentials_of(current.agent_id)
        if not any(r["token_hash"] == current.token_hash for r in rows):
            return None
        uow.enrollment.delete_credentials(current.agent_id, keep=current.token_hash)
        uow.enrollment.put_credential(
            {
                "token_hash": token_hash(credential),
                "agent_id": current.agent_id,
                "secret_id": current.secret_id,
                "labels": dict(current.labels),
                "hostname": current.hostname,
                "issued_at": now,
                "expires_at": expires_at,
                "pending": True,
            }
        )
    return Issued(current.agent_id, credential, expires_at, dict(current.labels))


def activate(storage: Storage, pending: AgentCredential) -> None:
    """The agent used its rotated credential: make it the active one and drop the old."""
    with storage.session() as uow, uow.transaction():
        uow.enrollment.activate(pending.token_hash)
        uow.enrollment.delete_credentials(pending.agent_id, keep=pending.token_hash)


def refresh_cache(storage: Storage, cache: CredentialCache) -> bool:
    """Reload ``cache`` if the storage's enrollment generation moved; whether it did."""
    with storage.session() as uow:
        generation = uow.enrollment.generation()
        if generation == cache.generation:
            return False
        rows = uow.enrollment.all_credentials()
    cache.load(rows, generation)
    return True
