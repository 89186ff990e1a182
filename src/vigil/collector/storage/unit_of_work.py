"""The transaction shape both backends' units of work share (``sqlite/backend.py``,
``postgres/backend.py``): :meth:`SqlUnitOfWork.transaction` and
:meth:`SqlUnitOfWork.savepoint` over the backend's ``begin``/``commit``/``rollback``.
The savepoint statements are the spelling both engines accept."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

# Distinct series-name lists whose ``metric_names`` id a unit of work keeps.
_NAME_SETS_KEPT = 4096


class NameSets:
    """The ``metric_names`` ids of the series-name lists a unit of work stored or read.

    Why: a metrics summary's ~40 series names (~1.2 KB) were stored on every host's row;
    a fleet has few distinct lists (per agent version and hardware shape), so each list
    is stored once and a row keeps its id (issue #17: 245 -> 81 MB at 100,000 hosts).
    An id is only trusted while the row it came from exists: every rollback, to a
    savepoint too, forgets them all (the next summary looks its list up again).
    """

    def __init__(self) -> None:
        self._ids: dict[tuple[str, ...], int] = {}

    def id_of(self, names: tuple[str, ...], store: Callable[[tuple[str, ...]], int]) -> int:
        """The id of ``names``; ``store(names)`` inserts or finds it when not known."""
        known = self._ids.get(names)
        if known is None:
            known = store(names)
            if len(self._ids) >= _NAME_SETS_KEPT:  # bounded: hosts may all differ
                self._ids.clear()
            self._ids[names] = known
        return known

    def forget(self) -> None:
        self._ids.clear()


class SqlUnitOfWork:
    """Transactions and savepoints on a DB-API connection in autocommit mode; a backend
    sets :meth:`begin` (how it takes the write lock) and its repositories."""

    def __init__(self, db: Any) -> None:
        self._db = db
        self.name_sets = NameSets()

    def begin(self) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        self._db.execute("ROLLBACK")
        self.name_sets.forget()

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
            self.name_sets.forget()
            self._db.execute("RELEASE SAVEPOINT report")
            raise
        self._db.execute("RELEASE SAVEPOINT report")
