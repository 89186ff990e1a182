"""Enrollment over real HTTPS with mutual TLS: a collector process serving a throwaway
CA's certificate and requiring client certificates, the real ``vigil-agent enroll``
(which must use the agent's ``collector.ca_file`` and client certificate) and a real
agent process delivering with its own credential. Refusals, impersonation and
revocation are checked over the same HTTPS listener, and in the audit log.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import sqlite3
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_enrollment import (
    admin_cli,
    agent_id_of,
    credential_of,
    new_secret,
)
from tests.integration.test_enrollment import enroll as agent_enroll
from tests.integration.test_tls import ADMIN_TOKEN, https_collector
from tests.support.procs import spawn_agent, stop, wait_for
from tests.support.tls import Pki, make_pki
from vigil import wire


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Https:
    """Requests to the collector with the CA trusted and the client certificate shown."""

    def __init__(self, url: str, pki: Pki) -> None:
        self.url, self.context = url, pki.client_context(client=True)

    def call(
        self, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        method = "GET" if body is None else "POST"
        request = urllib.request.Request(
            self.url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def admin(self, path: str) -> Any:
        status, body = self.call(path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert status == 200, body
        return body

    def enroll(self, secret: str, agent_id: str) -> tuple[int, Any]:
        body = json.dumps({"secret": secret, "agent_id": agent_id, "hostname": "h"}).encode()
        return self.call("/api/v1/enroll", body, {"Content-Type": "application/json"})

    def report(self, token: str, agent_id: str) -> tuple[int, Any]:
        report = wire.Report(
            schema_version=wire.SCHEMA_VERSION,
            agent_id=agent_id,
            hostname="spoofed",
            labels={},
            batch_id=uuid.uuid4().hex,
            sent_at=time.time(),
            agent_version="test",
            events=(),
        )
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        return self.call("/api/v1/reports", gzip.compress(wire.encode_report(report)), headers)

    def hosts(self) -> dict[str, Any]:
        return {h["agent_id"]: h for h in self.admin("/api/v1/hosts")["hosts"]}

    def audit(self) -> list[tuple[str, str, str]]:
        records = self.admin("/api/v1/audit?limit=100")["records"]
        return [(r["actor"], r["action"], r["target"]) for r in records]


def agent_config(folder: Path, url: str, pki: Pki, *, tls: bool = True) -> Path:
    """An agent without any shared token: it can only report once enrolled."""
    folder.mkdir(parents=True, exist_ok=True)
    files = (
        f", ca_file: {pki.ca}, client_cert_file: {pki.client_cert},"
        f" client_key_file: {pki.client_key}"
        if tls
        else ""
    )
    config = folder / "agent.yaml"
    config.write_text(
        f"""\
agent: {{state_dir: state, hostname: {folder.name}}}
collector: {{url: "{url}"{files}}}
intervals: {{sample: 300ms, report: 300ms, heartbeat: 1s, metrics: 5s}}
shipping: {{start_jitter: 0s, backoff_base: 100ms, backoff_cap: 500ms}}
sampler: {{disk_mounts: []}}
checks: []
"""
    )
    return config


def outbox_size(folder: Path) -> int:
    with contextlib.closing(sqlite3.connect(folder / "state" / "outbox.db")) as db:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def test_enrollment_over_mutual_tls_end_to_end(tmp_path: Path, pki: Pki) -> None:
    with https_collector(tmp_path, pki.server_cert, pki.server_key, client_ca=pki.ca) as (_, url):
        assert url.startswith("https://")
        api = Https(url, pki)
        one_use = new_secret(tmp_path, "one.txt", "--label", "role=laptop", "--uses", "1")
        two = new_secret(tmp_path, "two.txt", "--label", "role=kiosk", "--uses", "2")
        short = new_secret(tmp_path, "short.txt", "--label", "role=gone", "--expires", "1s")

        # Without the CA file and client certificate the enroll command cannot connect.
        bare = agent_config(tmp_path / "bare", url, pki, tls=False)
        result = agent_enroll(bare, one_use)
        assert result.returncode == 1 and "cannot reach" in result.stderr, result.stderr

        # With them it enrolls, and the agent then delivers with its own credential.
        folder = tmp_path / "laptop"
        config = agent_config(folder, url, pki)
        result = agent_enroll(config, one_use)
        assert result.returncode == 0, result.stderr
        agent_id = agent_id_of(folder)
        token = credential_of(folder)["token"]
        agent = spawn_agent(config, tmp_path / "agent.log", cwd=folder, unbuffered=True)
        try:
            host = wait_for("the enrolled agent over HTTPS", lambda: api.hosts().get(agent_id))
            assert host["labels"]["role"] == "laptop"

            # Used-up, expired and wrong secrets: 4xx, and in the audit log.
            time.sleep(1.1)  # the short secret expires
            assert api.enroll(one_use.read_text().strip(), "x-used")[0] == 403
            assert api.enroll(short.read_text().strip(), "x-expired")[0] == 403
            assert api.enroll("vge_wrong", "x-wrong")[0] == 401
            refused = {t for _, action, t in api.audit() if action == "agent.enroll_refused"}
            assert {"agent:x-used", "agent:x-expired", "agent:x-wrong"} <= refused
            assert (f"agent:{agent_id}", "agent.enroll", f"agent:{agent_id}") in api.audit()

            # Agent A's credential posting as B: 403, and B does not appear.
            status, b = api.enroll(two.read_text().strip(), "agent-b")
            assert status == 201
            status, body = api.report(token, "agent-b")
            assert (status, body["field"]) == (403, "agent_id")
            assert "agent-b" not in api.hosts()
            assert api.report(b["credential"], "agent-b")[0] == 200

            # Revoked: its next request is refused and its reports stay in its outbox.
            result = admin_cli(tmp_path, "agent", "revoke", agent_id)
            assert result.returncode == 0, result.stderr
            log = tmp_path / "agent.log"
            wait_for("a refused report", lambda: "REJECTED" in log.read_text())
            wait_for("reports queued after revocation", lambda: outbox_size(folder) > 0)
            assert api.report(token, agent_id)[0] == 401
            last_seen = api.hosts()[agent_id]["last_seen"]
            time.sleep(1.0)
            assert outbox_size(folder) > 0
            assert api.hosts()[agent_id]["last_seen"] == last_seen
        finally:
            assert stop(agent) == 0
        assert outbox_size(folder) > 0  # kept across a clean stop: nothing lost
        revoked = [a for a, action, t in api.audit() if action == "agent.revoke"]
        assert len(revoked) == 1 and revoked[0].startswith("cli:")
