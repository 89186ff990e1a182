"""Applying reports: exactly-once dedup, the host row, and every event's effects.

Exactly-once effect: a whole report is applied inside one transaction of the caller's
unit of work. A report with sequence numbers is checked against the host's (epoch, seq)
high-water mark, which the same transaction reads under the host's lock and writes with
the host row (``desk/sequence.py``): the host's last applied ``batch_id`` is a duplicate,
a batch above the mark is applied, one at or below it asks the agent for a new epoch.
A report without them (an older agent) is checked by its ids: a ``batch_id`` already
stored for the agent makes it a duplicate, and every event id is recorded too, so an
event re-sent inside a different batch is not applied twice. Ids are unique per agent
(``agent_id``), not globally, so two agents that happen to reuse ids cannot swallow each
other's data. Pruning bounds the ``seen`` ids, so each host also keeps the agent's last
applied ``batch_id``: the only batch an agent retries is its oldest unacknowledged one,
so a retry however late (a laptop that shut down between sending and the ack, back after
weeks) is recognised after its ids expired.

Time: incidents, timelines and the host's ``last_seen`` use the collector's receive time
(``received_at``), which tolerates agent clock skew; the agent's own timestamps are kept
next to it and the skew is estimated by :func:`clock_offset_estimate`. A metrics
summary's agent time orders a host's summaries, clamped to the receive time
(:func:`summary_time`) so that a clock far in the future cannot pin them.

Heartbeats (:data:`wire.HEARTBEAT_CHECK`) only refresh the host's ``last_seen`` and
``heartbeat_ttl_s`` (and end a liveness incident); they are not stored as check results
(one per minute per host would dwarf the useful history).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from vigil import wire
from vigil.collector.desk import engine, sequence
from vigil.collector.desk.actions import carry_out, flapping_now
from vigil.collector.desk.catalog import Catalog
from vigil.collector.desk.engine import IncidentRules, KeyState
from vigil.collector.desk.satisfaction import DISABLED, SatisfactionPolicy
from vigil.collector.desk.sequence import Verdict
from vigil.collector.desk.work import Changes, Work, key_state
from vigil.collector.storage.protocols import UnitOfWork
from vigil.collector.storage.records import HostRefresh
from vigil.collector.telemetry.aggregates import Aggregates
from vigil.wire_fast import ReportStruct, as_wire, struct_of

log = logging.getLogger("vigil.collector.desk")

# Counters the ingest path keeps in the ``counters`` repository, written once per group.
INGEST_COUNTERS = ("reports_accepted", "reports_duplicate", "reports_epoch_reset", "events")
# The clock-offset estimate (see clock_offset_estimate): a sample further than this from
# it replaces it (seconds), and it may rise this much per second without one (100 ppm,
# more than a quartz clock drifts).
CLOCK_STEP_S = 5.0
CLOCK_DRIFT_PER_S = 1e-4


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What applying one report did.

    ``duplicate``: the batch was applied before and nothing was applied now. ``events``: events
    newly applied (events already seen in an earlier batch are not counted). ``opened``,
    ``resolved``, ``prevented``: incident ids opened, resolved, recorded as prevented.
    """

    duplicate: bool
    events: int
    opened: tuple[int, ...]
    resolved: tuple[int, ...]
    prevented: tuple[int, ...]
    # The agent's seq is at or below the collector's mark for its epoch (a restored
    # snapshot): nothing was applied, and the agent must start a new epoch. ``mark``: the
    # collector's mark then, for the agent's log.
    epoch_reset: bool = False
    mark: int | None = None


# A report may also be its checked wire_fast Struct (the lean front's, same fields):
# the steady pass reads it as it is, the per-report path converts it (as_wire).
Items = Sequence[tuple[wire.Report | ReportStruct, float]]
Results = list[IngestResult | Exception]


def clock_offset_estimate(
    previous: tuple[float, float] | None, sample: float, received_at: float
) -> float:
    """The host's clock offset estimate (seconds) after a new ``sample``.

    ``previous`` is ``(estimate, last_seen)`` or None for a new host. A sample,
    ``received_at - sent_at``, is the agent's clock error plus the network and queueing
    delay, which only ever adds; so the estimate is the smallest recent sample (as NTP's
    clock filter does), aged by :data:`CLOCK_DRIFT_PER_S` so that drift is followed, and
    a sample more than :data:`CLOCK_STEP_S` away replaces it at once (a stepped clock).
    """
    if previous is None:
        return sample
    estimate, last_seen = previous
    if abs(sample - estimate) > CLOCK_STEP_S:
        return sample
    return min(sample, estimate + max(received_at - last_seen, 0.0) * CLOCK_DRIFT_PER_S)


def summary_time(agent_time: float, received_at: float) -> float:
    """When a metrics summary counts as taken: the agent's time, but never after the
    collector received it.

    A host's newest summary is chosen by this time (so a late retry of an older one
    never replaces a newer one). An agent clock ahead of the collector's (by minutes or
    by years) would otherwise pin the host's metrics until that date; clamped, its
    summaries are ordered by receive time instead, which is their true order.
    """
    return agent_time if agent_time <= received_at else received_at


def apply_group(
    uow: UnitOfWork,
    catalog: Catalog,
    rules: IncidentRules,
    items: Items,
    *,
    isolate: bool,
    satisfaction: SatisfactionPolicy = DISABLED,
    record_ids: bool = False,
) -> tuple[Results, list[Aggregates]]:
    """The work of a group commit, inside the caller's open transaction.

    Reports are applied in the given order, so a batch repeated within the group is a
    duplicate of the first. With ``isolate`` each report runs in its own savepoint, so a
    failing one fails alone (its slot holds the exception) and its delta vanishes with
    it; without, one exception escapes and the caller rolls the whole group back.
    Returns one result per item and the aggregate deltas to merge after the COMMIT.
    ``record_ids``: see :attr:`Work.record_ids`.

    Without ``isolate`` (and ``record_ids``), the group's steady-state reports are
    applied first, together (:func:`apply_steady`), and the others one by one.
    """
    results: Results = []
    # One delta for the whole group when it commits or fails as a whole; with ``isolate``
    # a report's delta must vanish with its savepoint, so one each.
    deltas = [] if isolate else [Aggregates()]
    steady = {} if isolate or record_ids else apply_steady(uow, catalog, items, deltas[0])
    for i, (given, received_at) in enumerate(items):
        done = steady.get(i)
        if done is not None:
            results.append(done)
            continue
        report = as_wire(given)
        if not math.isfinite(received_at):
            results.append(ValueError(f"received_at: must be a finite number, got {received_at!r}"))
            continue
        if not isolate:
            work = Work(
                uow, catalog, rules, deltas[0], satisfaction=satisfaction,
                record_ids=record_ids, console_user=report.console_user,
            )  # fmt: skip
            results.append(apply_report(work, report, received_at))
            continue
        delta = Aggregates()
        try:
            with uow.savepoint():
                work = Work(
                    uow, catalog, rules, delta, satisfaction=satisfaction,
                    record_ids=record_ids, console_user=report.console_user,
                )  # fmt: skip
                result = apply_report(work, report, received_at)
        except Exception as exc:
            log.error("report %s not applied: %r", report.batch_id, exc)
            results.append(exc)
            continue
        results.append(result)
        deltas.append(delta)
    # The ingest counters once per group rather than per report (fewer statements).
    totals: Counter[str] = Counter()
    for delta in deltas:
        for name in INGEST_COUNTERS:
            totals[name] += delta.counters[name]
    for name, n in totals.items():
        if n:
            uow.counters.add(name, n)
    return results, deltas


def apply_report(work: Work, report: wire.Report, received_at: float) -> IngestResult:
    """Apply one report inside the caller's transaction, adding its effects to the delta.

    Dedup (see ``desk/sequence.py``): a report with ``epoch``/``seq_first``/``seq_last``
    is checked against the host's high-water mark, read under the host's lock and
    written with the host row, in this transaction; one without them (an older agent)
    by the ids it records in ``seen``.
    """
    uow, delta = work.uow, work.delta
    events = report.events
    if any(a.seq > b.seq for a, b in itertools.pairwise(events)):
        events = tuple(sorted(events, key=lambda e: e.seq))
    before = uow.hosts.before(report.agent_id)
    decided = sequence.verdict(
        report,
        stored_epoch=None if before is None else before.epoch,
        mark=None if before is None else before.mark,
        last_batch_id=None if before is None else before.last_batch_id,
    )
    fresh: list[wire.Event] = []
    applied = decided not in (Verdict.DUPLICATE, Verdict.RESET)
    if decided is Verdict.LEGACY or (
        # An agent upgraded to sequence numbers: its first sequenced report is also
        # checked against the ids its older version left in ``seen`` (until they age
        # out), so nothing it had in flight across the upgrade is applied twice.
        decided is Verdict.NEW_EPOCH and before is not None and before.epoch is None
    ):
        new_ids = _record_seen(uow, report, events, received_at)
        if new_ids is None:
            applied = False
        else:
            for event in events:
                if event.event_id in new_ids:
                    new_ids.discard(event.event_id)  # an id twice in one batch counts once
                    fresh.append(event)
    elif applied:
        fresh = list(events)
        if work.record_ids:  # an audit trail only: the mark decided
            uow.seen.record(
                report.agent_id, report.batch_id, [e.event_id for e in events], received_at
            )
    if not applied:
        if decided is Verdict.RESET:
            delta.counters["reports_epoch_reset"] += 1
        else:
            delta.counters["reports_duplicate"] += 1
    else:
        ttl = None
        for event in fresh:
            if (
                isinstance(event, wire.CheckEvent)
                and event.check == wire.HEARTBEAT_CHECK
                and event.ttl_s is not None
            ):
                ttl = event.ttl_s
        offset = clock_offset_estimate(
            None if before is None else (before.clock_offset_s, before.last_seen),
            received_at - report.sent_at,
            received_at,
        )
        uow.hosts.upsert(report, received_at, offset, ttl)
        _note_host(delta, work.catalog, report, received_at, offset, ttl)
        # A heartbeat's ttl_s went into the host row; its key matters only to resolve a
        # liveness incident, which the host row's read said whether there is (a healthy
        # host's report then reads no key; a host not stored before: look).
        heartbeat_open = before is None or before.heartbeat_open is not False
        for event in fresh:
            if (
                not heartbeat_open
                and isinstance(event, wire.CheckEvent)
                and event.check == wire.HEARTBEAT_CHECK
            ):
                continue
            _apply_event(work, report, event, received_at)
        delta.counters["reports_accepted"] += 1
        delta.counters["events"] += len(fresh)
    changes: Changes = work.changes
    return IngestResult(
        duplicate=not applied and decided is not Verdict.RESET,
        events=len(fresh),
        opened=tuple(changes.opened),
        resolved=tuple(changes.resolved),
        prevented=tuple(changes.prevented),
        epoch_reset=decided is Verdict.RESET,
        mark=before.mark if decided is Verdict.RESET and before is not None else None,
    )


# --------------------------------------------------------------------------- steady state
#
# Nearly every report of a healthy fleet is alike: a known agent whose name, labels and
# version are as stored sends its next batch in sequence with a heartbeat and a metrics
# summary, and its heartbeat key has no incident open. Such a report changes its host's
# liveness and dedup columns and its newest summary, nothing else (no check result, key,
# incident or id is written). apply_steady picks those reports out of a group and applies
# them together: one statement reads (and locks) their hosts, one run of one statement
# each updates the host rows and the summaries. That saves per report two statement calls
# and the machinery of apply_report (issue #17; docs/benchmarks.md, "Delivery").
#
# Every other report takes apply_report unchanged: an event other than a heartbeat or a
# summary, a new or renamed host, a first sequenced report, a duplicate or a snapshot's
# reset, a heartbeat incident to resolve, events out of seq order, and any agent with more
# than one report in the group (its reports must apply in order, through one path). The
# two passes touch disjoint hosts, so applying the steady reports first is an order the
# group could have arrived in; rows, results and aggregates end exactly as the per-report
# path leaves them (tests/unit/storage/test_steady_contract.py compares both on the same
# groups, on both backends).

# Groups smaller than this go through the per-report path whole: a lone report gains
# nothing from one more statement to read its host.
STEADY_MIN_GROUP = 2


def apply_steady(
    uow: UnitOfWork, catalog: Catalog, items: Items, delta: Aggregates
) -> dict[int, IngestResult]:
    """Apply the steady-state reports among ``items`` inside the caller's transaction,
    adding their effects to ``delta``; return their results by position in ``items``.

    The reports not in the returned mapping were not touched: the caller applies them
    with ``apply_report``. Raises what the storage raises (the caller rolls the group
    back, as for the per-report path).
    """
    if len(items) < STEADY_MIN_GROUP:
        return {}
    per_agent = Counter(report.agent_id for report, _ in items)
    candidates = [
        (i, report, received_at)
        for i, (report, received_at) in enumerate(items)
        if per_agent[report.agent_id] == 1 and _steady_shape(report, received_at)
    ]
    if not candidates:
        return {}
    stored = uow.hosts.before_unchanged([report for _, report, _ in candidates])
    hosts: list[HostRefresh] = []
    summaries: list[tuple[str, float, float, dict[str, float]]] = []
    results: dict[int, IngestResult] = {}
    for i, report, received_at in candidates:
        before = stored.get(report.agent_id)
        if before is None:
            continue  # new, renamed, relabelled or upgraded: the per-report path
        ttl = None
        heartbeat = False
        for event in report.events:
            if type(event) in _CHECK_TYPES:
                heartbeat = True
                if event.ttl_s is not None:
                    ttl = event.ttl_s
        if heartbeat and before.heartbeat_open is not False:
            continue  # the heartbeat resolves a liveness incident: the per-report path
        if (
            sequence.verdict(
                report,
                stored_epoch=before.epoch,
                mark=before.mark,
                last_batch_id=before.last_batch_id,
            )
            is not Verdict.APPLY
        ):
            continue
        host = report.agent_id
        offset = clock_offset_estimate(
            (before.clock_offset_s, before.last_seen), received_at - report.sent_at, received_at
        )
        assert report.epoch is not None and report.seq_last is not None  # APPLY says so
        hosts.append(
            HostRefresh(
                host, received_at, report.sent_at, offset, ttl, report.batch_id,
                report.epoch, report.seq_last,
            )
        )  # fmt: skip
        for event in report.events:
            if type(event) in _SUMMARY_TYPES:
                at = summary_time(event.time, received_at)
                summaries.append((host, at, received_at, event.values))
                delta.note_footprint(host, at, event.values)
        _note_host(delta, catalog, report, received_at, offset, ttl)
        delta.counters["reports_accepted"] += 1
        delta.counters["events"] += len(report.events)
        results[i] = IngestResult(
            duplicate=False, events=len(report.events), opened=(), resolved=(), prevented=()
        )
    if hosts:
        uow.hosts.refresh_many(hosts)
    if summaries:
        uow.metrics.put_many(summaries)
    return results


# The event classes the steady pass takes: the wire dataclasses, and the Structs of the
# same fields the lean front's reports carry (vigil/wire_fast.py decode_struct).
_SUMMARY_TYPES = frozenset(c for c in (wire.MetricsEvent, struct_of(wire.MetricsEvent)) if c)
_CHECK_TYPES = frozenset(c for c in (wire.CheckEvent, struct_of(wire.CheckEvent)) if c)


def _steady_shape(report: wire.Report | ReportStruct, received_at: float) -> bool:
    """Whether ``report`` may be a steady-state one, from the report alone: sequenced,
    only heartbeats and metrics summaries, in ``seq`` order (the host decides the rest)."""
    return (
        report.epoch is not None
        and report.seq_first is not None
        and math.isfinite(received_at)
        and all(
            type(event) in _SUMMARY_TYPES
            or (type(event) in _CHECK_TYPES and event.check == wire.HEARTBEAT_CHECK)
            for event in report.events
        )
        and all(a.seq < b.seq for a, b in itertools.pairwise(report.events))
    )


def _note_host(
    delta: Aggregates,
    catalog: Catalog,
    report: wire.Report | ReportStruct,
    received_at: float,
    offset: float,
    ttl: float | None,
) -> None:
    """What an applied report changes in the per-host aggregates (after the COMMIT)."""
    host = report.agent_id
    if ttl is not None:
        delta.host_ttl[host] = ttl
    delta.host_last_seen[host] = received_at
    delta.host_names[host] = report.hostname
    delta.host_clock_offset[host] = offset
    delta.host_silence_expected[host] = catalog.silence_expected(report.labels)


def _record_seen(
    uow: UnitOfWork, report: wire.Report, events: Sequence[wire.Event], received_at: float
) -> set[str] | None:
    """Record the batch id and event ids; the event ids not seen before, or None if the
    batch was (then nothing is recorded)."""
    batch_is_new, new_ids = uow.seen.record(
        report.agent_id, report.batch_id, [e.event_id for e in events], received_at
    )
    if batch_is_new:
        return new_ids
    if new_ids:  # a reused batch id with new events: an agent bug; record nothing
        uow.seen.forget_events(report.agent_id, new_ids)
    return None


def _apply_event(work: Work, report: wire.Report, event: wire.Event, received_at: float) -> None:
    """Apply one event this agent had not sent before."""
    host = report.agent_id
    if isinstance(event, wire.MetricsEvent):
        at = summary_time(event.time, received_at)
        work.uow.metrics.put(host, at, received_at, event.values)
        work.delta.note_footprint(host, at, event.values)
    elif isinstance(event, wire.CheckEvent):
        _apply_check(work, report, event, received_at)
    else:
        _apply_run(work, report, event, received_at)


def _apply_check(
    work: Work, report: wire.Report, event: wire.CheckEvent, received_at: float
) -> None:
    host, keys = report.agent_id, work.uow.keys
    if event.check == wire.HEARTBEAT_CHECK:  # its ttl_s went into the host row
        old = key_state(keys.load(host, event.check))
        if old is not None and old.incident_id is not None:
            new, actions = engine.on_liveness(old, silent=False, expected=False, silent_for_s=0.0)
            carry_out(work, host, report.hostname, event.check, old, new, actions, received_at)
        return
    work.uow.results.add(host, event, received_at)
    if event.check == wire.CLOCK_CHECK:
        return  # a reported clock jump: history only, never an incident
    old = key_state(keys.load(host, event.check))
    flapping = flapping_now(work, host, event.check, received_at)
    new, actions = engine.on_check(old or KeyState(), event, received_at, flapping=flapping)
    carry_out(work, host, report.hostname, event.check, old, new, actions, received_at)


def _apply_run(
    work: Work, report: wire.Report, event: wire.RemediationEvent, received_at: float
) -> None:
    host = report.agent_id
    work.uow.runs.add(host, report.hostname, event, received_at)
    work.delta.remediation_runs[(event.remediation, event.outcome)] += 1
    work.delta.observe_run_duration(event.remediation, event.duration_s)
    request_id = getattr(event, "request_id", None)
    if request_id is not None:
        # A run-now run: linked to its request (who asked) in the same transaction.
        work.uow.policy.add_run_now_result(
            request_id, host, event.event_id, event.outcome, received_at
        )
    if event.check is None:
        return  # triggered by a detection script, not a check: no incident key
    old = key_state(work.uow.keys.load(host, event.check))
    new, actions = engine.on_remediation(old or KeyState(), event, received_at)
    carry_out(work, host, report.hostname, event.check, old, new, actions, received_at)
