"""Read services the API calls, shaped as the API's dicts, and the start-up aggregates.

Each function reads through the caller's unit of work; the shaping (display states,
joined ids, outcome rates) is decided here, not in the queries.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import reprlib
from collections.abc import Iterator
from typing import Any

from vigil.collector.desk import engine, histograms
from vigil.collector.desk.catalog import Catalog
from vigil.collector.desk.problems import SELF_HEALED, self_healed_summary
from vigil.collector.storage.protocols import UnitOfWork
from vigil.collector.telemetry.aggregates import Aggregates

log = logging.getLogger("vigil.collector.desk")

# States a list can filter on: ``open`` (all not yet resolved) and its refinements.
LIST_STATES: tuple[str, ...] = ("open", "acknowledged", "flapping", "resolved", "prevented")
PROBLEM_STATES: tuple[str, ...] = ("open", "acknowledged", "resolved")
PROBLEM_KINDS: tuple[str, ...] = ("recurring", "fleet", "self_healed")
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
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Incidents, newest first; ``ValueError`` naming ``state`` if it is not one of
    :data:`LIST_STATES` (``open`` includes acknowledged and flapping ones). ``before``:
    only ids below it (keyset paging: the next page starts below the last id shown)."""
    if state is not None and state not in LIST_STATES:
        raise ValueError(f"state: must be one of {list(LIST_STATES)}, got {state!r}")
    filters = {"host": host, "check": check, "service": service, "priority": priority}
    rows = uow.incidents.list(
        filters=filters, state=state, limit=limit, offset=offset, before=before
    )
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
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Problems, newest first (``before``: ids below it only); ``ValueError`` naming the
    argument on bad input."""
    if state is not None and state not in PROBLEM_STATES:
        raise ValueError(f"state: must be open, acknowledged or resolved, got {state!r}")
    if kind is not None and kind not in PROBLEM_KINDS:
        raise ValueError(f"kind: must be one of {list(PROBLEM_KINDS)}, got {kind!r}")
    rows = uow.problems.list(
        filters={"kind": kind, "check": check},
        state=state,
        limit=limit,
        offset=offset,
        before=before,
    )
    if not rows:
        return []
    # The page's links in two queries, not one or two per problem (a round trip each on
    # PostgreSQL: 25-50 ms a page of 100).
    ids = [row["id"] for row in rows]
    links = uow.problems.incident_ids_of(ids)
    healed = [row["id"] for row in rows if row["kind"] == SELF_HEALED]
    hosts = uow.problems.hosts_linked_of(healed) if healed else {}
    return [_problem(uow, row, links[row["id"]], hosts.get(row["id"])) for row in rows]


def get_problem(uow: UnitOfWork, problem_id: int) -> dict[str, Any] | None:
    """One problem with ``incidents`` (ids) and ``timeline``, or None."""
    row = uow.problems.get(problem_id)
    if row is None:
        return None
    problem = _problem(uow, row)
    problem["timeline"] = uow.problems.timeline(problem_id)
    return problem


def list_hosts(
    uow: UnitOfWork, *, after: str | None = None, limit: int = -1
) -> list[dict[str, Any]]:
    """Hosts that reported, by agent_id (byte order), with current check states and
    their number of open incidents: those after the agent_id ``after``, at most
    ``limit`` (-1: every host, O(fleet): for tools, not for the API). The per-host
    figures are read for the page's hosts only, so a page costs the same at any size."""
    hosts = uow.hosts.list(after=after, limit=limit)
    page = None if limit < 0 else [h["agent_id"] for h in hosts]
    open_counts = uow.incidents.open_by_host(page)
    by_host: dict[str, dict[str, str]] = {}
    for host, check, state in uow.keys.states(page):
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
    uow: UnitOfWork,
    *,
    host: str | None,
    remediation: str | None,
    limit: int,
    offset: int,
    before: int | None = None,
) -> list[dict[str, Any]]:
    """Remediation runs, newest first (``before``: ids below it only): every
    RemediationEvent field plus ``id``, ``host``, ``hostname``, ``received_at``, ``type``;
    a run that answered an admin's run-now request also carries ``request_id``,
    ``requested_by`` and ``requested_at`` (who asked: the corrective-action record says so)."""
    rows = uow.runs.list(
        host=host, remediation=remediation, limit=limit, offset=offset, before=before
    )
    asked = uow.policy.requests_for([row["event_id"] for row in rows]) if rows else {}
    return [_run(row) | asked.get(row["event_id"], {}) for row in rows]


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
    """The in-memory aggregates rebuilt from storage (at start-up).

    Start-up must survive any row a store holds (written by an older version, edited by
    hand, or accepted before a bound existed): a row whose numbers are not finite or not
    numbers at all is logged and left out of the figures, never fatal. Values are
    clamped where they are bucketed (see ``telemetry/buckets.py``).

    The cyclic garbage collector is paused meanwhile: what is built here is kept, and
    the collections its hundreds of thousands of new rows and dict entries would
    trigger found nothing to free (~3 % of a start at 100,000 hosts, by callgrind).
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        return _load_aggregates(uow, catalog)
    finally:
        if paused:
            gc.enable()


def _load_aggregates(uow: UnitOfWork, catalog: Catalog) -> Aggregates:
    agg = Aggregates()
    bad = _BadRows()
    # Per host (O(fleet), the bulk of a start at 100k hosts): the checks inline (a
    # function call per value cost ~0.3 s at 100k hosts; a row failing them gets the
    # full checks below, which name what is wrong), the catalog asked once per distinct
    # label set (hosts sharing one share its dict, see HostRepository.load), and the
    # skew distribution filled in one bulk pass.
    expected_by_labels: dict[int, bool] = {}
    isfinite = math.isfinite
    last_seen_of, names, ttls = agg.host_last_seen, agg.host_names, agg.host_ttl
    skews: list[tuple[str, float]] = []
    for row in uow.hosts.load():
        agent_id, hostname, labels, last_seen, ttl, offset = row
        if not (
            type(agent_id) is str
            and type(last_seen) in _REAL
            and isfinite(last_seen)
            and type(offset) in _REAL
            and isfinite(offset)
            and (ttl is None or (type(ttl) in _REAL and isfinite(ttl)))
        ):
            try:
                agent_id = _text(agent_id)
                last_seen, offset = _finite(last_seen), _finite(offset)
                ttl = None if ttl is None else _finite(ttl)
            except _BAD_ROW as exc:
                bad.skip("hosts", row, exc)
                continue
        expected = expected_by_labels.get(id(labels))
        if expected is None:
            try:
                expected = bool(catalog.groups) and catalog.silence_expected(labels)
            except _BAD_ROW as exc:
                bad.skip("hosts", row, exc)
                continue
            expected_by_labels[id(labels)] = expected
        last_seen_of[agent_id] = float(last_seen)
        names[agent_id] = str(hostname)
        skews.append((agent_id, abs(float(offset))))
        if ttl is not None:
            ttls[agent_id] = float(ttl)
        if expected:
            agg.host_silence_expected[agent_id] = True
    agg.clock_skew.load(skews)
    agg.liveness.load(
        (host, seen, agg.host_ttl.get(host)) for host, seen in agg.host_last_seen.items()
    )
    agg.asleep_liveness.load(
        (host, agg.host_last_seen[host], agg.host_ttl.get(host))
        for host in agg.host_silence_expected
    )
    for row in uow.metrics.footprints():
        with bad.skipping("host_metrics", row):
            host, at, own = row
            agg.footprint.update(_text(host), _finite(at), {k: _finite(v) for k, v in own.items()})
    # Counters and histograms keyed by agent-supplied names go through the caps of the
    # long-lived instance (Aggregates.merge_named), as they do for every later report.
    named = Aggregates()

    # Histograms come from the summaries kept as values are observed; these scans of
    # the history run once, on a store that has none yet (desk/histograms.py).
    def scan_restores(target: Aggregates) -> None:
        for row in uow.incidents.restore_times():
            with bad.skipping("incidents", row):
                target.observe_restore(_text(row[0]), _finite(row[1]))

    def scan_runs(target: Aggregates) -> None:
        for row in uow.runs.durations():
            with bad.skipping("remediation_runs", row):
                target.observe_run_duration(_text(row[0]), _finite(row[1]))

    histograms.load(uow, named, scan_restores, scan_runs)
    # Names become label values and counts are added up: a BLOB where SQLite should hold
    # text, or text where it should hold a count, leaves its row out (never a scrape
    # that fails later, or a start-up that fails now).
    for row in uow.incidents.open_by_priority_check():
        with bad.skipping("incidents", row):
            priority, check, n = row
            named.incidents_open[(_text(priority), _text(check))] += _count(n)
    for row in uow.keys.critical_by_check().items():
        with bad.skipping("check_state", row):
            named.checks_failing[_text(row[0])] += _count(row[1])
    # Counted in storage: a pass over every key in Python cost 0.4 s at 100k hosts.
    for row in uow.keys.unknown_by_check().items():
        with bad.skipping("check_state", row):
            named.checks_unknown[_text(row[0])] += _count(row[1])
    for row in uow.runs.outcome_counts():
        with bad.skipping("remediation_runs", row):
            name, outcome, n = row
            named.remediation_runs[(_text(name), _text(outcome))] += _count(n)
    for row in uow.counters.load().items():
        with bad.skipping("counters", row):
            named.counters[_text(row[0])] = _count(row[1])
    # Incident totals come from the incidents themselves (never deleted), so they cannot
    # drift from what the API shows.
    for state, n in uow.incidents.by_state().items():
        if state == "prevented":
            named.counters["incidents_prevented"] = n
        else:
            named.counters["incidents_opened"] += n
            if state == "resolved":
                named.counters["incidents_resolved"] = n
    agg.merge_named(named)
    bad.report()
    return agg


# The types a stored number may come back as (bool excluded: ``type(True) is bool``).
_REAL = (float, int)


def _finite(value: object) -> float:
    """``value`` as a float; ``ValueError`` unless it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {number!r}")
    return number


def _text(value: object) -> str:
    """``value`` if it is a ``str``; ``ValueError`` otherwise (e.g. a BLOB in a name)."""
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return value


def _count(value: object) -> int:
    """``value`` if it is a non-negative ``int``; ``ValueError`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a count, got {reprlib.repr(value)}")
    return value


# What a bad stored row raises while start-up reads it.
_BAD_ROW = (TypeError, ValueError, ArithmeticError, LookupError, AttributeError)


class _BadRows:
    """Counts and logs the rows :func:`load_aggregates` leaves out: the first few of each
    table with a short excerpt, then one line with the totals (a store full of bad rows
    must not flood the log)."""

    LOGGED = 3

    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}

    @contextlib.contextmanager
    def skipping(self, table: str, row: object) -> Iterator[None]:
        try:
            yield
        except _BAD_ROW as exc:
            self.skip(table, row, exc)

    def skip(self, table: str, row: object, exc: Exception) -> None:
        """Count (and log, the first few) a ``row`` of ``table`` left out for ``exc``."""
        n = self.skipped[table] = self.skipped.get(table, 0) + 1
        if n <= self.LOGGED:
            log.warning("start-up: skipping a bad %s row %s: %s", table, reprlib.repr(row), exc)

    def report(self) -> None:
        for table, n in self.skipped.items():
            log.warning("start-up: %d bad %s row(s) left out of the in-memory figures", n, table)


def _incident(row: dict[str, Any]) -> dict[str, Any]:
    row["state"] = engine.display_state(row["state"], row["acknowledged_at"], row["flapping"])
    return row


def _problem(
    uow: UnitOfWork,
    row: dict[str, Any],
    incidents: list[int] | None = None,
    hosts: int | None = None,
) -> dict[str, Any]:
    """Shape one problem; ``incidents`` and ``hosts`` (its links, when the caller read
    them for a whole page) are read here otherwise."""
    row["state"] = engine.display_state(row["state"], row["acknowledged_at"], False)
    row["incidents"] = uow.problems.incident_ids(row["id"]) if incidents is None else incidents
    if row["kind"] == SELF_HEALED:
        # Hosts keep joining after it opened (the threshold is reached before the last
        # host reports): the count and the summary are the links' as of now.
        row["hosts"] = uow.problems.hosts_linked(row["id"]) if hosts is None else hosts
        row["summary"] = self_healed_summary(row["check"], row["hosts"])
    return row


def _run(row: dict[str, Any]) -> dict[str, Any]:
    row["type"] = "remediation"
    return row
