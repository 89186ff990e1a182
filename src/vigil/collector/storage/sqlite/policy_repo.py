"""Policy bundles, rollouts, halts and run-now requests on SQLite: the shared queries
of ``storage/policy_sql.py`` as they are (SQLite takes ``?`` placeholders)."""

from __future__ import annotations

import sqlite3

from vigil.collector.storage.policy_sql import POLICY_ROLLOUT_COLUMNS, PolicySql, policy_ddl


class SqlitePolicies(PolicySql):
    """:class:`~collector.storage.protocols.PolicyRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        super().__init__(db)


def migrate_policy(db: sqlite3.Connection) -> None:
    """Create the policy tables if missing (schema 7) and add the rollout columns of
    schema 12 to an older table (idempotent)."""
    for statement in policy_ddl("BLOB"):
        db.execute(statement)
    have = {row[1] for row in db.execute("PRAGMA table_info(policy_rollouts)")}
    for name, decl in POLICY_ROLLOUT_COLUMNS:
        if name not in have:
            db.execute(f"ALTER TABLE policy_rollouts ADD COLUMN {name} {decl}")
