"""The agent's Debian package: built by ``packaging/build_deb.py`` (``make package``),
installed on this machine with ``dpkg -i``, run against a real collector, then purged.

The ``.deb`` is built once per session (the wheel, then the dependency wheels from the
package index). The build and content checks need only ``dpkg-deb``; installing needs
root, ``python3-venv`` (the package's dependency) and a machine where the package and its
paths are absent, because the test really installs ``vigil-agent`` and purges it at the
end (also when a test fails): it never touches a ``vigil-agent`` it did not install. On a
machine where systemd runs, postinst would enable and start a real agent service, so the
install tests skip there; CI (no systemd as PID 1) is where they run. Missing tools or
index skip locally and fail under ``CI=true``.

The tests after the install share it and run in file order; the last one purges. A lock
in ``/run/lock`` keeps two sessions on one machine from installing at the same time.
"""

from __future__ import annotations

import configparser
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vigil
from tests.support.build_deb import SCRIPT, load_build_deb
from tests.support.peers import INDEX_TROUBLE, unavailable
from tests.support.procs import Collector, collector_config, start_collector, stop, wait_for
from vigil.agent.config import load_agent_config
from vigil.agent.svc.install import ServiceSpec, systemd_unit

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "vigil-agent"
PREFIX = Path("/opt/vigil-agent")
AGENT = PREFIX / "venv" / "bin" / "vigil-agent"
UNIT = Path("/usr/lib/systemd/system/vigil-agent.service")
ETC = Path("/etc/vigil")
STATE = Path("/var/lib/vigil")
# Everything the package puts on the machine; none may exist before the test installs it.
WANTS = Path("/etc/systemd/system/multi-user.target.wants/vigil-agent.service")
FOOTPRINT = (PREFIX, ETC, STATE, UNIT, WANTS, Path("/usr/bin/vigil-agent"))
SYSTEMD_RUNNING = Path("/run/systemd/system")
# Two test sessions on one machine (two checkouts) must not install, test and purge the
# one system package at the same time: the install tests hold this lock throughout.
LOCK = Path("/run/lock/vigil-test-deb-package.lock")
LOCK_WAIT_S = 300.0
PYTHONS = ("3.11", "3.12", "3.13")
AGENT_TOKEN = "deb-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "deb-admin-token-0123456789abcdef0123456789abcdef"
BUILD_TIMEOUT_S = 600.0
DPKG_TIMEOUT_S = 180.0
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S + DPKG_TIMEOUT_S)


def _run(argv: list[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with this environment minus what would point Python elsewhere."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "VIGIL_AGENT_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout_s, check=False, env=env, cwd="/"
    )


def _package_known() -> bool:
    """dpkg knows ``vigil-agent`` (installed, half-installed or config-files only)."""
    done = _run(["dpkg-query", "--show", "--showformat=${Status}", PACKAGE])
    return done.returncode == 0 and "not-installed" not in done.stdout


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, built by ``packaging/build_deb.py`` (what ``make package`` runs)."""
    if shutil.which("dpkg-deb") is None:
        unavailable("dpkg-deb not found (Debian package dpkg)")
    out = tmp_path_factory.mktemp("deb")
    done = _run([sys.executable, str(SCRIPT), "--out", str(out)], BUILD_TIMEOUT_S)
    if done.returncode != 0:
        if INDEX_TROUBLE.search(done.stderr):
            unavailable(f"build_deb could not download the dependency wheels:\n{done.stderr}")
        pytest.fail(f"build_deb failed (exit {done.returncode}):\n{done.stderr}")
    deb = Path(done.stdout.strip().splitlines()[-1])
    assert deb.parent == out and deb.is_file(), done.stdout
    return deb


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's files, extracted (``dpkg-deb -x``) into a folder."""
    root = tmp_path_factory.mktemp("unpacked")
    done = _run(["dpkg-deb", "-x", str(deb), str(root)])
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture(scope="module")
def installed(deb: Path) -> Iterator[str]:
    """``dpkg -i`` of the package on this machine (its output), purged afterwards."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        unavailable("installing a .deb needs root (CI runs as root)")
    if SYSTEMD_RUNNING.is_dir():
        pytest.skip("systemd runs here: postinst would enable and start a real agent service")
    venv_pkg = _run(["dpkg-query", "--show", "--showformat=${Status}", "python3-venv"])
    if "install ok installed" not in venv_pkg.stdout:
        unavailable(
            "python3-venv is not installed (the package depends on it; .ci/run installs it)"
        )
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as lock:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    unavailable(f"another test session held {LOCK} for {LOCK_WAIT_S:.0f} s")
                time.sleep(1.0)
        present = [str(p) for p in FOOTPRINT if p.exists() or p.is_symlink()]
        if _package_known() or present:
            unavailable(
                f"{PACKAGE} or its paths already exist here ({present or 'dpkg knows it'}): the "
                "test installs and purges the package and will not touch one it did not install"
            )
        try:
            done = _run(["dpkg", "-i", str(deb)], DPKG_TIMEOUT_S)
            assert done.returncode == 0, done.stdout + done.stderr
            yield done.stdout + done.stderr
        finally:
            _run(["dpkg", "--purge", PACKAGE], DPKG_TIMEOUT_S)


def test_the_package_names_its_dependencies_and_ships_every_wheel(deb: Path) -> None:
    fields = _run(["dpkg-deb", "--field", str(deb), "Package", "Version", "Depends"])
    assert fields.returncode == 0, fields.stderr
    assert fields.stdout.splitlines() == [
        f"Package: {PACKAGE}",
        f"Version: {load_build_deb().debian_version(vigil.__version__)}",
        "Depends: python3 (>= 3.11), python3 (<< 3.14), python3-venv",
    ]
    listing = _run(["dpkg-deb", "--contents", str(deb)]).stdout
    wheels = [line.rsplit("/", 1)[-1] for line in listing.splitlines() if line.endswith(".whl")]
    assert f"vigil-{vigil.__version__}-py3-none-any.whl" in wheels
    for dist in ("orjson", "pyyaml"):  # compiled per CPython version
        for version in PYTHONS:
            tag = "cp" + version.replace(".", "")
            assert any(w.startswith(f"{dist}-") and f"-{tag}-" in w for w in wheels), (dist, tag)
    assert any(w.startswith("psutil-") and "-abi3-" in w for w in wheels), wheels
    # Nothing of the collector's web stack travels to a laptop.
    assert not [w for w in wheels if w.startswith(("aiohttp", "prometheus_client"))], wheels


def test_every_file_under_etc_is_a_conffile(deb: Path, unpacked: Path) -> None:
    """An admin's edits to the config or a shipped remediation survive upgrades."""
    conffiles = _run(["dpkg-deb", "--info", str(deb), "conffiles"]).stdout.split()
    shipped = sorted("/" + p.relative_to(unpacked).as_posix() for p in unpacked.glob("etc/**/*"))
    assert conffiles == [f for f in shipped if (unpacked / f.lstrip("/")).is_file()]
    library = {p.parent.name for p in (REPO / "remediations").glob("*/remediation.yaml")}
    assert {Path(f).parent.name for f in conffiles if f.endswith("/remediation.yaml")} == library


def test_the_packaged_unit_is_the_one_service_install_generates(unpacked: Path) -> None:
    unit = (unpacked / UNIT.relative_to("/")).read_text()
    spec = ServiceSpec(config=ETC / "agent.yaml", python=PREFIX / "venv" / "bin" / "python")
    assert unit == systemd_unit(spec)


def test_the_packaged_config_uses_the_library_beside_it(unpacked: Path) -> None:
    config = load_agent_config(unpacked / "etc" / "vigil" / "agent.yaml")
    assert list(config.remediation.folders) == [unpacked / "etc" / "vigil" / "remediations"]
    # Scripts root runs must not be writable by group or others.
    for path in (unpacked / "etc" / "vigil" / "remediations").rglob("*"):
        assert path.stat().st_mode & 0o022 == 0, path


def test_dpkg_installs_the_agent_into_its_own_venv(installed: str) -> None:
    for program in (str(AGENT), "/usr/bin/vigil-agent"):
        version = _run([program, "--version"])
        assert version.returncode == 0, version.stderr
        assert version.stdout.strip() == f"vigil-agent {vigil.__version__}"
    python = str(PREFIX / "venv" / "bin" / "python")
    probe = (
        "import importlib.util as u, vigil; print(vigil.__file__); print(sorted(m for m in "
        "('aiohttp', 'prometheus_client', 'pip', 'setuptools') if u.find_spec(m)))"
    )
    where, absent = _run([python, "-c", probe]).stdout.splitlines()
    assert where.startswith(str(PREFIX / "venv")), where
    # `venv` is a link to the venv postinst built, so an upgrade can switch it atomically.
    assert (PREFIX / "venv").is_symlink()
    assert (PREFIX / "venv").resolve().parent == PREFIX
    assert absent == "[]"
    assert STATE.is_dir() and STATE.stat().st_mode & 0o777 == 0o700


def test_postinst_without_systemd_enables_the_unit_for_the_next_boot_and_says_so(
    installed: str,
) -> None:
    """An image built in a chroot starts the agent at its first boot (Debian's rule for
    packaged services); nothing is started now, and postinst says so."""
    assert UNIT.is_file()
    assert "systemd is not the running init" in installed, installed
    assert "for the next boot" in installed and "systemctl enable --now vigil-agent" in installed
    assert WANTS.is_symlink() and WANTS.resolve() == UNIT.resolve()
    status = _run(["/usr/bin/vigil-agent", "service", "status"])
    assert f"definition: {UNIT} (present)" in status.stdout, status.stdout
    assert "systemd is not the running init" in status.stdout


def test_systemd_analyze_verifies_the_installed_unit(installed: str) -> None:
    """Unlike the generated text alone, the installed unit's ExecStart really exists."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        unavailable("systemd-analyze not installed (Debian package systemd)")
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.read_string(UNIT.read_text())
    assert parser["Service"]["ExecStart"].split()[0] == str(PREFIX / "venv" / "bin" / "python")
    done = _run([tool, "verify", str(UNIT)])
    ours = [line for line in done.stderr.splitlines() if "vigil-agent" in line]
    assert done.returncode == 0 and not ours, done.stderr


def test_the_installed_example_config_sees_the_installed_library(installed: str) -> None:
    listed = _run([str(AGENT), "remediation", "list", str(ETC / "remediations")])
    assert listed.returncode == 0, listed.stderr
    ids = {line.split()[0] for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert ids == {p.parent.name for p in (REPO / "remediations").glob("*/remediation.yaml")}
    # `check` exits 1 when a check is not OK (a busy CI host): only a crash is wrong here.
    checked = _run([str(AGENT), "--config", str(ETC / "agent.yaml"), "check"])
    assert checked.returncode in (0, 1), checked.stderr
    assert checked.stdout.startswith("CHECK") and "Traceback" not in checked.stderr


def test_the_installed_agent_delivers_to_a_real_collector(installed: str, tmp_path: Path) -> None:
    proc, url = start_collector(
        collector_config(tmp_path, agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN),
        tmp_path / "collector.log",
    )
    collector = Collector(url=url, token=ADMIN_TOKEN)
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent: {state_dir: agent-state, labels: {installed: deb}}\n"
        f'collector: {{url: "{url}", token: {AGENT_TOKEN}}}\n'
        "intervals: {sample: 300ms, report: 500ms, heartbeat: 1s, metrics: 2s}\n"
        "sampler: {disk_mounts: []}\n"
        "shipping: {start_jitter: 0}\n"
        f"remediation: {{folders: [{ETC / 'remediations'}]}}\n"
    )
    log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        ["/usr/bin/vigil-agent", "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        cwd=tmp_path,
    )
    try:
        hosts = wait_for(
            "the installed agent to deliver", lambda: collector.get("/api/v1/hosts")["hosts"]
        )
        assert hosts[0]["labels"] == {"installed": "deb"}
        assert stop(agent) == 0, log.read_text()
    finally:
        stop(agent)
        assert stop(proc) == 0, (tmp_path / "collector.log").read_text()


def test_reinstalling_keeps_an_edited_config_and_the_state(installed: str, deb: Path) -> None:
    """The upgrade path (prerm upgrade, new files, postinst configure): conffiles an admin
    edited and the agent's state stay; a new venv replaces the old one and works."""
    config = ETC / "agent.yaml"
    edited = config.read_text() + "# edited by the admin\n"
    config.write_text(edited)
    marker = STATE / "identity-marker"
    marker.write_text("keep me")
    before = (PREFIX / "venv").resolve()
    done = _run(["dpkg", "-i", str(deb)], DPKG_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert config.read_text() == edited
    assert marker.read_text() == "keep me"
    # A new venv was built beside the old one, switched to, and the old one removed.
    after = (PREFIX / "venv").resolve()
    assert after != before and not before.exists()
    assert sorted(p.name for p in PREFIX.iterdir()) == sorted(["venv", after.name, "wheels"])
    assert _run([str(AGENT), "--version"]).stdout.strip() == f"vigil-agent {vigil.__version__}"


def test_purge_removes_the_package_its_venv_config_and_state(installed: str) -> None:
    done = _run(["dpkg", "--purge", PACKAGE], DPKG_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not _package_known()
    assert [str(p) for p in FOOTPRINT if p.exists() or p.is_symlink()] == []
