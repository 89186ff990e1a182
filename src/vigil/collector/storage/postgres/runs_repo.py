"""Remediation runs on PostgreSQL: the shared queries of ``storage/runs_sql.py`` with
psycopg's ``%s`` placeholders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from vigil.collector.storage.runs_sql import RunsSql


class PgRuns(RunsSql):
    """:class:`~collector.storage.protocols.RemediationRunRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        super().__init__(db)

    def _run(self, sql: str, args: Sequence[Any] = ()) -> Any:
        # Our statements hold no literal "?" or "%": a plain replace is exact.
        return self._db.execute(sql.replace("?", "%s"), args)
