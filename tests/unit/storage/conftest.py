"""The ``backend`` fixture: every contract test runs once per storage backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.storage.backends import BACKENDS, BackendFactory


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    return BACKENDS[request.param](tmp_path)
