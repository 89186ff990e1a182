"""Remediation runs on SQLite: the shared queries of ``storage/runs_sql.py`` as they are
(SQLite takes ``?`` placeholders)."""

from __future__ import annotations

import sqlite3

from vigil.collector.storage.runs_sql import RunsSql


class SqliteRuns(RunsSql):
    """:class:`~collector.storage.protocols.RemediationRunRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(db)
