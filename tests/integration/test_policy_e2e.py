"""Central policy end to end with real processes: ``vigil-collector policy keygen`` and
``sign`` offline, ``publish`` through the store, a real collector and a real enrolled
agent that fetches, verifies and applies the bundle, then ``run-now`` reaching the agent
and its corrective-action record linked back to the request with who asked, and the
kill switch in ``/metrics``. Plain HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import get_json, read_metrics, spawn_agent, start_collector, stop, wait_for

ADMIN_TOKEN = "policy-admin-token-0123456789abcdef0123456789abcdef"

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX sh remediation scripts")

MANIFEST = """\
id: mark
title: Write a marker file
description: Appends the run's request to the file named by the path parameter.
platforms: [linux, darwin]
scripts: {linux: mark.sh, darwin: mark.sh}
timeout: 10s
cooldown: 1s
params:
  path: {description: where to write, required: true}
"""
SCRIPT = '#!/bin/sh\necho "ran" >> "$VIGIL_PARAM_PATH"\n'


def cli(folder: Path, *args: str, config: bool = True) -> subprocess.CompletedProcess[str]:
    """``vigil-collector policy ARGS`` (with ``--config`` unless offline)."""
    extra = ["--config", str(folder / "collector.yaml")] if config else []
    return subprocess.run(
        [sys.executable, "-m", "vigil.collector", "policy", *extra, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=folder,
    )


def ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout.startswith(("{", "[")) else result.stdout


def test_sign_publish_apply_run_now_and_halt(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    out = ok(cli(tmp_path, "keygen", "--out", str(keys), config=False))
    assert out.startswith("key ") and (keys / "policy-key.pem").stat().st_mode & 0o777 == 0o600
    (tmp_path / "collector.yaml").write_text(
        "listen: {host: 127.0.0.1, port: 0}\n"
        "storage: {sqlite_path: collector.db}\n"
        f"auth: {{admin_tokens: [{ADMIN_TOKEN}]}}\n"
        "policy: {trusted_keys: [keys/policy-key.pub], refresh: 200ms}\n"
    )
    marker = tmp_path / "marker"
    source = tmp_path / "src"
    (source / "remediations" / "mark").mkdir(parents=True)
    (source / "remediations" / "mark" / "remediation.yaml").write_text(MANIFEST)
    (source / "remediations" / "mark" / "mark.sh").write_text(SCRIPT)
    (source / "policy.yaml").write_text(
        f"checks: []\nremediation:\n  enabled:\n    mark: {{path: {marker}}}\n"
    )
    signed = tmp_path / "p1.vpol"
    sign = ["sign", str(source), "--key", str(keys / "policy-key.pem"), "--policy", "finance"]
    ok(
        cli(
            tmp_path, *sign, "--version", "1", "--expires", "1d", "--out", str(signed), config=False
        )
    )

    # A bundle changed after signing is refused by the CLI publish, naming the reason.
    tampered = tmp_path / "bad.vpol"
    document = signed.read_bytes()
    assert b"finance" in document
    tampered.write_bytes(document.replace(b"finance", b"financf", 1))  # in the manifest
    refused = cli(tmp_path, "publish", str(tampered))
    assert refused.returncode == 2 and "bad_signature" in refused.stderr

    proc, url = start_collector(tmp_path / "collector.yaml", tmp_path / "collector.log")
    agent_proc = None
    try:
        secret = tmp_path / "secret"
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "vigil.collector",
                "--config",
                str(tmp_path / "collector.yaml"),
                "enroll-secret",
                "create",
                "--out",
                str(secret),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert created.returncode == 0, created.stderr
        agent_dir = tmp_path / "agent"
        agent_dir.mkdir()
        config = agent_dir / "agent.yaml"
        config.write_text(
            "agent: {state_dir: state, hostname: ws-policy}\n"
            f'collector: {{url: "{url}"}}\n'
            "intervals: {sample: 300ms, report: 300ms, heartbeat: 1s, metrics: 5s}\n"
            "shipping: {start_jitter: 0s, backoff_base: 100ms, backoff_cap: 500ms}\n"
            "sampler: {disk_mounts: []}\n"
            "checks: []\n"
        )
        enrolled = subprocess.run(
            [
                sys.executable,
                "-m",
                "vigil.agent",
                "--config",
                str(config),
                "enroll",
                "--secret-file",
                str(secret),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert enrolled.returncode == 0, enrolled.stderr
        agent_id = (agent_dir / "state" / "agent-id").read_text().strip()
        agent_proc = spawn_agent(config, agent_dir / "agent.log", unbuffered=True)

        row = ok(cli(tmp_path, "publish", str(signed), "--rings", "1.0"))
        assert (row["policy"], row["version"]) == ("finance", 1)
        wait_for(
            "the agent to run finance@1",
            lambda: ok(cli(tmp_path, "status", "finance"))["running"] == {"1": 1} or None,
            timeout_s=30,
        )

        request = ok(cli(tmp_path, "run-now", "mark", "--host", agent_id))
        status = wait_for(
            "the run-now result",
            lambda: (s := ok(cli(tmp_path, "run-now-status", request["id"])))["results"] and s,
            timeout_s=30,
        )
        (result,) = status["results"]
        assert result["host"] == agent_id and status["requested_by"].startswith("cli:")
        assert marker.read_text() == "ran\n"  # once: a repeated ack does not run it again
        runs = get_json(f"{url}/api/v1/remediations/runs?remediation=mark", ADMIN_TOKEN)["runs"]
        assert [r["event_id"] for r in runs] == [result["event_id"]]
        # The corrective-action record carries the request and who asked.
        assert runs[0]["request_id"] == request["id"]
        assert runs[0]["requested_by"] == status["requested_by"]
        audit = get_json(f"{url}/api/v1/audit?action=policy.run_now", ADMIN_TOKEN)["records"]
        assert audit[0]["actor"] == status["requested_by"]

        ok(cli(tmp_path, "halt", "mark", "--reason", "test"))
        key = ("vigil_remediations_paused", (("remediation", "mark"),))
        wait_for(
            "the halt in /metrics",
            lambda: read_metrics(f"{url}/metrics", ADMIN_TOKEN).get(key) == 1.0 or None,
            timeout_s=10,
        )
    finally:
        if agent_proc is not None:
            stop(agent_proc)
        assert stop(proc) == 0, (tmp_path / "collector.log").read_text()
