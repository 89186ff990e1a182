"""Carrying out the incident engine's actions for one key, and the key state it returns.

The engine (:mod:`collector.desk.engine`) decides; :func:`carry_out` records: it opens,
resolves and annotates incidents through the repositories, links problems, notes
silences, counts everything in the transaction's aggregate delta, and saves the key.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from vigil.collector.desk import engine, rollup
from vigil.collector.desk.catalog import Classification
from vigil.collector.desk.engine import (
    AddTimeline,
    KeyState,
    OpenIncident,
    RecordPrevented,
    ResolveIncident,
)
from vigil.collector.desk.problems import after_open, close_fleet_problems
from vigil.collector.desk.surveys import queue_after_resolve
from vigil.collector.desk.work import Work, key_row

log = logging.getLogger("vigil.collector.desk")


def carry_out(
    work: Work,
    host: str,
    hostname: str,
    check: str,
    old: KeyState | None,
    new: KeyState,
    actions: list[engine.Action],
    now: float,
) -> None:
    """Perform the engine's actions for one key, then save the key's new state."""
    delta, changes, incidents = work.delta, work.changes, work.uow.incidents
    target = old.incident_id if old is not None else None
    for action in actions:
        if isinstance(action, OpenIncident):
            target, c = insert_classified(
                work,
                host,
                hostname,
                check,
                now,
                state="open",
                value=action.value,
                message=action.message,
                remediation=action.remediation,
                remediation_outcome=action.remediation_outcome,
                flapping=new.flapping,
            )
            incidents.add_timeline(target, now, f"opened: {action.reason}")
            note_silences(work, target, host, hostname, check, c.service, now)
            after_open(work, host, check, target, now, prevented=False)
            new = replace(new, incident_id=target)
            delta.incidents_open[(c.priority, check)] += 1
            delta.counters["incidents_opened"] += 1
            changes.opened.append(target)
        elif isinstance(action, RecordPrevented):
            prevented, _ = insert_classified(
                work,
                host,
                hostname,
                check,
                now,
                state="prevented",
                resolved_at=now,
                value=action.value_before,
                message=action.message,
                remediation=action.remediation,
                remediation_outcome="fixed",
                resolution=f"prevented by {action.remediation}",
            )
            before, after = _num(action.value_before), _num(action.value_after)
            incidents.add_timeline(
                prevented, now, f"prevented: {action.remediation} fixed it ({before} -> {after})"
            )
            delta.counters["incidents_prevented"] += 1
            changes.prevented.append(prevented)
            after_open(work, host, check, prevented, now, prevented=True)
        elif target is None:
            # A resolve or note with no open incident: the engine never asks for that, so
            # it is a bug worth seeing, not a reason to fail the report.
            log.warning(
                "incident action %r for %s/%s without an open incident", action, host, check
            )
        elif isinstance(action, ResolveIncident):
            resolve(work, target, now, action.reason)
            changes.resolved.append(target)
            target = None
        elif isinstance(action, AddTimeline):
            incidents.add_timeline(target, now, action.text)
    if (old or KeyState()).flapping != new.flapping and target is not None:
        incidents.set_flapping(target, new.flapping)
    # A key with no row yet is saved only once it differs from the default, so a run for
    # a check that never reported leaves no phantom "ok" state behind.
    if (old or KeyState()) != new:
        work.uow.keys.save(host, check, key_row(new), now)
        was_state = old.check_state if old is not None else None
        for state, gauge in (("critical", delta.checks_failing), ("unknown", delta.checks_unknown)):
            if (new.check_state == state) != (was_state == state):
                gauge[check] += 1 if new.check_state == state else -1


def insert_classified(
    work: Work, host: str, hostname: str, check: str, now: float, **row: Any
) -> tuple[int, Classification]:
    """Insert an incident for (host, check) opened at ``now``, with the catalog's
    priority, service, impact, urgency and the host's groups filled in. An open incident
    gets its SLA deadline; a prevented one has none to miss."""
    labels = work.host_info(host)[1]
    c = work.catalog.classify(check, labels)
    incident_id = work.uow.incidents.insert(
        {
            "host": host,
            "hostname": hostname,
            "check_id": check,
            "priority": c.priority,
            "opened_at": now,
            "service": c.service,
            "impact": c.impact,
            "urgency": c.urgency,
            "groups": work.catalog.group_names(work.host_info(host)[1]),
            # The host's department label as the incident opened: what the console's
            # queue filters and quality figures group by, without a join on hosts.
            "department": labels.get("department"),
            **({"sla_due": now + c.sla_s} if row.get("state") == "open" else {}),
            **row,
        }
    )
    work.uow.console.rollup_add(
        rollup.recorded(now, c.service, labels.get("department"), row.get("state", "open"))
    )
    return incident_id, c


def resolve(work: Work, incident_id: int, now: float, reason: str) -> None:
    """Resolve an open incident (a no-op, logged, if it is not open) and close the fleet
    problems it was the last open incident of."""
    resolved = work.uow.incidents.resolve(incident_id, now, reason)
    if resolved is None:
        log.warning("incident %d to resolve is not open", incident_id)
        return
    work.uow.incidents.add_timeline(incident_id, now, f"resolved: {reason}")
    info = work.uow.console.rollup_info(incident_id)
    if info is not None:
        work.uow.console.rollup_add(rollup.resolved(*info, resolved_at=now))
    close_fleet_problems(work, incident_id, now)
    delta = work.delta
    delta.incidents_open[(resolved.priority, resolved.check)] -= 1
    delta.observe_restore(resolved.priority, now - resolved.opened_at)
    delta.counters["incidents_resolved"] += 1
    queue_after_resolve(work, incident_id, now)  # ask the person how it went, maybe


def note_silences(
    work: Work,
    incident_id: int,
    host: str,
    hostname: str,
    check: str,
    service: str | None,
    now: float,
) -> None:
    """Say on the timeline which active silence holds the new incident's notification
    back (the incident itself is recorded: history and SLA stay true)."""
    groups = work.catalog.group_names(work.host_info(host)[1])
    for row in work.uow.silences.active(now):
        silence = engine.Silence(row.id, row.matcher, row.value, row.starts_at, row.ends_at)
        if engine.silence_applies(
            silence, host=host, hostname=hostname, groups=groups, service=service,
            check=check, now=now,
        ):  # fmt: skip
            note = f": {row.comment}" if row.comment else ""
            work.uow.incidents.add_timeline(
                incident_id, now, f"silenced by silence {silence.id}{note}; not notified"
            )


def flapping_now(work: Work, host: str, check: str, now: float) -> bool:
    """Whether the key flaps at ``now``: its latest result says the agent's check is
    flapping, or its stored known states changed often enough lately (check results are
    stored on change; ``unknown`` ones are skipped, see :func:`engine.known_changes`)."""
    results = work.uow.results
    if results.latest_flapping(host, check):
        return True
    rules = work.rules
    if rules.flap_changes <= 0:
        return False
    # One more row than changes needed: when the history is longer than that, the oldest
    # row only says which state the first counted change left.
    limit = rules.flap_changes + 1
    rows = results.known_states(host, check, limit)
    before = "ok"
    if len(rows) == limit:
        before, rows = rows[0][1], rows[1:]
    times = engine.known_changes(rows, before)
    return engine.is_flapping(times, now, rules.flap_window_s, rules.flap_changes)


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"
