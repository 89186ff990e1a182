"""Central policy over HTTP against a real collector on an ephemeral port: publish with
upload verification, the ack's ``"policy"`` key, the conditional bundle fetch, the kill
switch, run-now, running versions, enrollment handing out the trusted keys."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from tests.support.policy import signed_bundle, write_source
from tests.unit.policy.test_policy_service import flip
from vigil import policy_bundle, wire
from vigil.collector.config import CollectorConfig
from vigil.collector.policy.config import PolicyConfig
from vigil.collector.storage.url import sqlite_path

T = TypeVar("T")


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, str]:
    return policy_bundle.generate_keypair()


@pytest.fixture
def config(collector_config: CollectorConfig, keys: tuple[bytes, str]) -> CollectorConfig:
    policy = PolicyConfig(trusted_keys=(keys[1],), refresh_s=0.1)
    return dataclasses.replace(collector_config, policy=policy)


class Client:
    def __init__(self, http: aiohttp.ClientSession, url: str, config: CollectorConfig) -> None:
        self.http, self.url = http, url
        self.admin = {"Authorization": f"Bearer {config.auth.admin_tokens[0]}"}
        self.agent = {"Authorization": f"Bearer {config.auth.agent_tokens[0]}"}

    async def publish(self, document: bytes, query: str = "rings=1.0") -> tuple[int, Any]:
        headers = self.admin | {"Content-Type": policy_bundle.MEDIA_TYPE}
        async with self.http.post(
            f"{self.url}/api/v1/policies?{query}", data=document, headers=headers
        ) as r:
            return r.status, await r.json()

    async def admin_call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, json=body, headers=self.admin) as r:
            return r.status, await r.json()

    async def report(
        self, make_report: Any, running: str = "none", agent_id: str = "agent-0001", **kw: Any
    ) -> tuple[int, Any]:
        report = make_report(agent_id=agent_id, **kw)
        headers = self.agent | {
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "X-Vigil-Policy": running,
        }
        body = gzip.compress(wire.encode_report(report))
        async with self.http.post(f"{self.url}/api/v1/reports", data=body, headers=headers) as r:
            return r.status, await r.json()

    async def fetch(self, agent_id: str, etag: str | None = None) -> tuple[int, bytes, str | None]:
        headers = dict(self.agent)
        if etag:
            headers["If-None-Match"] = etag
        async with self.http.get(
            f"{self.url}/api/v1/agent/policy?agent_id={agent_id}", headers=headers
        ) as r:
            return r.status, await r.read(), r.headers.get("ETag")


def with_client(config: CollectorConfig, server: Any, steps: Callable[[Client], Awaitable[T]]) -> T:
    async def main() -> T:
        async with server(config) as url, aiohttp.ClientSession() as http:
            return await steps(Client(http, url, config))

    return asyncio.run(main())


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_source(tmp_path / "src")


def test_a_published_policy_is_offered_fetched_once_and_then_304(
    config: CollectorConfig, collector_server: Any, make_report: Any, source: Path, keys: Any
) -> None:
    document = signed_bundle(source, keys[0], version=1, target={"department": "test"})

    async def steps(c: Client) -> None:
        status, row = await c.publish(document)
        assert status == 201 and (row["policy"], row["version"]) == ("finance", 1)
        status, ack = await c.report(make_report)
        assert status == 200
        assert (ack["policy"]["policy"], ack["policy"]["version"]) == ("finance", 1)
        # A shared token: the fetch url names the agent (an enrolled one gets the plain path).
        assert ack["policy"]["url"] == "/api/v1/agent/policy?agent_id=agent-0001"
        status, body, etag = await c.fetch("agent-0001")
        assert (status, body, etag) == (200, document, '"finance@1"')
        status, body, etag = await c.fetch("agent-0001", '"finance@1"')
        assert (status, body, etag) == (304, b"", '"finance@1"')

    with_client(config, collector_server, steps)


def test_a_host_outside_the_target_is_offered_nothing_and_gets_404(
    config: CollectorConfig, collector_server: Any, make_report: Any, source: Path, keys: Any
) -> None:
    document = signed_bundle(source, keys[0], version=1, target={"department": "finance"})

    async def steps(c: Client) -> None:
        assert (await c.publish(document))[0] == 201
        status, ack = await c.report(make_report)  # labels department=test
        assert (status, ack["policy"]["policy"], ack["policy"]["version"]) == (200, None, None)
        status, body, _ = await c.fetch("agent-0001")
        assert status == 404 and b"no policy for this host" in body

    with_client(config, collector_server, steps)


@pytest.mark.parametrize(
    ("where", "reason"),
    [("script", "hash_mismatch"), ("manifest", "bad_signature"), ("signature", "bad_signature")],
)
def test_a_tampered_upload_is_400_naming_the_reason(
    config: CollectorConfig,
    collector_server: Any,
    source: Path,
    keys: Any,
    where: str,
    reason: str,
) -> None:
    async def steps(c: Client) -> None:
        status, body = await c.publish(flip(signed_bundle(source, keys[0]), where))
        assert status == 400 and body["field"] == "document"
        assert body["error"].startswith(reason + ":")
        status, listed = await c.admin_call("GET", "/api/v1/policies")
        assert status == 200 and listed["versions"] == []

    with_client(config, collector_server, steps)


def test_publishing_needs_an_admin_and_valid_rollout_options(
    config: CollectorConfig, collector_server: Any, source: Path, keys: Any
) -> None:
    document = signed_bundle(source, keys[0])

    async def steps(c: Client) -> None:
        async with c.http.post(f"{c.url}/api/v1/policies", data=document, headers=c.agent) as r:
            assert r.status in (401, 403)
        status, body = await c.publish(document, "rings=0.5,0.2")
        assert (status, body["field"]) == (400, "rings")
        status, body = await c.publish(document, "ring=1.0")
        assert (status, body["field"]) == (400, "ring")

    with_client(config, collector_server, steps)


def test_a_bad_policy_header_is_400_naming_it(
    config: CollectorConfig, collector_server: Any, make_report: Any
) -> None:
    async def steps(c: Client) -> None:
        status, body = await c.report(make_report, running="finance@zero")
        assert (status, body["field"]) == (400, "X-Vigil-Policy")

    with_client(config, collector_server, steps)


def test_the_kill_switch_reaches_the_next_ack_and_is_lifted(
    config: CollectorConfig, collector_server: Any, make_report: Any
) -> None:
    async def steps(c: Client) -> None:
        status, _ = await c.admin_call(
            "POST", "/api/v1/policy-halts", {"remediation": "disk-cleanup"}
        )
        assert status == 201
        assert (await c.admin_call("POST", "/api/v1/policy-halts", {"remediation": "*"}))[0] == 201
        _, ack = await c.report(make_report)
        assert ack["policy"]["halted"] == ["disk-cleanup"] and ack["policy"]["halt_all"] is True
        assert (await c.admin_call("DELETE", "/api/v1/policy-halts/*"))[0] == 200
        _, ack = await c.report(make_report)
        assert ack["policy"]["halt_all"] is False
        status, body = await c.admin_call("DELETE", "/api/v1/policy-halts/none-such")
        assert (status, body["field"]) == (404, "remediation")
        status, audit = await c.admin_call("GET", "/api/v1/audit?action=policy.halt")
        assert status == 200 and len(audit["records"]) == 2

    with_client(config, collector_server, steps)


def test_run_now_is_offered_to_its_host_only_with_who_asked(
    config: CollectorConfig, collector_server: Any, make_report: Any
) -> None:
    async def steps(c: Client) -> None:
        ask = {"remediation": "disk-cleanup", "host": "agent-0001", "params": {"path": "/tmp"}}
        status, request = await c.admin_call("POST", "/api/v1/run-now", ask)
        assert status == 201 and request["id"].startswith("rn-")
        _, ack = await c.report(make_report)
        (offered,) = ack["policy"]["run_now"]
        assert offered["id"] == request["id"] and offered["params"] == {"path": "/tmp"}
        assert offered["requested_by"] == "config:admin_tokens.0"
        _, ack = await c.report(make_report, agent_id="agent-0002")
        assert ack["policy"]["run_now"] == []
        status, got = await c.admin_call("GET", f"/api/v1/run-now/{request['id']}")
        assert status == 200 and got["requested_by"] == "config:admin_tokens.0"
        status, body = await c.admin_call("POST", "/api/v1/run-now", {"remediation": "x"})
        assert (status, body["field"]) == (400, "host")

    with_client(config, collector_server, steps)


def test_the_running_versions_reported_show_in_the_rollout_status(
    config: CollectorConfig, collector_server: Any, make_report: Any, source: Path, keys: Any
) -> None:
    document = signed_bundle(source, keys[0], version=1)

    async def steps(c: Client) -> None:
        assert (await c.publish(document))[0] == 201
        await c.report(make_report, running="finance@1")
        await c.report(make_report, agent_id="agent-0002")
        for _ in range(50):  # the policy pass stores them every refresh_s (0.1 s)
            status, body = await c.admin_call("GET", "/api/v1/policies/finance")
            if body.get("running") == {"1": 1}:
                break
            await asyncio.sleep(0.1)
        assert status == 200 and body["running"] == {"1": 1}
        assert body["rings_status"] == [{"ring": 0, "share": 1.0, "hosts": 2, "on_version": 1}]

    with_client(config, collector_server, steps)


def test_a_restarted_collector_does_not_rewrite_what_hosts_run(
    config: CollectorConfig, collector_server: Any, make_report: Any
) -> None:
    # The second process learns from storage what each host runs: a host saying the
    # same again is not written (its row keeps the first process's time); a host new to
    # storage is.
    now = [1000.0]
    path = sqlite_path(config.storage_url)
    assert path is not None

    def stored() -> dict[str, tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(path)) as db:
            rows = db.execute("SELECT agent_id, policy, version, seen_at FROM policy_hosts")
            return {row[0]: row[1:] for row in rows}

    async def run(*agents: str) -> None:
        server = collector_server(config, clock=lambda: now[0])
        async with server as url, aiohttp.ClientSession() as http:
            c = Client(http, url, config)
            for agent in agents:
                assert (await c.report(make_report, agent_id=agent))[0] == 200
        # Stopping runs a last policy pass: every note is flushed by now.

    asyncio.run(run("agent-0001"))
    assert stored() == {"agent-0001": (None, None, 1000.0)}
    now[0] = 2000.0
    asyncio.run(run("agent-0001", "agent-0002"))
    assert stored() == {
        "agent-0001": (None, None, 1000.0),
        "agent-0002": (None, None, 2000.0),
    }


def test_enrollment_hands_out_the_trusted_policy_keys(
    config: CollectorConfig, collector_server: Any, keys: Any
) -> None:
    async def steps(c: Client) -> None:
        status, body = await c.admin_call("POST", "/api/v1/enroll-secrets", {"labels": {"r": "x"}})
        assert status == 201
        enroll = {"secret": body["secret"]["secret"], "agent_id": "agent-0001", "hostname": "ws"}
        async with c.http.post(f"{c.url}/api/v1/enroll", json=enroll) as r:
            assert r.status == 201
            assert (await r.json())["policy_keys"] == [keys[1]]

    with_client(config, collector_server, steps)


def test_a_halt_shows_in_vigil_remediations_paused(
    config: CollectorConfig, collector_server: Any
) -> None:
    async def scrape(c: Client) -> str:
        async with c.http.get(f"{c.url}/metrics", headers=c.admin) as r:
            assert r.status == 200
            return await r.text()

    async def steps(c: Client) -> None:
        before = await scrape(c)
        assert "vigil_remediations_paused{" not in before
        assert "vigil_policy_rollouts_paused 0.0" in before
        await c.admin_call("POST", "/api/v1/policy-halts", {"remediation": "disk-cleanup"})
        after = await scrape(c)
        assert 'vigil_remediations_paused{remediation="disk-cleanup"} 1.0' in after

    with_client(config, collector_server, steps)


def test_rollout_control_over_http_is_audited_and_refuses_unknown_policies(
    config: CollectorConfig, collector_server: Any, source: Path, keys: Any
) -> None:
    document = signed_bundle(source, keys[0], version=1)

    async def steps(c: Client) -> None:
        assert (await c.publish(document, "rings=0.1,1.0&soak=1h"))[0] == 201
        status, row = await c.admin_call("POST", "/api/v1/policies/finance/pause")
        assert status == 200 and row["paused"] and row["soak_s"] == 3600.0
        status, row = await c.admin_call("POST", "/api/v1/policies/finance/resume")
        assert status == 200 and not row["paused"]
        status, row = await c.admin_call("POST", "/api/v1/policies/finance/advance")
        assert (status, row["ring"]) == (200, 1)
        status, body = await c.admin_call("POST", "/api/v1/policies/finance/advance")
        assert status == 409
        status, body = await c.admin_call("POST", "/api/v1/policies/nope/pause")
        assert (status, body["field"]) == (404, "policy")
        _, audit = await c.admin_call("GET", "/api/v1/audit")
        actions = [r["action"] for r in audit["records"] if r["action"].startswith("policy.")]
        assert actions == ["policy.advance", "policy.resume", "policy.pause", "policy.publish"]
        assert all(r["actor"] == "config:admin_tokens.0" for r in audit["records"])

    with_client(config, collector_server, steps)


def test_an_enrolled_agent_fetches_by_its_credential_and_a_shared_token_must_name_one(
    config: CollectorConfig, collector_server: Any, make_report: Any, source: Path, keys: Any
) -> None:
    document = signed_bundle(source, keys[0], version=1)

    async def steps(c: Client) -> None:
        assert (await c.publish(document))[0] == 201
        _, body = await c.admin_call("POST", "/api/v1/enroll-secrets", {"labels": {"r": "x"}})
        enroll = {"secret": body["secret"]["secret"], "agent_id": "agent-0009", "hostname": "ws"}
        async with c.http.post(f"{c.url}/api/v1/enroll", json=enroll) as r:
            credential = (await r.json())["credential"]
        own = {"Authorization": f"Bearer {credential}"}
        report = make_report(agent_id="agent-0009")
        headers = own | {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        body_bytes = gzip.compress(wire.encode_report(report))
        async with c.http.post(f"{c.url}/api/v1/reports", data=body_bytes, headers=headers) as r:
            ack = await r.json()
        assert ack["policy"]["url"] == "/api/v1/agent/policy"  # no agent_id: the credential
        async with c.http.get(f"{c.url}/api/v1/agent/policy", headers=own) as r:
            assert r.status == 200 and await r.read() == document
        async with c.http.get(f"{c.url}/api/v1/agent/policy", headers=c.agent) as r:
            assert r.status == 400 and (await r.json())["field"] == "agent_id"
        status, _, _ = await c.fetch("agent-0009")  # a shared token for an enrolled id
        assert status == 403
        async with c.http.get(f"{c.url}/api/v1/agent/policy") as r:
            assert r.status == 401

    with_client(config, collector_server, steps)
