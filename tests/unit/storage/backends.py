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


class SqliteFactory(BackendFactory):
    """The embedded backend: one file in the test's temporary folder."""

    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "contract.db"
        super().__init__(sqlite_url(self.path))

    def restore_schema2(self, sql: str) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            db.executescript(sql)


BACKENDS: dict[str, Callable[[Path], BackendFactory]] = {"sqlite": SqliteFactory}
