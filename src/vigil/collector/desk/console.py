"""The desk's services for the web console: its paged reads, the service-quality
figures, and the two writes only the console makes (link an incident to a problem,
edit a problem's CAPA record). Acknowledge, resolve and silence go through
:class:`~collector.desk.service.Desk` like the API's.

Blocking: call on the storage thread. Every write appends its audit record in its own
transaction. Time is a parameter (``now``, Unix seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vigil.collector.desk import engine
from vigil.collector.desk.commands import StateError
from vigil.collector.desk.rollup import day_of, restore_bucket_bounds
from vigil.collector.identity.audit import AuditEntry, append_audit
from vigil.collector.storage.protocols import Storage

QUEUE_STATES: tuple[str, ...] = ("open", "unacknowledged", "acknowledged", "flapping")
HEALTH: tuple[str, ...] = ("failing", "healthy")
# CAPA text fields of a problem; the first three are the ones incidents also carry.
CAPA_TEXT = (
    "root_cause",
    "corrective_action",
    "preventive_action",
    "verification",
    "known_error",
    "capa_owner",
)
# Incidents shown on a host's page.
HOST_INCIDENTS = 20


@dataclass(frozen=True, slots=True)
class QualityRow:
    """Service quality of one service or department over the period.

    ``prevented``/``raised``: incidents a remediation prevented / that were opened;
    ``sla_attainment``: resolved within the SLA over resolved with one (None: none);
    ``restore_median_s``/``restore_p90_s``: time to restore (None: nothing resolved).
    """

    name: str
    prevented: int = 0
    raised: int = 0
    resolved: int = 0
    sla_attainment: float | None = None
    restore_median_s: float | None = None
    restore_p90_s: float | None = None

    @property
    def prevented_share(self) -> float | None:
        """Prevented over all failures (prevented + raised); None when there were none."""
        total = self.prevented + self.raised
        return self.prevented / total if total else None


@dataclass(frozen=True, slots=True)
class RemediationVersion:
    """Runs of one remediation script version (its SHA-256) by outcome."""

    remediation: str
    version: str
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float | None:
        """``fixed`` over runs that tried (not dry runs, not skipped); None if none did."""
        tried = sum(n for o, n in self.outcomes.items() if o not in ("dry_run", "skipped"))
        return self.outcomes.get("fixed", 0) / tried if tried else None

    @property
    def failure_rate(self) -> float | None:
        """1 - :attr:`success_rate` (every tried run that did not fix counts)."""
        rate = self.success_rate
        return None if rate is None else 1.0 - rate


@dataclass(frozen=True, slots=True)
class Quality:
    """The service-quality page's figures, computed at ``computed_at`` for the period
    from ``since`` (Unix seconds)."""

    since: float
    computed_at: float
    by_service: tuple[QualityRow, ...]
    by_department: tuple[QualityRow, ...]
    remediations: tuple[RemediationVersion, ...]


def queue(
    storage: Storage,
    *,
    filters: Mapping[str, str | None],
    state: str | None,
    limit: int,
    offset: int,
) -> tuple[list[dict[str, Any]], int]:
    """One page of open incidents in queue order (priority, then SLA deadline) with
    their display state, and the number of open incidents in all. ``ValueError`` naming
    ``state`` unless it is None or one of :data:`QUEUE_STATES`."""
    if state is not None and state not in QUEUE_STATES:
        raise ValueError(f"state: must be one of {list(QUEUE_STATES)}, got {state!r}")
    with storage.session() as uow:
        rows = uow.console.queue(filters=filters, state=state, limit=limit, offset=offset)
        total = uow.console.queue_count()
    for row in rows:
        row["state"] = engine.display_state(row["state"], row["acknowledged_at"], row["flapping"])
    return rows, total


def search_hosts(
    storage: Storage, *, filters: Mapping[str, Any], limit: int, offset: int
) -> list[dict[str, Any]]:
    """One page of hosts by hostname; see ``ConsoleRepository.search_hosts`` for the
    filters. ``ValueError`` naming ``health`` when it is not one of :data:`HEALTH`."""
    health = filters.get("health")
    if health is not None and health not in HEALTH:
        raise ValueError(f"health: must be one of {list(HEALTH)}, got {health!r}")
    with storage.session() as uow:
        return uow.console.search_hosts(filters=filters, limit=limit, offset=offset)


def host_page(storage: Storage, agent_id: str) -> dict[str, Any] | None:
    """One host with its latest metrics summary (``metrics``) and newest incidents
    (``incidents``), or None."""
    with storage.session() as uow:
        host = uow.console.host(agent_id)
        if host is None:
            return None
        host["metrics"] = dict(sorted((uow.metrics.latest(agent_id) or {}).items()))
        host["incidents"] = uow.console.host_incidents(agent_id, HOST_INCIDENTS)
    return host


def incident_extras(storage: Storage, host: str, problem_ids: list[int]) -> dict[str, Any]:
    """What the incident page shows beside the incident itself: the host's latest
    metrics (``health``), its newest incidents, the linked problems (id, summary,
    state) and the open problems a responder may link it to."""
    with storage.session() as uow:
        health = dict(sorted((uow.metrics.latest(host) or {}).items()))
        recent = uow.console.host_incidents(host, HOST_INCIDENTS)
        linked = []
        for pid in problem_ids:
            row = uow.problems.get(pid)
            if row is not None:
                linked.append({"id": pid, "summary": row["summary"], "state": row["state"]})
        choices = uow.console.open_problems(200)
    return {"health": health, "recent": recent, "linked": linked, "problem_choices": choices}


def problem_record(storage: Storage, problem_id: int) -> dict[str, Any] | None:
    """A problem's CAPA record fields (see :data:`CAPA_TEXT` and ``capa_due``)."""
    with storage.session() as uow:
        return uow.console.problem_record(problem_id)


def link_incident(
    storage: Storage, incident_id: int, problem_id: int, by: str, now: float, audit: AuditEntry
) -> bool:
    """Link an incident to a problem (both timelines say who did it); False when they
    were linked before (nothing written). ``LookupError`` naming which id is unknown."""
    with storage.session() as uow, uow.transaction():
        if uow.incidents.state_of(incident_id) is None:
            raise LookupError(f"incident: no incident with id {incident_id}")
        if uow.problems.state_of(problem_id) is None:
            raise LookupError(f"problem: no problem with id {problem_id}")
        if not uow.problems.link(problem_id, incident_id):
            return False
        uow.incidents.add_timeline(incident_id, now, f"linked to problem {problem_id} by {by}")
        uow.problems.add_timeline(problem_id, now, f"incident {incident_id} linked by {by}")
        append_audit(uow, audit)
        return True


def save_problem_record(
    storage: Storage,
    problem_id: int,
    fields: Mapping[str, Any],
    by: str,
    now: float,
    audit: AuditEntry,
) -> list[str]:
    """Store the CAPA record fields given (text from :data:`CAPA_TEXT`, ``capa_due`` as
    Unix seconds or None); returns the names that changed, each noted on the problem's
    timeline. ``LookupError`` for an unknown problem."""
    with storage.session() as uow, uow.transaction():
        row = uow.problems.get(problem_id)
        record = uow.console.problem_record(problem_id)
        if row is None or record is None:
            raise LookupError(f"problem: no problem with id {problem_id}")
        before = {**{k: row.get(k) for k in CAPA_TEXT[:3]}, **record}
        changed = [k for k, v in fields.items() if (before.get(k) or None) != (v or None)]
        if not changed:
            return []
        uow.problems.set_capa(
            problem_id, {k: fields[k] or "" for k in changed if k in CAPA_TEXT[:3]}
        )
        uow.console.set_problem_record(
            problem_id, {k: fields[k] for k in changed if k not in CAPA_TEXT[:3]}
        )
        uow.problems.add_timeline(
            problem_id, now, f"CAPA record updated by {by}: {', '.join(changed)}"
        )
        append_audit(uow, audit)
        return changed


def check_closable(storage: Storage, problem_id: int) -> None:
    """Raise :class:`StateError` unless the problem's CAPA record has a verification:
    a problem is closed from the console only once its fix was verified.
    ``LookupError`` for an unknown problem."""
    record = problem_record(storage, problem_id)
    if record is None:
        raise LookupError(f"problem: no problem with id {problem_id}")
    if not (record.get("verification") or "").strip():
        raise StateError(
            f"problem {problem_id} has no verification: record how the fix was verified first"
        )


def quality(storage: Storage, since: float, now: float) -> Quality:
    """The service-quality figures for incidents opened on the UTC day of ``since`` or
    later (remediation runs: received since ``since``), read from the per-day rollup
    (:mod:`collector.desk.rollup`): a few thousand rows whatever the incident count.
    Time to restore is read from buckets (to the minute below 2 hours, the hour below 2
    days, the day beyond): a percentile is the lower bound of the bucket holding its
    nearest-rank sample. The console caches the result for a minute
    (``console/quality.py``)."""
    with storage.session() as uow:
        rows = uow.console.quality_rows(day_of(since))
        versions: dict[tuple[str, str], dict[str, int]] = {}
        for name, sha, outcome, n in uow.console.remediation_versions(since):
            versions.setdefault((name, sha), {})[outcome] = int(n)
    by_service: dict[str, _Tally] = {}
    by_department: dict[str, _Tally] = {}
    for service, department, bucket, prevented, raised, with_sla, within, n in rows:
        for table, key in ((by_service, service), (by_department, department)):
            tally = table.setdefault(key, _Tally())
            tally.add(int(bucket), int(prevented or 0), int(raised or 0), int(with_sla or 0),
                      int(within or 0), int(n))  # fmt: skip
    return Quality(
        since=since,
        computed_at=now,
        by_service=tuple(t.row(k) for k, t in sorted(by_service.items())),
        by_department=tuple(t.row(k) for k, t in sorted(by_department.items())),
        remediations=tuple(
            RemediationVersion(name, sha, outcomes)
            for (name, sha), outcomes in sorted(versions.items())
        ),
    )


@dataclass
class _Tally:
    """Counts and the restore-time histogram of one service or department."""

    prevented: int = 0
    raised: int = 0
    with_sla: int = 0
    within: int = 0
    restores: dict[int, int] = field(default_factory=dict)

    def add(
        self, bucket: int, prevented: int, raised: int, with_sla: int, within: int, n: int
    ) -> None:
        self.prevented += prevented
        self.raised += raised
        self.with_sla += with_sla
        self.within += within
        if bucket >= 0:
            self.restores[bucket] = self.restores.get(bucket, 0) + n

    def percentile(self, share: float) -> float | None:
        """Nearest-rank percentile (``share`` 0..1) as its bucket's lower bound."""
        total = sum(self.restores.values())
        if not total:
            return None
        rank = int((total - 1) * share)  # 0-based, as the tests' nearest rank
        seen = 0
        for bucket in sorted(self.restores):
            seen += self.restores[bucket]
            if seen > rank:
                return restore_bucket_bounds(bucket)[0]
        return None  # unreachable: rank < total

    def row(self, name: str) -> QualityRow:
        return QualityRow(
            name=name or "(none)",
            prevented=self.prevented,
            raised=self.raised,
            resolved=sum(self.restores.values()),
            sla_attainment=self.within / self.with_sla if self.with_sla else None,
            restore_median_s=self.percentile(0.5),
            restore_p90_s=self.percentile(0.9),
        )
