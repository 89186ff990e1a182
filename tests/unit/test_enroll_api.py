"""The enrollment HTTP API of an in-process collector: ``POST /api/v1/enroll`` and the
admin endpoints for secrets and credentials, with the ingest check behind them."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest

from vigil import wire

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())


class Client:
    """JSON calls against one collector, as admin or anonymous."""

    def __init__(self, http: aiohttp.ClientSession, url: str, admin: str) -> None:
        self.http, self.url, self.admin = http, url, admin

    async def call(
        self, method: str, path: str, body: Any = None, *, admin: bool = True
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.admin}"} if admin else {}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as r:
            return r.status, await r.json()

    async def report(self, token: str, report: wire.Report) -> int:
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        body = gzip.compress(wire.encode_report(report))
        async with self.http.post(self.url + "/api/v1/reports", data=body, headers=headers) as r:
            return r.status


def with_client(config: Any, server: Any, steps: Callable[[Client], Awaitable[T]]) -> T:
    async def main() -> T:
        async with server(config) as url, aiohttp.ClientSession() as http:
            return await steps(Client(http, url, config.auth.admin_tokens[0]))

    return run(main)


def test_an_admin_creates_a_secret_an_agent_enrolls_and_revocation_is_immediate(
    collector_config: Any, collector_server: Any, make_report: Any
) -> None:
    async def steps(c: Client) -> None:
        status, body = await c.call(
            "POST", "/api/v1/enroll-secrets", {"labels": {"role": "server"}, "uses": 2}
        )
        assert status == 201 and body["secret"]["secret"].startswith("vge_")
        secret = body["secret"]["secret"]
        status, listed = await c.call("GET", "/api/v1/enroll-secrets")
        assert status == 200 and "secret" not in listed["secrets"][0]

        enroll = {"secret": secret, "agent_id": "agent-0001", "hostname": "ws"}
        status, issued = await c.call("POST", "/api/v1/enroll", enroll, admin=False)
        assert status == 201 and issued["labels"] == {"role": "server"}
        token = issued["credential"]
        assert await c.report(token, make_report(agent_id="agent-0001")) == 200

        status, body = await c.call("POST", "/api/v1/agents/agent-0001/revoke")
        assert (status, body["credentials_revoked"]) == (200, 1)
        # The very next request is refused, and revoking again is 404.
        assert await c.report(token, make_report(agent_id="agent-0001")) == 401
        status, body = await c.call("POST", "/api/v1/agents/agent-0001/revoke")
        assert (status, body["field"]) == (404, "agent_id")

    with_client(collector_config, collector_server, steps)


def test_revoking_a_secret_over_the_api_revokes_its_credentials_at_once(
    collector_config: Any, collector_server: Any, make_report: Any
) -> None:
    async def steps(c: Client) -> None:
        _, body = await c.call("POST", "/api/v1/enroll-secrets", {"uses": 3})
        secret_id, secret = body["secret"]["id"], body["secret"]["secret"]
        enroll = {"secret": secret, "agent_id": "agent-0001", "hostname": "ws"}
        _, issued = await c.call("POST", "/api/v1/enroll", enroll, admin=False)
        status, body = await c.call("POST", f"/api/v1/enroll-secrets/{secret_id}/revoke")
        assert (status, body["credentials_revoked"]) == (200, 1)
        report = make_report(agent_id="agent-0001")
        assert await c.report(issued["credential"], report) == 401
        status, _ = await c.call("POST", "/api/v1/enroll-secrets/00000000/revoke")
        assert status == 404

    with_client(collector_config, collector_server, steps)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"labels": []}, "labels"),
        ({"labels": {"bad key": "x"}}, "labels"),
        ({"labels": {"role": ""}}, "labels.role"),
        ({"uses": 0}, "uses"),
        ({"uses": True}, "uses"),
        ({"expires": "soon"}, "expires"),
        ({"expires": "400d"}, "expires"),
        ({"other": 1}, "other"),
    ],
    ids=[
        "labels not an object",
        "bad label name",
        "blank label",
        "no uses",
        "bool uses",
        "bad duration",
        "too long",
        "unknown field",
    ],
)
def test_a_bad_secret_request_is_400_naming_the_field(
    collector_config: Any, collector_server: Any, body: dict[str, Any], field: str
) -> None:
    async def steps(c: Client) -> tuple[int, Any]:
        return await c.call("POST", "/api/v1/enroll-secrets", body)

    status, answer = with_client(collector_config, collector_server, steps)
    assert (status, answer["field"]) == (400, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"agent_id": "a", "hostname": "h"}, "secret"),
        ({"secret": "s", "hostname": "h"}, "agent_id"),
        ({"secret": "s", "agent_id": "a b", "hostname": "h"}, "agent_id"),
        ({"secret": "s", "agent_id": "a", "hostname": "h", "replace": "yes"}, "replace"),
        ({"secret": "s", "agent_id": "a", "hostname": "h" * 256}, "hostname"),
    ],
    ids=["no secret", "no agent id", "agent id with a space", "replace not bool", "long host"],
)
def test_a_bad_enrollment_is_400_naming_the_field(
    collector_config: Any, collector_server: Any, body: dict[str, Any], field: str
) -> None:
    async def steps(c: Client) -> tuple[int, Any]:
        return await c.call("POST", "/api/v1/enroll", body, admin=False)

    status, answer = with_client(collector_config, collector_server, steps)
    assert (status, answer["field"]) == (400, field)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/enroll-secrets"),
        ("POST", "/api/v1/enroll-secrets"),
        ("POST", "/api/v1/enroll-secrets/0123abcd/revoke"),
        ("GET", "/api/v1/agent-credentials"),
        ("POST", "/api/v1/agents/agent-0001/revoke"),
    ],
)
def test_the_admin_endpoints_need_an_admin_token(
    collector_config: Any, collector_server: Any, method: str, path: str
) -> None:
    async def steps(c: Client) -> int:
        return (await c.call(method, path, {}, admin=False))[0]

    assert with_client(collector_config, collector_server, steps) == 401


def test_every_enrollment_write_shows_its_actor_in_the_audit_log(
    collector_config: Any, collector_server: Any
) -> None:
    async def steps(c: Client) -> tuple[str, list[tuple[str, str, str]]]:
        status, op = await c.call("POST", "/api/v1/operators", {"name": "ada", "role": "admin"})
        assert status == 201
        c.admin = op["token"]  # from here on, every admin call is operator "ada"
        _, body = await c.call("POST", "/api/v1/enroll-secrets", {"uses": 1})
        secret_id, secret = body["secret"]["id"], body["secret"]["secret"]
        enroll = {"secret": secret, "agent_id": "agent-0001", "hostname": "ws"}
        assert (await c.call("POST", "/api/v1/enroll", enroll, admin=False))[0] == 201
        again = {**enroll, "agent_id": "agent-0002"}  # the secret is used up
        assert (await c.call("POST", "/api/v1/enroll", again, admin=False))[0] == 403
        assert (await c.call("POST", "/api/v1/agents/agent-0001/revoke"))[0] == 200
        assert (await c.call("POST", f"/api/v1/enroll-secrets/{secret_id}/revoke"))[0] == 200
        status, audit = await c.call("GET", "/api/v1/audit?limit=5")
        assert status == 200
        records = [(r["actor"], r["action"], r["target"]) for r in audit["records"]]
        assert {r["peer"] for r in audit["records"]} == {"127.0.0.1"}
        return secret_id, records

    secret_id, records = with_client(collector_config, collector_server, steps)
    assert records == [
        ("ada", "enroll_secret.revoke", f"enroll-secret:{secret_id}"),
        ("ada", "agent.revoke", "agent:agent-0001"),
        ("agent:agent-0002", "agent.enroll_refused", "agent:agent-0002"),
        ("agent:agent-0001", "agent.enroll", "agent:agent-0001"),
        ("ada", "enroll_secret.create", f"enroll-secret:{secret_id}"),
    ]


def test_a_responder_may_not_manage_enrollment_and_by_is_refused(
    collector_config: Any, collector_server: Any
) -> None:
    async def steps(c: Client) -> list[tuple[int, Any]]:
        status, op = await c.call(
            "POST", "/api/v1/operators", {"name": "rita", "role": "responder"}
        )
        assert status == 201
        admin, c.admin = c.admin, op["token"]
        refused = [
            await c.call("POST", "/api/v1/enroll-secrets", {"uses": 1}),
            await c.call("POST", "/api/v1/agents/agent-0001/revoke"),
        ]
        c.admin = admin
        refused.append(await c.call("POST", "/api/v1/enroll-secrets", {"by": "mallory"}))
        refused.append(await c.call("POST", "/api/v1/agents/agent-0001/revoke", {"by": "x"}))
        _, listed = await c.call("GET", "/api/v1/enroll-secrets")
        assert listed["secrets"] == []  # nothing was created
        return refused

    refused = with_client(collector_config, collector_server, steps)
    assert [status for status, _ in refused] == [403, 403, 400, 400]
    assert "rita" in refused[0][1]["error"] and "needs admin" in refused[0][1]["error"]
    assert [body.get("field") for _, body in refused[2:]] == ["by", "by"]


def test_too_many_enrollment_attempts_from_one_address_are_429_with_retry_after(
    collector_config: Any, collector_server: Any
) -> None:
    config = dataclasses.replace(collector_config, enroll_rate_per_minute=3)

    async def steps(c: Client) -> list[tuple[int, str | None, Any]]:
        answers = []
        for n in range(4):
            body = {"secret": "vge_wrong", "agent_id": f"agent-{n}", "hostname": "ws"}
            async with c.http.post(c.url + "/api/v1/enroll", json=body) as r:
                answers.append((r.status, r.headers.get("Retry-After"), await r.json()))
        _, audit = await c.call("GET", "/api/v1/audit?limit=10")
        answers.append((0, None, [r["target"] for r in audit["records"]]))
        return answers

    answers = with_client(config, collector_server, steps)
    assert [(s, retry) for s, retry, _ in answers[:4]] == [
        (401, None),
        (401, None),
        (401, None),
        (429, "20"),
    ]
    assert "too many enrollment attempts" in answers[3][2]["error"]
    # The refused-by-rate try never reached the secret check, so it is not audited.
    assert answers[4][2] == ["agent:agent-2", "agent:agent-1", "agent:agent-0"]
