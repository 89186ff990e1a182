"""The collector's view of agent identity while it runs: who a request is, and whether
that agent may write the report it sent.

:class:`AgentIdentity` lives for the app's lifetime (``identity_key``). Its checks on the
ingest path are synchronous and cheap (:meth:`authenticate`: one SHA-256 and a dict
lookup; :meth:`authorize`: a comparison); everything that writes (activating a rotated
credential, issuing one, reloading the cache) runs on the storage thread.

Two kinds of caller are accepted on ``POST /api/v1/reports``:

* an **enrolled agent**, with its own credential: it may only write as its own
  ``agent_id``, and its routing labels are the ones its enrollment granted;
* a holder of a **shared token** (``auth.agent_tokens``, the pre-enrollment scheme, kept
  so a fleet can migrate): it may write as any agent id that is *not* enrolled.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vigil import wire
from vigil.collector.identity import enrollment
from vigil.collector.identity.credentials import AgentCredential, CredentialCache, routing_labels
from vigil.collector.identity.enrollment import EnrollmentCounters, Issued
from vigil.collector.identity.ratelimit import ENROLL_PER_MINUTE, RateLimiter
from vigil.collector.storage.protocols import Storage
from vigil.wire_fast import replace

# Seconds between checks of the storage's enrollment generation: how long a revocation
# made by another process (the CLI, another collector) takes to reach this one.
REFRESH_INTERVAL_S = 1.0
# The header an agent sets on a report when its credential is near expiry.
ROTATE_HEADER = "Vigil-Credential-Rotate"

RunInStorage = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class AgentAuth:
    """An authenticated agent request: its credential, or None for a shared token."""

    credential: AgentCredential | None


class Forbidden(Exception):
    """The caller is authenticated but may not write this report."""


class AgentIdentity:
    """Credential checks for ingest, backed by a :class:`CredentialCache`.

    ``run`` runs a blocking function on the storage thread (``run(fn, *args)``);
    ``legacy_tokens`` are the shared ``auth.agent_tokens`` (may be empty);
    ``credential_ttl_s`` is the lifetime of issued credentials;
    ``enroll_rate_per_minute`` the enrollment tries per client address per minute (and
    burst), see :mod:`~collector.identity.ratelimit`.
    """

    def __init__(
        self,
        storage: Storage,
        run: RunInStorage,
        *,
        legacy_tokens: tuple[str, ...],
        credential_ttl_s: float,
        enroll_rate_per_minute: int = ENROLL_PER_MINUTE,
    ) -> None:
        self.storage = storage
        self.cache = CredentialCache()
        self.counters = EnrollmentCounters()
        self.credential_ttl_s = credential_ttl_s
        # POST /api/v1/enroll tries per client address (the one unauthenticated write).
        self.enroll_limit = RateLimiter(
            burst=enroll_rate_per_minute, per_minute=enroll_rate_per_minute
        )
        self._run = run
        self._legacy = tuple(t.encode("utf-8") for t in legacy_tokens)

    def authenticate(self, authorization: str, now: float) -> AgentAuth | None:
        """Who ``Authorization: Bearer ...`` is; None when missing, unknown or expired."""
        scheme, _, given = authorization.strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            return None
        credential = self.cache.lookup(given)
        if credential is not None:
            return AgentAuth(credential) if now < credential.expires_at else None
        # Shared tokens: compared in constant time, without an early exit.
        given_bytes = given.encode("utf-8", "surrogatepass")
        matched = False
        for token in self._legacy:
            matched |= hmac.compare_digest(token, given_bytes)
        return AgentAuth(None) if matched else None

    def authorize(self, auth: AgentAuth, report: wire.Report) -> wire.Report:
        """``report`` as it may be stored (routing labels from the enrollment), or raise
        :class:`Forbidden`: a credential used for another agent id, or a shared token
        used for an enrolled agent."""
        credential = auth.credential
        if credential is None:
            if self.cache.is_enrolled(report.agent_id):
                raise Forbidden(
                    f"agent {report.agent_id} is enrolled: a shared token cannot write for it"
                )
            return report
        if report.agent_id != credential.agent_id:
            enrollment.record(
                None,
                "forbidden",
                credential_of=credential.agent_id,
                claimed=report.agent_id,
            )
            raise Forbidden(f"this credential belongs to another agent, not {report.agent_id}")
        # The lean front's reports are wire_fast Structs of the same fields: replace()
        # keeps the class.
        return replace(report, labels=routing_labels(credential.labels, report.labels))

    async def activate_if_pending(self, auth: AgentAuth) -> None:
        """First use of a rotated credential: it becomes the only one of its agent."""
        credential = auth.credential
        if credential is not None and credential.pending:
            await self._run(enrollment.activate, self.storage, credential)
            await self.refresh()

    async def rotate(self, auth: AgentAuth, now: float) -> Issued | None:
        """A pending successor for the request's credential, or None (not due, or a
        shared token)."""
        if auth.credential is None:
            return None
        issued: Issued | None = await self._run(
            enrollment.rotate, self.storage, auth.credential, now, self.credential_ttl_s
        )
        if issued is not None:
            enrollment.record(self.counters, "rotated", agent_id=issued.agent_id)
            await self.refresh()
        return issued

    async def enroll(
        self, *, secret: str, agent_id: str, hostname: str, replace: bool, now: float, peer: str
    ) -> Issued:
        """Exchange an enrollment secret for a request from ``peer`` (the client address);
        records the outcome either way (counter, log, audit log) and raises
        :class:`~collector.identity.enrollment.EnrollError` on refusal."""
        call = functools.partial(
            enrollment.enroll,
            self.storage,
            secret=secret,
            agent_id=agent_id,
            hostname=hostname,
            replace=replace,
            now=now,
            credential_ttl_s=self.credential_ttl_s,
            peer=peer,
        )
        try:
            issued: Issued = await self._run(call)
        except enrollment.EnrollError as exc:
            enrollment.record(self.counters, exc.reason, agent_id=agent_id, hostname=hostname)
            raise
        event = "replaced" if issued.replaced else "enrolled"
        enrollment.record(self.counters, event, agent_id=agent_id, hostname=hostname)
        await self.refresh()
        return issued

    async def revoke_agent(self, agent_id: str, *, actor: str, peer: str, now: float) -> int:
        """Revoke every credential of ``agent_id``; refused from the next request on.
        Audited as ``actor`` from ``peer``."""
        call = functools.partial(
            enrollment.revoke_agent, self.storage, agent_id, actor=actor, peer=peer, now=now
        )
        deleted: int = await self._run(call)
        await self.refresh()
        return deleted

    async def revoke_secret(
        self, secret_id: str, now: float, *, actor: str, peer: str
    ) -> int | None:
        """Revoke a secret and its credentials (None: no such secret); audited as
        ``actor`` from ``peer``."""
        call = functools.partial(
            enrollment.revoke_secret, self.storage, secret_id, now, actor=actor, peer=peer
        )
        deleted: int | None = await self._run(call)
        await self.refresh()
        return deleted

    async def refresh(self) -> bool:
        """Reload the cache if storage changed (any process); whether it did."""
        changed: bool = await self._run(enrollment.refresh_cache, self.storage, self.cache)
        return changed


class IdentityMetrics:
    """``/metrics`` for enrollment: events by outcome and live credentials (a custom
    collector, registered next to the main one)."""

    def __init__(self, identity: AgentIdentity) -> None:
        self._identity = identity

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "vigil_enrollments",
            "Enrollment, rotation and refused enrollment events, by outcome.",
            labels=["outcome"],
        )
        for outcome, n in self._identity.counters.copy().items():
            events.add_metric([outcome], n)
        yield events
        yield GaugeMetricFamily(
            "vigil_agent_credentials",
            "Per-agent credentials the collector accepts (a pending rotation counts too).",
            value=len(self._identity.cache),
        )
