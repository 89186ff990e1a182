"""The storage interface: one small repository Protocol per aggregate and a unit of work.

Repositories store and fetch; they decide nothing (the desk, ``collector/desk/``, does).
Every method runs inside the unit of work it belongs to, so "dedup and its effects" are
in one transaction: the desk calls :meth:`UnitOfWork.begin`, applies any number of
reports (group commit: one transaction, one fsync), then :meth:`UnitOfWork.commit`.

Times are Unix seconds. Listing methods take a page (``limit``, ``offset``, and for
keyset paging ``before``: only rows whose id is below it) that the API layer has already
validated, and return rows newest first. ``before`` costs the same on any page, where
``offset`` costs what it skips.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from vigil import wire
from vigil.collector.storage.policy_protocol import PolicyRepository
from vigil.collector.storage.records import (
    HostBefore,
    HostRefresh,
    IncidentAlertRow,
    KeyRow,
    LivenessRow,
    ProblemAlertRow,
    ResolvedIncident,
    SilenceRow,
)

# The columns of a survey row, as the repositories return them.
SURVEY_COLUMNS = (
    "id", "incident_id", "host", "hostname", "department", "service", "check_id", "title",
    "created_at", "expires_at", "state", "offered_at", "offers", "shown_at",
    "delivery_note", "answered_at", "score", "comment",
)  # fmt: skip


class HostRepository(Protocol):
    """``hosts``: one row per agent that ever reported."""

    def before(self, agent_id: str) -> HostBefore | None:
        """The host's last applied batch id, clock offset, last_seen, epoch and mark, and
        whether its heartbeat key has an incident open; or None. Locks the host (also one
        not stored yet) until the transaction ends, so the dedup check and the
        :meth:`upsert` that stores the new mark cannot interleave with another writer's
        for the same agent (another collector process)."""

    def upsert(
        self,
        report: wire.Report,
        received_at: float,
        clock_offset_s: float,
        heartbeat_ttl_s: float | None,
    ) -> None:
        """Insert or refresh the host of ``report`` (``last_batch_id`` becomes its batch
        id; a sequenced report's ``epoch`` and ``seq_last`` become the host's epoch and
        mark, a report without them keeps the stored ones); ``heartbeat_ttl_s`` None keeps
        the stored TTL."""

    def before_unchanged(self, reports: Sequence[wire.Report]) -> dict[str, HostBefore]:
        """:meth:`before` for many hosts in one statement, by agent_id: only the stored
        hosts whose hostname, labels and agent version are their report's (the steady
        state, which :meth:`refresh_many` then updates). Locks those host rows until the
        transaction ends, as :meth:`before` does. One report per agent."""

    def refresh_many(self, rows: Sequence[HostRefresh]) -> None:
        """Set the liveness and dedup columns of known hosts (one statement run for
        all), leaving their name, labels and version: each row ends as :meth:`upsert`
        of its report would leave it, for a host :meth:`before_unchanged` returned."""

    def info(self, agent_id: str) -> tuple[str, dict[str, str]] | None:
        """``(hostname, labels)`` or None for a host never seen."""

    def count(self) -> int:
        """How many hosts."""

    def versions(self) -> dict[str, str]:
        """``agent_id -> agent_version`` of every host (one pass over the table, reading
        nothing else: the policy runtime's fleet resync)."""

    def fleet(self) -> list[dict[str, Any]]:
        """Every host's ``agent_id``, ``labels``, ``last_seen`` and ``agent_version`` (the
        rollout evidence read). Hosts with the same labels share one dict: read-only."""

    def all_labels(self) -> Iterator[dict[str, str]]:
        """Every host's labels."""

    def liveness(
        self, heartbeat_check: str, deadline_before: float, *, noted: bool = True
    ) -> list[LivenessRow]:
        """Each host, once, with the state of its ``heartbeat_check`` key, whose
        deadline (``last_seen + heartbeat_ttl_s``; none without a TTL) is before
        ``deadline_before``, or whose key's state is not ``ok`` or holds an incident.

        A superset of the hosts whose liveness verdict can change something, read
        through indexes: the cost follows the hosts due, not the fleet's size.
        ``noted=False`` leaves out the silent hosts whose key already records their
        silence (``critical`` with an incident open, or ``unknown``: asleep),
        which a tick judging with the same catalog would change nothing for; a night of
        sleeping laptops then costs the tick nothing to ship and judge."""

    def list(self, *, after: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        """Hosts by agent_id (byte order): ``agent_id, hostname, labels, agent_version,
        first_seen, last_seen, clock_offset_s, heartbeat_ttl_s``; only those after the
        agent_id ``after`` (keyset paging), at most ``limit`` (-1: no limit)."""

    def load(self) -> list[tuple[str, str, dict[str, str], float, float | None, float]]:
        """``(agent_id, hostname, labels, last_seen, ttl, clock_offset_s)`` in first-seen
        order (for the aggregates at start-up)."""


class SeenRepository(Protocol):
    """``seen``: the batch and event ids of agents that send no sequence numbers (older
    versions), and of an agent's first sequenced report (the upgrade), for idempotency;
    pruned after ``storage.dedup_retention``."""

    def record(
        self, host: str, batch_id: str, event_ids: Sequence[str], received_at: float
    ) -> tuple[bool, set[str]]:
        """Record the ids not stored before; ``(batch id was new, event ids that were)``."""

    def forget_events(self, host: str, event_ids: set[str]) -> None:
        """Remove event ids just recorded (a reused batch id must record nothing)."""

    def prune(self, before: float, limit: int | None) -> int:
        """Delete at most ``limit`` (None: all) ids received before ``before``, oldest
        first; how many were deleted."""


class CheckResultRepository(Protocol):
    """``check_results``: the history of check state changes."""

    def add(self, host: str, event: wire.CheckEvent, received_at: float) -> None:
        """Append one check result."""

    def latest_flapping(self, host: str, check: str) -> bool:
        """Whether the key's latest result says the agent saw it flapping."""

    def known_states(self, host: str, check: str, limit: int) -> list[tuple[float, str]]:
        """``(receive time, state)`` of the key's latest ``limit`` results whose state is
        not ``unknown``, oldest first (flap detection counts changes between these)."""


class KeyRepository(Protocol):
    """``check_state``: the incident engine's state per (host, check) key."""

    def load(self, host: str, check: str) -> KeyRow | None:
        """The key's state, or None if it was never saved."""

    def save(self, host: str, check: str, key: KeyRow, updated_at: float) -> None:
        """Insert or replace the key's state."""

    def pending(
        self, awaiting_before: float, deadline_before: float
    ) -> list[tuple[str, str, str, bool]]:
        """``(host, check, hostname, silent)`` of every flapping key and every key
        awaiting a remediation since before ``awaiting_before`` (or with no recorded
        start); ``silent``: the host's deadline (``last_seen + heartbeat_ttl_s``) is
        before ``deadline_before`` (False without a TTL or a host row)."""

    def detach_incident(self, incident_id: int) -> None:
        """Forget ``incident_id`` on any key pointing at it."""

    def states(self, hosts: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
        """``(host, check, state)`` of every key (of ``hosts`` only, when given), by host
        then check."""

    def critical_by_check(self) -> dict[str, int]:
        """Keys whose state is critical, counted by check (start-up aggregates)."""

    def unknown_by_check(self) -> dict[str, int]:
        """Keys whose state is unknown, counted by check (start-up aggregates)."""


class RemediationRunRepository(Protocol):
    """``remediation_runs``: corrective-action records."""

    def add(self, host: str, hostname: str, event: wire.RemediationEvent, at: float) -> None:
        """Append one run received at ``at``."""

    def list(
        self,
        *,
        host: str | None,
        remediation: str | None,
        limit: int,
        offset: int,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """Runs newest first (every RemediationEvent field plus host, hostname,
        received_at)."""

    def for_key(
        self, host: str, check: str, since: float, until: float, limit: int
    ) -> list[dict[str, Any]]:
        """The key's runs received in ``[since, until]``, oldest first."""

    def outcome_counts(self) -> list[tuple[str, str, int]]:
        """``(remediation, outcome, runs)``, from counters kept as runs are added (the
        cost follows the distinct names, not the runs)."""

    def hosts_by_remediation(self) -> dict[str, int]:
        """Distinct hosts that ran each remediation, kept as runs are added."""

    def durations(self) -> Iterator[tuple[str, float]]:
        """``(remediation, duration_s)`` of every run (start-up aggregates)."""


class HostMetricsRepository(Protocol):
    """``host_metrics``: each host's newest metrics summary."""

    def put(self, host: str, at: float, received_at: float, values: Mapping[str, float]) -> None:
        """Keep the summary unless a newer one (by the agent's ``at``) is stored."""

    def put_many(self, rows: Sequence[tuple[str, float, float, Mapping[str, float]]]) -> None:
        """:meth:`put` of ``(host, at, received_at, values)`` rows in order (one
        statement run for all)."""

    def latest(self, host: str) -> dict[str, float] | None:
        """The stored summary, or None."""

    def footprints(self) -> Iterator[tuple[str, float, dict[str, float]]]:
        """``(host, at, agent footprint series)`` of summaries that have any."""


class DeskItemRepository(Protocol):
    """What incidents and problems share: state, acknowledgement, CAPA, notification."""

    def state_of(self, item_id: int) -> tuple[str, float | None] | None:
        """``(state, acknowledged_at)`` or None if there is no such item."""

    def acknowledge(self, item_id: int, at: float, by: str) -> None:
        """Set acknowledged_at/by."""

    def set_capa(self, item_id: int, notes: Mapping[str, str]) -> None:
        """Set root_cause / corrective_action / preventive_action from ``notes``."""

    def add_timeline(self, item_id: int, at: float, text: str) -> None:
        """Append a timeline entry."""

    def timeline(self, item_id: int) -> list[dict[str, Any]]:
        """``[{"at", "text"}]`` oldest first."""

    def mark_notified(self, item_id: int, at: float, *, resolved: bool) -> None:
        """Record the firing (or, with ``resolved``, the resolved) notification time."""


class IncidentRepository(DeskItemRepository, Protocol):
    """``incidents`` and ``incident_timeline``."""

    def insert(self, row: Mapping[str, Any]) -> int:
        """Insert an incident from column values (see the schema); its id."""

    def resolve(self, incident_id: int, at: float, resolution: str) -> ResolvedIncident | None:
        """Resolve it if open; None if it was not open."""

    def set_flapping(self, incident_id: int, flapping: bool) -> None:
        """Set the incident's flapping flag."""

    def opened_since(self, host: str, check: str, since: float) -> list[tuple[int, float]]:
        """``(id, opened_at)`` of the key's incidents opened at or after ``since``."""

    def open_since(self, check: str, since: float) -> list[tuple[int, str]]:
        """``(id, host)`` of the check's open incidents opened at or after ``since``."""

    def prevented_since(self, check: str, since: float) -> list[tuple[int, str]]:
        """``(id, host)`` of the check's prevented incidents opened at or after ``since``."""

    def list(
        self,
        *,
        filters: Mapping[str, str | None],
        state: str | None,
        limit: int,
        offset: int,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """Incidents newest first; ``filters`` by host, check, service, priority;
        ``state`` one of open, acknowledged, flapping, resolved, prevented."""

    def get(self, incident_id: int) -> dict[str, Any] | None:
        """One incident as listed, or None."""

    def alertable(self) -> list[IncidentAlertRow]:
        """Open incidents, and resolved ones notified firing but not resolved."""

    def open_by_host(self, hosts: Sequence[str] | None = None) -> dict[str, int]:
        """Open incidents per host (of ``hosts`` only, when given: one page's)."""

    def open_by_priority_check(self) -> list[tuple[str, str, int]]:
        """``(priority, check, open incidents)``."""

    def by_state(self) -> dict[str, int]:
        """Incidents per stored state."""

    def restore_times(self) -> Iterator[tuple[str, float]]:
        """``(priority, resolved_at - opened_at)`` of resolved incidents."""

    def prevented_by_remediation(self) -> dict[str, int]:
        """Prevented incidents per remediation."""

    def past_sla(self, now: float) -> dict[str, int]:
        """Open incidents past their SLA deadline, by priority."""

    def acknowledged_open(self) -> dict[str, int]:
        """Open acknowledged incidents, by priority."""


class ProblemRepository(DeskItemRepository, Protocol):
    """``problems``, ``problem_incidents`` and ``problem_timeline``."""

    def find_open(self, kind: str, check: str, host: str | None) -> int | None:
        """The open problem of ``kind`` for the check (and host), or None."""

    def insert(self, row: Mapping[str, Any]) -> int:
        """Insert an open problem from column values; its id."""

    def link(self, problem_id: int, incident_id: int) -> bool:
        """Link an incident; False if it was linked already."""

    def open_fleet_of(self, incident_id: int) -> list[int]:
        """Open fleet problems the incident is linked to."""

    def has_open_incident(self, problem_id: int) -> bool:
        """Whether any linked incident is still open."""

    def resolve(self, problem_id: int, at: float, resolution: str) -> None:
        """Resolve the problem."""

    def incident_ids(self, problem_id: int) -> list[int]:
        """Linked incident ids, ascending."""

    def incident_ids_of(self, problem_ids: Sequence[int]) -> dict[int, list[int]]:
        """:meth:`incident_ids` of each problem (one page's: a query, not one each)."""

    def hosts_linked_of(self, problem_ids: Sequence[int]) -> dict[int, int]:
        """:meth:`hosts_linked` of each problem (one page's: a query, not one each)."""

    def of_incident(self, incident_id: int) -> list[int]:
        """Problem ids the incident is linked to, ascending."""

    def hosts_linked(self, problem_id: int) -> int:
        """How many distinct hosts the linked incidents are on."""

    def list(
        self,
        *,
        filters: Mapping[str, str | None],
        state: str | None,
        limit: int,
        offset: int,
        before: int | None = None,
    ) -> list[dict[str, Any]]:
        """Problems newest first; ``filters`` by kind, check; ``state`` open,
        acknowledged or resolved."""

    def get(self, problem_id: int) -> dict[str, Any] | None:
        """One problem as listed, or None."""

    def alertable(self) -> list[ProblemAlertRow]:
        """Open problems, and resolved ones notified firing but not resolved."""

    def open_by_kind(self) -> dict[str, int]:
        """Open problems per kind."""


class SilenceRepository(Protocol):
    """``silences``."""

    def create(self, row: Mapping[str, Any]) -> int:
        """Store a silence; its id."""

    def update(self, silence_id: int, *, ends_at: float | None, comment: str | None) -> None:
        """Change what is not None."""

    def delete(self, silence_id: int) -> bool:
        """Remove; False if there was none."""

    def get(self, silence_id: int) -> dict[str, Any] | None:
        """One silence, or None."""

    def list(self, *, active_at: float | None) -> list[dict[str, Any]]:
        """Every silence (or those active at ``active_at``), newest first."""

    def active(self, at: float) -> list[SilenceRow]:
        """Silences active at ``at``."""


class CounterRepository(Protocol):
    """``counters``: named totals."""

    def add(self, name: str, n: int) -> None:
        """Add ``n`` to the counter."""

    def load(self) -> dict[str, int]:
        """Every counter."""


class ConsoleRepository(Protocol):
    """The console's paged reads (``sqlite/console_repo.py``) and a problem's CAPA
    record fields beside root cause / corrective / preventive action."""

    def queue(
        self, *, filters: Mapping[str, str | None], state: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """Open incidents by priority, then SLA deadline (none first), then id; ``filters``
        ``service``, ``host`` (hostname), ``department`` (host label); ``state`` None/
        ``open``, ``unacknowledged``, ``acknowledged`` or ``flapping``."""

    def queue_count(self) -> int:
        """Open incidents in all."""

    def search_hosts(
        self, *, filters: Mapping[str, Any], limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """Hosts by hostname, filtered by ``hostname`` (prefix), ``department``, ``os``
        (labels), ``agent_version``, ``seen_after``/``seen_before`` (Unix s), ``health``
        (``failing``: an open incident; ``healthy``: none)."""

    def host(self, agent_id: str) -> dict[str, Any] | None:
        """One host with ``open_incidents``, or None."""

    def host_incidents(self, agent_id: str, limit: int) -> list[dict[str, Any]]:
        """The host's newest incidents (any state)."""

    def quality_rows(self, since_day: int) -> list[tuple[Any, ...]]:
        """``(service, department, bucket, prevented, raised, with_sla, within_sla,
        resolved)`` of the incident rollup summed over the days from ``since_day`` on."""

    def rollup_add(self, delta: Any) -> None:
        """Add a ``desk.rollup.RollupDelta`` to its row of the incident rollup."""

    def rollup_info(
        self, incident_id: int
    ) -> tuple[float, str | None, str | None, float | None] | None:
        """``(opened_at, service, department, sla_due)`` of an incident, or None."""

    def remediation_versions(self, since: float) -> list[tuple[str, str, str, int]]:
        """Runs per (remediation, script sha256, outcome) received since ``since``."""

    def problem_record(self, problem_id: int) -> dict[str, Any] | None:
        """``known_error, verification, capa_owner, capa_due`` of a problem, or None."""

    def set_problem_record(self, problem_id: int, fields: Mapping[str, Any]) -> None:
        """Set those of ``fields`` that are record fields."""

    def open_problems(self, limit: int) -> list[tuple[int, str, str]]:
        """``(id, kind, summary)`` of open problems, newest first."""


class HistogramRepository(Protocol):
    """``histograms``: bucket counts kept as values are observed (time to restore,
    remediation durations), so start-up reads a few rows instead of the history. A
    ``family`` names a histogram and its bucket bounds; ``label`` one series of it."""

    def add(self, family: str, label: str, counts: Sequence[int], total: float) -> None:
        """Add ``counts`` (by bucket index) and ``total`` (the values' sum) to the series."""

    def load(self, family: str) -> dict[str, tuple[dict[int, int], float]] | None:
        r"""Per label: counts by bucket index and the sum; None if the family was never
        :meth:`replace`\ d (filled from history), whatever :meth:`add` wrote."""

    def replace(self, family: str, hists: Mapping[str, tuple[Sequence[int], float]]) -> None:
        """Make the family exactly ``hists`` (label -> counts by bucket index, sum) and
        mark it complete."""


class SurveyRepository(Protocol):
    """``surveys``: satisfaction surveys queued for the person at a host, their delivery
    and their one answer; and ``survey_key``, the links' HMAC key when the config gives
    none. States: ``pending`` (queued), ``offered`` (handed to the agent in an ack),
    ``shown`` / ``unavailable`` (the agent showed it / had no way to), ``answered``.
    Rows are dicts of :data:`SURVEY_COLUMNS`; the ``console_user`` column (whom a survey
    was for, an opaque id) is only ever matched by :meth:`last_asked_user`, never read
    back: nothing shows it."""

    def add(self, row: Mapping[str, Any]) -> int:
        """Insert a ``pending`` survey (every column but the delivery and answer ones;
        ``console_user`` may be left out: unknown); returns its id."""

    def last_asked(self, host: str) -> float | None:
        """When ``host`` was last sent a survey (its newest ``created_at``), or None:
        whoever it was for."""

    def last_asked_user(self, console_user: str, host: str) -> float | None:
        """When the person ``console_user`` (the opaque id their agent reported) was
        last sent a survey on any host, or a survey of ``host`` was queued for an
        unknown user (who may have been them: an older agent, an operator's resolve);
        the newest ``created_at`` of those, or None."""

    def undelivered(self, host: str, now: float, max_offers: int) -> list[dict[str, Any]]:
        """``host``'s surveys still ``pending`` or ``offered`` fewer than ``max_offers``
        times, and not expired at ``now``; oldest first."""

    def hosts_undelivered(self, now: float, max_offers: int) -> set[str]:
        """Hosts with at least one survey :meth:`undelivered` at ``now``."""

    def mark_offered(self, survey_ids: Sequence[int], at: float) -> None:
        """Count one more offer of each survey; the first sets ``offered_at``; a
        ``pending`` one becomes ``offered``."""

    def mark_delivery(self, survey_id: int, host: str, state: str, note: str, at: float) -> bool:
        """Record that the agent of ``host`` showed (``state='shown'``) or could not show
        (``'unavailable'``) the survey; only for that host's survey still ``pending`` or
        ``offered``. Whether a row changed."""

    def get(self, survey_id: int) -> dict[str, Any] | None:
        """One survey, or None."""

    def answer(self, survey_id: int, score: int, comment: str, at: float) -> bool:
        """Record the answer if the survey has none yet (atomic: two concurrent answers,
        one wins). Whether it was recorded."""

    def score_counts(self, since: float | None) -> list[tuple[str, str, int, int]]:
        """``(department, service, score, answers)`` of answers at or after ``since``."""

    def of_incident(self, incident_id: int) -> list[dict[str, Any]]:
        """The incident's surveys, oldest first."""

    def state_counts(self) -> dict[str, int]:
        """Surveys per state."""

    def prune(self, before: float, limit: int) -> int:
        """Delete at most ``limit`` surveys queued before ``before``, oldest first (their
        answers and comments with them); how many were deleted."""

    def link_key(self, candidate: str) -> str:
        """The stored link key; stores ``candidate`` first if there is none (the first
        collector to ask wins, the others read its key)."""


class UnitOfWork(Protocol):
    """One session on the storage: the repositories plus transaction control.

    Obtained from :meth:`Storage.acquire` (exclusive until :meth:`Storage.release`).
    ``begin`` takes the database's write lock at once, so the dedup check and the writes
    of a report cannot interleave with another writer (another thread or process).
    """

    hosts: HostRepository
    seen: SeenRepository
    results: CheckResultRepository
    keys: KeyRepository
    runs: RemediationRunRepository
    metrics: HostMetricsRepository
    incidents: IncidentRepository
    problems: ProblemRepository
    silences: SilenceRepository
    counters: CounterRepository
    histograms: HistogramRepository
    operators: OperatorRepository
    audit: AuditRepository
    enrollment: EnrollmentRepository
    console: ConsoleRepository
    surveys: SurveyRepository
    policy: PolicyRepository

    def begin(self) -> None:
        """Start a write transaction."""

    def commit(self) -> None:
        """Make the transaction durable (fsync) before returning."""

    def rollback(self) -> None:
        """Undo the transaction."""

    def transaction(self) -> AbstractContextManager[None]:
        """``begin``, then ``commit`` on success or ``rollback`` on any exception."""

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested scope inside the transaction, undone alone if its block raises."""


class Storage(Protocol):
    """A storage backend: hands out its unit of work; see :func:`create_storage`."""

    def acquire(self, *, blocking: bool = True) -> UnitOfWork | None:
        """Exclusive use of a session; None if ``blocking`` is False and it is busy."""

    def release(self) -> None:
        """Give the session back (after commit or rollback)."""

    def session(self) -> AbstractContextManager[UnitOfWork]:
        """``acquire`` then ``release``: for reads and single transactions."""

    def leads(self) -> bool:
        """Whether this process should run the once-per-fleet duties now (the tick that
        ages incidents, notifications). Called before each; never blocks for long.
        One process per database holds it; when it dies another takes over at its next
        call. A single-process backend always leads."""

    def close(self) -> None:
        """Close; safe to call twice."""


class OperatorRepository(Protocol):
    """``operators``: named operator accounts. Only a hash of each token is stored."""

    def add(self, name: str, role: str, token_hash: str, at: float) -> bool:
        """Insert an operator; False (and nothing written) if ``name`` exists."""

    def set_token(self, name: str, token_hash: str, at: float) -> bool:
        """Replace an operator's token hash (rotation); False if there is no such one."""

    def remove(self, name: str) -> bool:
        """Delete an operator; False if there was none."""

    def list(self) -> list[dict[str, Any]]:
        """Every operator by name: ``name, role, created_at, rotated_at`` (no hash)."""

    def credentials(self) -> list[tuple[str, str, str]]:
        """Every operator as ``(name, role, token_hash)``: what authentication needs."""


class AuditRepository(Protocol):
    """``audit``: the append-only log of writes. No method changes or deletes a record."""

    def append(self, row: Mapping[str, Any]) -> int:
        """Store one record (``at, actor, action, target, peer, detail``); its id."""

    def list(
        self, *, limit: int, offset: int, action: str | None, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Records newest first, optionally only one ``action``."""

    def counts(self) -> dict[str, int]:
        """How many records per action."""


class EnrollmentRepository(Protocol):
    """``enroll_secrets`` and ``agent_credentials``: enrollment secrets and the per-agent
    credentials issued for them. Only SHA-256 hashes of secrets and credentials are
    stored; rows are plain dicts. Every change bumps :meth:`generation`, which other
    collector processes poll to reload their credential cache."""

    def add_secret(self, row: Mapping[str, Any]) -> None:
        """Insert a secret: ``id, secret_hash, labels (dict), comment, created_at,
        expires_at, max_uses``; ``uses`` starts at 0."""

    def secret_by_hash(self, secret_hash: str) -> dict[str, Any] | None:
        """The secret row (``id, labels, expires_at, max_uses, uses, revoked_at``) or None."""

    def use_secret(self, secret_id: str) -> None:
        """Count one use of the secret."""

    def revoke_secret(self, secret_id: str, at: float) -> int | None:
        """Mark the secret revoked and delete every credential issued through it; the
        number of credentials deleted, or None when no such secret exists."""

    def list_secrets(self) -> list[dict[str, Any]]:
        """Every secret, newest first, without its hash."""

    def put_credential(self, row: Mapping[str, Any]) -> None:
        """Insert a credential: ``token_hash, agent_id, secret_id, labels (dict), hostname,
        issued_at, expires_at, pending (bool)``."""

    def credentials_of(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's credential rows (both the active one and a pending rotation)."""

    def delete_credentials(self, agent_id: str, *, keep: str | None = None) -> int:
        """Delete the agent's credentials except the one hashed ``keep``; how many."""

    def activate(self, token_hash: str) -> None:
        """Mark a pending credential active."""

    def all_credentials(self) -> list[dict[str, Any]]:
        """Every credential row (for the in-memory cache and listings)."""

    def generation(self) -> int:
        """A number that grows on every change of secrets or credentials."""
