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

from vigil.policy_format import REMEDIATIONS_DIR
from vigil.release_bundle import RELEASE_POLICY

# Outcomes that always count as a failure for the guard; ``needs_reboot``/``needs_user``
# only when configured (``policy.guard.include``).
FAILED_OUTCOMES = frozenset({"not_fixed", "error", "timeout"})
OPTIONAL_OUTCOMES = frozenset({"needs_reboot", "needs_user"})
HALT_ALL = "*"
# Auto-advance evidence: at least this share of the current ring's hosts that exchanged
# during its soak (and at least one host) must say they run the new version.
DEFAULT_ADVANCE_SHARE = 0.8


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
    # When the current ring's hosts showed the new version running (see evidence()):
    # its soak counts from here. None: no evidence yet, so no automatic advance.
    evidence_at: float | None = None
    # The remediation ids the version enables, schedules or ships: only their runs count
    # towards the guard. None (a rollout stored before this was kept): every run counts.
    remediations: frozenset[str] | None = None

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
            evidence_at=None if row.get("evidence_at") is None else float(row["evidence_at"]),
            remediations=None
            if row.get("remediations") is None
            else frozenset(row["remediations"]),
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
            "evidence_at": self.evidence_at,
            "remediations": None if self.remediations is None else sorted(self.remediations),
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


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the current ring's hosts show of the new version (see :func:`evidence`).

    ``hosts``: the ring's hosts the collector knows (targeted, and this policy is the
    one they run); ``online``: of them, those that exchanged since the ring started;
    ``on_version``: of those, the ones that said they run the new version; ``needed``:
    how many must, for the ring to soak towards an automatic advance."""

    ring: int
    version: int
    hosts: int
    online: int
    on_version: int
    needed: int

    @property
    def met(self) -> bool:
        """Whether the ring may soak towards its automatic advance. A ring without a
        single known host has nothing to wait for (it soaks on time alone, as the rings
        after it still need their own evidence)."""
        return self.hosts == 0 or self.on_version >= self.needed

    def describe(self) -> str:
        """E.g. ``waiting: 1 of 2 canary hosts on version 3 (2 needed)``."""
        where = "canary" if self.ring == 0 else f"ring {self.ring}"
        offline = self.hosts - self.online
        tail = f", {offline} offline since the ring started" if offline else ""
        return (
            f"waiting: {self.on_version} of {self.online} {where} hosts on version"
            f" {self.version} ({self.needed} needed{tail})"
        )


def evidence(
    rollout: Rollout,
    rollouts: Iterable[Rollout],
    hosts: Iterable[Mapping[str, Any]],
    running: Mapping[str, int],
    min_share: float = DEFAULT_ADVANCE_SHARE,
) -> Evidence:
    """Whether the hosts of ``rollout``'s current ring run its new version.

    ``hosts``: the collector's hosts (``agent_id``, ``labels``, ``last_seen`` on the
    collector's clock, Unix seconds); ``running``: ``agent_id -> version`` the hosts
    said they run of this policy; ``rollouts``: every rollout (a host whose labels pick
    a more specific policy is not this one's). Needed: ``min_share`` of the ring's hosts
    seen since the ring started, rounded up, and at least one host, so a ring whose
    hosts were all offline or never picked the version up never advances by itself.
    """
    others = list(rollouts)
    total = online = on_version = 0
    # Whether a label set picks this rollout, once per distinct set (a fleet has few;
    # HostRepository.fleet shares one dict per set, and a dict held by ``hosts`` keeps
    # its id for the whole loop).
    picks: dict[int, bool] = {}
    for host in hosts:
        labels = host["labels"]
        theirs = picks.get(id(labels))
        if theirs is None:
            if rollout.policy == RELEASE_POLICY:
                theirs = matches(rollout.target, labels)
            else:
                chosen = policy_for(others, labels)
                theirs = chosen is not None and chosen.policy == rollout.policy
            picks[id(labels)] = theirs
        if not theirs or ring_of(host["agent_id"], rollout) != rollout.ring:
            continue
        total += 1
        if host["last_seen"] < rollout.ring_started_at:
            continue
        online += 1
        on_version += running.get(host["agent_id"]) == rollout.version
    # The small epsilon keeps 0.8 * 5 = 4.000000000000001 from asking for 5 hosts.
    needed = max(1, math.ceil(min_share * online - 1e-9))
    return Evidence(rollout.ring, rollout.version, total, online, on_version, needed)


def with_evidence(rollout: Rollout, now: float) -> Rollout:
    """The rollout whose current ring met its evidence at ``now`` (its soak starts)."""
    return _replace(rollout, evidence_at=now)


def evidence_every(soak_s: float) -> float:
    """Seconds between evidence checks of a waiting ring (each reads every host): a
    twentieth of the soak, at most 10 s, so a ring soaks at most ~5 % longer."""
    return min(10.0, soak_s / 20)


def due_to_advance(rollout: Rollout, now: float) -> bool:
    """Whether the rollout moves to its next ring now: not paused, not complete, its
    current ring met the evidence (:func:`evidence`) and has soaked ``soak_s`` seconds
    since (a guard trip pauses it, so an unpaused rollout had none). Time alone never
    advances a rollout; an admin's advance does not ask."""
    if rollout.paused or rollout.complete or rollout.evidence_at is None:
        return False
    return now - rollout.evidence_at >= rollout.soak_s


def advanced(rollout: Rollout, now: float) -> Rollout:
    """The rollout one ring further (unchanged when complete); the new ring waits for
    its own evidence."""
    if rollout.complete:
        return rollout
    return _replace(rollout, ring=rollout.ring + 1, ring_started_at=now, evidence_at=None)


def remediations_of(config: Mapping[str, Any], files: Iterable[str]) -> frozenset[str]:
    """The remediation ids a policy version is about: those its config enables
    (``remediation.enabled``) or schedules (``remediation.schedule``) and those it ships
    (``remediations/<id>/...``). ``config`` is the verified manifest's ``config``."""
    rem = config.get("remediation") or {}
    ids = set(rem.get("enabled") or {}) | set(rem.get("schedule") or {})
    prefix = REMEDIATIONS_DIR + "/"
    for path in files:
        if path.startswith(prefix) and "/" in path[len(prefix) :]:
            ids.add(path[len(prefix) :].split("/", 1)[0])
    return frozenset(str(i) for i in ids)


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
    """Unpaused; the current ring starts again from ``now`` (its hosts show the version
    running again before it soaks towards an automatic advance)."""
    return _replace(rollout, paused=False, paused_reason="", ring_started_at=now, evidence_at=None)


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
