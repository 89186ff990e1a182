"""The wheel as people install it: built from this checkout, installed into fresh venvs.

``make test`` runs the suite on an editable install, which reads modules and data files
straight from ``src/`` and so hides a broken wheel: a module or data file left out, a
dependency missing from the metadata, an entry point that names nothing. Here the wheel
is built once per session and installed twice, each time into a new venv, and every
command runs from a folder outside the checkout, so nothing can come from ``src/``:

- **venv A** (``pip install 'vigil-*.whl[collector,postgresql]'``, the central service
  with both storage backends): both CLIs,
  an import of every module, the remediation library and example configs in place, a
  shipped remediation really run, and a collector really serving;
- **venv B** (``pip install vigil-*.whl``, a laptop): no aiohttp, no prometheus_client,
  and still every agent module imports and ``vigil-agent`` works.

The build is isolated (``python -m build --wheel``): it installs exactly the
``[build-system]`` requirements into a throwaway environment, as ``make wheel`` and any
``pip install .`` do. ``--no-isolation`` would build with whatever setuptools the test
venv happens to carry (``python -m venv`` bundles an old one, or none since Python 3.12),
i.e. test a build nobody else runs. It builds from a copy of the checkout, because
setuptools reuses ``build/lib``: in place, a module deleted or renamed since the last build
would still ship, and the test would write into the working tree.

Both the build and the installs need a package index (PyPI or a configured mirror):
without one the module skips locally and fails under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import urllib.request
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import vigil
from tests.support.peers import INDEX_TROUBLE, unavailable
from tests.support.procs import collector_config, read_line, stop

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "vigil"
# Top-level folders shipped as package data: the checkout's `remediations/` is the
# installed `vigil/remediations/`, and so on.
DATA_FOLDERS = ("remediations", "config")

BUILD_TIMEOUT_S = 300.0
PIP_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 60.0
# A build and an install (each mostly waiting on the package index) fit in the first test
# that needs them; the suite's default of 120 s does not when the index is slow.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + PIP_TIMEOUT_S)

# The working tree minus what is not source: virtualenvs, build output, run state, caches.
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

# Run with a venv's interpreter: import every module found under the named packages
# (and the named plain modules) and print one JSON object with what happened.
#
# `__main__` modules are not imported: importing one runs the program (the tests run
# them as `python -m vigil.agent` / `python -m vigil.collector` instead). A module for
# another platform (the `_windows`/`_darwin`/`_linux` split of a facade, chosen once at
# import psutil-style) may raise ImportError here, as it would import a module only its
# own platform has; any other failure, and any failure of this platform's module, counts.
IMPORT_ALL = r"""
import importlib, json, pkgutil, sys, traceback

PLATFORMS = {"_linux": "linux", "_darwin": "darwin", "_windows": "win32"}
imported, foreign, failed = [], {}, {}

def load(name):
    leaf = name.rsplit(".", 1)[-1]
    platform = PLATFORMS.get(leaf)
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        if platform is not None and not sys.platform.startswith(platform):
            foreign[name] = repr(exc)
            return None
        failed[name] = traceback.format_exc()
        return None
    except BaseException:
        failed[name] = traceback.format_exc()
        return None
    imported.append(name)
    return module

for root in sys.argv[1:]:
    module = load(root)
    if module is None or not hasattr(module, "__path__"):
        continue
    for info in pkgutil.walk_packages(module.__path__, root + ".", onerror=lambda name: None):
        if info.name.rsplit(".", 1)[-1] != "__main__":
            load(info.name)

print(json.dumps({"imported": imported, "foreign": foreign, "failed": failed}))
"""


@dataclass(frozen=True)
class Built:
    """The wheel built from the checkout and what the build printed."""

    wheel: Path
    log: str


@dataclass(frozen=True)
class ImportReport:
    """What :data:`IMPORT_ALL` did: modules imported, foreign-platform modules that could
    not be (with the error), and failures (with the traceback)."""

    imported: list[str]
    foreign: dict[str, str]
    failed: dict[str, str]

    def modules(self) -> set[str]:
        """Every module found, imported or not."""
        return set(self.imported) | set(self.foreign) | set(self.failed)


@dataclass(frozen=True)
class Installed:
    """A fresh venv with the wheel installed, and the installed ``vigil`` package folder."""

    root: Path
    package: Path

    def bin(self, name: str) -> str:
        """Path of a console script or interpreter in the venv's ``bin`` folder."""
        return str(self.root / "bin" / name)

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        """Run ``args`` (``args[0]`` a name in the venv's ``bin``) from ``cwd``; bounded."""
        return subprocess.run(
            [self.bin(args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            cwd=cwd,
            env=_clean_env(),
        )

    def import_all(self, *roots: str, cwd: Path) -> ImportReport:
        """:data:`IMPORT_ALL`'s report for ``roots``, run by the venv's interpreter."""
        result = self.run("python", "-c", IMPORT_ALL, *roots, cwd=cwd)
        assert result.returncode == 0, result.stderr
        return ImportReport(**json.loads(result.stdout))


def _clean_env() -> dict[str, str]:
    """This environment without what would make a venv's Python look elsewhere."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "VIGIL_AGENT_CONFIG"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run_tool(what: str, args: list[str], timeout_s: float, cwd: Path) -> str:
    """Run a build or install step; its output. Index trouble is :func:`unavailable`,
    any other failure fails the test with the output."""
    try:
        result = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=cwd,
            env=_clean_env(),
        )
    except subprocess.TimeoutExpired:
        unavailable(f"{what} took over {timeout_s:.0f} s (package index unreachable or slow?)")
    output = result.stdout + result.stderr
    if result.returncode != 0:
        if INDEX_TROUBLE.search(output):
            tail = "\n".join(output.strip().splitlines()[-6:])
            unavailable(f"{what} could not get its dependencies from a package index:\n{tail}")
        pytest.fail(f"{what} failed (exit {result.returncode}):\n{output}")
    return output


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """``python -m build --wheel`` of a copy of the working tree (see the module docstring)."""
    try:
        import build  # noqa: F401  (only whether the frontend is installed)
    except ImportError:
        unavailable("the `build` package is missing: install the `test` extra (make test does)")
    work = tmp_path_factory.mktemp("wheel-build")
    source = work / "source"
    # symlinks=True keeps src/vigil/remediations -> ../../remediations a link, which then
    # resolves inside the copy, as it does in the checkout.
    shutil.copytree(REPO, source, symlinks=True, ignore=_NOT_SOURCE)
    dist = work / "dist"
    log = _run_tool(
        "python -m build --wheel",
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)],
        BUILD_TIMEOUT_S,
        work,
    )
    wheels = sorted(dist.glob("vigil-*.whl"))
    assert len(wheels) == 1, (wheels, log)
    return Built(wheel=wheels[0], log=log)


def _install(tmp_path_factory: pytest.TempPathFactory, name: str, requirement: str) -> Installed:
    """A new venv (no pip of its own: this interpreter's pip installs into it with
    ``--python``, with pip's cache) holding ``requirement``."""
    root = tmp_path_factory.mktemp(name) / "venv"
    venv.create(root, with_pip=False, symlinks=os.name != "nt")
    python = root / "bin" / "python"
    _run_tool(
        f"pip install {requirement!r}",
        [sys.executable, "-m", "pip", "--python", str(python), "install", requirement],
        PIP_TIMEOUT_S,
        root.parent,
    )
    where = subprocess.run(
        [str(python), "-c", "import vigil; print(vigil.__file__)"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        cwd=root.parent,
        env=_clean_env(),
    )
    assert where.returncode == 0, where.stderr
    package = Path(where.stdout.strip()).parent
    return Installed(root=root, package=package)


@pytest.fixture(scope="module")
def full(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Venv A: the wheel with the ``collector`` and ``postgresql`` extras, as the central
    service installs it (the PostgreSQL backend's modules import psycopg)."""
    return _install(tmp_path_factory, "venv-collector", f"{built.wheel}[collector,postgresql]")


@pytest.fixture(scope="module")
def agent_only(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Venv B: the bare wheel, as a laptop installs it."""
    return _install(tmp_path_factory, "venv-agent", str(built.wheel))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working folder outside the checkout, so nothing is imported from ``src/``."""
    assert not tmp_path.resolve().is_relative_to(REPO)
    return tmp_path


def _checkout_modules() -> set[str]:
    """Every module of the checkout's ``vigil`` package, from the file tree alone: the
    ``.py`` files outside the data folders, each of which must sit in a package (every
    folder from ``src/vigil`` down to it holding an ``__init__.py``), because setuptools
    ships no others (``namespaces = false``)."""
    names, stray = set(), []
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if "__pycache__" in parts or parts[1] in DATA_FOLDERS:
            continue
        folders = [SRC.parent.joinpath(*parts[:i]) for i in range(1, len(parts))]
        if not all((f / "__init__.py").is_file() for f in folders):
            stray.append(str(path.relative_to(REPO)))
            continue
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert not stray, f"modules outside any package would not be in the wheel: {stray}"
    return names


def _data_files(root: Path) -> dict[str, Path]:
    """Files under ``root`` by relative path, compiled bytecode aside."""
    return {
        path.relative_to(root).as_posix(): path
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_build_prints_no_setuptools_warning(built: Built) -> None:
    """setuptools' warnings announce future build failures (deprecated metadata) or a
    configuration it reads two ways (data folders taken for packages)."""
    warnings = [line for line in built.log.splitlines() if line.startswith(("WARNING", "!!"))]
    assert not warnings, built.log


def test_vigil_is_imported_from_the_venv_not_the_checkout(full: Installed) -> None:
    assert full.package.is_relative_to(full.root), full.package
    assert not full.package.resolve().is_relative_to(REPO.resolve())


def test_both_programs_answer_help_and_version(full: Installed, outside: Path) -> None:
    for program in ("vigil-agent", "vigil-collector"):
        shown = full.run(program, "--help", cwd=outside)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"usage: {program}"), shown.stdout
        version = full.run(program, "--version", cwd=outside)
        assert version.returncode == 0, version.stderr
        assert version.stdout.strip() == f"{program} {vigil.__version__}"
    for package, program in (
        ("vigil.agent", "vigil-agent"),
        ("vigil.collector", "vigil-collector"),
    ):
        via_m = full.run("python", "-m", package, "--version", cwd=outside)
        assert via_m.returncode == 0, via_m.stderr
        assert via_m.stdout.strip() == f"{program} {vigil.__version__}"


def test_every_module_is_in_the_wheel_and_imports(full: Installed, outside: Path) -> None:
    report = full.import_all("vigil", cwd=outside)
    assert report.failed == {}, "\n".join(report.failed.values())
    expected = {name for name in _checkout_modules() if not name.endswith(".__main__")}
    assert report.modules() == expected


def test_the_remediation_library_and_configs_ship_as_they_are_in_the_checkout(
    full: Installed,
) -> None:
    """Same files, same bytes and, for scripts run directly, the same executable bit."""
    for folder in DATA_FOLDERS:
        shipped = _data_files(REPO / folder)
        installed = _data_files(full.package / folder)
        assert sorted(installed) == sorted(shipped), folder
        for rel, source in shipped.items():
            assert installed[rel].read_bytes() == source.read_bytes(), rel
            if os.name == "posix":
                executable = bool(source.stat().st_mode & stat.S_IXUSR)
                assert bool(installed[rel].stat().st_mode & stat.S_IXUSR) == executable, rel
    assert (full.package / "py.typed").is_file()


def test_the_installed_library_lists_every_shipped_remediation(
    full: Installed, outside: Path
) -> None:
    listed = full.run(
        "vigil-agent", "remediation", "list", str(full.package / "remediations"), cwd=outside
    )
    assert listed.returncode == 0, listed.stderr
    ids = {line.split()[0] for line in listed.stdout.splitlines()[1:] if line.strip()}
    shipped = {p.parent.name for p in (REPO / "remediations").glob("*/remediation.yaml")}
    assert ids == shipped, listed.stdout


def test_the_example_agent_config_resolves_inside_the_installed_package(
    full: Installed, outside: Path
) -> None:
    """``config/agent.yaml`` names ``../remediations``: installed, that is the installed
    library; and ``check`` runs with that config."""
    config = full.package / "config" / "agent.yaml"
    code = (
        "import sys\n"
        "from vigil.agent.config import load_agent_config\n"
        "for folder in load_agent_config(sys.argv[1]).remediation.folders:\n"
        "    print(folder)\n"
    )
    folders = full.run("python", "-c", code, str(config), cwd=outside)
    assert folders.returncode == 0, folders.stderr
    assert [Path(line).resolve() for line in folders.stdout.splitlines()] == [
        (full.package / "remediations").resolve()
    ]
    checked = full.run("vigil-agent", "--config", str(config), "check", cwd=outside)
    assert checked.stdout.startswith("CHECK"), checked.stdout
    _assert_every_check_evaluated(checked, config)


@pytest.mark.skipif(os.name != "posix", reason="demo-cleanup is a POSIX sh script")
def test_an_installed_remediation_runs_through_the_runner(full: Installed, outside: Path) -> None:
    """The runner vets the installed script (inside its folder, not writable by others
    when root) and runs it for real: the spool folder is emptied."""
    spool = outside / "spool"
    (spool / "sub").mkdir(parents=True)
    (spool / "a.tmp").write_text("x" * 100)
    (spool / "sub" / "b.tmp").write_text("y" * 100)
    fixed = full.run(
        "vigil-agent",
        "remediation",
        "test",
        str(full.package / "remediations" / "demo-cleanup"),
        "--param",
        f"dir={spool}",
        "--verify-delay",
        "0",
        "--json",
        cwd=outside,
    )
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    record = json.loads(fixed.stdout)["record"]
    assert record["outcome"] == "fixed", fixed.stdout
    assert [p for p in spool.rglob("*") if p.is_file()] == []


@pytest.fixture
def collector_from_wheel(full: Installed, outside: Path) -> Iterator[subprocess.Popen[str]]:
    config = collector_config(
        outside, agent_token="wheel-agent-token-0123456789abcdef0123456789abcdef"
    )
    proc = subprocess.Popen(
        [full.bin("vigil-collector"), "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=(outside / "collector.log").open("w"),
        text=True,
        cwd=outside,
        env=_clean_env(),
    )
    try:
        yield proc
    finally:
        stop(proc)


def test_the_collector_serves_from_the_wheel(
    collector_from_wheel: subprocess.Popen[str], outside: Path
) -> None:
    line = read_line(collector_from_wheel, 20.0)
    assert "listening on http://127.0.0.1:" in line, (outside / "collector.log").read_text()
    url = line.split("listening on ", 1)[1].strip()
    with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
        assert response.status == 200
    # The console's templates and static files are package data: served from the wheel.
    with urllib.request.urlopen(url + "/console/login", timeout=10) as response:
        assert response.status == 200 and b"Operator token" in response.read()
    with urllib.request.urlopen(url + "/console/static/htmx.min.js", timeout=10) as response:
        assert response.status == 200 and response.read().startswith(b"/*! htmx")
    assert stop(collector_from_wheel) == 0, (outside / "collector.log").read_text()
    assert (outside / "collector.db").is_file()


@pytest.mark.skipif(os.name != "posix", reason="the demo's remediation is a POSIX sh script")
def test_the_demo_runs_from_the_wheel_outside_a_checkout(full: Installed, outside: Path) -> None:
    """``python -m vigil.collector.demo`` with no checkout: it copies the shipped demo
    configs and remediations into ``./vigil-demo`` and runs its whole scenario."""
    demo = subprocess.run(
        [full.bin("python"), "-m", "vigil.collector.demo", "--port", "0", "--exit"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=outside,
        env=_clean_env(),
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "outcome=fixed" in demo.stdout
    assert "✓ incident #2 resolved" in demo.stdout
    assert (outside / "vigil-demo" / "var" / "demo" / "collector.db").is_file()


def test_the_bare_wheel_is_a_working_agent_without_the_web_stack(
    agent_only: Installed, outside: Path
) -> None:
    """What a laptop gets: no aiohttp or prometheus_client, and everything the agent
    (with the wire schema and config reader it shares) imports."""
    absent = agent_only.run(
        "python",
        "-c",
        "import importlib.util as u; print([m for m in ('aiohttp', 'prometheus_client') "
        "if u.find_spec(m) is not None])",
        cwd=outside,
    )
    assert absent.returncode == 0, absent.stderr
    assert absent.stdout.strip() == "[]"

    report = agent_only.import_all("vigil.wire", "vigil.configio", "vigil.agent", cwd=outside)
    assert report.failed == {}, "\n".join(report.failed.values())
    expected = {
        name
        for name in _checkout_modules()
        if (name in {"vigil.wire", "vigil.configio"} or name.split(".")[:2] == ["vigil", "agent"])
        and not name.endswith(".__main__")
    }
    assert report.modules() == expected

    version = agent_only.run("vigil-agent", "--version", cwd=outside)
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"vigil-agent {vigil.__version__}"
    config = agent_only.package / "config" / "agent.yaml"
    checked = agent_only.run("vigil-agent", "--config", str(config), "check", cwd=outside)
    _assert_every_check_evaluated(checked, config)


def _assert_every_check_evaluated(checked: subprocess.CompletedProcess[str], config: Path) -> None:
    """Every check of ``config`` has a row, and the exit status follows the table (0 when
    all are OK, 1 otherwise): the machine's own load (cpu.busy CRITICAL on a busy CI host)
    must not decide the test."""
    rows = [line.split() for line in checked.stdout.splitlines()[1:] if line.strip()]
    configured = yaml.safe_load(config.read_text(encoding="utf-8"))["checks"]
    assert [row[0] for row in rows] == [check["id"] for check in configured], checked.stdout
    expected = 0 if all(row[1] == "OK" for row in rows) else 1
    assert checked.returncode == expected, checked.stdout + checked.stderr
    assert "Traceback" not in checked.stderr
