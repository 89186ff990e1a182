"""Policy bundles, rollouts, halts and run-now requests on PostgreSQL: the shared
queries of ``storage/policy_sql.py`` with psycopg's ``%s`` placeholders."""

from __future__ import annotations

from typing import Any

import psycopg

from vigil.collector.storage.policy_sql import PolicySql, policy_ddl


class PgPolicies(PolicySql):
    """:class:`~collector.storage.protocols.PolicyRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        super().__init__(db)

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        # Our statements hold no literal "?" or "%": a plain replace is exact.
        return self._db.execute(sql.replace("?", "%s"), args)


# Migration 3 (collector/storage/postgres/schema.py): the policy tables.
POLICY_MIGRATION = ";\n".join(policy_ddl("bytea")) + ";"
