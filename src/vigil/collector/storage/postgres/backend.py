"""The PostgreSQL backend: one connection per storage, one lock, one unit of work.

Shaped like the SQLite backend (``sqlite/backend.py``) so the desk cannot tell them
apart: the app calls the storage from its worker thread, :attr:`PgStorage.lock` keeps
the one connection to one user at a time, from :meth:`PgStorage.acquire` to
:meth:`PgStorage.release`.

Transactions: the connection runs in autocommit mode, so reads outside a unit of work
are single statements that hold no snapshot open; :meth:`PgUnitOfWork.begin` opens a
transaction and at once takes the schema's write lock (a transaction-scoped advisory
lock), exactly like SQLite's ``BEGIN IMMEDIATE``: the dedup check and the writes of a
group of reports cannot interleave with another writer, in this process or another
collector on the same database, and correlation across hosts (fleet problems) sees
every earlier group. Reads do not take it.

Durability: ``synchronous_commit`` is forced ``on`` for the session, so COMMIT returns
only once the WAL is flushed (on the primary, or as the server's setting says for
replicas when it is already stricter), and the ack to the agent is true.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict

from vigil.collector.storage.postgres.console_repo import PgConsole
from vigil.collector.storage.postgres.desk_repos import PgIncidents, PgProblems, PgSilences
from vigil.collector.storage.postgres.enrollment_repo import PgEnrollment
from vigil.collector.storage.postgres.identity_repos import PgAudit, PgOperators
from vigil.collector.storage.postgres.ingest_repos import (
    PgCheckResults,
    PgCounters,
    PgHostMetrics,
    PgHosts,
    PgKeys,
    PgSeen,
)
from vigil.collector.storage.postgres.partitions import maintain
from vigil.collector.storage.postgres.policy_repo import PgPolicies
from vigil.collector.storage.postgres.runs_repo import PgRuns
from vigil.collector.storage.postgres.schema import (
    LEADER_LOCK,
    WRITE_LOCK,
    SchemaTooNew,
    migrate,
)
from vigil.collector.storage.postgres.summary_repos import PgHistograms
from vigil.collector.storage.postgres.survey_repo import PgSurveys
from vigil.collector.storage.records import StorageError
from vigil.collector.storage.unit_of_work import SqlUnitOfWork
from vigil.collector.storage.url import redact

CONNECT_TIMEOUT_S = 10  # libpq connect_timeout: a dead server fails start-up, not hangs it
# Every wait bounded: a vanished server is noticed by TCP keepalives within ~1 min; a
# writer waits at most LOCK_TIMEOUT for the write lock (then its group fails, unacked,
# and is retried by its agents); a collector that dies or hangs inside a transaction
# loses it (and the write lock) after IDLE_IN_TRANSACTION. Settings in the URL win.
_CONNECT_DEFAULTS = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
LOCK_TIMEOUT = "30s"
IDLE_IN_TRANSACTION = "60s"
# Settings a stricter server configuration may keep (a replica acknowledging too).
_DURABLE_COMMIT = ("on", "remote_write", "remote_apply")


class PgUnitOfWork(SqlUnitOfWork):
    """:class:`~collector.storage.protocols.UnitOfWork` over one PostgreSQL connection."""

    def __init__(self, db: psycopg.Connection) -> None:
        super().__init__(db)
        self.hosts = PgHosts(db)
        self.seen = PgSeen(db)
        self.results = PgCheckResults(db)
        self.keys = PgKeys(db)
        self.runs = PgRuns(db)
        self.metrics = PgHostMetrics(db, self.name_sets)
        self.incidents = PgIncidents(db)
        self.problems = PgProblems(db)
        self.silences = PgSilences(db)
        self.counters = PgCounters(db)
        self.histograms = PgHistograms(db)
        self.operators = PgOperators(db)
        self.audit = PgAudit(db)
        self.enrollment = PgEnrollment(db)
        self.console = PgConsole(db)
        self.surveys = PgSurveys(db)
        self.policy = PgPolicies(db)

    def begin(self) -> None:
        self._db.execute("BEGIN")
        try:
            # One writer per schema at a time, waited for (see the module docstring).
            self._db.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(COALESCE(current_schema(), '')))",
                (WRITE_LOCK,),
            )
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        # After a lost connection there is nothing to roll back; the server already has.
        self.name_sets.forget()
        if not self._db.closed:
            self._db.execute("ROLLBACK")


class PgStorage:
    """:class:`~collector.storage.protocols.Storage` on a PostgreSQL database.

    ``url`` is a libpq URI (``postgresql://user@host:5432/db``; a schema other than
    ``public`` via ``?options=-csearch_path%3Dname``). Opening connects, then creates
    the schema or applies pending migrations; raises
    :class:`~collector.storage.records.StorageError` (naming the URL without its
    password) when the server cannot be reached or the database cannot be used.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self._closed = False
        self._db = self._connect()
        try:
            migrate(self._db)
            # This month's history partitions and the next ones (more by the daily
            # maintenance; inserts never fail without them: see partitions.py).
            maintain(self._db, time.time(), keep_s=None)
        except (psycopg.Error, SchemaTooNew) as exc:
            self._db.close()
            raise StorageError(redact(url), f"cannot open database: {_first_line(exc)}") from None
        self._uow = PgUnitOfWork(self._db)
        # Leadership: a session advisory lock held on a connection of its own (so it
        # outlives transactions and reconnects of the main one). The server frees it
        # when that session ends: the process died, or keepalives found it gone.
        self._leader_lock = threading.Lock()
        self._leader: psycopg.Connection | None = None

    def _connect(self) -> psycopg.Connection:
        """A new session, durable commits on; raises :class:`StorageError`."""
        try:
            given = conninfo_to_dict(self.url)
            # pg_stat_activity then says which collector process a session belongs to.
            defaults = {**_CONNECT_DEFAULTS, "application_name": f"vigil-collector-{os.getpid()}"}
            extra = {k: v for k, v in defaults.items() if k not in given}
            db = psycopg.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, **extra
            )
        except psycopg.Error as exc:
            raise StorageError(redact(self.url), f"cannot connect: {_first_line(exc)}") from None
        try:
            row = db.execute("SHOW synchronous_commit").fetchone()
            if row is None or row[0] not in _DURABLE_COMMIT:
                db.execute("SET synchronous_commit = on")
            db.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
            db.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION}'")
        except psycopg.Error as exc:
            db.close()
            raise StorageError(redact(self.url), f"cannot connect: {_first_line(exc)}") from None
        return db

    def _usable(self) -> PgUnitOfWork:
        # A connection lost (server restart, fail-over, idle timeout) fails the statement
        # that finds out, and psycopg marks it broken; the next use reconnects, so the
        # collector recovers without a restart (the failed report was not acknowledged,
        # and its agent retries it).
        if self._db.broken and not self._closed:
            self._db = self._connect()
            self._uow = PgUnitOfWork(self._db)
        return self._uow

    @property
    def connection(self) -> psycopg.Connection:
        """The connection (for the importer and tests; hold :attr:`lock` to use it)."""
        return self._db

    def acquire(self, *, blocking: bool = True) -> PgUnitOfWork | None:
        if not self.lock.acquire(blocking=blocking):
            return None
        try:
            return self._usable()
        except BaseException:
            self.lock.release()
            raise

    def release(self) -> None:
        self.lock.release()

    @contextlib.contextmanager
    def session(self) -> Iterator[PgUnitOfWork]:
        with self.lock:
            yield self._usable()

    def leads(self) -> bool:
        with self._leader_lock:
            if self._closed:
                return False
            try:
                if self._leader is not None:
                    # Still ours while the session lives; a broken one lost the lock.
                    self._leader.execute("SELECT 1")
                    return True
                candidate = self._connect()
                row = candidate.execute(
                    "SELECT pg_try_advisory_lock(%s, hashtext(COALESCE(current_schema(), '')))",
                    (LEADER_LOCK,),
                ).fetchone()
                if row == (True,):
                    self._leader = candidate
                    return True
                candidate.close()
                return False
            except (psycopg.Error, StorageError):
                if self._leader is not None:
                    self._leader.close()
                    self._leader = None
                return False

    def close(self) -> None:
        with self._leader_lock:
            self._closed = True
            if self._leader is not None:
                self._leader.close()  # frees the leader lock at once for the others
                self._leader = None
        with self.lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"PgStorage({redact(self.url)!r})"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
