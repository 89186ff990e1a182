"""Problems: a key that keeps failing (recurring), a check failing on many hosts at once
(fleet-wide), and a fleet-wide fault that every host fixed itself (self-healed). The
predicates are the engine's (:func:`engine.recurs`, :func:`engine.fleet_wide`); this
module reads what they need and records the outcome."""

from __future__ import annotations

from vigil import wire
from vigil.collector.desk import engine
from vigil.collector.desk.work import Work

FLEET_RESOLUTION = "every linked incident resolved"
# A fleet-wide fault every host fixed before anyone noticed: no page and no SLA, but a
# root cause to remove, so it stays open until someone resolves it with a CAPA record.
SELF_HEALED = "self_healed"


def after_open(
    work: Work, host: str, check: str, incident_id: int, now: float, *, prevented: bool
) -> None:
    """Recurrence and fleet correlation for an incident just opened (or prevented).

    Open incidents correlate into a *fleet* problem (notified, with an SLA); prevented
    ones into a *self-healed* problem (never notified, no SLA), unless a fleet problem
    of the check is open (then they join it). While a problem is open, a new occurrence
    only joins it (one insert), so a fleet outage of n hosts costs O(n) links, not O(n^2).
    """
    rules = work.rules
    problems = work.uow.problems
    recurring = problems.find_open("recurring", check, host)
    if recurring is not None:
        link(work, recurring, [incident_id], now)
    else:
        rows = work.uow.incidents.opened_since(host, check, now - rules.recurrence_window_s)
        times = [t for _, t in rows]
        if engine.recurs(times, now, rules.recurrence_window_s, rules.recurrence_count):
            summary = (
                f"{check} failed {len(times)} times on {work.host_info(host)[0]} within"
                f" {rules.recurrence_window_s / 86400:g} d: root cause not fixed"
            )
            problem = new_problem(work, "recurring", check, host, now, summary)
            link(work, problem, [i for i, _ in rows], now)
    if check == wire.HEARTBEAT_CHECK:
        return
    fleet = problems.find_open("fleet", check, None)
    if fleet is not None:
        link(work, fleet, [incident_id], now)
        return
    kind = SELF_HEALED if prevented else "fleet"
    if prevented:
        healed = problems.find_open(SELF_HEALED, check, None)
        if healed is not None:
            link(work, healed, [incident_id], now)
            return
        rows_by_host = work.uow.incidents.prevented_since(check, now - rules.fleet_window_s)
    else:
        rows_by_host = work.uow.incidents.open_since(check, now - rules.fleet_window_s)
    failing = len({h for _, h in rows_by_host})
    scope = 0
    if rules.fleet_min_share > 0 and failing >= max(2, rules.fleet_min_hosts):
        scope = scope_size(work, host)
    if not engine.fleet_wide(failing, scope, rules.fleet_min_hosts, rules.fleet_min_share):
        return
    if prevented:
        summary = self_healed_summary(check, failing)
    else:
        summary = f"{check} failing on {failing} hosts at once"
    problem = new_problem(work, kind, check, None, now, summary)
    link(work, problem, [i for i, _ in rows_by_host], now)


def self_healed_summary(check: str, hosts: int) -> str:
    """The one line a self-healed problem shows: what failed and on how many hosts."""
    return (
        f"{check} self-healed on {hosts} hosts: failed fleet-wide and every host fixed it"
        " (no page, no SLA); root cause to remove"
    )


def scope_size(work: Work, host: str) -> int:
    """Hosts in ``host``'s first catalog group, or every host if it is in none.

    O(hosts): only reached for the share rule, once the host count is reached and no
    problem of the check is open yet.
    """
    groups = work.catalog.groups_for(work.host_info(host)[1])
    if not groups:
        return work.uow.hosts.count()
    return sum(1 for labels in work.uow.hosts.all_labels() if groups[0].contains(labels))


def new_problem(
    work: Work, kind: str, check: str, host: str | None, now: float, summary: str
) -> int:
    """Open a problem of ``kind`` for the check (and host, for a recurring one); a
    self-healed problem gets no SLA deadline."""
    labels = work.host_info(host)[1] if host else {}
    c = work.catalog.classify(check, labels, fleet=kind == "fleet")
    # A self-healed problem pages nobody and has no restore deadline: nothing is down.
    sla_due = None if kind == SELF_HEALED else now + c.sla_s
    problem = work.uow.problems.insert(
        {
            "kind": kind,
            "check_id": check,
            "host": host,
            "hostname": work.host_info(host)[0] if host else None,
            "service": c.service,
            "impact": c.impact,
            "urgency": c.urgency,
            "priority": c.priority,
            "sla_due": sla_due,
            "opened_at": now,
            "summary": summary,
        }
    )
    work.uow.problems.add_timeline(problem, now, f"opened: {summary}")
    return problem


def link(work: Work, problem: int, incident_ids: list[int], now: float) -> None:
    """Link incidents to a problem, noting each new link on both timelines."""
    for incident_id in incident_ids:
        if work.uow.problems.link(problem, incident_id):
            work.uow.incidents.add_timeline(incident_id, now, f"linked to problem {problem}")
            work.uow.problems.add_timeline(problem, now, f"incident {incident_id} linked")


def close_fleet_problems(work: Work, incident_id: int, now: float) -> None:
    """Resolve open fleet problems of this incident once none of their incidents is open."""
    problems = work.uow.problems
    for problem in problems.open_fleet_of(incident_id):
        if not problems.has_open_incident(problem):
            problems.resolve(problem, now, FLEET_RESOLUTION)
            problems.add_timeline(problem, now, f"resolved: {FLEET_RESOLUTION}")
