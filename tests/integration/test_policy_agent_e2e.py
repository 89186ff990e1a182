"""Central policy end to end: a real collector on an ephemeral port, a real agent process,
the real ``vigil-collector policy keygen|sign`` CLI and the admin HTTP API.

- publish -> the running agent fetches, verifies and applies the policy without a
  restart (its check triggers the shipped fix);
- run-now -> the fix runs once, its record linked to the request and who asked;
- kill switch -> the next request is skipped, nothing runs;
- an agent offline during a publish and a halt catches up at its first exchange, having
  restarted on its cached (re-verified) policy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.procs import (
    Collector,
    collector_config,
    spawn_agent,
    start_collector,
    stop,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.name != "posix", reason="POSIX sh remediation scripts"),
]
AGENT_TOKEN = "agent-token-policy-e2e-0123456789abcdef"
ADMIN_TOKEN = "admin-token-policy-e2e-0123456789abcdef"

MANIFEST = """\
id: touch-file
title: Write a marker file
description: Appends why it ran to the file named by the path parameter.
platforms: [linux, darwin]
scripts: {linux: fix.sh, darwin: fix.sh}
timeout: 10s
cooldown: 1h
params:
  path: {description: where to write, required: true}
"""
SCRIPT = '#!/bin/sh\necho "ran ${VIGIL_TRIGGER:-check}" >> "$VIGIL_PARAM_PATH"\n'


def cli(*args: str | Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "vigil.collector", "policy", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def admin(c: Collector, method: str, path: str, body: bytes | None = None, **hdr: str) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **hdr}
    request = urllib.request.Request(c.url + path, data=body, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def publish(c: Collector, document: Path) -> Any:
    return admin(
        c,
        "POST",
        "/api/v1/policies?rings=1.0",
        document.read_bytes(),
        **{"Content-Type": "application/vnd.vigil.policy+json"},
    )


def sign(tmp_path: Path, source: Path, version: int) -> Path:
    out = tmp_path / f"finance-{version}.vpol"
    cli(
        "sign",
        source,
        "--key",
        tmp_path / "keys" / "policy-key.pem",
        "--policy",
        "finance",
        "--version",
        str(version),
        "--expires",
        "30d",
        "--out",
        out,
    )
    return out


def policy_source(tmp_path: Path, marker: Path, critical: float) -> Path:
    """A policy whose memory check is critical at ``critical`` % and runs touch-file."""
    root = tmp_path / f"source-{critical:g}"
    folder = root / "remediations" / "touch-file"
    folder.mkdir(parents=True)
    (folder / "remediation.yaml").write_text(MANIFEST)
    (folder / "fix.sh").write_text(SCRIPT)
    check = {
        "id": "policy.mem",
        "metric": "memory.used_percent",
        "op": ">=",
        "critical": critical,
        "remediation": {"id": "touch-file"},
    }
    policy = {"checks": [check], "remediation": {"enabled": {"touch-file": {"path": str(marker)}}}}
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    return root


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Collector, str]]:
    cli("keygen", "--out", tmp_path / "keys")
    public = (tmp_path / "keys" / "policy-key.pub").read_text().strip()
    config = collector_config(
        tmp_path,
        agent_token=AGENT_TOKEN,
        admin_token=ADMIN_TOKEN,
        extra=f"policy: {{trusted_keys: ['{public}'], refresh: 200ms}}\n",
    )
    proc, url = start_collector(config, tmp_path / "collector.log")
    yield Collector(url=url, token=ADMIN_TOKEN), public
    assert stop(proc) == 0, (tmp_path / "collector.log").read_text()


def agent_config(tmp_path: Path, url: str, public: str) -> Path:
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"""\
agent: {{state_dir: agent-state, labels: {{department: finance}}}}
collector: {{url: "{url}", token: {AGENT_TOKEN}}}
intervals: {{sample: 300ms, report: 500ms, heartbeat: 2s, metrics: 5s}}
shipping: {{start_jitter: 0s}}
sampler: {{disk_mounts: []}}
remediation: {{verify_delay: 100ms}}
policy: {{trusted_keys: ['{public}']}}
checks:
  - {{id: mem, metric: memory.used_percent, critical: 100}}
"""
    )
    return config


def agent_id(tmp_path: Path) -> str:
    return (tmp_path / "agent-state" / "agent-id").read_text().strip()


def running_version(c: Collector) -> dict[str, int]:
    return admin(c, "GET", "/api/v1/policies/finance")["running"]


def log_of(tmp_path: Path) -> str:
    return (tmp_path / "agent.log").read_text()


def test_publish_applies_without_restart_then_run_now_and_kill_switch(
    tmp_path: Path, setup: tuple[Collector, str]
) -> None:
    c, public = setup
    marker = tmp_path / "marker"
    agent = spawn_agent(
        agent_config(tmp_path, c.url, public), tmp_path / "agent.log", cwd=tmp_path, unbuffered=True
    )
    try:
        wait_for("the agent's id", lambda: (tmp_path / "agent-state" / "agent-id").exists())
        wait_for("the host known", lambda: admin(c, "GET", "/api/v1/hosts"), 20)
        pid = agent.pid
        publish(c, sign(tmp_path, policy_source(tmp_path, marker, critical=0), 1))
        # The policy's check (memory >= 0 %: always critical) triggers its fix.
        wait_for("the policy's fix to run", marker.exists, 30)
        assert marker.read_text().splitlines()[0] == "ran check"
        wait_for("version 1 reported", lambda: running_version(c) == {"1": 1}, 20)
        assert agent.poll() is None and agent.pid == pid  # applied without a restart

        lines = len(marker.read_text().splitlines())
        asked = admin(
            c,
            "POST",
            "/api/v1/run-now",
            json.dumps({"remediation": "touch-file", "host": agent_id(tmp_path)}).encode(),
            **{"Content-Type": "application/json"},
        )
        request_id = asked["id"]
        wait_for("the run-now run", lambda: "ran run-now" in marker.read_text(), 20)
        time.sleep(1.5)  # several more acks still carrying the request: it runs once
        assert marker.read_text().splitlines()[lines:] == ["ran run-now"]

        def outcome() -> Any:
            return admin(c, "GET", f"/api/v1/run-now/{request_id}")

        wait_for("the run-now outcome", lambda: outcome()["results"], 20)
        found = outcome()
        assert found["requested_by"] == "config:admin_tokens.0"
        assert [(r["host"], r["outcome"]) for r in found["results"]] == [
            (agent_id(tmp_path), "fixed")
        ]
        audit = admin(c, "GET", "/api/v1/audit?action=policy.run_now")
        assert request_id in json.dumps(audit)

        admin(
            c,
            "POST",
            "/api/v1/policy-halts",
            json.dumps({"remediation": "touch-file"}).encode(),
            **{"Content-Type": "application/json"},
        )
        state = tmp_path / "agent-state" / "policy" / "halt.json"
        wait_for("the halt", lambda: state.exists() and "touch-file" in state.read_text(), 20)
        before = marker.read_text()
        admin(
            c,
            "POST",
            "/api/v1/run-now",
            json.dumps({"remediation": "touch-file", "host": agent_id(tmp_path)}).encode(),
            **{"Content-Type": "application/json"},
        )
        wait_for("the refusal", lambda: "(kill switch)" in log_of(tmp_path), 20)
        time.sleep(1.0)
        assert marker.read_text() == before
    finally:
        assert stop(agent) == 0, log_of(tmp_path)


def test_an_offline_agent_catches_up_from_its_cached_policy(
    tmp_path: Path, setup: tuple[Collector, str]
) -> None:
    c, public = setup
    marker = tmp_path / "marker"
    config = agent_config(tmp_path, c.url, public)
    publish(c, sign(tmp_path, policy_source(tmp_path, marker, critical=0), 1))
    agent = spawn_agent(config, tmp_path / "agent.log", cwd=tmp_path, unbuffered=True)
    try:
        wait_for("version 1 reported", lambda: running_version(c) == {"1": 1}, 30)
    finally:
        assert stop(agent) == 0, log_of(tmp_path)

    # While the agent is off: a new version and a halt.
    publish(c, sign(tmp_path, policy_source(tmp_path, marker, critical=1), 2))
    admin(
        c,
        "POST",
        "/api/v1/policy-halts",
        json.dumps({"remediation": "touch-file"}).encode(),
        **{"Content-Type": "application/json"},
    )
    (tmp_path / "agent.log").rename(tmp_path / "agent-1.log")
    agent = spawn_agent(config, tmp_path / "agent.log", cwd=tmp_path, unbuffered=True)
    try:
        wait_for("version 2 reported", lambda: running_version(c) == {"2": 1}, 30)
        log = log_of(tmp_path)
        # It started on the cached version 1 (re-verified), then fetched version 2.
        assert "policy finance@2 verified" in log
        halt = json.loads((tmp_path / "agent-state" / "policy" / "halt.json").read_text())
        assert halt["halted"] == ["touch-file"]
    finally:
        assert stop(agent) == 0, log_of(tmp_path)
