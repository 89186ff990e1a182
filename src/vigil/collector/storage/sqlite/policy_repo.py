"""Policy bundles, rollouts, halts and run-now requests on SQLite: the shared queries
of ``storage/policy_sql.py`` as they are (SQLite takes ``?`` placeholders)."""

from __future__ import annotations

import sqlite3

from vigil.collector.storage.policy_sql import PolicySql, policy_ddl


class SqlitePolicies(PolicySql):
    """:class:`~collector.storage.protocols.PolicyRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(db)


def migrate_policy(db: sqlite3.Connection) -> None:
    """Create the policy tables if missing (idempotent; schema 7)."""
    for statement in policy_ddl("BLOB"):
        db.execute(statement)
