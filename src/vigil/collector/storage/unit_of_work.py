"""The transaction shape both backends' units of work share (``sqlite/backend.py``,
``postgres/backend.py``): :meth:`SqlUnitOfWork.transaction` and
:meth:`SqlUnitOfWork.savepoint` over the backend's ``begin``/``commit``/``rollback``.
The savepoint statements are the spelling both engines accept."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class SqlUnitOfWork:
    """Transactions and savepoints on a DB-API connection in autocommit mode; a backend
    sets :meth:`begin` (how it takes the write lock) and its repositories."""

    def __init__(self, db: Any) -> None:
        self._db = db

    def begin(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        self._db.execute("ROLLBACK")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        self._db.execute("SAVEPOINT report")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO SAVEPOINT report")
            self._db.execute("RELEASE SAVEPOINT report")
            raise
        self._db.execute("RELEASE SAVEPOINT report")
