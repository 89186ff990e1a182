"""Read services the API calls, shaped as the API's dicts, and the start-up aggregates.

Each function reads through the caller's unit of work; the shaping (display states,
joined ids, outcome rates) is decided here, not in the queries.
"""

from __future__ import annotations

import math
from typing import Any

from vigil.collector.desk import engine
from vigil.collector.desk.catalog import Catalog
from vigil.collector.storage.protocols import UnitOfWork
from vigil.collector.telemetry.aggregates import Aggregates

# States a list can filter on: ``open`` (all not yet resolved) and its refinements.
LIST_STATES: tuple[str, ...] = ("open", "acknowledged", "flapping", "resolved", "prevented")
PROBLEM_STATES: tuple[str, ...] = ("open", "acknowledged", "resolved")
PROBLEM_KINDS: tuple[str, ...] = ("recurring", "fleet")
# Corrective-action records shown with one incident, at most.
INCIDENT_RUNS_LIMIT = 1000


def list_incidents(
    uow: UnitOfWork,
    *,
    state: str | None,
    host: str | None,
    check: str | None,
    service: str | None,
    priority: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """Incidents, newest first; ``ValueError`` naming ``state`` if it is not one of
    :data:`LIST_STATES` (``open`` includes acknowledged and flapping ones)."""
    if state is not None and state not in LIST_STATES:
        raise ValueError(f"state: must be one of {list(LIST_STATES)}, got {state!r}")
    filters = {"host": host, "check": check, "service": service, "priority": priority}
    rows = uow.incidents.list(filters=filters, state=state, limit=limit, offset=offset)
    return [_incident(row) for row in rows]


def get_incident(
    uow: UnitOfWork, incident_id: int, remediation_wait_s: float
) -> dict[str, Any] | None:
    """One incident with its ``timeline``, the ids of its ``problems``, and
    ``remediation_runs``: the corrective-action records of its key from
    ``remediation_wait_s`` before it opened (the attempt that failed and caused it)
    until it was resolved. None if there is no such incident."""
    row = uow.incidents.get(incident_id)
    if row is None:
        return None
    incident = _incident(row)
    end = incident["resolved_at"] if incident["resolved_at"] is not None else math.inf
    runs = uow.runs.for_key(
        incident["host"],
        incident["check"],
        incident["opened_at"] - remediation_wait_s,
        end,
        INCIDENT_RUNS_LIMIT,
    )
    incident["timeline"] = uow.incidents.timeline(incident_id)
    incident["problems"] = uow.problems.of_incident(incident_id)
    incident["remediation_runs"] = [_run(r) for r in runs]
    return incident


def list_problems(
    uow: UnitOfWork,
    *,
    state: str | None,
    kind: str | None,
    check: str | None,
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """Problems, newest first; ``ValueError`` naming the argument on bad input."""
    if state is not None and state not in PROBLEM_STATES:
        raise ValueError(f"state: must be open, acknowledged or resolved, got {state!r}")
    if kind is not None and kind not in PROBLEM_KINDS:
        raise ValueError(f"kind: must be recurring or fleet, got {kind!r}")
    rows = uow.problems.list(
        filters={"kind": kind, "check": check}, state=state, limit=limit, offset=offset
    )
    return [_problem(uow, row) for row in rows]


def get_problem(uow: UnitOfWork, problem_id: int) -> dict[str, Any] | None:
    """One problem with ``incidents`` (ids) and ``timeline``, or None."""
    row = uow.problems.get(problem_id)
    if row is None:
        return None
    problem = _problem(uow, row)
    problem["timeline"] = uow.problems.timeline(problem_id)
    return problem


def list_hosts(uow: UnitOfWork) -> list[dict[str, Any]]:
    """Every host that ever reported, by agent_id, with current check states and its
    number of open incidents."""
    hosts = uow.hosts.list()
    open_counts = uow.incidents.open_by_host()
    by_host: dict[str, dict[str, str]] = {}
    for host, check, state in uow.keys.states():
        by_host.setdefault(host, {})[check] = state
    for host in hosts:
        host["open_incidents"] = open_counts.get(host["agent_id"], 0)
        host["checks"] = by_host.get(host["agent_id"], {})
    return hosts


def latest_metrics(uow: UnitOfWork, agent_id: str) -> dict[str, float]:
    """The host's newest metrics summary, series sorted by name; empty if none."""
    values = uow.metrics.latest(agent_id)
    return {} if values is None else dict(sorted(values.items()))


def list_remediation_runs(
    uow: UnitOfWork, *, host: str | None, remediation: str | None, limit: int, offset: int
) -> list[dict[str, Any]]:
    """Remediation runs, newest first: every RemediationEvent field plus ``host``,
    ``hostname``, ``received_at`` and ``type``."""
    rows = uow.runs.list(host=host, remediation=remediation, limit=limit, offset=offset)
    return [_run(row) for row in rows]


def remediation_stats(uow: UnitOfWork) -> list[dict[str, Any]]:
    """Per remediation: runs by outcome, success rate (fixed / runs that were not dry
    runs or skipped; None when there are none), prevented incidents, hosts."""
    hosts = uow.runs.hosts_by_remediation()
    prevented = uow.incidents.prevented_by_remediation()
    by_name: dict[str, dict[str, int]] = {}
    for name, outcome, n in uow.runs.outcome_counts():
        by_name.setdefault(name, {})[outcome] = n
    out = []
    for name in sorted(by_name):
        outcomes = by_name[name]
        attempted = sum(n for o, n in outcomes.items() if o not in ("dry_run", "skipped"))
        out.append(
            {
                "remediation": name,
                "runs": sum(outcomes.values()),
                "outcomes": outcomes,
                "success_rate": outcomes.get("fixed", 0) / attempted if attempted else None,
                "prevented": prevented.get(name, 0),
                "hosts": hosts.get(name, 0),
            }
        )
    return out


def incident_aggregates(uow: UnitOfWork, now: float) -> dict[str, Any]:
    """Figures for /metrics that the in-memory aggregates do not keep incrementally:
    ``problems_open`` by kind, ``sla_breached`` open incidents past their SLA deadline
    by priority, ``incidents_acknowledged`` open and acknowledged ones by priority."""
    return {
        "problems_open": uow.problems.open_by_kind(),
        "sla_breached": uow.incidents.past_sla(now),
        "incidents_acknowledged": uow.incidents.acknowledged_open(),
    }


def load_aggregates(uow: UnitOfWork, catalog: Catalog) -> Aggregates:
    """The in-memory aggregates rebuilt from storage (at start-up)."""
    agg = Aggregates()
    for agent_id, hostname, labels, last_seen, ttl, offset in uow.hosts.load():
        agg.host_last_seen[agent_id] = last_seen
        agg.host_names[agent_id] = hostname
        agg.clock_skew.set(agent_id, abs(offset))
        if ttl is not None:
            agg.host_ttl[agent_id] = ttl
        if catalog.groups and catalog.silence_expected(labels):
            agg.host_silence_expected[agent_id] = True
    agg.liveness.load(
        (host, seen, agg.host_ttl.get(host)) for host, seen in agg.host_last_seen.items()
    )
    agg.asleep_liveness.load(
        (host, agg.host_last_seen[host], agg.host_ttl.get(host))
        for host in agg.host_silence_expected
    )
    for host, at, own in uow.metrics.footprints():
        agg.footprint.update(host, at, own)
    for priority, seconds in uow.incidents.restore_times():
        agg.observe_restore(priority, seconds)
    for name, seconds in uow.runs.durations():
        agg.observe_run_duration(name, seconds)
    for priority, check, n in uow.incidents.open_by_priority_check():
        agg.incidents_open[(priority, check)] = n
    for check, n in uow.keys.critical_by_check().items():
        agg.checks_failing[check] = n
    for name, outcome, n in uow.runs.outcome_counts():
        agg.remediation_runs[(name, outcome)] = n
    for name, value in uow.counters.load().items():
        agg.counters[name] = value
    # Incident totals come from the incidents themselves (never deleted), so they cannot
    # drift from what the API shows.
    for state, n in uow.incidents.by_state().items():
        if state == "prevented":
            agg.counters["incidents_prevented"] = n
        else:
            agg.counters["incidents_opened"] += n
            if state == "resolved":
                agg.counters["incidents_resolved"] = n
    return agg


def _incident(row: dict[str, Any]) -> dict[str, Any]:
    row["state"] = engine.display_state(row["state"], row["acknowledged_at"], row["flapping"])
    return row


def _problem(uow: UnitOfWork, row: dict[str, Any]) -> dict[str, Any]:
    row["state"] = engine.display_state(row["state"], row["acknowledged_at"], False)
    row["incidents"] = uow.problems.incident_ids(row["id"])
    return row


def _run(row: dict[str, Any]) -> dict[str, Any]:
    row["type"] = "remediation"
    return row
