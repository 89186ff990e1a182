"""The central-policy storage interface (``collector/policy/``), apart from
``protocols.py`` to keep that module small; :class:`~collector.storage.protocols.UnitOfWork`
exposes it as ``policy``. Implemented by ``policy_sql.py`` for both backends."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol


class PolicyRepository(Protocol):
    """Central policy (``collector/policy/``): signed bundle documents as uploaded, one
    staged rollout per policy, the version each host runs, the kill switch (halts) and
    run-now requests with their per-host results. Rows are plain dicts; JSON columns
    (``target``, ``rings``, ``canary``, ``params``, ``labels``) come back decoded."""

    def add_version(self, row: Mapping[str, Any], document: bytes) -> bool:
        """Store a verified bundle: ``policy, version, sha256, key_id, target, created_at,
        expires_at, uploaded_at, uploaded_by``; False (nothing written) if that
        ``(policy, version)`` exists."""

    def latest_version(self, policy: str) -> int | None:
        """The highest stored version of ``policy``, or None."""

    def document(self, policy: str, version: int) -> bytes | None:
        """The bundle document exactly as uploaded, or None."""

    def versions(self, policy: str | None) -> list[dict[str, Any]]:
        """Stored versions (without the document), by policy then newest first."""

    def put_rollout(self, row: Mapping[str, Any]) -> None:
        """Insert or replace the policy's rollout: ``policy, version, previous_version,
        target, rings, canary, soak_s, ring, ring_started_at, started_at, paused,
        paused_reason, updated_at`` and, optional (NULL when absent), ``evidence_at``
        (Unix seconds) and ``remediations`` (a JSON list of ids)."""

    def rollouts(self) -> list[dict[str, Any]]:
        """Every rollout, by policy."""

    def set_running(self, rows: Iterable[tuple[str, str | None, int | None, float]]) -> None:
        """Record ``(agent_id, policy, version, seen_at)``: what each host said it runs."""

    def running(self, policy: str) -> dict[str, int]:
        """``agent_id -> version`` of the hosts that last said they run ``policy``."""

    def running_all(self) -> dict[str, tuple[str | None, int | None]]:
        """``agent_id -> (policy, version)`` as last recorded for every host (``(None,
        None)``: it said it runs no policy)."""

    def guard_counts(
        self, policy: str, version: int, since: float
    ) -> list[tuple[str, str, int, int]]:
        """``(remediation, outcome, runs, hosts)`` of the runs (not dry runs) received at
        or after ``since`` from hosts now running ``policy`` at ``version``."""

    def halt(self, remediation: str, at: float, by: str, reason: str) -> bool:
        """Halt ``remediation`` (``*``: all); False if it was halted already."""

    def unhalt(self, remediation: str) -> bool:
        """Lift a halt; False if there was none."""

    def halts(self) -> list[dict[str, Any]]:
        """Every halt: ``remediation, halted_at, halted_by, reason``."""

    def add_run_now(self, row: Mapping[str, Any]) -> None:
        """Store a request: ``id, remediation, params, host, labels, requested_by,
        requested_at, expires_at``."""

    def run_now_open(self, now: float) -> list[dict[str, Any]]:
        """Requests not expired at ``now``, oldest first, each with ``done_hosts`` (the
        agent ids that reported a run for it)."""

    def get_run_now(self, request_id: str) -> dict[str, Any] | None:
        """One request with its ``results`` (``host, event_id, outcome, at``), or None."""

    def requests_for(self, event_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """For the runs (by ``event_id``) that answered a run-now request: ``event_id ->
        {"request_id", "requested_by", "requested_at"}`` (the others are absent)."""

    def add_run_now_result(
        self, request_id: str, host: str, event_id: str, outcome: str, at: float
    ) -> bool:
        """Link a reported run to its request; False for an unknown request or a host
        that reported one already."""
