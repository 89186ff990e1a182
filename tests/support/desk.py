"""Open a desk over an SQLite file in one call, as the tests of the business layer do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vigil.collector.desk.service import Desk
from vigil.collector.storage.sqlite.backend import SqliteStorage


def open_desk(path: Path, **options: Any) -> Desk:
    """A :class:`Desk` over a :class:`SqliteStorage` at ``path`` (``options`` go to the
    desk: ``remediation_wait_s``, ``catalog``, ``rules``)."""
    storage = SqliteStorage(path)
    try:
        return Desk(storage, **options)
    except BaseException:
        storage.close()
        raise
