"""The incident desk's repositories on SQLite: the shared queries of
``storage/desk_sql.py`` with the SQLite hooks (``sqlite/sql_hooks.py``)."""

from __future__ import annotations

from vigil.collector.storage.desk_sql import IncidentsSql, ProblemsSql, SilencesSql
from vigil.collector.storage.sqlite.sql_hooks import SqliteHooks


class SqliteIncidents(SqliteHooks, IncidentsSql):
    """:class:`~collector.storage.protocols.IncidentRepository` on SQLite."""


class SqliteProblems(SqliteHooks, ProblemsSql):
    """:class:`~collector.storage.protocols.ProblemRepository` on SQLite."""


class SqliteSilences(SqliteHooks, SilencesSql):
    """:class:`~collector.storage.protocols.SilenceRepository` on SQLite."""
