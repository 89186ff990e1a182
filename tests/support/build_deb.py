"""``packaging/build_deb.py`` loaded as a module for tests (``packaging/`` is a folder of
build tools, not a package on the import path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "packaging" / "build_deb.py"


def load_build_deb() -> ModuleType:
    """A fresh module object of the build script (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location("build_deb", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
