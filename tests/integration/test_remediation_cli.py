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

    done = cli("remediation", "test", str(SHIPPED / "service-restart"), *args)

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

    out = report(cli("remediation", "test", str(folder), "--dry-run"))

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

    done = cli("remediation", "test", str(folder))

    assert done.returncode == 0
    assert report(done)["result"].startswith("no issue detected")
    assert not marker.exists()


@posix_only
def test_test_of_a_failing_script_reports_error_and_exits_1(tmp_path: Path) -> None:
    folder = remediation(tmp_path, "broken", "#!/bin/sh\necho oops\nexit 137\n")

    done = cli("remediation", "test", str(folder))

    out = report(done)
    assert done.returncode == 1
    assert (out["record"]["outcome"], out["record"]["exit_code"]) == ("error", 137)
    assert out["reason"] == "exit 137 (likely killed by signal 9)"


def test_test_rejects_an_undeclared_param(tmp_path: Path) -> None:
    folder = remediation(tmp_path, "strict", "echo\n")

    done = cli("remediation", "test", str(folder), "--param", "colour=red")

    assert done.returncode == 2
    assert "has no parameter 'colour'" in done.stderr
