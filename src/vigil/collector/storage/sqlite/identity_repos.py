"""Operators and the audit log on SQLite: the shared queries of
``storage/identity_sql.py`` with the SQLite hooks (``sqlite/sql_hooks.py``)."""

from __future__ import annotations

from vigil.collector.storage.identity_sql import AuditSql, OperatorsSql
from vigil.collector.storage.sqlite.sql_hooks import SqliteHooks


class SqliteOperators(SqliteHooks, OperatorsSql):
    """:class:`~collector.storage.protocols.OperatorRepository` on SQLite."""


class SqliteAudit(SqliteHooks, AuditSql):
    """:class:`~collector.storage.protocols.AuditRepository` on SQLite."""
