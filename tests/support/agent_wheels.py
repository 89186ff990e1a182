"""Real agent wheels of this checkout at a bumped version, for the self-update tests.

``python -m build --wheel`` (isolated, like ``tests/integration/test_wheel.py``) of a copy
of the working tree whose ``vigil/__init__.py`` says ``version``; ``patches`` append code
to modules of the copy (a *test build*, named as such in the appended comment) — used to
make a release that cannot deliver. Wheels are cached per session by (version, patches).
Needs the build frontend and a package index for the build requirements: skips locally
without them, fails under ``CI=true``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.peers import INDEX_TROUBLE, unavailable

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 300.0
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "var",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
)
_CACHE: dict[tuple[str, tuple[tuple[str, str], ...]], Path] = {}
_ROOT: list[Path] = []

# Appended to vigil/agent/delivery/transport.py of a test build: every request fails as if
# the collector were unreachable, so the release never confirms itself.
CANNOT_DELIVER = """

# TEST BUILD ONLY (tests/support/agent_wheels.py): this release cannot deliver anything.
async def _test_build_cannot_deliver(self, *args, **kwargs):
    raise OSError("test build: delivery disabled")


# Assigning a name the class does not have would patch nothing (and the release would
# deliver and confirm): fail the build's import instead when the transport is renamed.
assert callable(getattr(Connection, "request", None)), "test build: Connection.request moved"
Connection.request = _test_build_cannot_deliver
"""


def agent_wheel(version: str, patches: dict[str, str] | None = None) -> Path:
    """The path of ``vigil-<version>-py3-none-any.whl`` built from this checkout."""
    key = (version, tuple(sorted((patches or {}).items())))
    if key in _CACHE:
        return _CACHE[key]
    try:
        import build  # noqa: F401  (only whether the frontend is installed)
    except ImportError:
        unavailable("the `build` package is missing: install the `test` extra (make test does)")
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="vigil-agent-wheels-")))
    work = Path(tempfile.mkdtemp(prefix=f"{version}-", dir=_ROOT[0]))
    source = work / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=_NOT_SOURCE)
    init = source / "src" / "vigil" / "__init__.py"
    text, count = re.subn(
        r'^__version__ = "[^"]*"$', f'__version__ = "{version}"', init.read_text(), flags=re.M
    )
    assert count == 1, "no __version__ line in vigil/__init__.py"
    init.write_text(text)
    for module, code in (patches or {}).items():
        path = source / "src" / module
        path.write_text(path.read_text() + code)
    dist = work / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        cwd=work,
        check=False,
    )
    if done.returncode != 0:
        output = done.stdout + done.stderr
        if INDEX_TROUBLE.search(output):
            unavailable(f"building the agent wheel needs a package index: {output[-500:]}")
        raise AssertionError(f"python -m build failed: {output[-2000:]}")
    wheels = sorted(dist.glob(f"vigil-{version}-py3-none-any.whl"))
    assert len(wheels) == 1, wheels
    _CACHE[key] = wheels[0]
    return wheels[0]
