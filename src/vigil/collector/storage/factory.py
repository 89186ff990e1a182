"""Pick and open a storage backend from its URL (``storage.url`` in the collector config)."""

from __future__ import annotations

from pathlib import Path

from vigil.collector.storage.protocols import Storage
from vigil.collector.storage.sqlite.backend import SqliteStorage
from vigil.collector.storage.url import sqlite_path


def create_storage(url: str) -> Storage:
    """Open the storage ``url`` names: ``sqlite:///path/to.db`` (the path used as given:
    the config loader has already resolved a relative one against the config file).

    Raises ``ValueError`` for a URL no backend here understands and
    :class:`~collector.storage.records.StorageError` when the database cannot be used.
    """
    path = sqlite_path(url)
    if path is None:
        raise ValueError(f"unsupported storage URL {url!r}: expected sqlite:///path")
    return SqliteStorage(Path(path))
