"""Central policy operations over the storage: publish a verified bundle, advance, pause
and resume a rollout, halt and unhalt remediations, ask for a run-now, report status,
and the periodic pass (record what hosts run, the blast-radius guard, auto-advance).

Every function blocks on the storage: the app calls them on its storage thread, the CLI
directly. Every write appends its audit record in its own transaction. The decisions
(rings, which version, when to advance, when the guard trips) are the pure functions of
``rollout.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vigil import policy_bundle
from vigil.collector.identity.audit import AuditEntry, append_audit
from vigil.collector.policy import release
from vigil.collector.policy import rollout as core
from vigil.collector.policy.config import PolicyConfig
from vigil.collector.policy.rollout import HALT_ALL, GuardRules, Rollout
from vigil.collector.storage.protocols import Storage, UnitOfWork
from vigil.release_bundle import RELEASE_POLICY

log = logging.getLogger(__name__)

# The version any min_agent_version is below: the collector checks everything else of an
# upload; whether an agent is new enough is each agent's own check.
_ANY_AGENT = "999999"
_REMEDIATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
GUARD_ACTOR = "guard"
GUARD_CHECK_PREFIX = "policy.guard."


class PolicyError(Exception):
    """A refused policy operation: ``status`` is the HTTP status it maps to (400 bad
    input, 404 unknown, 409 conflict), ``field`` the request field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


@dataclass(frozen=True, slots=True)
class Who:
    """Who writes, for the audit record: the operator (``cli:USER`` on the CLI) and from
    where (client address, or ``local``)."""

    actor: str
    peer: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the report acknowledgements are built from (reloaded every few seconds)."""

    rollouts: tuple[Rollout, ...] = ()
    halts: frozenset[str] = frozenset()
    run_now: tuple[dict[str, Any], ...] = ()
    # The agent release channel: serial -> agent version, for the ack's "release" key.
    releases: Mapping[int, str] = dataclasses.field(default_factory=dict)


def check_remediation(name: str, field: str = "remediation") -> str:
    """A remediation id (or ``*`` where allowed by the caller); PolicyError when bad."""
    if not _REMEDIATION.fullmatch(name or ""):
        raise PolicyError(400, f"{field}: expected a remediation id, got {name[:80]!r}", field)
    return name


def verify_upload(
    document: bytes, trusted: Sequence[str], now: float
) -> policy_bundle.VerifiedBundle:
    """Verify an uploaded bundle like an agent would (signature by a trusted key, every
    file hash, expiry); PolicyError 400 naming the reason otherwise."""
    if not trusted:
        raise PolicyError(
            400, "unknown_key: the collector has no policy.trusted_keys configured", "document"
        )
    try:
        return policy_bundle.verify(
            document, trusted, now=now, installed=None, agent_version=_ANY_AGENT
        )
    except policy_bundle.BundleError as exc:
        raise PolicyError(400, f"{exc.reason}: {exc.message}", "document") from None


def publish(
    storage: Storage,
    document: bytes,
    config: PolicyConfig,
    who: Who,
    now: float,
    *,
    rings: Sequence[float] | None = None,
    canary: Iterable[str] = (),
    soak_s: float | None = None,
) -> dict[str, Any]:
    """Store a verified bundle as uploaded and start its rollout; the rollout row.

    ``rings`` default to ``policy.rings``, ``soak_s`` to ``policy.soak``; ``canary``
    agent ids are in ring 0. Hosts outside the reached rings keep the version the
    previous rollout had reached every host with (the new policy: none). Refuses a
    version not above the stored ones (409): roll back by publishing the older
    content as a new version.
    """
    verified = verify_upload(document, config.trusted_keys, now)
    try:
        ring_shares = core.check_rings(list(rings if rings is not None else config.rings))
    except ValueError as exc:
        raise PolicyError(400, str(exc), "rings") from None
    soak = config.soak_s if soak_s is None else soak_s
    if not soak >= 0:
        raise PolicyError(400, f"soak: must be a duration of at least 0 s, got {soak!r}", "soak")
    name, version = verified.policy, verified.version
    if name == RELEASE_POLICY:  # the reserved name: only a real agent wheel may use it
        try:
            release.check_upload(verified)
        except ValueError as exc:
            raise PolicyError(400, str(exc), "document") from None
    row = {
        "policy": name,
        "version": version,
        "sha256": hashlib.sha256(document).hexdigest(),
        "key_id": verified.key_id,
        "target": verified.target,
        "created_at": verified.created_at,
        "expires_at": verified.expires_at,
        "uploaded_at": now,
        "uploaded_by": who.actor,
    }
    with storage.session() as uow, uow.transaction():
        latest = uow.policy.latest_version(name)
        if latest is not None and version <= latest:
            raise PolicyError(
                409,
                f"policy {name} version {version} is not above the stored version {latest};"
                " publish a higher version (a rollback is the older content signed anew)",
                "document",
            )
        uow.policy.add_version(row, bytes(document))
        old = _rollout(uow, name)
        previous = None if old is None else (old.version if old.complete else old.previous_version)
        new = Rollout(
            policy=name,
            version=version,
            previous_version=previous,
            target=verified.target,
            rings=ring_shares,
            canary=frozenset(canary),
            soak_s=soak,
            ring=0,
            ring_started_at=now,
            started_at=now,
            remediations=core.remediations_of(verified.config, verified.files),
        )
        uow.policy.put_rollout(new.to_row(now))
        detail = {"rings": list(ring_shares), "canary": sorted(new.canary), "soak_s": soak}
        _audit(
            uow,
            who,
            now,
            "policy.publish",
            f"policy:{name}@{version}",
            detail | {"sha256": row["sha256"]},
        )
    return new.to_row(now)


def advance(storage: Storage, name: str, who: Who, now: float) -> dict[str, Any]:
    """Move the rollout to its next ring now (an admin's decision; unpauses it too)."""
    with storage.session() as uow, uow.transaction():
        current = _existing(uow, name)
        if current.complete:
            raise PolicyError(409, f"policy {name}: the rollout already reached every host")
        new = core.resumed(core.advanced(current, now), now)
        uow.policy.put_rollout(new.to_row(now))
        _audit(uow, who, now, "policy.advance", f"policy:{name}@{new.version}", {"ring": new.ring})
    return new.to_row(now)


def set_paused(storage: Storage, name: str, pause: bool, who: Who, now: float) -> dict[str, Any]:
    """Pause (no auto-advance) or resume (the current ring soaks again from ``now``)."""
    with storage.session() as uow, uow.transaction():
        current = _existing(uow, name)
        new = (
            core.paused(current, f"paused by {who.actor}") if pause else core.resumed(current, now)
        )
        uow.policy.put_rollout(new.to_row(now))
        action = "policy.pause" if pause else "policy.resume"
        _audit(uow, who, now, action, f"policy:{name}@{new.version}", {"ring": new.ring})
    return new.to_row(now)


def halt(storage: Storage, remediation: str, who: Who, now: float, reason: str = "") -> bool:
    """Halt ``remediation`` (``*``: every one) fleet-wide; False if it was halted."""
    if remediation != HALT_ALL:
        check_remediation(remediation)
    with storage.session() as uow, uow.transaction():
        done = uow.policy.halt(remediation, now, who.actor, reason or f"halted by {who.actor}")
        if done:
            _audit(uow, who, now, "policy.halt", f"remediation:{remediation}", {"reason": reason})
    return done


def unhalt(
    storage: Storage,
    remediation: str,
    who: Who,
    now: float,
    resolve: Callable[[str, float], Any] | None = None,
) -> bool:
    """Lift a halt; False if there was none. ``resolve(check, now)`` resolves the guard's
    incident for it (the desk's collector check), when given."""
    with storage.session() as uow, uow.transaction():
        done = uow.policy.unhalt(remediation)
        if done:
            _audit(uow, who, now, "policy.unhalt", f"remediation:{remediation}", {})
    if done and resolve is not None and remediation != HALT_ALL:
        resolve(GUARD_CHECK_PREFIX + remediation, now)
    return done


def request_run_now(
    storage: Storage,
    remediation: str,
    who: Who,
    now: float,
    *,
    host: str | None,
    labels: Mapping[str, str],
    params: Mapping[str, Any],
    ttl_s: float,
) -> dict[str, Any]:
    """Ask for ``remediation`` to run now on one host (``host``) or every host whose
    labels include ``labels``; offered in acks for ``ttl_s`` seconds. The request row."""
    check_remediation(remediation)
    if (host is None) == (not labels):
        raise PolicyError(400, "give exactly one of host or labels", "host")
    row = {
        "id": "rn-" + secrets.token_hex(8),
        "remediation": remediation,
        "params": dict(params),
        "host": host,
        "labels": {} if host is not None else dict(labels),
        "requested_by": who.actor,
        "requested_at": now,
        "expires_at": now + ttl_s,
    }
    with storage.session() as uow, uow.transaction():
        uow.policy.add_run_now(row)
        target = (
            f"host:{host}"
            if host is not None
            else "labels:" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        )
        _audit(
            uow, who, now, "policy.run_now", target, {"id": row["id"], "remediation": remediation}
        )
    return row


def get_run_now(storage: Storage, request_id: str) -> dict[str, Any] | None:
    """A run-now request with who asked and each host's reported outcome."""
    with storage.session() as uow:
        return uow.policy.get_run_now(request_id)


def document(storage: Storage, name: str, version: int) -> bytes | None:
    """The stored bundle document, as uploaded."""
    with storage.session() as uow:
        return uow.policy.document(name, version)


def list_policies(storage: Storage) -> dict[str, Any]:
    """Every rollout, stored version and halt."""
    with storage.session() as uow:
        return {
            "rollouts": uow.policy.rollouts(),
            "versions": uow.policy.versions(None),
            "halts": uow.policy.halts(),
        }


def status(
    storage: Storage, name: str, now: float | None = None, min_share: float | None = None
) -> dict[str, Any]:
    """The rollout of ``name`` with, per ring, the targeted hosts and how many run the
    new version; hosts per running version; and ``waiting``, why it has not advanced
    yet (``None`` once complete): ``"waiting: 1 of 2 canary hosts on version 3 (2
    needed)"``, ``"soaking: ring 1 in 42 s"`` or ``"paused: <reason>"``. ``now``
    (Unix seconds) defaults to the wall clock; ``min_share`` to
    :data:`~collector.policy.rollout.DEFAULT_ADVANCE_SHARE`."""
    now = time.time() if now is None else now
    share = core.DEFAULT_ADVANCE_SHARE if min_share is None else min_share
    with storage.session() as uow:
        current = _existing(uow, name)
        rows = uow.policy.rollouts()
        (row,) = [r for r in rows if r["policy"] == name]
        hosts = uow.hosts.fleet()
        running = _running(uow, current, hosts)
    rings = [
        {"ring": i, "share": s, "hosts": 0, "on_version": 0} for i, s in enumerate(current.rings)
    ]
    for host in hosts:
        if not core.matches(current.target, host["labels"]):
            continue
        entry = rings[core.ring_of(host["agent_id"], current)]
        entry["hosts"] += 1
        entry["on_version"] += running.get(host["agent_id"]) == current.version
    by_version: dict[str, int] = {}
    for version in running.values():
        by_version[str(version)] = by_version.get(str(version), 0) + 1
    if current.complete:
        waiting = None
    elif current.paused:
        waiting = f"paused: {current.paused_reason}"
    elif current.evidence_at is None:
        everyone = [Rollout.from_row(r) for r in rows]
        found = core.evidence(current, everyone, hosts, running, share)
        # Met but not recorded yet: the leader's next evidence check records it.
        waiting = found.describe() if not found.met else "waiting: evidence met, soak starts"
    else:
        left = max(0.0, current.evidence_at + current.soak_s - now)
        waiting = f"soaking: ring {current.ring + 1} in {left:.0f} s"
    return row | {"rings_status": rings, "running": by_version, "waiting": waiting}


def _running(uow: UnitOfWork, current: Rollout, hosts: list[dict[str, Any]]) -> dict[str, int]:
    """``agent_id -> version`` the hosts run of ``current``'s policy."""
    if current.policy != RELEASE_POLICY:
        return uow.policy.running(current.policy)
    # Hosts say which agent they run in every report, not in X-Vigil-Policy.
    wanted = release.release_versions(uow, [current]).get(current.version)
    return {
        h["agent_id"]: current.version for h in hosts if wanted and h["agent_version"] == wanted
    }


def load_snapshot(storage: Storage, now: float) -> Snapshot:
    """Read what the acks need (a few small tables)."""
    with storage.session() as uow:
        rollouts = tuple(Rollout.from_row(r) for r in uow.policy.rollouts())
        halts = frozenset(h["remediation"] for h in uow.policy.halts())
        run_now = uow.policy.run_now_open(now)
        releases = release.release_versions(uow, rollouts)
    for r in run_now:
        r["done_hosts"] = frozenset(r["done_hosts"])
    return Snapshot(rollouts, halts, tuple(run_now), releases)


def record_running(
    storage: Storage, rows: Iterable[tuple[str, str | None, int | None, float]]
) -> None:
    """Store what hosts said they run (``X-Vigil-Policy``), in one transaction."""
    rows = list(rows)
    if rows:
        with storage.session() as uow, uow.transaction():
            uow.policy.set_running(rows)


def stored_running(storage: Storage) -> dict[str, tuple[str | None, int | None]]:
    """What every host last said it runs, as stored (``agent_id -> (policy, version)``);
    read at start and every ``FLEET_RESYNC_S`` by the app (see
    :meth:`~collector.policy.runtime.PolicyRuntime.replace_running`)."""
    with storage.session() as uow:
        return uow.policy.running_all()


GuardHook = Callable[[str, str, float, Callable[[UnitOfWork], None]], Any]


def guard_pass(
    storage: Storage,
    rules: GuardRules,
    now: float,
    raise_check: GuardHook,
    *,
    min_share: float = core.DEFAULT_ADVANCE_SHARE,
    checked: dict[tuple[str, int, int], float] | None = None,
) -> list[str]:
    """The periodic duty (one collector process per database): trip the blast-radius
    guard, pause an agent release that hosts refused or rolled back (the release guard),
    record when a waiting ring's hosts show the new version running (logged) and
    auto-advance soaked rollouts. Returns what it did, one line each.

    A trip pauses the rollout and halts each tripped remediation fleet-wide (actor
    ``guard``); ``raise_check(check, message, now, also)`` opens one incident per
    halted remediation, running ``also`` (its halt and audit, and with the last one the
    pause) in the incident's transaction. Only runs of the remediations the new version
    enables, schedules or ships count. A ring advances only ``soak_s`` after its
    evidence was met (:func:`~collector.policy.rollout.evidence`, ``min_share``), which
    reads every host: ``checked`` (kept by the caller across passes; ``(policy,
    version, ring) -> time``) spaces those reads by
    :func:`~collector.policy.rollout.evidence_every`; without it every pass checks.
    """
    did: list[str] = []
    with storage.session() as uow:
        rollouts = [Rollout.from_row(r) for r in uow.policy.rollouts()]
        halted = {h["remediation"] for h in uow.policy.halts()}
    if checked is not None:  # forget the rings that are no longer waited on
        live = {(r.policy, r.version, r.ring) for r in rollouts}
        for key in [k for k in checked if k not in live]:
            del checked[key]
    for current in rollouts:
        if current.paused or (current.complete and now - current.ring_started_at > current.soak_s):
            # Paused: tripped already (or an admin's). Complete and soaked: the rollout is
            # over, and scanning every host's runs each pass would cost for nothing.
            continue
        if current.policy == RELEASE_POLICY and not current.complete:
            stopped = _release_guard(storage, current, now)
            if stopped:
                did.append(stopped)
                continue
        with storage.session() as uow:
            counts = uow.policy.guard_counts(
                current.policy, current.version, current.ring_started_at
            )
        if current.remediations is not None:
            # Runs of remediations the version is not about (the host's local config, a
            # run-now of another one) say nothing of this version.
            counts = [c for c in counts if c[0] in current.remediations]
        trips = [t for t in core.guard_trips(counts, rules) if t.remediation not in halted]
        if trips:
            did.extend(_trip(current, trips, now, raise_check))
            halted.update(t.remediation for t in trips)
            continue
        if current.complete:
            continue
        if current.evidence_at is None:
            line = _check_evidence(storage, current, rollouts, now, min_share, checked)
            if line:  # progress, not an intervention: not among what the pass "did"
                log.info("%s", line)
            continue
        if core.due_to_advance(current, now):
            with storage.session() as uow, uow.transaction():
                fresh = _rollout(uow, current.policy)
                if fresh != current:  # changed meanwhile (an admin, another process)
                    continue
                new = core.advanced(current, now)
                uow.policy.put_rollout(new.to_row(now))
                _audit(
                    uow,
                    Who(GUARD_ACTOR, "local"),
                    now,
                    "policy.advance",
                    f"policy:{new.policy}@{new.version}",
                    {"ring": new.ring, "auto": True},
                )
            did.append(f"policy {new.policy} version {new.version} advanced to ring {new.ring}")
    return did


def _trip(
    current: Rollout, trips: list[core.Trip], now: float, raise_check: GuardHook
) -> list[str]:
    """Halt each tripped remediation with an incident of its own and pause the rollout
    (with the last incident: should one fail, the rollout is still unpaused and the next
    pass trips the remediations left). One line per incident."""
    who = Who(GUARD_ACTOR, "local")
    lines = []
    for i, trip in enumerate(trips):
        message = (
            f"blast-radius guard: {trip.remediation} failed {trip.failed} of {trip.runs} runs"
            f" on hosts running policy {current.policy} version {current.version}"
            f" (ring {current.ring}); rollout paused, {trip.remediation} halted fleet-wide"
        )
        last = i == len(trips) - 1

        def also(uow: UnitOfWork, t: core.Trip = trip, last: bool = last) -> None:
            uow.policy.halt(t.remediation, now, GUARD_ACTOR, f"{t.failed}/{t.runs} runs failed")
            detail = {
                "policy": current.policy,
                "version": current.version,
                "failed": t.failed,
                "runs": t.runs,
            }
            _audit(uow, who, now, "policy.halt", f"remediation:{t.remediation}", detail)
            if not last:
                return
            reason = "guard: " + ", ".join(x.remediation for x in trips)
            uow.policy.put_rollout(core.paused(current, reason).to_row(now))
            target = f"policy:{current.policy}@{current.version}"
            _audit(uow, who, now, "policy.pause", target, {"ring": current.ring})

        raise_check(GUARD_CHECK_PREFIX + trip.remediation, message, now, also)
        lines.append(message)
    return lines


def _check_evidence(
    storage: Storage,
    current: Rollout,
    rollouts: list[Rollout],
    now: float,
    min_share: float,
    checked: dict[tuple[str, int, int], float] | None,
) -> str | None:
    """Record when the current ring's hosts met the evidence (its soak starts then);
    what it did, or None. Skipped when ``checked`` says it was looked at recently."""
    key = (current.policy, current.version, current.ring)
    if checked is not None:
        last = checked.get(key)
        if last is not None and now - last < core.evidence_every(current.soak_s):
            return None
        checked[key] = now
    # Read inside the session, judge outside it: at 100,000 hosts the judging is ~0.4 s
    # the storage (and so ingest) need not wait for.
    with storage.session() as uow:
        hosts = uow.hosts.fleet()
        running = _running(uow, current, hosts)
    found = core.evidence(current, rollouts, hosts, running, min_share)
    if not found.met:
        return None
    with storage.session() as uow, uow.transaction():
        if _rollout(uow, current.policy) != current:  # changed meanwhile
            return None
        uow.policy.put_rollout(core.with_evidence(current, now).to_row(now))
    if checked is not None:
        checked.pop(key, None)
    return (
        f"policy {current.policy} version {current.version} ring {current.ring}:"
        f" {found.on_version} of {found.online} hosts on it (of {found.hosts}); soaking"
        f" {current.soak_s:g} s"
    )


def _release_guard(storage: Storage, current: Rollout, now: float) -> str | None:
    """Pause the agent release rollout when a host in its reached rings refused or
    rolled back the release (its ``agent.update`` incident): the next ring waits for an
    admin. Returns what it did, or None."""
    with storage.session() as uow:
        hosts = release.troubled_hosts(uow, current)
    if not hosts:
        return None
    reason = (
        f"release guard: agent.update critical on {len(hosts)} host(s) in rings 0-"
        f"{current.ring} ({', '.join(hosts[:5])}{', ...' if len(hosts) > 5 else ''})"
    )
    with storage.session() as uow, uow.transaction():
        if _rollout(uow, current.policy) != current:  # changed meanwhile
            return None
        uow.policy.put_rollout(core.paused(current, reason).to_row(now))
        target = f"policy:{current.policy}@{current.version}"
        detail = {"ring": current.ring, "hosts": hosts[:50]}
        _audit(uow, Who(GUARD_ACTOR, "local"), now, "policy.pause", target, detail)
    return f"agent release {current.version} paused: {reason}"


def _rollout(uow: UnitOfWork, name: str) -> Rollout | None:
    for row in uow.policy.rollouts():
        if row["policy"] == name:
            return Rollout.from_row(row)
    return None


def _existing(uow: UnitOfWork, name: str) -> Rollout:
    found = _rollout(uow, name)
    if found is None:
        raise PolicyError(404, f"no policy {name!r} was published", "policy")
    return found


def _audit(
    uow: UnitOfWork, who: Who, now: float, action: str, target: str, detail: Mapping[str, Any]
) -> None:
    append_audit(uow, AuditEntry(who.actor, action, target, who.peer, now, detail))
