"""The incident desk's repositories on PostgreSQL: the shared queries of
``storage/desk_sql.py`` with the PostgreSQL hooks (``postgres/sql_hooks.py``)."""

from __future__ import annotations

from vigil.collector.storage.desk_sql import IncidentsSql, ProblemsSql, SilencesSql
from vigil.collector.storage.postgres.sql_hooks import PgHooks


class PgIncidents(PgHooks, IncidentsSql):
    """:class:`~collector.storage.protocols.IncidentRepository` on PostgreSQL."""


class PgProblems(PgHooks, ProblemsSql):
    """:class:`~collector.storage.protocols.ProblemRepository` on PostgreSQL."""


class PgSilences(PgHooks, SilencesSql):
    """:class:`~collector.storage.protocols.SilenceRepository` on PostgreSQL."""
