"""Pick and open a storage backend from its URL (``storage.url`` in the collector config)."""

from __future__ import annotations

from pathlib import Path

from vigil.collector.storage.protocols import Storage
from vigil.collector.storage.records import StorageError
from vigil.collector.storage.sqlite.backend import SqliteStorage
from vigil.collector.storage.url import is_postgres_url, redact, sqlite_path


def create_storage(url: str) -> Storage:
    """Open the storage ``url`` names: ``sqlite:///path/to.db`` (the path used as given:
    the config loader has already resolved a relative one against the config file) or
    ``postgresql://user@host/db`` (a libpq URI; needs the ``postgresql`` extra).

    Raises ``ValueError`` for a URL no backend here understands and
    :class:`~collector.storage.records.StorageError` when the database cannot be used.
    """
    if is_postgres_url(url):
        try:
            # Imported here: psycopg is an optional extra, and SQLite needs none of it.
            from vigil.collector.storage.postgres.backend import PgStorage
        except ImportError as exc:
            raise StorageError(
                redact(url),
                f"the PostgreSQL backend needs psycopg ({exc}); install vigil[postgresql]",
            ) from None
        return PgStorage(url)
    path = sqlite_path(url)
    if path is None:
        raise ValueError(
            f"unsupported storage URL {url!r}: expected sqlite:///path or postgresql://..."
        )
    return SqliteStorage(Path(path))
