"""``packaging/build_deb.py``'s pure parts: the Debian version and the config rewrite."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.build_deb import SCRIPT, load_build_deb
from tests.support.peers import unavailable

REPO = Path(__file__).resolve().parents[2]


build_deb = load_build_deb()


@pytest.mark.parametrize(
    ("pep440", "debian"),
    [
        ("0.1.0", "0.1.0"),
        ("1.2.0rc1", "1.2.0~rc1"),
        ("1.2.0.dev3", "1.2.0~dev3"),
        ("2.0a1", "2.0~a1"),
        ("2.0b2", "2.0~b2"),
    ],
    ids=["release", "release-candidate", "dev", "alpha", "beta"],
)
def test_pre_releases_sort_before_the_release_in_debian(pep440: str, debian: str) -> None:
    assert build_deb.debian_version(pep440) == debian


@pytest.mark.parametrize("pre", ["1.0~rc1", "1.0~dev2", "1.0~a1"])
def test_dpkg_agrees_that_the_mapped_pre_release_is_older(pre: str) -> None:
    """The point of the ``~``: dpkg must upgrade 1.0~rc1 to 1.0, not the other way."""
    if shutil.which("dpkg") is None:
        unavailable("dpkg not found (not a Debian system)")
    done = subprocess.run(
        ["dpkg", "--compare-versions", pre, "lt", "1.0"], capture_output=True, timeout=10
    )
    assert done.returncode == 0


def test_the_example_config_names_the_library_the_package_rewrites() -> None:
    """The package's /etc/vigil/agent.yaml must point at /etc/vigil/remediations: the
    rewrite finds exactly one ``folders: [../remediations]`` in config/agent.yaml."""
    text = (REPO / "config" / "agent.yaml").read_text(encoding="utf-8")
    rewritten, count = build_deb.LIBRARY_LINE.subn(r"\1[remediations]", text)
    assert count == 1
    assert "folders: [remediations]" in rewritten and "../remediations" not in rewritten


def test_bad_python_versions_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_deb.main(["--pythons", "3.11;rm -rf /"])
    assert exited.value.code == 2
    assert "--pythons" in capsys.readouterr().err


def test_unknown_architecture_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(build_deb.BuildError, match="architecture 's390x'"):
        build_deb.build(tmp_path, ["3.11"], "s390x")
    assert list(tmp_path.iterdir()) == []


def test_the_script_runs_from_anywhere() -> None:
    """``--help`` through the interpreter, from another folder: the imports resolve."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    assert "--pythons" in done.stdout
