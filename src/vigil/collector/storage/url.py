"""Storage URLs (``storage.url``): which backend, and where. Pure string handling, so the
config loader can check a URL without importing any backend."""

from __future__ import annotations

from pathlib import Path

SQLITE_PREFIX = "sqlite:///"
# Schemes this collector can open; the config loader names them in its error message.
SCHEMES: tuple[str, ...] = ("sqlite",)


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
