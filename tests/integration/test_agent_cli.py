"""``vigil-agent run`` and ``check`` as processes: one preflight, options anywhere,
readable output (issue #14)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "remediations"
TOKEN = "cli-agent-token-0123456789abcdef0123456789abcdef"


def agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vigil.agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "VIGIL_AGENT_CONFIG": "/nonexistent/agent.yaml"},
    )


def write_config(tmp_path: Path, body: str, *, state_dir: str = "state") -> Path:
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"agent: {{state_dir: {state_dir}}}\n"
        # An address nothing listens on: ``run`` must fail before it ever delivers.
        f"collector: {{url: 'http://127.0.0.1:9', token: {TOKEN}}}\n"
        "sampler: {disk_mounts: [/]}\n" + body
    )
    return config


ROOT_FREE = '  - {id: root.free, metric: "disk.free_bytes[/]", critical: 1, op: "<"}\n'


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        (
            "checks:\n"
            '  - {id: root, metric: "disk.used_percent[/]", critical: 101,'
            " remediation: {id: no-such-fix}}\n"
            f"remediation: {{folders: [{SHIPPED}]}}\n",
            "checks[0].remediation",
            "no such remediation in remediation.folders",
        ),
        (
            f"checks:\n{ROOT_FREE}"
            f"remediation: {{folders: [{SHIPPED}], enable: [log-rotate],"
            " params: {log-rotate: {dir: /tmp}}}\n",
            "remediation.enable[0]",
            "its trigger check logs.size is not configured in checks",
        ),
        (
            "checks:\n"
            '  - {id: logs.size, metric: "disk.used_percent[/]", critical: 101}\n'
            f"remediation: {{folders: [{SHIPPED}], enable: [log-rotate]}}\n",
            "remediation.params.log-rotate",
            "enabled remediation log-rotate requires dir",
        ),
    ],
    ids=["unknown-remediation-id", "trigger-check-not-configured", "required-param-unset"],
)
@pytest.mark.parametrize("command", ["check", "run"])
def test_check_and_run_refuse_the_same_config_the_same_way(
    tmp_path: Path, command: str, body: str, key: str, message: str
) -> None:
    config = write_config(tmp_path, body)

    done = agent("--config", str(config), command, timeout=30)

    assert done.returncode == 2, done.stderr
    assert f"{config}: {key}: {message}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_state_dir_under_a_regular_file_is_a_config_error(tmp_path: Path, command: str) -> None:
    (tmp_path / "afile").write_text("")
    config = write_config(tmp_path, "", state_dir=str(tmp_path / "afile" / "state"))

    done = agent("--config", str(config), command, timeout=30)

    assert done.returncode == 2
    assert f"{config}: agent.state_dir: " in done.stderr
    assert f"{tmp_path / 'afile'} is not a folder" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--config", "{config}", "--log-level", "ERROR", "check"],
        ["check", "--config", "{config}", "--log-level", "ERROR"],
        ["--log-level", "ERROR", "check", "--config", "{config}"],
    ],
    ids=["before", "after", "mixed"],
)
def test_global_options_go_before_or_after_the_command(tmp_path: Path, args: list[str]) -> None:
    config = write_config(tmp_path, f"checks:\n{ROOT_FREE}")

    done = agent(*(a.format(config=config) for a in args))

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[:2] == ["root.free", "OK"]


def test_remediation_list_takes_the_config_after_the_command_too(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"remediation: {{folders: [{SHIPPED}]}}\n")

    done = agent("remediation", "list", "--config", str(config))

    assert done.returncode == 0, done.stderr
    assert "log-rotate" in done.stdout


def test_check_table_shows_bytes_in_binary_units(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        'checks:\n  - {id: root.free, metric: "disk.free_bytes[/]", critical: 1048576, op: "<"}\n',
    )

    done = agent("--config", str(config), "check")

    assert done.returncode == 0, done.stderr
    row = done.stdout.splitlines()[1]
    assert "e+" not in row
    assert row.split()[3] in ("KiB", "MiB", "GiB", "TiB")  # VALUE: "78.0 GiB"
    assert "1.0 MiB" in row  # the critical threshold


def test_check_counts_the_unknown_checks_and_says_why(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        f'checks:\n{ROOT_FREE}  - {{id: typo, metric: "disk.used_prcent[/]", critical: 95}}\n',
    )

    done = agent("--config", str(config), "check")

    assert done.returncode == 1
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:] if line.strip()}
    assert "UNKNOWN" in rows["typo"]
    assert "did you mean disk.used_percent[/]?" in rows["typo"]
    assert done.stdout.rstrip().endswith("1 of 2 checks unknown: typo")


ADMIN = "cli-admin-token-0123456789abcdef0123456789abcdef"


def test_a_real_agent_with_a_broken_bundle_runs_and_tells_the_collector(tmp_path: Path) -> None:
    """One bad manifest (a Latin-1 byte) must not stop ``vigil-agent run``: the check that
    names it runs without it, and the collector hears ``agent.remediations`` critical."""
    from tests.support.procs import running_collector, spawn_agent, stop

    lib = tmp_path / "lib"
    (lib / "cursed").mkdir(parents=True)
    (lib / "cursed" / "remediation.yaml").write_bytes(b"id: cursed\ntitle: caf\xe9\n")
    with running_collector(tmp_path, agent_token=TOKEN, admin_token=ADMIN) as collector:
        config = tmp_path / "agent.yaml"
        config.write_text(
            "agent: {state_dir: state}\n"
            f"collector: {{url: '{collector.url}', token: {TOKEN}}}\n"
            "intervals: {sample: 300ms, report: 300ms, heartbeat: 2s, metrics: 5s}\n"
            f"remediation: {{folders: [{lib}, {SHIPPED}]}}\n"
            "checks:\n"
            '  - {id: root, metric: "disk.used_percent[/]", critical: 101,'
            " remediation: {id: cursed}}\n"
        )
        log = tmp_path / "agent.log"
        agent_proc = spawn_agent(config, log, cwd=REPO, unbuffered=True)
        checks: dict[str, str] = {}
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and agent_proc.poll() is None:
                hosts = collector.get("/api/v1/hosts")["hosts"]
                checks = hosts[0]["checks"] if hosts else {}
                if checks.get("agent.remediations") and checks.get("root"):
                    break
                time.sleep(0.2)
        finally:
            assert stop(agent_proc) == 0, log.read_text()

    assert (checks.get("agent.remediations"), checks.get("root")) == ("critical", "ok")
    text = log.read_text()
    assert "remediation not loaded: " in text and "not valid UTF-8" in text
    assert "check root runs without its remediation cursed (not loaded)" in text
