"""Signed self-update end to end (issue #20): a real collector on an ephemeral port, real
agent processes, and REAL wheels of this checkout at bumped versions
(``tests/support/agent_wheels.py``), signed with the real ``vigil-collector release sign``.

- a ring boundary holds: a release rolled out to a canary host only is installed there
  and never offered to the other host, until an admin advances the rollout;
- a good release swaps atomically (same PID, a new folder, the state switched in one
  rename) and the agent then reports the new ``agent_version``; it confirms itself after
  two delivered reports;
- a release that cannot deliver (a *test build* whose transport is patched to fail every
  delivery) misses its confirmation deadline and is rolled back to the previous release,
  reported as ``agent.update`` critical, and is never installed again; the release guard
  pauses its rollout before the next ring;
- a tampered release (bytes flipped in the stored document) is refused by the agent,
  which reports ``agent.update`` critical and keeps running the code it had.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_wheels import CANNOT_DELIVER, agent_wheel
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
    pytest.mark.skipif(os.name != "posix", reason="execve-based restart is POSIX"),
    pytest.mark.timeout(420),
]
AGENT_TOKEN = "agent-token-selfupdate-e2e-0123456789abcdef"
ADMIN_TOKEN = "admin-token-selfupdate-e2e-0123456789abcdef"
BASE = "0.1.0"


@pytest.fixture(scope="module")
def good_wheel() -> Path:
    return agent_wheel("0.1.1")


@pytest.fixture(scope="module")
def bad_wheel() -> Path:
    return agent_wheel("0.1.2", {"vigil/agent/delivery/transport.py": CANNOT_DELIVER})


def collector_cli(*args: str | Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "vigil.collector", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@dataclass
class Setup:
    c: Collector
    public: str
    key: Path
    config: Path
    db: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    import vigil

    assert vigil.__version__ == BASE, "the base install's version moved: update BASE"
    collector_cli("policy", "keygen", "--out", tmp_path / "keys")
    public = (tmp_path / "keys" / "policy-key.pub").read_text().strip()
    config = collector_config(
        tmp_path,
        agent_token=AGENT_TOKEN,
        admin_token=ADMIN_TOKEN,
        extra=f"policy: {{trusted_keys: ['{public}'], refresh: 200ms}}\n",
    )
    proc, url = start_collector(config, tmp_path / "collector.log")
    yield Setup(
        Collector(url=url, token=ADMIN_TOKEN),
        public,
        tmp_path / "keys" / "policy-key.pem",
        config,
        tmp_path / "collector.db",
    )
    assert stop(proc) == 0, (tmp_path / "collector.log").read_text()


def admin(c: Collector, method: str, path: str, body: bytes | None = None) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if body is not None:
        headers["Content-Type"] = "application/vnd.vigil.policy+json"
    request = urllib.request.Request(c.url + path, data=body, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@dataclass
class Agent:
    folder: Path
    proc: subprocess.Popen[bytes]

    @property
    def id(self) -> str:
        return (self.folder / "agent-state" / "agent-id").read_text().strip()

    def state(self) -> dict[str, Any]:
        path = self.folder / "agent-state" / "update" / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def log(self) -> str:
        return (self.folder / "agent.log").read_text(errors="replace")


def start_agent(s: Setup, folder: Path) -> Agent:
    folder.mkdir()
    config = folder / "agent.yaml"
    config.write_text(
        f"""\
agent: {{state_dir: agent-state}}
collector: {{url: "{s.c.url}", token: {AGENT_TOKEN}}}
intervals: {{sample: 300ms, report: 500ms, heartbeat: 1s, metrics: 5s}}
shipping: {{start_jitter: 0s, backoff_cap: 1s}}
sampler: {{disk_mounts: []}}
policy: {{trusted_keys: ['{s.public}']}}
update: {{confirm_within: 6s}}
checks:
  - {{id: mem, metric: memory.used_percent, critical: 100}}
"""
    )
    proc = spawn_agent(config, folder / "agent.log", cwd=folder, unbuffered=True)
    agent = Agent(folder, proc)
    wait_for("the agent's id", lambda: (folder / "agent-state" / "agent-id").exists(), 20)
    return agent


def host_version(s: Setup, agent: Agent) -> str | None:
    hosts = admin(s.c, "GET", "/api/v1/hosts")
    rows = hosts.get("hosts", hosts) if isinstance(hosts, dict) else hosts
    for row in rows:
        if row.get("agent_id") == agent.id:
            return row.get("agent_version")
    return None


def sign(s: Setup, wheel: Path, serial: int, out: Path) -> Path:
    collector_cli(
        "release",
        "sign",
        "--wheel",
        wheel,
        "--serial",
        str(serial),
        "--key",
        s.key,
        "--expires",
        "90d",
        "--out",
        out,
    )
    return out


def open_incident(s: Setup, agent: Agent, check: str) -> dict[str, Any] | None:
    for incident in admin(s.c, "GET", "/api/v1/incidents?state=open")["incidents"]:
        if incident["check"] == check and incident["host"] == agent.id:
            return incident
    return None


def release_fetch_status(s: Setup, agent: Agent) -> int:
    """What GET /api/v1/agent/release answers this agent (shared token: ?agent_id=)."""
    request = urllib.request.Request(
        f"{s.c.url}/api/v1/agent/release?agent_id={agent.id}",
        headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_ring_boundary_atomic_swap_and_rollback(
    tmp_path: Path, setup: Setup, good_wheel: Path, bad_wheel: Path
) -> None:
    s = setup
    a = start_agent(s, tmp_path / "a")
    b = start_agent(s, tmp_path / "b")
    try:
        wait_for("both hosts known", lambda: host_version(s, a) and host_version(s, b), 20)
        assert host_version(s, a) == host_version(s, b) == BASE
        pid_a, pid_b = a.proc.pid, b.proc.pid

        # Release 1 (vigil 0.1.1) to ring 0 = the canary host A only.
        doc1 = sign(s, good_wheel, 1, tmp_path / "release-1.vpol")
        collector_cli(
            "release", "--config", s.config, "publish", doc1, "--rings", "0.0,1.0",
            "--canary", a.id, "--soak", "1h",
        )  # fmt: skip
        wait_for("A on vigil 0.1.1", lambda: host_version(s, a) == "0.1.1", 60)
        # Swapped atomically in place: the same process (execve), a new release folder.
        assert a.proc.poll() is None and a.proc.pid == pid_a
        assert (a.folder / "agent-state" / "releases" / "1-0.1.1" / "vigil").is_dir()
        wait_for("A confirms release 1", lambda: a.state().get("pending", 0) is None, 20)
        assert a.state()["current"]["serial"] == 1
        # The ring boundary held: B was never offered it and runs the base install.
        assert release_fetch_status(s, b) == 404 and release_fetch_status(s, a) == 200
        assert host_version(s, b) == BASE and b.state() == {}
        assert "release" not in b.log()
        fleet = admin(s.c, "GET", "/api/v1/agent-versions")
        assert {v["version"]: v["hosts"] for v in fleet["versions"]} == {"0.1.1": 1, BASE: 1}
        assert fleet["release"]["serial"] == 1 and fleet["release"]["compliance"] == 0.5
        metrics = s.c.metrics()
        assert metrics[("vigil_agents_by_version", (("version", "0.1.1"),))] == 1
        assert metrics[("vigil_agents_by_version", (("version", BASE),))] == 1

        # The admin advances: B gets it too.
        admin(s.c, "POST", "/api/v1/policies/vigil-agent/advance")
        wait_for("B on vigil 0.1.1", lambda: host_version(s, b) == "0.1.1", 60)
        assert b.proc.poll() is None and b.proc.pid == pid_b

        # Release 2 (vigil 0.1.2, a test build that cannot deliver) to A only.
        doc2 = sign(s, bad_wheel, 2, tmp_path / "release-2.vpol")
        admin(s.c, "POST", f"/api/v1/policies?rings=0.0,1.0&canary={a.id}", doc2.read_bytes())
        wait_for(
            "A switched to release 2",
            lambda: (a.state().get("current") or {}).get("serial") == 2,
            60,
        )
        # It never confirms: rolled back to release 1 within confirm_within (6 s).
        wait_for("A rolled back", lambda: 2 in a.state().get("failed", []), 40)
        state = a.state()
        assert state["current"]["serial"] == 1 and state["rolled_back"]["serial"] == 2
        wait_for(
            "agent.update incident",
            lambda: open_incident(s, a, "agent.update"),
            30,
        )
        incident = open_incident(s, a, "agent.update")
        assert incident is not None and "rolled back release 2" in incident["message"]
        assert a.proc.poll() is None and a.proc.pid == pid_a
        assert host_version(s, a) == "0.1.1"
        # The release guard paused rollout 2 before its next ring (A is in ring 0).
        wait_for(
            "the release guard's pause",
            lambda: admin(s.c, "GET", "/api/v1/policies/vigil-agent")["paused"],
            20,
        )
        rollout = admin(s.c, "GET", "/api/v1/policies/vigil-agent")
        assert rollout["ring"] == 0 and a.id in rollout["paused_reason"]
        time.sleep(2.0)  # more acks still offer release 2: it is not installed again
        assert a.state()["current"]["serial"] == 1
        assert b.state()["current"]["serial"] == 1  # outside the ring: untouched
    finally:
        for agent in (a, b):
            code = stop(agent.proc)
            assert code == 0, agent.log()[-3000:]


def test_tampered_release_is_refused_and_the_agent_keeps_running(
    tmp_path: Path, setup: Setup, good_wheel: Path
) -> None:
    s = setup
    a = start_agent(s, tmp_path / "a")
    try:
        wait_for("the host known", lambda: host_version(s, a), 20)
        pid = a.proc.pid
        doc = sign(s, good_wheel, 1, tmp_path / "release-1.vpol")
        # Ring 0 holds no host: nothing is offered until the advance below.
        admin(s.c, "POST", "/api/v1/policies?rings=0.0,1.0&soak=1h", doc.read_bytes())
        time.sleep(1.0)
        assert release_fetch_status(s, a) == 404
        # Flip bytes inside the wheel's base64 in the stored document (past the upload
        # check: what a corrupted store or a man in the middle would serve).
        with sqlite3.connect(s.db) as db:
            (stored,) = db.execute(
                "SELECT document FROM policy_versions WHERE policy = 'vigil-agent'"
            ).fetchone()
            data = bytearray(stored)
            at = data.index(b'"vigil-0.1.1-py3-none-any.whl"') + 200
            data[at] = ord("A") if data[at] != ord("A") else ord("B")
            db.execute(
                "UPDATE policy_versions SET document = ? WHERE policy = 'vigil-agent'",
                (bytes(data),),
            )
        admin(s.c, "POST", "/api/v1/policies/vigil-agent/advance")
        wait_for("agent.update incident", lambda: open_incident(s, a, "agent.update"), 30)
        incident = open_incident(s, a, "agent.update")
        assert incident is not None
        assert "refused release 1" in incident["message"]
        assert "hash_mismatch" in incident["message"], incident["message"]
        # Nothing was replaced and the agent goes on reporting.
        assert a.state() == {} and not (a.folder / "agent-state" / "releases").exists()
        assert a.proc.poll() is None and a.proc.pid == pid
        before = admin(s.c, "GET", "/api/v1/hosts")
        time.sleep(2.0)
        assert admin(s.c, "GET", "/api/v1/hosts") != before  # last_seen moves on
        assert host_version(s, a) == BASE
    finally:
        assert stop(a.proc) == 0, a.log()[-3000:]
