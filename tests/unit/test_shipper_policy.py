"""The shipper's exchanges against a real HTTP server (aiohttp stub): every exchange's
headers on every report (``X-Vigil-Policy`` here), each ack handed to every exchange, and
the conditional GET of a bundle on the same connection."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest
from aiohttp import web

from tests.unit.test_shipper import FakeClock, fill, make_shipper
from vigil.agent.delivery.outbox import Outbox
from vigil.agent.policy.sync import POLICY_HEADER

DOCUMENT = b'{"format": "vigil-policy/1"}' * 100


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.db")


class Stub:
    """POST /api/v1/reports acks with a policy offer; GET /api/v1/agent/policy serves
    ``DOCUMENT`` with an ETag and honours If-None-Match."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.peers: list[tuple[str, int]] = []

    async def report(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        self.peers.append(request.transport.get_extra_info("peername")[:2])  # type: ignore[union-attr]
        return web.json_response({"accepted": True, "policy": {"policy": "p", "version": 2}})

    async def policy(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        self.peers.append(request.transport.get_extra_info("peername")[:2])  # type: ignore[union-attr]
        if request.headers.get("If-None-Match") == '"p@2"':
            return web.Response(status=304, headers={"ETag": '"p@2"'})
        return web.Response(body=DOCUMENT, headers={"ETag": '"p@2"'})

    async def start(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/api/v1/reports", self.report)
        app.router.add_get("/api/v1/agent/policy", self.policy)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return runner, f"http://{host}:{port}"


class Exchange:
    """An exchange that sends header ``name: tag`` and records the acks and what was sent."""

    def __init__(self, tag: str = "none", name: str = POLICY_HEADER, fail: bool = False) -> None:
        self.name = name
        self.tag = tag
        self.fail = fail
        self.acks: list[tuple[str, dict[str, str]]] = []

    def headers(self) -> dict[str, str]:
        return {self.name: self.tag}

    def take_ack(self, text: str, sent: Mapping[str, str]) -> None:
        self.acks.append((text, dict(sent)))
        if self.fail:
            raise RuntimeError("bug")


def test_every_report_carries_the_exchange_headers_and_every_exchange_reads_the_ack(
    outbox: Outbox,
) -> None:
    stub = Stub()
    policy, other = Exchange(), Exchange("o", name="X-Other")

    async def main() -> None:
        runner, url = await stub.start()
        shipper = make_shipper(url, outbox, FakeClock())
        shipper.add_exchange(policy)
        shipper.add_exchange(other)
        try:
            fill(outbox, 1)
            await shipper.ship()
            policy.tag = "p@2"
            fill(outbox, 1)
            await shipper.ship()
        finally:
            await shipper.close()
            await runner.cleanup()

    asyncio.run(main())
    assert [h[POLICY_HEADER] for h in stub.headers] == ["none", "p@2"]
    assert [h["X-Other"] for h in stub.headers] == ["o", "o"]
    acks = [text for text, _ in policy.acks]
    assert len(acks) == 2 and '"policy":{"policy":"p","version":2}' in acks[0].replace(" ", "")
    assert [text for text, _ in other.acks] == acks
    assert [sent[POLICY_HEADER] for _, sent in policy.acks] == ["none", "p@2"]


def test_a_failing_exchange_loses_no_batch_and_the_others_still_read_the_ack(
    outbox: Outbox,
) -> None:
    stub = Stub()
    after = Exchange()

    async def main() -> None:
        runner, url = await stub.start()
        shipper = make_shipper(url, outbox, FakeClock())
        shipper.add_exchange(Exchange(fail=True))
        shipper.add_exchange(after)
        try:
            fill(outbox, 2)
            result = await shipper.ship()
            assert result.error is None
        finally:
            await shipper.close()
            await runner.cleanup()

    asyncio.run(main())
    assert outbox.depth() == 0
    assert len(after.acks) == 1


def test_get_fetches_with_the_token_and_honours_the_etag(outbox: Outbox) -> None:
    stub = Stub()

    async def main() -> None:
        runner, url = await stub.start()
        shipper = make_shipper(url, outbox, FakeClock())
        try:
            first = await shipper.get("/api/v1/agent/policy", {"If-None-Match": '"none"'}, 10**6)
            assert (first.status, first.etag, first.body) == (200, '"p@2"', DOCUMENT)
            again = await shipper.get("/api/v1/agent/policy", {"If-None-Match": '"p@2"'}, 10**6)
            assert (again.status, again.body) == (304, b"")
            with pytest.raises(ValueError, match="longer than 10 bytes"):
                await shipper.get("/api/v1/agent/policy", {}, 10)
        finally:
            await shipper.close()
            await runner.cleanup()

    asyncio.run(main())
    assert stub.headers[0]["Authorization"].startswith("Bearer ")
    assert stub.peers[0] == stub.peers[1]  # the same kept-alive connection
