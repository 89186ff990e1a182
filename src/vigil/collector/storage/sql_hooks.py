"""The places where SQLite and PostgreSQL spell a query differently, as small named hooks,
for the repositories whose SQL is written once for both backends (``desk_sql``,
``enrollment_sql``, ``identity_sql``, ``survey_sql``).

A shared repository class holds the statements and the row logic and inherits
:class:`SqlHooks`; each backend implements the hooks once (``sqlite/sql_hooks.py``,
``postgres/sql_hooks.py``), and its repository is just both together, e.g.
``class PgIncidents(PgHooks, IncidentsSql)``.

Statements use ``?`` placeholders (PostgreSQL's hook rewrites them to ``%s``, so no
statement may hold a literal ``?`` or ``%``) and the SQL both engines accept, which needs
no hook:

- ``INSERT ... ON CONFLICT ... DO NOTHING`` / ``DO UPDATE`` (SQLite 3.24) rather than
  ``INSERT OR IGNORE``, with table-qualified columns on the right of an upsert's ``SET``
  (PostgreSQL finds a bare ``value`` ambiguous);
- ``RETURNING`` (SQLite 3.35, which the SQLite backend already needs for ingest), read
  with ``fetchall()``: in SQLite a ``RETURNING`` statement must run to completion (but
  a new row's id is a hook: SQLite's ``lastrowid`` costs well under half of
  ``RETURNING id``);
- booleans bound as Python ``bool`` (SQLite stores 1/0), tested as ``flapping`` /
  ``NOT flapping``, written with ``TRUE``/``FALSE`` (SQLite 3.23), read back with
  ``bool()``;
- an explicit ``ORDER BY`` wherever an order is relied on (PostgreSQL has no rowid
  order).

Partitioned tables (PostgreSQL's ``check_results`` and ``remediation_runs``) are not
touched by these repositories: only ingest and the runs write them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar


class SqlHooks:
    """The hooks a shared repository calls where the backends differ; ``_db`` is the
    backend's DB-API connection (``sqlite3`` or psycopg 3)."""

    backend: ClassVar[str] = ""
    """``"sqlite"`` or ``"postgresql"``: picks between two texts kept side by side where
    the engines need really different SQL (a forced index)."""
    in_max: ClassVar[int] = 0
    """Values one :meth:`_in` takes (lists go :func:`chunks` of it): a bounded statement
    on either backend, and one statement for an API page (at most 1000 ids)."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def _run(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Execute ``sql`` (``?`` placeholders) with ``args``; returns the cursor."""
        raise NotImplementedError

    def _json(self, value: Any) -> Any:
        """``value`` (a dict or list of plain data) as the backend stores JSON."""
        raise NotImplementedError

    def _from_json(self, raw: Any) -> Any:
        """A JSON column's value as Python data."""
        raise NotImplementedError

    def _same(self, column: str) -> str:
        """``column`` equals the next ``?``, NULL equal to NULL (a text column)."""
        raise NotImplementedError

    def _differs(self, column: str) -> str:
        """``column`` differs from the next ``?``, NULL equal to NULL (a text column)."""
        raise NotImplementedError

    def _in(self, column: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """``column`` is one of ``values`` (at most :attr:`in_max`): the condition and its
        arguments."""
        raise NotImplementedError

    def _bytewise(self, column: str) -> str:
        """``column`` as an ``ORDER BY`` key that sorts text by its bytes on both backends
        (SQLite's default; PostgreSQL's default follows the database's locale)."""
        raise NotImplementedError

    def _indexed_by(self, index: str) -> str:
        """A hint forcing ``index`` after a table name, where the backend has one."""
        raise NotImplementedError

    def _insert_id(self, sql: str, args: Sequence[Any]) -> int:
        """Run ``sql``, an INSERT into a table with an ``id`` key, and return the new id."""
        raise NotImplementedError

    def _insert_row(self, table: str, allowed: frozenset[str], row: Mapping[str, Any]) -> int:
        """Insert ``row`` into ``table``, its keys checked against the column names in
        ``allowed`` (ours: names are never input); returns the new id."""
        unknown = set(row) - allowed
        if unknown:
            raise ValueError(f"{table}: unknown columns {sorted(unknown)}")
        marks = ", ".join("?" for _ in row)
        return self._insert_id(
            f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", tuple(row.values())
        )


def chunks(values: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """``values`` without repeats, ``size`` at a time (for :meth:`SqlHooks._in`)."""
    unique = list(dict.fromkeys(values))
    for start in range(0, len(unique), size):
        yield unique[start : start + size]


def where(*filters: tuple[str, Any]) -> tuple[str, list[Any]]:
    """`` WHERE a = ? AND b = ?`` for the filters that are set (column names are ours)."""
    used = [(column, value) for column, value in filters if value is not None]
    if not used:
        return "", []
    return " WHERE " + " AND ".join(f"{c} = ?" for c, _ in used), [v for _, v in used]


def narrowed(clause: str, condition: str) -> str:
    """``clause`` (empty or a `` WHERE ...``) with ``condition`` added (if not empty)."""
    if not condition:
        return clause
    return f"{clause} AND {condition}" if clause else f" WHERE {condition}"
