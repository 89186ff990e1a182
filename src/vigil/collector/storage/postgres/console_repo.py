"""The console's reads on PostgreSQL: the SQLite repository's queries
(``sqlite/console_repo.py``) with PostgreSQL's placeholder and ``jsonb`` label access."""

from __future__ import annotations

from vigil.collector.storage.sqlite.console_repo import ConsoleQueries, Dialect

# FLOOR: a CAST to integer rounds in PostgreSQL.
POSTGRES = Dialect(
    ph="%s", label_sql="({col} ->> '{key}')", true="true", floor_sql="FLOOR({x})::integer"
)


class PgConsole(ConsoleQueries):
    """:class:`~collector.storage.protocols.ConsoleRepository` on PostgreSQL."""

    dialect = POSTGRES
