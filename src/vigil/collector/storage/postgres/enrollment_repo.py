"""Enrollment secrets and per-agent credentials on PostgreSQL: the shared queries of
``storage/enrollment_sql.py`` with the PostgreSQL hooks (``postgres/sql_hooks.py``)."""

from __future__ import annotations

from vigil.collector.storage.enrollment_sql import EnrollmentSql
from vigil.collector.storage.postgres.sql_hooks import PgHooks


class PgEnrollment(PgHooks, EnrollmentSql):
    """:class:`~collector.storage.protocols.EnrollmentRepository` on PostgreSQL."""
