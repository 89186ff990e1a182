"""The agent release channel over HTTP against a real collector on an ephemeral port:
publishing a release (and refusing a wheel that is not the agent), the ack's
``"release"`` key beside an unchanged ``"policy"`` key, the conditional release fetch,
``GET /api/v1/agent-versions`` and ``vigil_agents_by_version``."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tests.support.releases import fake_wheel, release_document
from tests.unit.policy.test_policy_api import Client, with_client
from vigil import policy_bundle
from vigil.collector.config import CollectorConfig
from vigil.collector.policy.config import PolicyConfig


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, str]:
    return policy_bundle.generate_keypair()


@pytest.fixture
def config(collector_config: CollectorConfig, keys: tuple[bytes, str]) -> CollectorConfig:
    policy = PolicyConfig(trusted_keys=(keys[1],), refresh_s=0.1)
    return dataclasses.replace(collector_config, policy=policy)


async def fetch_release(c: Client, agent_id: str, etag: str | None = None) -> tuple[int, bytes]:
    headers = dict(c.agent) | ({"If-None-Match": etag} if etag else {})
    async with c.http.get(
        f"{c.url}/api/v1/agent/release?agent_id={agent_id}", headers=headers
    ) as r:
        return r.status, await r.read()


def test_a_release_rides_its_own_ack_key_and_is_fetched_once_then_304(
    config: CollectorConfig, collector_server: Any, make_report: Any, keys: Any
) -> None:
    document = release_document(fake_wheel("0.2.0"), 1, keys[0])

    async def steps(c: Client) -> None:
        status, ack = await c.report(make_report)
        assert status == 200 and "release" not in ack  # nothing published yet
        assert (await fetch_release(c, "agent-0001"))[0] == 404
        status, row = await c.publish(document)
        assert status == 201 and (row["policy"], row["version"]) == ("vigil-agent", 1)
        status, ack = await c.report(make_report)
        assert ack["release"] == {
            "serial": 1,
            "version": "0.2.0",
            "url": "/api/v1/agent/release?agent_id=agent-0001",
        }
        assert ack["policy"]["policy"] is None  # not a config policy
        assert await fetch_release(c, "agent-0001") == (200, document)
        assert await fetch_release(c, "agent-0001", '"vigil-agent@1"') == (304, b"")
        status, fleet = await c.admin_call("GET", "/api/v1/agent-versions")
        assert status == 200 and fleet["hosts"] == 1
        assert fleet["versions"] == [{"version": make_report().agent_version, "hosts": 1}]
        assert fleet["release"]["version"] == "0.2.0"
        async with c.http.get(f"{c.url}/metrics", headers=c.admin) as r:
            text = await r.text()
        assert f'vigil_agents_by_version{{version="{make_report().agent_version}"}} 1.0' in text
        async with c.http.get(f"{c.url}/api/v1/agent-versions", headers=c.agent) as r:
            assert r.status in (401, 403)  # an admin route

    with_client(config, collector_server, steps)


def test_a_release_that_is_not_the_agent_wheel_is_400(
    config: CollectorConfig, collector_server: Any, keys: Any
) -> None:
    document = release_document(fake_wheel("0.2.0", init_version="0.3.0"), 1, keys[0])

    async def steps(c: Client) -> None:
        status, body = await c.publish(document)
        assert status == 400 and body["field"] == "document"
        assert "not an agent release" in body["error"] and "0.3.0" in body["error"]

    with_client(config, collector_server, steps)
