"""Enrollment secrets and per-agent credentials on SQLite: the shared queries of
``storage/enrollment_sql.py`` with the SQLite hooks (``sqlite/sql_hooks.py``)."""

from __future__ import annotations

from vigil.collector.storage.enrollment_sql import EnrollmentSql
from vigil.collector.storage.sqlite.sql_hooks import SqliteHooks


class SqliteEnrollment(SqliteHooks, EnrollmentSql):
    """:class:`~collector.storage.protocols.EnrollmentRepository` on SQLite."""
