"""The shipper's part of the policy exchange against a real HTTP server (aiohttp stub):
the ``X-Vigil-Policy`` header on every report, the ack handed to the hook, and the
conditional GET of a bundle on the same connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from tests.unit.test_shipper import FakeClock, fill, make_shipper
from vigil.agent.delivery.outbox import Outbox
from vigil.agent.delivery.shipper import POLICY_HEADER

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


def test_every_report_carries_the_policy_header_and_the_ack_reaches_the_hook(
    outbox: Outbox,
) -> None:
    stub = Stub()
    acks: list[str] = []

    async def main() -> None:
        runner, url = await stub.start()
        shipper = make_shipper(url, outbox, FakeClock())
        shipper.on_ack = acks.append
        try:
            fill(outbox, 1)
            await shipper.ship()
            shipper.policy_header = "p@2"
            fill(outbox, 1)
            await shipper.ship()
        finally:
            await shipper.close()
            await runner.cleanup()

    asyncio.run(main())
    assert [h[POLICY_HEADER] for h in stub.headers] == ["none", "p@2"]
    assert len(acks) == 2 and '"policy":{"policy":"p","version":2}' in acks[0].replace(" ", "")


def test_a_failing_ack_hook_loses_no_batch(outbox: Outbox) -> None:
    stub = Stub()

    def broken(text: str) -> None:
        raise RuntimeError("bug")

    async def main() -> None:
        runner, url = await stub.start()
        shipper = make_shipper(url, outbox, FakeClock())
        shipper.on_ack = broken
        try:
            fill(outbox, 2)
            result = await shipper.ship()
            assert result.error is None
        finally:
            await shipper.close()
            await runner.cleanup()

    asyncio.run(main())
    assert outbox.depth() == 0


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
