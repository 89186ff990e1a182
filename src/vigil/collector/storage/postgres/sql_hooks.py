"""The PostgreSQL side of ``storage/sql_hooks.py``: psycopg's ``%s`` placeholders,
``jsonb``, ``IS NOT DISTINCT FROM``, arrays for IN lists, ``COLLATE "C"``; no index
hints (the planner has none)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from vigil.collector.storage.sql_hooks import SqlHooks


class PgHooks(SqlHooks):
    """:class:`~collector.storage.sql_hooks.SqlHooks` on a psycopg 3 connection."""

    backend = "postgresql"
    in_max = 10_000  # one array parameter, whatever its length

    def _run(self, sql: str, args: Sequence[Any] = ()) -> Any:
        # The shared statements hold no literal "?" or "%": a plain replace is exact.
        return self._db.execute(sql.replace("?", "%s"), args)

    def _insert_id(self, sql: str, args: Sequence[Any]) -> int:
        row = self._run(f"{sql} RETURNING id", args).fetchone()
        return int(row[0])

    def _json(self, value: Any) -> Any:
        return Jsonb(value)

    def _from_json(self, raw: Any) -> Any:
        return raw  # psycopg decodes jsonb

    def _same(self, column: str) -> str:
        # The cast types the parameter when it is NULL.
        return f"{column} IS NOT DISTINCT FROM ?::text"

    def _differs(self, column: str) -> str:
        return f"{column} IS DISTINCT FROM ?::text"

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def _bytewise(self, column: str) -> str:
        return f'{column} COLLATE "C"'

    def _indexed_by(self, index: str) -> str:
        return ""
