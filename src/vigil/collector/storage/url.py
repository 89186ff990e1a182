"""Storage URLs (``storage.url``): which backend, and where. Pure string handling, so the
config loader can check a URL without importing any backend."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SQLITE_PREFIX = "sqlite:///"
# libpq's URI schemes; both name the PostgreSQL backend.
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
# Schemes this collector can open; the config loader names them in its error message.
SCHEMES: tuple[str, ...] = ("sqlite", "postgresql")


def sqlite_url(path: Path | str) -> str:
    """The URL of an SQLite file: ``sqlite:///`` + the path (so an absolute path gives
    four slashes, ``sqlite:////var/lib/vigil/collector.db``)."""
    return f"{SQLITE_PREFIX}{path}"


def sqlite_path(url: str) -> str | None:
    """The file path of an ``sqlite:///`` URL (as written: maybe relative), or None if
    ``url`` is not one or names no file."""
    if not url.startswith(SQLITE_PREFIX):
        return None
    return url[len(SQLITE_PREFIX) :] or None


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (``postgresql://`` or ``postgres://``,
    a libpq connection URI; checked by libpq itself when the collector connects)."""
    return url.startswith(POSTGRES_PREFIXES)


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.partition("://")[0] + "://?"
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
