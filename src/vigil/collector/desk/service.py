"""The desk: the collector's business layer over a storage backend.

:class:`Desk` is what the app, the ingest queue, the ticker, the notifier and the API
handlers call. It opens the unit of work, runs the decisions (``apply``, ``liveness``,
``commands``, ``reads``, ``alertables``) inside it, and publishes the aggregate deltas to
the in-memory :class:`~collector.telemetry.aggregates.Aggregates` only after a COMMIT
succeeded, so a scrape never waits for the disk and never sees a rolled-back report.
The aggregates have their own lock, never held across a storage call.

Every call blocks on the storage (an fsync per write transaction): the app runs them on
its one storage thread, never on the event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from vigil import wire
from vigil.collector.desk import commands, histograms, reads
from vigil.collector.desk.alertables import alertables
from vigil.collector.desk.apply import IngestResult, Items, Results, apply_group
from vigil.collector.desk.catalog import EMPTY_CATALOG, Catalog
from vigil.collector.desk.collector_checks import apply_collector_check
from vigil.collector.desk.engine import IncidentRules
from vigil.collector.desk.liveness import Budget, tick
from vigil.collector.desk.satisfaction import DISABLED, SatisfactionPolicy
from vigil.collector.desk.surveys import SurveyDesk
from vigil.collector.desk.work import Work
from vigil.collector.identity.audit import AuditEntry, append_audit
from vigil.collector.storage.protocols import Storage, UnitOfWork
from vigil.collector.telemetry.aggregates import Aggregates, MetricsSnapshot

log = logging.getLogger("vigil.collector.desk")
# The audit record a command appends in its own transaction (None: not audited).
Audit = AuditEntry | None


class Desk:
    """Business operations over ``storage`` (which the desk owns and closes).

    ``remediation_wait_s``: seconds to wait for a promised remediation result before an
    incident opens anyway; ``rules`` default to :class:`IncidentRules` with that wait.
    ``record_event_ids``: also store the event ids of sequenced reports in ``seen``, as
    an audit trail (never consulted for them; ``storage.record_event_ids``).
    Loads the aggregates from storage at construction.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        remediation_wait_s: float = 600.0,
        catalog: Catalog = EMPTY_CATALOG,
        rules: IncidentRules | None = None,
        satisfaction: SatisfactionPolicy = DISABLED,
        record_event_ids: bool = False,
    ) -> None:
        if not math.isfinite(remediation_wait_s) or remediation_wait_s < 0:
            raise ValueError(
                f"remediation_wait_s: must be a non-negative number, got {remediation_wait_s!r}"
            )
        self.storage = storage
        self._wait = remediation_wait_s
        # The first tick judges every silent host (see liveness_tick), later ones what changed.
        self._tick_full = True
        self._catalog = catalog
        self._rules = rules or IncidentRules(remediation_wait_s=remediation_wait_s)
        self._satisfaction = satisfaction
        # Satisfaction surveys: queued when incidents resolve, handed over in acks.
        self.surveys = SurveyDesk(storage, satisfaction)
        # An audit trail only: see apply.apply_report.
        self._record_ids = record_event_ids
        with storage.session() as uow:
            self._agg = reads.load_aggregates(uow, catalog)

    # ----------------------------------------------------------------- ingest

    def ingest(self, report: wire.Report, received_at: float) -> IngestResult:
        """Apply ``report`` durably, exactly once, and say what it changed.

        ``received_at``: collector receive time (Unix seconds). Events are applied in
        ``seq`` order. Returns ``duplicate=True`` and changes nothing (except the
        duplicate counter) when this agent's ``batch_id`` was applied before. Raises the
        storage's error if it fails, in which case nothing was applied and the report
        must not be acknowledged. See :meth:`ingest_many` for several reports.
        """
        (result,) = self.ingest_many([(report, received_at)])
        if isinstance(result, Exception):
            raise result
        return result

    def ingest_many(self, items: Items) -> Results:
        """Group commit: apply several ``(report, received_at)`` in ONE transaction.

        Reports are applied in the given order, so a batch repeated within the same call
        is a duplicate of the first. A report that fails (a bad ``received_at``, a
        storage error on its rows) fails alone: its slot in the returned list holds the
        exception and the others are applied. Nothing is durable (and nothing may be
        acknowledged) until this returns; if the COMMIT itself fails it raises and none
        was applied.
        """
        sat = self._satisfaction
        with self.storage.session() as uow:
            try:
                with uow.transaction():
                    results, deltas = apply_group(
                        uow,
                        self._catalog,
                        self._rules,
                        items,
                        isolate=False,
                        satisfaction=sat,
                        record_ids=self._record_ids,
                    )
                    histograms.save(uow, deltas)
            except Exception as exc:
                # One report spoiled the shared transaction, which was rolled back whole.
                # Redo with each report in its own savepoint so only the culprit fails
                # (savepoints cost two statements a report, so only on this rare path).
                log.warning("group of %d reports failed (%r); retrying one by one", len(items), exc)
                with uow.transaction():
                    results, deltas = apply_group(
                        uow,
                        self._catalog,
                        self._rules,
                        items,
                        isolate=True,
                        satisfaction=sat,
                        record_ids=self._record_ids,
                    )
                    histograms.save(uow, deltas)
            self._publish(deltas)
        return results

    def begin_group(self, items: Items) -> Callable[[], Results] | None:
        """Group commit in two steps: apply now, on the calling thread; COMMIT later.

        Why: the statements are CPU work that holds the GIL, while the COMMIT mostly
        waits for the disk (fsync) with the GIL released. Running the statements on the
        event loop's own thread and only the COMMIT on another saves a thread switch per
        statement on a busy collector (measured: ~100 us of CPU per report on one core).

        Returns ``finish``, which COMMITs, publishes the aggregates and returns one
        result per item like :meth:`ingest_many` (call it exactly once, from any thread;
        it raises if the COMMIT fails, and then none was applied). The storage stays
        held until then. Returns None, having done nothing, if the storage is busy
        (another thread holds it) or a report spoiled the shared transaction (rolled
        back): the caller then uses :meth:`ingest_many`, which isolates the culprit.
        """
        storage = self.storage
        uow = storage.acquire(blocking=False)
        if uow is None:
            return None
        try:
            uow.begin()
            try:
                results, deltas = apply_group(
                    uow,
                    self._catalog,
                    self._rules,
                    items,
                    isolate=False,
                    satisfaction=self._satisfaction,
                    record_ids=self._record_ids,
                )
                histograms.save(uow, deltas)
            except BaseException:
                uow.rollback()
                raise
        except Exception as exc:
            storage.release()
            log.info("group of %d reports not applied inline (%r)", len(items), exc)
            return None
        except BaseException:
            storage.release()
            raise

        def finish() -> Results:
            try:
                try:
                    uow.commit()
                except BaseException:
                    uow.rollback()
                    raise
                self._publish(deltas)
            finally:
                storage.release()
            return results

        return finish

    def _publish(self, deltas: list[Aggregates]) -> None:
        # Only after the COMMIT (and before the storage is released, so two groups'
        # deltas merge in commit order): a scrape never sees a rolled-back report.
        for delta in deltas:
            self._agg.merge(delta)

    # ----------------------------------------------------------------- tick

    def tick(self, now: float) -> tuple[int, ...]:
        """Age incidents at ``now`` (collector time, Unix seconds): hosts gone silent,
        promised remediation results overdue by ``remediation_wait_s``, flapping that
        settled; and delete satisfaction surveys past their retention. Returns the ids
        of incidents opened. One transaction for the aging, however many changes: see
        :meth:`tick_step` for bounded ones."""
        return self.tick_step(now, None)[0]

    def tick_step(
        self, now: float, max_changes: int | None, max_s: float | None = None
    ) -> tuple[tuple[int, ...], bool]:
        """One bounded step of :meth:`tick`: at most ``max_changes`` state changes (None:
        all), and no new one after ``max_s`` seconds of the step (None: no time bound; see
        :class:`~collector.desk.liveness.Budget`), in one transaction, then (once done)
        the survey retention. Returns the ids of incidents opened and whether the tick is
        done; if not, call again (with the storage released in between, so reads and
        reports queued meanwhile go first)."""
        delta = Aggregates()
        with self.storage.session() as uow:
            work = Work(uow, self._catalog, self._rules, delta, satisfaction=self._satisfaction)
            with uow.transaction():
                done = tick(work, now, self._wait, Budget(max_changes, max_s), full=self._tick_full)
                histograms.save(uow, (delta,))
            self._agg.merge(delta)
        if done:  # once the aging is done, not at every step of a long tick
            # Every silent host judged once with this desk's catalog: from now on only
            # what changed (see liveness_tick).
            self._tick_full = False
            pruned = self.surveys.prune(now)  # retention: satisfaction.retention
            if pruned:
                log.info("deleted %d satisfaction surveys past their retention", pruned)
        return tuple(work.changes.opened), done

    def prune_seen(self, before: float, *, limit: int | None = None) -> int:
        """Forget batch and event ids received before ``before`` (Unix seconds), oldest
        first, at most ``limit`` of them (None: all). Returns how many were deleted.

        Deduplication only needs ids for as long as an agent may retry a batch; without
        pruning they grow with every event. A batch retried after its id was pruned
        would be applied again, unless it is the host's last applied batch. The app
        calls this every tick with a ``limit``, so each call is one short transaction.
        """
        with self.storage.session() as uow, uow.transaction():
            return uow.seen.prune(before, limit)

    # ----------------------------------------------------------------- commands

    def acknowledge(
        self, kind: str, item_id: int, by: str, note: str, now: float, audit: Audit = None
    ) -> str:
        """Acknowledge an open incident or problem (``kind`` ``incident``/``problem``).
        ``audit``, when given, is appended in the same transaction (as for every command).

        Returns ``"acknowledged"``, ``"already"`` (acknowledged before: unchanged) or
        raises :class:`LookupError` (no such id) / :class:`~collector.desk.commands.StateError`.
        """
        with self.storage.session() as uow, uow.transaction():
            result = commands.acknowledge(uow, kind, item_id, by, note, now)
            _append(uow, audit)
            return result

    def resolve_manually(
        self,
        kind: str,
        item_id: int,
        by: str,
        notes: dict[str, str],
        now: float,
        audit: Audit = None,
    ) -> None:
        """See :func:`collector.desk.commands.resolve_manually`."""
        delta = Aggregates()
        with self.storage.session() as uow:
            with uow.transaction():
                work = Work(uow, self._catalog, self._rules, delta, satisfaction=self._satisfaction)
                commands.resolve_manually(work, kind, item_id, by, notes, now)
                histograms.save(uow, (delta,))
                _append(uow, audit)
            self._agg.merge(delta)

    def create_silence(
        self,
        matcher: str,
        value: str,
        starts_at: float,
        ends_at: float,
        comment: str,
        by: str,
        now: float,
        audit: Audit = None,
    ) -> dict[str, Any]:
        """Store a silence (validated by the caller) and return it."""
        with self.storage.session() as uow:
            with uow.transaction():
                silence_id = uow.silences.create(
                    {
                        "matcher": matcher,
                        "value": value,
                        "starts_at": starts_at,
                        "ends_at": ends_at,
                        "comment": comment,
                        "created_by": by,
                        "created_at": now,
                    }
                )
                if audit is not None:  # the target names the id only known now
                    _append(uow, dataclasses.replace(audit, target=f"silence:{silence_id}"))
            found = uow.silences.get(silence_id)
        assert found is not None
        return found

    def update_silence(
        self,
        silence_id: int,
        *,
        ends_at: float | None,
        comment: str | None,
        audit: Audit = None,
    ) -> dict[str, Any] | None:
        """Change a silence's end or comment; None if there is no such silence."""
        with self.storage.session() as uow:
            with uow.transaction():
                if uow.silences.get(silence_id) is None:
                    return None
                uow.silences.update(silence_id, ends_at=ends_at, comment=comment)
                _append(uow, audit)
            return uow.silences.get(silence_id)

    def delete_silence(self, silence_id: int, audit: Audit = None) -> bool:
        """Remove a silence; False if there was none. Held-back incidents still open
        notify at the notifier's next pass (a real, ongoing failure)."""
        with self.storage.session() as uow, uow.transaction():
            deleted = uow.silences.delete(silence_id)
            if deleted:
                _append(uow, audit)
            return deleted

    def mark_notified(
        self, fired: list[str], resolved: list[str], targets: str, now: float
    ) -> None:
        """Record that ``fired`` refs were notified firing and ``resolved`` refs
        resolved, to ``targets`` (text for the timeline)."""
        with self.storage.session() as uow, uow.transaction():
            commands.mark_notified(uow, fired, resolved, targets, now)

    # ----------------------------------------------------------------- reads

    def alertables(self, now: float) -> list[dict[str, Any]]:
        """Incidents and problems the notifier must consider at ``now``: every open one,
        plus resolved ones whose firing was notified and whose resolution was not (see
        :func:`collector.desk.alertables.alertables`)."""
        with self.storage.session() as uow:
            silences = uow.silences.active(now)
            incident_rows = uow.incidents.alertable()
            problem_rows = uow.problems.alertable()
        return alertables(incident_rows, problem_rows, silences, now)

    def list_incidents(
        self,
        *,
        state: str | None = None,
        host: str | None = None,
        check: str | None = None,
        service: str | None = None,
        priority: str | None = None,
        limit: int = 100,
        offset: int = 0,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """See :func:`collector.desk.reads.list_incidents` (page validated by the API)."""
        with self.storage.session() as uow:
            return reads.list_incidents(
                uow,
                state=state,
                host=host,
                check=check,
                service=service,
                priority=priority,
                limit=limit,
                offset=offset,
                before=before,
            )

    def get_incident(self, incident_id: int) -> dict[str, Any] | None:
        """See :func:`collector.desk.reads.get_incident`."""
        with self.storage.session() as uow:
            return reads.get_incident(uow, incident_id, self._rules.remediation_wait_s)

    def list_problems(
        self,
        *,
        state: str | None = None,
        kind: str | None = None,
        check: str | None = None,
        limit: int = 100,
        offset: int = 0,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """See :func:`collector.desk.reads.list_problems`."""
        with self.storage.session() as uow:
            return reads.list_problems(
                uow,
                state=state,
                kind=kind,
                check=check,
                limit=limit,
                offset=offset,
                before=before,
            )

    def get_problem(self, problem_id: int) -> dict[str, Any] | None:
        """See :func:`collector.desk.reads.get_problem`."""
        with self.storage.session() as uow:
            return reads.get_problem(uow, problem_id)

    def get_silence(self, silence_id: int) -> dict[str, Any] | None:
        """One silence, or None."""
        with self.storage.session() as uow:
            return uow.silences.get(silence_id)

    def list_silences(self, *, active_at: float | None = None) -> list[dict[str, Any]]:
        """Every silence (or only those active at ``active_at``), newest first."""
        with self.storage.session() as uow:
            return uow.silences.list(active_at=active_at)

    def list_hosts(self, *, after: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        """See :func:`collector.desk.reads.list_hosts`."""
        with self.storage.session() as uow:
            return reads.list_hosts(uow, after=after, limit=limit)

    def latest_metrics(self, agent_id: str) -> dict[str, float]:
        """See :func:`collector.desk.reads.latest_metrics`."""
        with self.storage.session() as uow:
            return reads.latest_metrics(uow, agent_id)

    def list_remediation_runs(
        self,
        *,
        host: str | None = None,
        remediation: str | None = None,
        limit: int = 100,
        offset: int = 0,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """See :func:`collector.desk.reads.list_remediation_runs`."""
        with self.storage.session() as uow:
            return reads.list_remediation_runs(
                uow,
                host=host,
                remediation=remediation,
                limit=limit,
                offset=offset,
                before=before,
            )

    def remediation_stats(self) -> list[dict[str, Any]]:
        """See :func:`collector.desk.reads.remediation_stats`."""
        with self.storage.session() as uow:
            return reads.remediation_stats(uow)

    def incident_aggregates(self, now: float) -> dict[str, Any]:
        """See :func:`collector.desk.reads.incident_aggregates`."""
        with self.storage.session() as uow:
            return reads.incident_aggregates(uow, now)

    def satisfaction_summary(
        self,
        department: str | None = None,
        service: str | None = None,
        since: float | None = None,
    ) -> dict[str, Any]:
        """NPS and CSAT overall, per department and per service (see
        :meth:`~collector.desk.surveys.SurveyDesk.summary`); for the console's quality page."""
        return self.surveys.summary(department=department, service=service, since=since)

    # ----------------------------------------------------------------- telemetry

    def metrics_snapshot(self, *, host_series: int = 0, host_maps: bool = True) -> MetricsSnapshot:
        """The in-memory aggregates, copied without I/O (see
        :meth:`~collector.telemetry.aggregates.Aggregates.snapshot`)."""
        return self._agg.snapshot(host_series=host_series, host_maps=host_maps)

    def refresh_metrics_figures(self, now: float) -> None:
        """Count, with :meth:`incident_aggregates`, the /metrics figures that are not kept
        incrementally (open problems by kind; open incidents acknowledged, and past their
        SLA deadline at ``now``, by priority) and keep them in memory for
        :meth:`metrics_snapshot`. The app calls this after opening and after every tick,
        on the storage thread, so a scrape never queries the database and the figures
        are at most one tick old."""
        figures: Mapping[str, dict[str, int]] = self.incident_aggregates(now)
        self._agg.replace_figures(
            problems_open=figures["problems_open"],
            incidents_past_sla=figures["sla_breached"],
            incidents_acknowledged=figures["incidents_acknowledged"],
        )
        self.surveys.refresh(now)

    def reload_aggregates(self) -> None:
        """Rebuild the in-memory aggregates from storage, as at start-up (blocking; on
        the storage thread). For the leader of several collectors on one database, whose
        figures otherwise follow only the reports it applied itself. Holds the storage
        while it reads, so none of this process's groups commits in between (their
        figures are either read or merged afterwards, never both); another process's
        commit may land between two of its reads and shows in the next rebuild. Costs
        what start-up's load costs (O(hosts))."""
        with self.storage.session() as uow:
            fresh = reads.load_aggregates(uow, self._catalog)
            old = self._agg
            with old.lock:  # the figures refresh_metrics_figures keeps
                fresh.replace_figures(
                    problems_open=old.problems_open,
                    incidents_past_sla=old.incidents_past_sla,
                    incidents_acknowledged=old.incidents_acknowledged,
                )
            self._agg = fresh

    def collector_check(
        self,
        check: str,
        state: wire.CheckState,
        message: str,
        now: float,
        also: Callable[[UnitOfWork], None] | None = None,
    ) -> tuple[int, ...]:
        """Feed a check the collector observed itself (``desk/collector_checks.py``)
        through the incident engine, with ``also`` (more writes, e.g. a halt and its
        audit record) in the same transaction; the incident ids it opened."""
        with self.storage.session() as uow, uow.transaction():
            work = Work(uow, self._catalog, self._rules, Aggregates())
            apply_collector_check(work, check, state, message, now)
            if also is not None:
                also(uow)
        self._publish([work.delta])
        return tuple(work.changes.opened)

    def close(self) -> None:
        """Close the storage; safe to call twice."""
        self.storage.close()


def _append(uow: UnitOfWork, audit: Audit) -> None:
    """Append the audit record of a command, if the caller gave one (in its transaction)."""
    if audit is not None:
        append_audit(uow, audit)
