"""The embedded SQLite backend: one connection, one lock, one unit of work.

Durability: WAL journal with ``synchronous=FULL``, so a transaction is on disk once
:meth:`SqliteUnitOfWork.commit` returns and the caller may acknowledge what it carried.
``BEGIN IMMEDIATE`` takes the database's write lock up front, so the dedup check and the
writes of a report cannot interleave with another writer on the same file (another
thread's connection or another process); a busy file is waited for up to 5 s.

One connection guarded by :attr:`SqliteStorage.lock`: the app calls the storage from one
worker thread, and the lock keeps that safe from any thread. The lock is held from
:meth:`SqliteStorage.acquire` to :meth:`SqliteStorage.release`, i.e. across a whole
transaction including its COMMIT (an fsync).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from vigil.collector.storage.records import StorageError
from vigil.collector.storage.sqlite.codec import JsonMemo, TextDecoder
from vigil.collector.storage.sqlite.console_repo import ConsoleQueries
from vigil.collector.storage.sqlite.desk_repos import (
    SqliteIncidents,
    SqliteProblems,
    SqliteSilences,
)
from vigil.collector.storage.sqlite.enrollment_repo import SqliteEnrollment
from vigil.collector.storage.sqlite.identity_repos import SqliteAudit, SqliteOperators
from vigil.collector.storage.sqlite.ingest_repos import (
    SqliteCheckResults,
    SqliteCounters,
    SqliteHostMetrics,
    SqliteHosts,
    SqliteKeys,
    SqliteSeen,
)
from vigil.collector.storage.sqlite.policy_repo import SqlitePolicies
from vigil.collector.storage.sqlite.runs_repo import SqliteRuns
from vigil.collector.storage.sqlite.schema import check_version, create_or_migrate
from vigil.collector.storage.sqlite.summary_repos import SqliteHistograms
from vigil.collector.storage.sqlite.survey_repo import SqliteSurveys
from vigil.collector.storage.unit_of_work import SqlUnitOfWork

# The connection's page cache, KiB (see SqliteStorage._setup).
CACHE_KIB = 64 * 1024


class SqliteUnitOfWork(SqlUnitOfWork):
    """:class:`~collector.storage.protocols.UnitOfWork` over one SQLite connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(db)
        memo = JsonMemo()
        self.hosts = SqliteHosts(db, memo)
        self.seen = SqliteSeen(db)
        self.results = SqliteCheckResults(db)
        self.keys = SqliteKeys(db)
        self.runs = SqliteRuns(db)
        self.metrics = SqliteHostMetrics(db, self.name_sets)
        self.incidents = SqliteIncidents(db)
        self.problems = SqliteProblems(db)
        self.silences = SqliteSilences(db)
        self.counters = SqliteCounters(db)
        self.histograms = SqliteHistograms(db)
        self.operators = SqliteOperators(db)
        self.audit = SqliteAudit(db)
        self.enrollment = SqliteEnrollment(db)
        self.console = ConsoleQueries(db)
        self.surveys = SqliteSurveys(db)
        self.policy = SqlitePolicies(db)

    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")


class SqliteStorage:
    """:class:`~collector.storage.protocols.Storage` on one SQLite file.

    Opening creates the parent folder, the schema, or migrates an older one; raises
    :class:`~collector.storage.records.StorageError` when the file cannot be used.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(self.path, f"cannot open database: {exc}") from None
        self._db.text_factory = TextDecoder()
        self._uow = SqliteUnitOfWork(self._db)
        try:
            self._setup()
        except sqlite3.Error as exc:
            self._db.close()
            raise StorageError(self.path, f"cannot open database: {exc}") from None

    def _setup(self) -> None:
        db = self._db
        # Refuse a newer schema before switching the journal mode of someone else's file.
        check_version(db)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is fsynced before it returns, so the ack to the agent is true.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        # Page cache: SQLite's default 2 MiB holds a few thousand hosts' pages; past that
        # every report's host and metrics rows are read back from the OS (a system call
        # per page). 64 MiB (at most, allocated as used) keeps the hot pages of 100,000
        # hosts: the host row update and metrics upsert went from ~57 to ~28 us a report
        # at that size (issue #17, docs/benchmarks.md "Delivery").
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        with self._uow.transaction():
            create_or_migrate(db)

    def acquire(self, *, blocking: bool = True) -> SqliteUnitOfWork | None:
        if not self.lock.acquire(blocking=blocking):
            return None
        return self._uow

    def release(self) -> None:
        self.lock.release()

    @contextlib.contextmanager
    def session(self) -> Iterator[SqliteUnitOfWork]:
        with self.lock:
            yield self._uow

    def leads(self) -> bool:
        return True  # one collector process per file

    def close(self) -> None:
        with self.lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"SqliteStorage({str(self.path)!r})"
