"""The ``backend`` fixture: every contract test runs once per storage backend.

PostgreSQL runs on the server ``VIGIL_TEST_PG_DSN`` names, each test in a fresh schema
dropped after it; without a server they skip, saying why, and under ``CI=true`` they
fail (``tests/support/postgres.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import require_postgres
from tests.unit.storage.backends import BACKENDS, BackendFactory


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendFactory]:
    if request.param == "postgresql":
        require_postgres()
    factory = BACKENDS[request.param](tmp_path)
    yield factory
    factory.cleanup()
