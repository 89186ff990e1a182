"""The pure rollout core: rings, which version a host is offered, when a rollout
advances, when the blast-radius guard trips. Plain data in, plain data out; time is a
parameter (no storage, no clock, no aiohttp here).

Rings: a host's position is a stable hash of ``(agent_id, policy)`` in ``[0, 1)``; ring
``i`` holds the hosts whose position is below ``rings[i]`` (cumulative shares, the last
one 1.0) and not in an earlier ring; canary hosts named explicitly are in ring 0 too. A
rollout that reached ring ``r`` offers the new version to rings ``0..r`` and the previous
version (or nothing) to the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vigil.release_bundle import RELEASE_POLICY

# Outcomes that always count as a failure for the guard; ``needs_reboot``/``needs_user``
# only when configured (``policy.guard.include``).
FAILED_OUTCOMES = frozenset({"not_fixed", "error", "timeout"})
OPTIONAL_OUTCOMES = frozenset({"needs_reboot", "needs_user"})
HALT_ALL = "*"


@dataclass(frozen=True, slots=True)
class Rollout:
    """One policy's staged rollout (a ``policy_rollouts`` row)."""

    policy: str
    version: int
    previous_version: int | None
    target: Mapping[str, Any]
    rings: tuple[float, ...]
    canary: frozenset[str]
    soak_s: float
    ring: int
    ring_started_at: float
    started_at: float
    paused: bool = False
    paused_reason: str = ""

    @property
    def complete(self) -> bool:
        """Whether every host is offered the new version."""
        return self.ring >= len(self.rings) - 1

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Rollout:
        return cls(
            policy=row["policy"],
            version=int(row["version"]),
            previous_version=None
            if row["previous_version"] is None
            else int(row["previous_version"]),
            target=row["target"],
            rings=tuple(float(x) for x in row["rings"]),
            canary=frozenset(row["canary"]),
            soak_s=float(row["soak_s"]),
            ring=int(row["ring"]),
            ring_started_at=float(row["ring_started_at"]),
            started_at=float(row["started_at"]),
            paused=bool(row["paused"]),
            paused_reason=row["paused_reason"],
        )

    def to_row(self, updated_at: float) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "version": self.version,
            "previous_version": self.previous_version,
            "target": dict(self.target),
            "rings": list(self.rings),
            "canary": sorted(self.canary),
            "soak_s": self.soak_s,
            "ring": self.ring,
            "ring_started_at": self.ring_started_at,
            "started_at": self.started_at,
            "paused": self.paused,
            "paused_reason": self.paused_reason,
            "updated_at": updated_at,
        }


def check_rings(rings: Sequence[float]) -> tuple[float, ...]:
    """Validate cumulative ring shares: each in ``[0, 1]``, non-decreasing, the last 1.0.
    Raises ``ValueError`` naming the bad share."""
    if not rings:
        raise ValueError("rings: at least one share is needed (the last one 1.0)")
    out: list[float] = []
    for i, share in enumerate(rings):
        if not isinstance(share, int | float) or not math.isfinite(share) or not 0 <= share <= 1:
            raise ValueError(f"rings[{i}]: must be a share between 0 and 1, got {share!r}")
        if out and share < out[-1]:
            raise ValueError(f"rings[{i}]: shares are cumulative, {share} < {out[-1]}")
        out.append(float(share))
    if out[-1] != 1.0:
        raise ValueError(
            f"rings[{len(out) - 1}]: the last ring must be 1.0 (every host), got {out[-1]}"
        )
    return tuple(out)


def rings_for(
    defaults: Sequence[float],
    rings: Sequence[float] | None,
    canary: Sequence[str],
    canary_share: float | None,
) -> tuple[float, ...]:
    """The ring shares of a publish: ``rings`` (else ``defaults``); ``canary_share``
    replaces the first share; named ``canary`` hosts without either make ring 0 those
    hosts alone (share 0). Raises ``ValueError`` like :func:`check_rings`."""
    shares = list(rings if rings is not None else defaults)
    if canary_share is not None:
        shares = [canary_share, *(r for r in shares[1:] if r > canary_share)]
        if shares[-1] != 1.0:
            shares.append(1.0)
    elif canary and rings is None:
        shares = [0.0, *shares[1:]] if len(shares) > 1 else [0.0, 1.0]
    return check_rings(shares)


def position(agent_id: str, policy: str) -> float:
    """The host's stable place in ``[0, 1)`` for ``policy`` (SHA-256 based, so the same
    on every collector process and across restarts, and independent per policy)."""
    digest = hashlib.sha256(f"{policy}\0{agent_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def ring_of(agent_id: str, rollout: Rollout) -> int:
    """The ring index of ``agent_id`` in ``rollout`` (canary hosts: 0)."""
    if agent_id in rollout.canary:
        return 0
    where = position(agent_id, rollout.policy)
    for i, share in enumerate(rollout.rings):
        if where < share:
            return i
    return len(rollout.rings) - 1


def matches(target: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a host with ``labels`` is in a policy's ``target`` (``{}``: every host)."""
    wanted = target.get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def policy_for(rollouts: Iterable[Rollout], labels: Mapping[str, str]) -> Rollout | None:
    """The one policy a host runs: among the rollouts whose target matches its labels,
    the most specific (most target labels), ties broken by policy name."""
    best: Rollout | None = None
    for rollout in rollouts:
        # The agent release channel is a rollout too, but never a host's config policy.
        if rollout.policy == RELEASE_POLICY or not matches(rollout.target, labels):
            continue
        key = (-len(rollout.target.get("labels") or {}), rollout.policy)
        if best is None or key < (-len(best.target.get("labels") or {}), best.policy):
            best = rollout
    return best


def version_for(rollout: Rollout, agent_id: str) -> int | None:
    """The version ``agent_id`` should run: the new one inside the reached rings, else
    the previous one (None: the policy is new and the host waits for its ring)."""
    if ring_of(agent_id, rollout) <= rollout.ring:
        return rollout.version
    return rollout.previous_version


def due_to_advance(rollout: Rollout, now: float) -> bool:
    """Whether the rollout moves to its next ring now: not paused, not complete, and the
    current ring soaked ``soak_s`` seconds (a guard trip pauses it, so an unpaused
    rollout had none)."""
    if rollout.paused or rollout.complete:
        return False
    return now - rollout.ring_started_at >= rollout.soak_s


def advanced(rollout: Rollout, now: float) -> Rollout:
    """The rollout one ring further (unchanged when complete)."""
    if rollout.complete:
        return rollout
    return _replace(rollout, ring=rollout.ring + 1, ring_started_at=now)


@dataclass(frozen=True, slots=True)
class GuardRules:
    """When the blast-radius guard trips: a remediation run by hosts on the new version
    failed in at least ``min_runs`` runs and in at least ``failure_rate`` of its runs.
    ``include`` adds ``needs_reboot``/``needs_user`` to the failed outcomes."""

    failure_rate: float = 0.5
    min_runs: int = 3
    include: frozenset[str] = field(default_factory=frozenset)

    @property
    def failed(self) -> frozenset[str]:
        return FAILED_OUTCOMES | (self.include & OPTIONAL_OUTCOMES)


@dataclass(frozen=True, slots=True)
class Trip:
    """A guard trip: ``remediation`` failed ``failed`` of ``runs`` runs on ``hosts`` hosts."""

    remediation: str
    failed: int
    runs: int
    hosts: int


def guard_trips(counts: Iterable[tuple[str, str, int, int]], rules: GuardRules) -> list[Trip]:
    """The remediations whose runs (``(remediation, outcome, runs, hosts)`` rows from the
    new version's hosts) cross the guard's threshold, by name. ``hosts`` of a trip is the
    most hosts of any one outcome (a lower bound of the distinct hosts that ran it)."""
    runs: dict[str, int] = {}
    failed: dict[str, int] = {}
    hosts: dict[str, int] = {}
    for remediation, outcome, n, h in counts:
        runs[remediation] = runs.get(remediation, 0) + n
        hosts[remediation] = max(hosts.get(remediation, 0), h)
        if outcome in rules.failed:
            failed[remediation] = failed.get(remediation, 0) + n
    trips = []
    for remediation in sorted(runs):
        bad = failed.get(remediation, 0)
        if bad >= rules.min_runs and bad >= rules.failure_rate * runs[remediation]:
            trips.append(Trip(remediation, bad, runs[remediation], hosts[remediation]))
    return trips


def paused(rollout: Rollout, reason: str) -> Rollout:
    return _replace(rollout, paused=True, paused_reason=reason)


def resumed(rollout: Rollout, now: float) -> Rollout:
    """Unpaused; the current ring soaks again from ``now``."""
    return _replace(rollout, paused=False, paused_reason="", ring_started_at=now)


def _replace(rollout: Rollout, **changes: Any) -> Rollout:
    return dataclasses.replace(rollout, **changes)


def offer(
    rollouts: Iterable[Rollout],
    halts: Iterable[str],
    run_now: Iterable[Mapping[str, Any]],
    agent_id: str,
    labels: Mapping[str, str],
    url: str,
) -> dict[str, Any]:
    """The ``"policy"`` key of a report's acknowledgement for one host (spec §2): what it
    should run, the kill switch, and the run-now requests for it not done yet."""
    chosen = policy_for(rollouts, labels)
    version = None if chosen is None else version_for(chosen, agent_id)
    halted = sorted(h for h in halts if h != HALT_ALL)
    halt_all = any(h == HALT_ALL for h in halts)
    requests = [
        {
            "id": r["id"],
            "remediation": r["remediation"],
            "params": r["params"],
            "requested_by": r["requested_by"],
            "requested_at": r["requested_at"],
        }
        for r in run_now
        if agent_id not in r["done_hosts"]
        and (
            r["host"] == agent_id
            if r["host"] is not None
            else matches({"labels": r["labels"]}, labels)
        )
    ]
    return {
        "policy": None if version is None or chosen is None else chosen.policy,
        "version": version,
        "url": url,
        "halted": halted,
        "halt_all": halt_all,
        "run_now": requests,
    }
