"""``vigil-collector operator ...`` as real processes next to a running collector: the
token printed once works within the refresh delay, a removed one stops working, and
both changes are in the audit log with the CLI's actor."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.procs import collector_config, get_json, start_collector, stop, wait_for

AGENT_TOKEN = "opcli-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "opcli-admin-token-0123456789abcdef0123456789abcdef"


def operator(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vigil.collector", "operator", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def status_with(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_cli_operators_take_effect_in_a_running_collector_and_are_audited(
    tmp_path: Path,
) -> None:
    config = collector_config(tmp_path, agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN)
    proc, url = start_collector(config, tmp_path / "collector.log")
    try:
        added = operator(config, "add", "vera", "--role", "viewer")
        assert added.returncode == 0, added.stderr
        token = added.stdout.splitlines()[-1]
        assert token.startswith("vigil_op_")
        hosts = f"{url}/api/v1/hosts"
        wait_for("the new viewer's token to work", lambda: status_with(hosts, token) == 200)
        assert status_with(f"{url}/api/v1/audit", token) == 403

        listed = operator(config, "list")
        assert listed.returncode == 0 and listed.stdout.startswith("vera\tviewer\t")
        assert token not in listed.stdout

        removed = operator(config, "remove", "vera")
        assert removed.returncode == 0, removed.stderr
        wait_for("the removed viewer's token to fail", lambda: status_with(hosts, token) == 401)

        records = get_json(f"{url}/api/v1/audit", ADMIN_TOKEN)["records"]
        assert [(r["action"], r["target"], r["peer"]) for r in records] == [
            ("operator.remove", "operator:vera", "local"),
            ("operator.add", "operator:vera", "local"),
        ]
        assert all(r["actor"].startswith("cli:") for r in records)
    finally:
        assert stop(proc) == 0


def test_cli_refuses_a_bad_role_or_name_with_exit_2_and_an_unknown_operator_with_1(
    tmp_path: Path,
) -> None:
    config = collector_config(tmp_path, agent_token=AGENT_TOKEN)
    bad_role = operator(config, "add", "x", "--role", "root")
    bad_name = operator(config, "add", "Not Valid", "--role", "viewer")
    unknown = operator(config, "rotate", "nobody")
    assert bad_role.returncode == 2 and "--role" in bad_role.stderr
    assert bad_name.returncode == 2 and "name" in bad_name.stderr
    assert unknown.returncode == 1 and "nobody" in unknown.stderr
