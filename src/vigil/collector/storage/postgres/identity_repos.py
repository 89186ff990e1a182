"""Operators and the audit log on PostgreSQL: the shared queries of
``storage/identity_sql.py`` with the PostgreSQL hooks (``postgres/sql_hooks.py``)."""

from __future__ import annotations

from vigil.collector.storage.identity_sql import AuditSql, OperatorsSql
from vigil.collector.storage.postgres.sql_hooks import PgHooks


class PgOperators(PgHooks, OperatorsSql):
    """:class:`~collector.storage.protocols.OperatorRepository` on PostgreSQL."""


class PgAudit(PgHooks, AuditSql):
    """:class:`~collector.storage.protocols.AuditRepository` on PostgreSQL."""
