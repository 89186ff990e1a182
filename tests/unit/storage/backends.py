"""The storage backends the contract suite runs against, one factory each.

To run the suite against another backend, add a factory here and its name to
:data:`BACKENDS`; every test in ``test_contract.py`` then runs against it too.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support.postgres import TestSchema
from vigil.collector.desk.service import Desk
from vigil.collector.storage.factory import create_storage
from vigil.collector.storage.protocols import Storage
from vigil.collector.storage.url import sqlite_url


class BackendFactory:
    """Opens storages on one fresh database of a backend.

    ``url`` names the database; every :meth:`open` is a new, independent connection to
    it (as another collector thread or process would have), so concurrent writers can be
    tested. :meth:`restore_schema2` loads a schema-2 database of today's collector.
    """

    name = ""

    def __init__(self, url: str) -> None:
        self.url = url

    def open(self) -> Storage:
        """A new storage on the database (closed by the caller)."""
        return create_storage(self.url)

    def desk(self, **options: Any) -> Desk:
        """A desk over a new storage on the database."""
        storage = self.open()
        try:
            return Desk(storage, **options)
        except BaseException:
            storage.close()
            raise

    def restore_schema2(self, sql: str) -> None:
        """Load ``sql`` (a dump of a schema-2 SQLite database) as the database."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove the database (after the test)."""

    def execute(self, sql: str) -> None:
        """Run ``sql`` on the database behind the storage's back (as an operator's
        maintenance, or a hand edit, would)."""
        raise NotImplementedError


class SqliteFactory(BackendFactory):
    """The embedded backend: one file in the test's temporary folder."""

    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "contract.db"
        super().__init__(sqlite_url(self.path))

    def restore_schema2(self, sql: str) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.executescript(sql)

    def execute(self, sql: str) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as db, db:
            db.execute(sql)


class PostgresFactory(BackendFactory):
    """The PostgreSQL backend: a fresh schema on the test server, dropped by
    :meth:`cleanup`."""

    name = "postgresql"

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.schema = TestSchema()
        super().__init__(self.schema.url)

    def restore_schema2(self, sql: str) -> None:
        # The fixture is an SQLite dump: restore it to a file and import that, the way a
        # deployment moves from SQLite to PostgreSQL.
        from vigil.collector.storage.postgres.importer import import_sqlite

        path = self.tmp_path / "schema2.db"
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.executescript(sql)
        import_sqlite(path, self.url)

    def cleanup(self) -> None:
        self.schema.drop()

    def execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(sql)  # type: ignore[call-overload]  # the tests' constants


BACKENDS: dict[str, Callable[[Path], BackendFactory]] = {
    "sqlite": SqliteFactory,
    "postgresql": PostgresFactory,
}
