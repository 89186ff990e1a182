"""The ``backend`` fixture: every contract test runs once per storage backend.

PostgreSQL runs on the server ``VIGIL_TEST_PG_DSN`` names (default
``postgresql://postgres@127.0.0.1:5432/test``), each test in a fresh schema dropped
after it. Without a server the PostgreSQL runs skip, saying why; under ``CI=true`` they
fail instead, so CI cannot pass without testing both backends.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.storage.backends import BACKENDS, BackendFactory, pg_unavailable

_pg_unavailable = functools.cache(pg_unavailable)


def require_postgres() -> None:
    """Skip (or, under ``CI=true``, fail) the calling test when no server answers."""
    why = _pg_unavailable()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendFactory]:
    if request.param == "postgresql":
        require_postgres()
    factory = BACKENDS[request.param](tmp_path)
    yield factory
    factory.cleanup()
