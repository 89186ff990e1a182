"""A PostgreSQL server for tests: whether one answers, and a fresh schema per test.

The server is the one ``VIGIL_TEST_PG_DSN`` names (default
``postgresql://postgres@127.0.0.1:5432/test``). Without one, tests that need it skip,
saying why; under ``CI=true`` they fail instead, so CI cannot pass without it
(``.ci/run`` starts one).
"""

from __future__ import annotations

import functools
import os
import uuid
from urllib.parse import quote

import pytest

PG_DSN = os.environ.get("VIGIL_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def pg_unavailable() -> str | None:
    """Why PostgreSQL tests cannot run here, or None if they can (asked once a run)."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc}); pip install -e '.[test]'"
    try:
        with psycopg.connect(PG_DSN, connect_timeout=3) as db:
            db.execute("SELECT 1")
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["?"])[0]
        return f"no PostgreSQL server answers at VIGIL_TEST_PG_DSN={PG_DSN} ({first})"
    return None


def require_postgres() -> None:
    """Skip (or, under ``CI=true``, fail) the calling test when no server answers."""
    why = pg_unavailable()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {why}", pytrace=False)
    pytest.skip(why)


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` with libpq ``options`` selecting ``schema``: every connection made from
    the URL, other processes' included, then works in it."""
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options={quote(f'-csearch_path={schema}')}"


class TestSchema:
    """A schema of its own on the test server (:meth:`drop` removes it and its tables);
    :attr:`url` is the storage URL that works in it."""

    __test__ = False  # a helper, not a test class

    def __init__(self) -> None:
        import psycopg

        self.name = f"vigil_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_DSN, autocommit=True) as db:
            db.execute(f"CREATE SCHEMA {self.name}")  # type: ignore[call-overload]
        self.url = with_search_path(PG_DSN, self.name)

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(PG_DSN, autocommit=True) as db:
            db.execute(f"DROP SCHEMA IF EXISTS {self.name} CASCADE")  # type: ignore[call-overload]
