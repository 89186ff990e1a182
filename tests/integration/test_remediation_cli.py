"""``vigil-agent remediation list | validate DIR | test DIR``, run as the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "remediations"
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX sh scripts")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vigil.agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "VIGIL_AGENT_CONFIG": "/nonexistent/agent.yaml"},
    )


def remediation(library: Path, rem_id: str, script: str, **manifest: Any) -> Path:
    folder = library / rem_id
    folder.mkdir(parents=True)
    (folder / "fix.sh").write_text(script)
    data: dict[str, Any] = {
        "id": rem_id,
        "title": "A test remediation",
        "description": "Does a test thing.",
        "platforms": ["linux", "darwin"],
        "scripts": {"linux": "fix.sh", "darwin": "fix.sh"},
        "verify": {"delay": "0s"},
    }
    data.update(manifest)
    (folder / "remediation.yaml").write_text(yaml.safe_dump(data))
    return folder


# --- list ---------------------------------------------------------------------------------


def test_list_shows_every_shipped_remediation_with_its_trigger() -> None:
    done = cli("remediation", "list", str(SHIPPED))

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "PLATFORMS", "TRIGGER", "RUN"]
    ids = [line.split()[0] for line in lines[1:]]
    assert ids == sorted(p.name for p in SHIPPED.iterdir() if (p / "remediation.yaml").exists())
    assert any("service-restart" in line and "detection every 60s" in line for line in lines)


def test_list_reports_a_bad_manifest_and_still_lists_the_others(tmp_path: Path) -> None:
    remediation(tmp_path, "good-one", "echo ok\n")
    remediation(tmp_path, "bad-one", "echo ok\n", timout="5s")

    done = cli("remediation", "list", str(tmp_path))

    assert done.returncode == 2
    assert "good-one" in done.stdout
    assert str(tmp_path / "bad-one" / "remediation.yaml") in done.stderr
    assert "timout: unknown key" in done.stderr


def test_list_without_folders_and_without_a_config_is_a_config_error() -> None:
    done = cli("remediation", "list")

    assert done.returncode == 2
    assert "/nonexistent/agent.yaml" in done.stderr


# --- validate -----------------------------------------------------------------------------


def test_validate_accepts_a_good_folder() -> None:
    done = cli("remediation", "validate", str(SHIPPED / "log-rotate"))

    assert (done.returncode, done.stdout.strip()) == (
        0,
        "ok: log-rotate (linux, darwin, windows; logs.size warning/critical)",
    )


def test_validate_names_the_file_and_the_typod_key(tmp_path: Path) -> None:
    folder = remediation(tmp_path, "typo", "echo\n", cooldwn="5m")

    done = cli("remediation", "validate", str(folder))

    assert done.returncode == 2
    assert f"{folder / 'remediation.yaml'}: cooldwn: unknown key" in done.stderr


@posix_only
def test_validate_refuses_a_script_others_can_write(tmp_path: Path) -> None:
    folder = remediation(tmp_path, "loose", "echo\n")
    (folder / "fix.sh").chmod(0o666)

    done = cli("remediation", "validate", str(folder))

    assert done.returncode == 2
    assert "writable by group or others" in done.stderr


# --- test ---------------------------------------------------------------------------------


def report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


@posix_only
def test_test_runs_detection_remediation_and_verification_on_a_real_daemon(
    tmp_path: Path,
) -> None:
    start = tmp_path / "vgl-cli-daemon"
    start.write_text("#!/bin/sh\nexec sleep 300\n")
    start.chmod(0o755)
    pidfile = tmp_path / "d.pid"
    params = {
        "service": "clitest",
        "manager": "pidfile",
        "pidfile": str(pidfile),
        "start": str(start),
    }
    args = [arg for k, v in params.items() for arg in ("--param", f"{k}={v}")]

    done = cli("remediation", "test", str(SHIPPED / "service-restart"), "--json", *args)

    try:
        out = report(done)
        assert done.returncode == 0
        assert (out["detection"]["exit_code"], out["verification"]["exit_code"]) == (1, 0)
        record = out["record"]
        assert (record["outcome"], record["check"]) == ("fixed", "detect.service-restart")
        assert (record["value_before"], record["value_after"]) == (1.0, 0.0)
        assert len(record["script_sha256"]) == 64
        assert psutil.Process(int(pidfile.read_text())).name() == "sleep"
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


@posix_only
def test_test_dry_run_passes_the_flag_and_reports_dry_run(tmp_path: Path) -> None:
    folder = remediation(
        tmp_path, "careful", '#!/bin/sh\necho "dry=$VIGIL_DRY_RUN phase=$VIGIL_PHASE"\n'
    )

    out = report(cli("remediation", "test", str(folder), "--dry-run", "--json"))

    assert out["record"]["outcome"] == "dry_run"
    assert out["record"]["output"] == "dry=1 phase=remediate\n"


@posix_only
def test_test_does_not_remediate_when_detection_finds_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = remediation(
        tmp_path,
        "quiet",
        f'#!/bin/sh\ntouch "{marker}"\n',
        trigger={"detection": {"linux": "detect.sh", "darwin": "detect.sh"}},
    )
    (folder / "detect.sh").write_text("#!/bin/sh\nexit 0\n")

    done = cli("remediation", "test", str(folder), "--json")

    assert done.returncode == 0
    assert report(done)["result"].startswith("no issue detected")
    assert not marker.exists()


@posix_only
def test_test_of_a_failing_script_reports_error_and_exits_1(tmp_path: Path) -> None:
    folder = remediation(tmp_path, "broken", "#!/bin/sh\necho oops\nexit 137\n")

    done = cli("remediation", "test", str(folder), "--json")

    out = report(done)
    assert done.returncode == 1
    assert (out["record"]["outcome"], out["record"]["exit_code"]) == ("error", 137)
    assert out["reason"] == "exit 137 (likely killed by signal 9)"


def test_test_rejects_an_undeclared_param(tmp_path: Path) -> None:
    folder = remediation(tmp_path, "strict", "echo\n")

    done = cli("remediation", "test", str(folder), "--param", "colour=red")

    assert done.returncode == 2
    assert "has no parameter 'colour'" in done.stderr


# --- issue 14: hostile bundles, refusals, readable output ---------------------------------


def broken_library(library: Path) -> None:
    """A good bundle beside four that must each fail alone."""
    remediation(library, "good", "echo ok\n")
    remediation(library, "latin1", "echo\n")
    with (library / "latin1" / "remediation.yaml").open("ab") as f:
        f.write(b"# caf\xe9\n")
    remediation(library, "huge-cap", "echo\n", output_cap="9" * 400 + "KiB")
    deep = remediation(library, "deep", "echo\n")
    with (deep / "remediation.yaml").open("a") as f:
        f.write("params: " + "[" * 20_000 + "]" * 20_000 + "\n")
    folder = remediation(library, "nan-timeout", "echo\n")
    with (folder / "remediation.yaml").open("a") as f:
        f.write("timeout: .nan\n")


def test_list_shows_each_broken_bundle_as_not_loaded_with_its_reason(tmp_path: Path) -> None:
    broken_library(tmp_path)

    done = cli("remediation", "list", str(tmp_path))

    assert done.returncode == 2, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert "NOT LOADED" not in rows["good"]
    assert "not valid UTF-8" in rows["latin1"]
    assert "must be a finite number" in rows["huge-cap"]
    assert "nested deeper" in rows["deep"]
    assert "must be a finite number" in rows["nan-timeout"]
    for bundle in ("latin1", "huge-cap", "deep", "nan-timeout"):
        assert "NOT LOADED" in rows[bundle]
        assert str(tmp_path / bundle / "remediation.yaml") in done.stderr
    assert "Traceback" not in done.stderr


@posix_only
def test_test_refuses_a_bundle_that_is_a_symlink_out_of_the_library(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    remediation(tmp_path / "elsewhere", "sneaky", f'#!/bin/sh\ntouch "{marker}"\n')
    library = tmp_path / "library"
    library.mkdir()
    (library / "sneaky").symlink_to(tmp_path / "elsewhere" / "sneaky")

    done = cli("remediation", "test", str(library / "sneaky"))

    assert done.returncode == 2
    assert "outside the allowed folders" in done.stderr
    assert not marker.exists()


@posix_only
def test_test_refuses_a_manifest_that_is_a_symlink_out_of_its_bundle(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    outside = remediation(tmp_path / "elsewhere", "odd", f'#!/bin/sh\ntouch "{marker}"\n')
    folder = tmp_path / "library" / "odd"
    folder.mkdir(parents=True)
    (folder / "fix.sh").write_text(f'#!/bin/sh\ntouch "{marker}"\n')
    (folder / "remediation.yaml").symlink_to(outside / "remediation.yaml")

    done = cli("remediation", "test", str(folder))
    listed = cli("remediation", "list", str(tmp_path / "library"))

    assert done.returncode == 2
    assert f"{folder / 'remediation.yaml'}: must be a file inside {folder}" in done.stderr
    assert not marker.exists()
    assert "NOT LOADED" in listed.stdout


@posix_only
def test_test_of_a_manifest_without_verify_delay_prints_its_outcome(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "junk.tmp").write_text("x")

    done = cli("remediation", "test", str(SHIPPED / "demo-cleanup"), "--param", f"dir={spool}")

    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "remediation demo-cleanup on " in done.stdout
    assert "outcome: fixed" in done.stdout
    assert not (spool / "junk.tmp").exists()


@posix_only
def test_a_dry_run_the_script_refuses_is_an_error_with_a_non_zero_exit(tmp_path: Path) -> None:
    done = cli(
        "remediation",
        "test",
        str(SHIPPED / "demo-cleanup"),
        "--param",
        f"dir={tmp_path / 'absent'}",
        "--dry-run",
        "--json",
    )

    out = report(done)
    assert done.returncode == 1
    assert (out["record"]["outcome"], out["record"]["exit_code"]) == ("error", 3)
    assert out["reason"] == "dry run failed: exit 3"


@pytest.mark.parametrize("delay", ["nan", "-1", "inf"])
def test_a_verify_delay_that_is_not_a_duration_is_a_usage_error(tmp_path: Path, delay: str) -> None:
    folder = remediation(tmp_path, "patient", "echo\n")

    done = cli("remediation", "test", str(folder), "--verify-delay", delay)

    assert done.returncode == 2
    assert (
        f"argument --verify-delay: expected a duration such as 30s, 2m or 1h (got '{delay}')"
        in (done.stderr)
    )
