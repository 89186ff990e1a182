"""The shipper against a real HTTP(S) server on 127.0.0.1 that answers as scripted.

The server (the collector's peer) is aiohttp; the shipper itself uses ``http.client`` on
its own worker thread, so the tests also check what that transport must keep: one
connection reused across requests, dropped on errors and when asked, bounded reads and a
total timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web

from vigil import wire
from vigil.agent.config import CollectorTarget
from vigil.agent.delivery.outbox import Outbox
from vigil.agent.delivery.shipper import REJECTED_BACKOFF_S, Shipper, ShipResult
from vigil.agent.delivery.transport import LOGGED_BODY_CHARS, MAX_ACK_BODY_BYTES
from vigil.agent.identity import Identity

T = TypeVar("T")
TOKEN = "s3cret-token"
IDENTITY = Identity(agent_id="a" * 32, hostname="ws-042", labels={"site": "paris"})


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeRng:
    """Draws ``fraction`` of the way up the range it is asked for, and records the ranges."""

    def __init__(self, fraction: float = 1.0) -> None:
        self.fraction = fraction
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return a + (b - a) * self.fraction


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""
    hang: bool = False  # never answer (until the server stops): a timeout for the client
    close: bool = False  # answer with "Connection: close"


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]  # the client's address: the same port means the same connection

    @property
    def report(self) -> wire.Report:
        return wire.decode_report(gzip.decompress(self.body))


class FakeCollector:
    """A real aiohttp server answering with ``replies`` in order, then 200s.

    It does not decompress request bodies itself, so tests see exactly what was sent.
    """

    def __init__(self, *replies: Reply, ssl_context: ssl.SSLContext | None = None) -> None:
        self.replies = list(replies)
        self.received: list[Received] = []
        self.ssl_context = ssl_context
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        assert request.transport is not None
        peer = request.transport.get_extra_info("peername")[:2]
        self.received.append(Received(dict(request.headers), await request.read(), peer))
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.hang:
            await self._release.wait()
        response = web.Response(status=reply.status, headers=reply.headers, text=reply.text)
        if reply.close:
            response.force_close()
        return response

    @property
    def peers(self) -> list[tuple[str, int]]:
        """The client address of each request, in order."""
        return [r.peer for r in self.received]

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/api/v1/reports", self._handle)
        self._runner = web.AppRunner(app, auto_decompress=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context).start()
        host, port = self._runner.addresses[0][:2]
        return f"{'https' if self.ssl_context else 'http'}://{host}:{port}"

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        assert self._runner is not None
        await self._runner.cleanup()


def make_shipper(
    url: str,
    outbox: Outbox,
    clock: FakeClock,
    rng: FakeRng | None = None,
    **kwargs: Any,
) -> Shipper:
    target = CollectorTarget(url=url, token=TOKEN, timeout_s=kwargs.pop("timeout_s", 5.0))
    return Shipper(
        target,
        outbox,
        IDENTITY,
        agent_version="9.9.9-test",
        clock=clock,
        monotonic=kwargs.pop("monotonic", clock),
        rng=rng or FakeRng(),
        **kwargs,
    )


def metrics(n: int) -> wire.MetricsEvent:
    return wire.MetricsEvent(
        event_id=uuid.uuid4().hex, seq=0, time=float(n), values={"cpu.busy_percent": 1.0 * n}
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


def fill(outbox: Outbox, n: int) -> list[str]:
    events = [metrics(i) for i in range(n)]
    for e in events:
        outbox.put(e)
    return [e.event_id for e in events]


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_against(
    collector: FakeCollector,
    outbox: Outbox,
    clock: FakeClock,
    steps: Callable[[Shipper], Awaitable[T]],
    **kwargs: Any,
) -> T:
    """Start ``collector``, run ``steps`` with a shipper pointed at it, stop everything."""

    async def main() -> T:
        async with collector as url:
            shipper = make_shipper(url, outbox, clock, **kwargs)
            try:
                return await steps(shipper)
            finally:
                await shipper.close()

    return asyncio.run(main())


def ship_once(shipper: Shipper) -> Awaitable[ShipResult]:
    return shipper.ship()


def _shipper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vigil-shipper")]


async def shipper_threads_after_settling(timeout_s: float = 2.0) -> int:
    """How many shipper worker threads are alive, once closed shippers' ones have exited
    (polled for up to ``timeout_s``)."""
    for _ in range(int(timeout_s / 0.01)):
        if not _shipper_threads():
            return 0
        await asyncio.sleep(0.01)
    return len(_shipper_threads())


# ------------------------------------------------------------------ delivery


def test_delivers_pending_events_and_acks_them(outbox: Outbox) -> None:
    ids = fill(outbox, 3)
    collector = FakeCollector()

    result = run_against(collector, outbox, FakeClock(), ship_once)

    assert result == ShipResult(sent_batches=1, sent_events=3, error=None, retry_after_s=None)
    assert outbox.depth() == 0
    assert [e.event_id for e in collector.received[0].report.events] == ids


def test_the_request_is_gzipped_json_with_the_bearer_token(outbox: Outbox) -> None:
    fill(outbox, 1)
    collector = FakeCollector()

    run_against(collector, outbox, FakeClock(), ship_once)

    (request,) = collector.received
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Content-Encoding"] == "gzip"
    assert request.body[:2] == b"\x1f\x8b"  # gzip magic: the body really is compressed


def test_the_report_carries_identity_version_time_and_seqs(outbox: Outbox) -> None:
    seqs = [outbox.put(metrics(i)) for i in range(2)]
    clock = FakeClock(1_234_567.5)
    collector = FakeCollector()

    run_against(collector, outbox, clock, ship_once)

    report = collector.received[0].report
    assert report.schema_version == wire.SCHEMA_VERSION
    assert (report.agent_id, report.hostname, report.labels) == (
        IDENTITY.agent_id,
        IDENTITY.hostname,
        IDENTITY.labels,
    )
    assert report.agent_version == "9.9.9-test"
    assert report.sent_at == 1_234_567.5
    assert [e.seq for e in report.events] == seqs


def test_sends_batch_after_batch_until_the_outbox_is_empty(outbox: Outbox) -> None:
    fill(outbox, 5)
    collector = FakeCollector()

    result = run_against(collector, outbox, FakeClock(), ship_once, batch_max_events=2)

    assert (result.sent_batches, result.sent_events, result.error) == (3, 5, None)
    assert [len(r.report.events) for r in collector.received] == [2, 2, 1]
    assert outbox.depth() == 0


def test_stops_after_max_batches_leaving_the_rest(outbox: Outbox) -> None:
    fill(outbox, 5)

    result = run_against(
        FakeCollector(),
        outbox,
        FakeClock(),
        lambda shipper: shipper.ship(max_batches=1),
        batch_max_events=2,
    )

    assert (result.sent_batches, result.error) == (1, None)
    assert outbox.depth() == 3


def test_nothing_pending_sends_nothing(outbox: Outbox) -> None:
    collector = FakeCollector()

    result = run_against(collector, outbox, FakeClock(), ship_once)

    assert result == ShipResult(0, 0, None, None)
    assert collector.received == []


def test_overlapping_ship_calls_send_each_batch_once(outbox: Outbox) -> None:
    fill(outbox, 4)
    collector = FakeCollector()

    async def twice(shipper: Shipper) -> list[ShipResult]:
        return list(await asyncio.gather(shipper.ship(), shipper.ship()))

    results = run_against(collector, outbox, FakeClock(), twice, batch_max_events=2)

    assert sum(r.sent_events for r in results) == 4
    assert len(collector.received) == 2


def test_the_connection_is_reused_across_batches_and_ship_calls(outbox: Outbox) -> None:
    fill(outbox, 2)
    collector = FakeCollector()

    async def steps(shipper: Shipper) -> bool:
        await shipper.ship()
        fill(outbox, 1)
        await shipper.ship()
        return shipper.connected

    held = run_against(collector, outbox, FakeClock(), steps, batch_max_events=1)

    assert held
    assert len(collector.received) == 3
    assert len(set(collector.peers)) == 1  # one TCP connection carried all three


def test_without_hold_connection_no_connection_is_held_between_ship_calls(
    outbox: Outbox,
) -> None:
    """Deliveries further apart than the keep-alive: a connection kept until the next one
    would never be reused, only left open."""
    fill(outbox, 2)
    collector = FakeCollector()

    async def steps(shipper: Shipper) -> tuple[ShipResult, bool, ShipResult, bool]:
        first = await shipper.ship(max_batches=1)
        held_after_first = shipper.connected
        fill(outbox, 1)
        second = await shipper.ship()
        return first, held_after_first, second, shipper.connected

    first, held_first, second, held_second = run_against(
        collector, outbox, FakeClock(), steps, batch_max_events=1, hold_connection=False
    )

    assert (first.sent_batches, second.sent_batches) == (1, 2)
    assert (held_first, held_second) == (False, False)
    assert len(collector.received) == 3
    # Within one ship call the connection is kept; the next call opens a new one.
    first_peer, *second_peers = collector.peers
    assert second_peers[0] == second_peers[1] != first_peer


def test_by_default_the_connection_is_kept_for_the_next_ship_call(outbox: Outbox) -> None:
    fill(outbox, 1)

    async def steps(shipper: Shipper) -> bool:
        await shipper.ship()
        return shipper.connected

    assert run_against(FakeCollector(), outbox, FakeClock(), steps)


def test_close_drops_the_connection_and_the_thread_and_the_shipper_still_works(
    outbox: Outbox,
) -> None:
    fill(outbox, 1)
    collector = FakeCollector()

    async def steps(shipper: Shipper) -> tuple[bool, int, ShipResult]:
        await shipper.ship()
        await shipper.close()
        closed = shipper.connected
        threads = await shipper_threads_after_settling()  # the worker exits on shutdown
        fill(outbox, 1)
        return closed, threads, await shipper.ship()

    closed, threads, again = run_against(collector, outbox, FakeClock(), steps)

    assert (closed, threads) == (False, 0)
    assert again.sent_events == 1
    assert collector.peers[0] != collector.peers[1]


def test_requests_run_on_one_worker_thread_and_never_block_the_loop(outbox: Outbox) -> None:
    fill(outbox, 1)
    collector = FakeCollector(Reply(hang=True))

    async def steps(shipper: Shipper) -> tuple[ShipResult, int, int]:
        await shipper_threads_after_settling()  # earlier tests' workers gone
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        result = await shipper.ship()
        ticker.cancel()
        threads = len(_shipper_threads())
        return result, ticks, threads

    result, ticks, threads = run_against(collector, outbox, FakeClock(), steps, timeout_s=0.5)

    assert "timed out" in (result.error or "")
    assert ticks >= 10  # the loop kept running while the request waited
    assert threads == 1


def test_a_connection_the_collector_closed_is_replaced_without_an_error(outbox: Outbox) -> None:
    """The collector closes an idle keep-alive connection: the next request must notice
    before it sends, not fail and back off."""
    fill(outbox, 1)
    collector = FakeCollector()

    async def steps(shipper: Shipper) -> tuple[ShipResult, bool]:
        await shipper.ship()
        assert collector._runner is not None
        for conn in list(collector._runner.server.connections):  # type: ignore[union-attr]
            conn.force_close()
        await asyncio.sleep(0.1)
        fill(outbox, 1)
        return await shipper.ship(), shipper.connected

    result, held = run_against(collector, outbox, FakeClock(), steps)

    assert result == ShipResult(1, 1, None, None)
    assert held
    assert collector.peers[0] != collector.peers[1]


class ScriptedServer:
    """A raw HTTP/1.1 server on 127.0.0.1: for each request, in order, either answers
    200 (keep-alive) or drops the connection as soon as the request head has arrived
    (``"drop"``) or never answers (``"hang"``). Records (connection number, request)."""

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.seen: list[int] = []  # the connection number of each request received
        self._connections = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        number = self._connections
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.seen.append(number)
                action = self.script.pop(0) if self.script else "ok"
                if action == "drop":  # as a collector closing an idle connection would
                    writer.transport.abort()
                    return
                if action == "hang":
                    await asyncio.sleep(30)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()


def test_a_kept_alive_connection_closed_as_the_request_goes_out_is_retried_once_at_once(
    outbox: Outbox,
) -> None:
    """The race the reuse check cannot see: the collector closes the idle connection just
    as the next request is sent. Resending is safe (batches are deduplicated by id)."""
    server = ScriptedServer("ok", "drop")

    async def main() -> tuple[ShipResult, ShipResult]:
        async with server as url:
            shipper = make_shipper(url, outbox, FakeClock())
            try:
                fill(outbox, 1)
                first = await shipper.ship()
                fill(outbox, 1)
                return first, await shipper.ship()
            finally:
                await shipper.close()

    first, second = asyncio.run(main())

    assert first == second == ShipResult(1, 1, None, None)
    assert server.seen == [1, 1, 2]  # the dropped request went again, on a new connection
    assert outbox.depth() == 0


def test_a_new_connection_that_fails_is_not_retried(outbox: Outbox) -> None:
    server = ScriptedServer("drop")

    async def main() -> ShipResult:
        async with server as url:
            shipper = make_shipper(url, outbox, FakeClock())
            try:
                fill(outbox, 1)
                return await shipper.ship()
            finally:
                await shipper.close()

    result = asyncio.run(main())

    assert result.sent_batches == 0 and "cannot reach collector" in (result.error or "")
    assert server.seen == [1]
    assert outbox.depth() == 1


def test_a_request_given_up_on_a_reused_connection_is_not_retried(outbox: Outbox) -> None:
    """The timeout aborts the request by shutting its socket down; that failure must not
    look like the keep-alive race and start a second attempt behind the caller's back."""
    server = ScriptedServer("ok", "hang")

    async def main() -> ShipResult:
        async with server as url:
            shipper = make_shipper(url, outbox, FakeClock(), timeout_s=0.3)
            try:
                fill(outbox, 1)
                await shipper.ship()
                fill(outbox, 1)
                result = await shipper.ship()
                await asyncio.sleep(0.3)  # a wrongful retry would reach the server by now
                return result
            finally:
                await shipper.close()

    result = asyncio.run(main())

    assert "timed out" in (result.error or "")
    assert server.seen == [1, 1]
    assert outbox.depth() == 1


def test_connection_close_from_the_collector_is_honoured(outbox: Outbox) -> None:
    fill(outbox, 2)
    collector = FakeCollector(Reply(close=True))

    result = run_against(collector, outbox, FakeClock(), ship_once, batch_max_events=1)

    assert result.sent_batches == 2
    assert collector.peers[0] != collector.peers[1]


def test_a_connection_idle_longer_than_the_keepalive_is_not_reused(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("vigil.agent.delivery.transport.KEEPALIVE_S", 0.05)
    fill(outbox, 1)
    collector = FakeCollector()

    async def steps(shipper: Shipper) -> None:
        await shipper.ship()
        await asyncio.sleep(0.1)
        fill(outbox, 1)
        await shipper.ship()

    run_against(collector, outbox, FakeClock(), steps)

    assert len(collector.received) == 2
    assert collector.peers[0] != collector.peers[1]


def test_after_an_error_the_next_request_uses_a_new_connection(outbox: Outbox) -> None:
    fill(outbox, 1)
    clock = FakeClock()
    collector = FakeCollector(Reply(hang=True))

    async def steps(shipper: Shipper) -> ShipResult:
        await shipper.ship()  # times out
        clock.now = shipper.backoff_until
        return await shipper.ship()

    result = run_against(collector, outbox, clock, steps, timeout_s=0.3)

    assert result.sent_events == 1
    assert collector.peers[0] != collector.peers[1]


# ------------------------------------------------------------------ failures and retries


def test_after_a_500_the_same_batch_is_resent_and_nothing_is_lost(outbox: Outbox) -> None:
    ids = fill(outbox, 3)
    clock = FakeClock()
    collector = FakeCollector(Reply(500, text="database locked"))

    async def steps(shipper: Shipper) -> tuple[ShipResult, ShipResult]:
        failed = await shipper.ship()
        clock.now = shipper.backoff_until
        return failed, await shipper.ship()

    failed, retried = run_against(collector, outbox, clock, steps)

    first, second = (r.report for r in collector.received)
    assert "500" in (failed.error or "")
    assert retried.error is None
    assert second.batch_id == first.batch_id
    assert [e.event_id for e in second.events] == ids
    assert outbox.depth() == 0


def test_the_report_carries_the_outbox_epoch_and_the_seq_range(outbox: Outbox) -> None:
    seqs = [outbox.put(metrics(i)) for i in range(3)]
    collector = FakeCollector()

    run_against(collector, outbox, FakeClock(), ship_once)

    report = collector.received[0].report
    assert (report.epoch, report.seq_first, report.seq_last) == (outbox.epoch, seqs[0], seqs[-1])


def test_the_report_carries_who_is_at_the_console(outbox: Outbox) -> None:
    """The survey rate limit per person: each report says the console user's id as the
    shipper's source gives it when sent, and leaves the field out while unknown."""
    users = iter(["a" * 64, None])
    outbox.put(metrics(1))
    collector = FakeCollector(Reply(status=500))

    async def twice(shipper: Shipper) -> None:
        await shipper.ship()  # refused: the batch stays and goes again
        shipper.wake()
        await shipper.ship()

    run_against(collector, outbox, FakeClock(), twice, console_user=lambda: next(users))

    first, second = collector.received
    assert first.report.console_user == "a" * 64
    assert second.report.console_user is None
    assert b"console_user" not in gzip.decompress(second.body)


EPOCH_RESET = json.dumps({"error": "seq at or below the mark", "epoch_reset": True, "mark": 99})


def test_an_epoch_reset_resends_the_batch_at_once_in_a_new_epoch(outbox: Outbox) -> None:
    """The collector's 409 epoch_reset (a restored snapshot): same events, new epoch."""
    ids = fill(outbox, 3)
    old_epoch = outbox.epoch
    collector = FakeCollector(Reply(409, text=EPOCH_RESET))

    result = run_against(collector, outbox, FakeClock(), ship_once)

    first, second = (r.report for r in collector.received)
    assert result == ShipResult(sent_batches=1, sent_events=3, error=None, retry_after_s=None)
    assert first.epoch == old_epoch and second.epoch == outbox.epoch != old_epoch
    assert [e.event_id for e in second.events] == ids
    assert (second.seq_first, second.seq_last) == (first.seq_first, first.seq_last)
    assert outbox.depth() == 0


def test_a_second_epoch_reset_in_a_row_is_a_rejection_not_a_loop(outbox: Outbox) -> None:
    fill(outbox, 1)
    collector = FakeCollector(Reply(409, text=EPOCH_RESET), Reply(409, text=EPOCH_RESET))

    result = run_against(collector, outbox, FakeClock(), ship_once)

    assert len(collector.received) == 2
    assert "409" in (result.error or "")
    assert outbox.depth() == 1  # kept, as for any refusal


def test_a_409_without_epoch_reset_is_an_ordinary_rejection(outbox: Outbox) -> None:
    fill(outbox, 1)
    epoch = outbox.epoch
    collector = FakeCollector(Reply(409, text='{"error": "conflict"}'))

    result = run_against(collector, outbox, FakeClock(), ship_once)

    assert len(collector.received) == 1 and "409" in (result.error or "")
    assert outbox.epoch == epoch and outbox.depth() == 1


def test_inside_the_backoff_window_ship_does_not_send(outbox: Outbox) -> None:
    fill(outbox, 1)
    clock = FakeClock()
    collector = FakeCollector(Reply(500))

    async def steps(shipper: Shipper) -> ShipResult:
        await shipper.ship()
        clock.now = shipper.backoff_until - 0.01
        return await shipper.ship()

    result = run_against(collector, outbox, clock, steps)

    assert result == ShipResult(0, 0, "backing off", None)
    assert len(collector.received) == 1


@pytest.mark.parametrize("status", [429, 503], ids=["429-too-many", "503-unavailable"])
def test_retry_after_seconds_sets_the_backoff_window(outbox: Outbox, status: int) -> None:
    fill(outbox, 2)
    clock = FakeClock()
    collector = FakeCollector(Reply(status, headers={"Retry-After": "7"}))

    async def steps(shipper: Shipper) -> tuple[ShipResult, float]:
        return await shipper.ship(), shipper.backoff_until

    result, until = run_against(collector, outbox, clock, steps)

    assert result.retry_after_s == 7.0
    assert until == pytest.approx(clock.now + 7.0)
    assert outbox.depth() == 2


def test_retry_after_as_an_http_date_is_understood(outbox: Outbox) -> None:
    fill(outbox, 1)
    clock = FakeClock(1_700_000_000.0)
    date = email.utils.formatdate(clock.now + 30, usegmt=True)
    collector = FakeCollector(Reply(429, headers={"Retry-After": date}))

    async def steps(shipper: Shipper) -> float:
        await shipper.ship()
        return shipper.backoff_until

    assert run_against(collector, outbox, clock, steps) == pytest.approx(clock.now + 30)


@pytest.mark.parametrize(
    "retry_after",
    [None, "soon", "86400000"],
    ids=["missing", "unparseable", "absurdly-long"],
)
def test_without_a_usable_retry_after_429_falls_back_to_exponential_backoff(
    outbox: Outbox, retry_after: str | None
) -> None:
    fill(outbox, 1)
    clock = FakeClock()
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    collector = FakeCollector(Reply(429, headers=headers))

    async def steps(shipper: Shipper) -> tuple[ShipResult, float]:
        return await shipper.ship(), shipper.backoff_until

    result, until = run_against(collector, outbox, clock, steps, rng=FakeRng(1.0))

    assert result.retry_after_s is None
    assert until == clock.now + 1.0


@pytest.mark.parametrize(
    "status", [408, 500, 502, 504], ids=["408-timeout", "500", "502-bad-gateway", "504"]
)
def test_transient_statuses_back_off_briefly_and_keep_the_events(
    outbox: Outbox, status: int
) -> None:
    fill(outbox, 2)
    clock = FakeClock()
    collector = FakeCollector(Reply(status))

    async def steps(shipper: Shipper) -> tuple[ShipResult, float]:
        return await shipper.ship(), shipper.backoff_until

    result, until = run_against(collector, outbox, clock, steps, rng=FakeRng(1.0))

    assert str(status) in (result.error or "")
    assert until == clock.now + 1.0
    assert outbox.depth() == 2


def test_backoff_grows_exponentially_with_full_jitter_up_to_the_cap(outbox: Outbox) -> None:
    fill(outbox, 1)
    clock = FakeClock()
    rng = FakeRng(0.5)
    collector = FakeCollector(*[Reply(500)] * 11)

    async def steps(shipper: Shipper) -> list[float]:
        waits = []
        for _ in range(11):
            await shipper.ship()
            waits.append(shipper.backoff_until - clock.now)
            clock.now = shipper.backoff_until
        return waits

    waits = run_against(collector, outbox, clock, steps, rng=rng)

    ceilings = [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert rng.ranges == [(0, c) for c in ceilings]
    assert waits == [c * 0.5 for c in ceilings]


def test_a_success_resets_the_backoff(outbox: Outbox) -> None:
    clock = FakeClock()
    rng = FakeRng(1.0)
    collector = FakeCollector(Reply(500), Reply(500), Reply(200), Reply(500))

    async def steps(shipper: Shipper) -> float:
        fill(outbox, 1)
        for _ in range(3):
            await shipper.ship()
            clock.now = max(clock.now, shipper.backoff_until)
        fill(outbox, 1)
        await shipper.ship()
        return shipper.backoff_until - clock.now

    assert run_against(collector, outbox, clock, steps, rng=rng) == 1.0


def test_connection_refused_is_an_error_and_keeps_the_events(outbox: Outbox) -> None:
    fill(outbox, 3)
    clock = FakeClock()

    async def main() -> tuple[ShipResult, float]:
        shipper = make_shipper(f"http://127.0.0.1:{free_port()}", outbox, clock)
        try:
            return await shipper.ship(), shipper.backoff_until
        finally:
            await shipper.close()

    result, until = asyncio.run(main())

    assert result.sent_events == 0
    assert "cannot reach collector" in (result.error or "")
    assert until > clock.now
    assert outbox.depth() == 3


def test_a_collector_that_does_not_answer_in_time_is_a_timeout(outbox: Outbox) -> None:
    fill(outbox, 1)
    collector = FakeCollector(Reply(hang=True))

    result = run_against(collector, outbox, FakeClock(), ship_once, timeout_s=0.2)

    assert "timed out" in (result.error or "")
    assert outbox.depth() == 1


@pytest.mark.parametrize(
    "status",
    [400, 401, 403, 404, 301],
    ids=["400-bad-request", "401-bad-token", "403-forbidden", "404-wrong-url", "301-redirect"],
)
def test_a_rejected_batch_is_kept_logged_loudly_and_backed_off_long(
    outbox: Outbox, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    fill(outbox, 2)
    clock = FakeClock()
    headers = {"Location": "https://elsewhere/"} if status == 301 else {}
    collector = FakeCollector(Reply(status, headers=headers, text="events[0].state: bad value"))

    async def steps(shipper: Shipper) -> tuple[ShipResult, float]:
        return await shipper.ship(), shipper.backoff_until

    with caplog.at_level(logging.ERROR, logger="vigil.agent.shipper"):
        result, until = run_against(collector, outbox, clock, steps)

    assert str(status) in (result.error or "")
    assert outbox.depth() == 2
    assert until == clock.now + REJECTED_BACKOFF_S
    assert "events[0].state: bad value" in caplog.text
    assert len(collector.received) == 1  # a redirect is not followed


def test_a_rejected_batch_goes_through_once_the_collector_accepts_it(outbox: Outbox) -> None:
    ids = fill(outbox, 2)
    clock = FakeClock()
    collector = FakeCollector(Reply(401, text="unknown token"))

    async def steps(shipper: Shipper) -> ShipResult:
        await shipper.ship()
        clock.now = shipper.backoff_until
        return await shipper.ship()

    result = run_against(collector, outbox, clock, steps)

    assert result.sent_events == 2
    assert [e.event_id for e in collector.received[1].report.events] == ids


# ------------------------------------------------------------------ pacing and knobs


class FakeSleep:
    """Records the pauses the shipper asks for, without waiting."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)


def test_a_backlog_drains_at_the_configured_rate(outbox: Outbox) -> None:
    fill(outbox, 4)
    sleep = FakeSleep()

    result = run_against(
        FakeCollector(),
        outbox,
        FakeClock(),
        ship_once,
        batch_max_events=1,
        drain_batches_per_s=4.0,
        sleep=sleep,
    )

    assert result.sent_batches == 4
    assert sleep.pauses == [0.25, 0.25, 0.25]  # the first batch goes at once


def test_a_single_batch_is_never_delayed_by_the_drain_rate(outbox: Outbox) -> None:
    fill(outbox, 3)
    sleep = FakeSleep()

    run_against(
        FakeCollector(), outbox, FakeClock(), ship_once, drain_batches_per_s=0.01, sleep=sleep
    )

    assert sleep.pauses == []


def test_batches_are_capped_in_bytes(outbox: Outbox) -> None:
    fill(outbox, 6)
    collector = FakeCollector()
    one = outbox.stats().payload_bytes // 6

    run_against(collector, outbox, FakeClock(), ship_once, batch_max_bytes=one * 2)

    assert [len(r.report.events) for r in collector.received] == [2, 2, 2]


def test_backoff_base_and_cap_are_configurable(outbox: Outbox) -> None:
    fill(outbox, 1)
    clock = FakeClock()
    rng = FakeRng(1.0)
    collector = FakeCollector(*[Reply(500)] * 4)

    async def steps(shipper: Shipper) -> None:
        for _ in range(4):
            await shipper.ship()
            clock.now = shipper.backoff_until

    run_against(collector, outbox, clock, steps, rng=rng, backoff_base_s=0.1, backoff_cap_s=0.3)

    assert [b for _, b in rng.ranges] == pytest.approx([0.1, 0.2, 0.3, 0.3])


def test_backoff_windows_follow_the_monotonic_clock_not_the_wall_clock(outbox: Outbox) -> None:
    """A wall clock set back an hour must not freeze delivery for an hour."""
    fill(outbox, 1)
    wall, mono = FakeClock(), FakeClock(50.0)
    collector = FakeCollector(Reply(500))

    async def steps(shipper: Shipper) -> ShipResult:
        await shipper.ship()
        wall.now -= 3600
        mono.now = shipper.backoff_until
        return await shipper.ship()

    result = run_against(collector, outbox, wall, steps, monotonic=mono, rng=FakeRng(1.0))

    assert result.sent_events == 1


def test_wake_ends_a_backoff_at_once(outbox: Outbox) -> None:
    fill(outbox, 1)
    collector = FakeCollector(Reply(503, headers={"Retry-After": "600"}))

    async def steps(shipper: Shipper) -> ShipResult:
        await shipper.ship()
        shipper.wake()
        return await shipper.ship()

    result = run_against(collector, outbox, FakeClock(), steps)

    assert result.sent_events == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backoff_base_s": 0.0}, "backoff"),
        ({"backoff_base_s": 5.0, "backoff_cap_s": 1.0}, "backoff"),
        ({"drain_batches_per_s": 0.0}, "drain_batches_per_s"),
    ],
    ids=["zero-base", "cap-below-base", "zero-drain-rate"],
)
def test_nonsensical_pacing_is_refused_naming_the_argument(
    outbox: Outbox, kwargs: dict[str, float], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        make_shipper("http://127.0.0.1:1", outbox, FakeClock(), **kwargs)


# ------------------------------------------------------------------ the config knobs


def load(tmp_path: Path, extra: str) -> Any:
    from vigil.agent.config import load_agent_config

    path = tmp_path / "agent.yaml"
    path.write_text(f"collector: {{url: 'http://127.0.0.1:1', token: t}}\n{extra}")
    return load_agent_config(path)


def test_shipping_and_outbox_defaults_are_sized_for_a_week_offline(tmp_path: Path) -> None:
    config = load(tmp_path, "")

    assert config.outbox.max_age_s == 7 * 86400
    assert config.shipping.backoff_cap_s == 300.0
    assert config.shipping.drain_batches_per_s == 2.0


def test_shipping_knobs_are_read_with_units(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "shipping: {backoff_base: 200ms, backoff_cap: 1m, drain_rate: 5, start_jitter: 0}\n"
        "outbox: {max_age: 2d, batch_max_bytes: 1MiB}\n",
    )

    assert (config.shipping.backoff_base_s, config.shipping.backoff_cap_s) == (0.2, 60.0)
    assert config.shipping.drain_batches_per_s == 5.0
    assert config.shipping.start_jitter_s == 0.0
    assert (config.outbox.max_age_s, config.outbox.batch_max_bytes) == (2 * 86400, 2**20)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("shipping: {backoff_base: 10s, backoff_cap: 1s}\n", "shipping.backoff_cap"),
        ("shipping: {drain_rate: 0}\n", "shipping.drain_rate"),
        ("shipping: {drian_rate: 1}\n", "shipping.drian_rate"),
        ("outbox: {batch_max_bytes: 10}\n", "outbox.batch_max_bytes"),
    ],
    ids=["cap-below-base", "zero-drain-rate", "typo", "tiny-batches"],
)
def test_bad_shipping_knobs_name_the_key(tmp_path: Path, extra: str, key: str) -> None:
    from vigil.configio import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(tmp_path, extra)


def test_the_agent_reports_a_sleep_as_a_clock_event_and_ends_its_backoff(tmp_path: Path) -> None:
    from vigil.agent.clock import ClockReading, read_clock
    from vigil.agent.service import build_service

    config = load(tmp_path, "agent: {state_dir: state}\n")
    service = build_service(config, library={})
    now = read_clock()
    # As if the previous reading was taken just before an hour asleep.
    service._clock_reading = ClockReading(
        wall=now.wall - 3605, monotonic=now.monotonic - 5, boot=now.boot - 3605
    )
    service.shipper._backoff_until = float("inf")

    async def main() -> Any:
        await service.watch_clock()
        backoff = service.shipper.backoff_until
        batch = service.outbox.next_batch(10)
        await service._shutdown()
        return backoff, batch

    backoff, batch = asyncio.run(main())

    assert backoff < float("inf")
    assert batch is not None
    (event,) = batch.events
    assert isinstance(event, wire.CheckEvent) and event.check == wire.CLOCK_CHECK
    assert event.value == pytest.approx(3600, abs=1)
    assert "asleep" in event.message


# ------------------------------------------------------------------ transport bounds


def test_only_the_start_of_a_huge_error_body_is_read_and_logged(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    fill(outbox, 1)
    clock = FakeClock()
    huge = "x" * (4 * 2**20)
    collector = FakeCollector(Reply(400, text=huge))

    async def steps(shipper: Shipper) -> tuple[ShipResult, bool]:
        return await shipper.ship(), shipper.connected

    with caplog.at_level(logging.ERROR, logger="vigil.agent.shipper"):
        result, held = run_against(collector, outbox, clock, steps)

    assert "400" in (result.error or "")
    (record,) = [r for r in caplog.records if "REJECTED" in r.getMessage()]
    assert "x" * LOGGED_BODY_CHARS in record.getMessage()
    assert "x" * (LOGGED_BODY_CHARS + 1) not in record.getMessage()
    assert not held  # the unread rest would corrupt the next response: dropped


def test_a_2xx_with_an_oversized_body_is_delivered_and_the_connection_dropped(
    outbox: Outbox,
) -> None:
    fill(outbox, 2)
    collector = FakeCollector(Reply(200, text="y" * (MAX_ACK_BODY_BYTES * 4)))

    result = run_against(collector, outbox, FakeClock(), ship_once, batch_max_events=1)

    assert (result.sent_batches, result.error) == (2, None)
    assert collector.peers[0] != collector.peers[1]


def test_timeout_bounds_the_whole_request_not_each_read(outbox: Outbox) -> None:
    """A collector trickling its answer a byte at a time never lets a single read time
    out; the request as a whole must still end after ``timeout_s``."""
    fill(outbox, 1)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        with contextlib.suppress(OSError):
            for byte in answer:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)
        writer.close()

    async def main() -> tuple[ShipResult, float]:
        server = await asyncio.start_server(trickle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        shipper = make_shipper(f"http://127.0.0.1:{port}", outbox, FakeClock(), timeout_s=0.5)
        try:
            t0 = time.monotonic()
            result = await shipper.ship()
            return result, time.monotonic() - t0
        finally:
            await shipper.close()
            server.close()

    result, elapsed = asyncio.run(main())

    assert "timed out" in (result.error or "")
    assert elapsed < 1.5  # the full answer would take ~4 s
    assert outbox.depth() == 1


def test_close_does_not_wait_for_a_request_in_flight(outbox: Outbox) -> None:
    fill(outbox, 1)
    collector = FakeCollector(Reply(hang=True))

    async def steps(shipper: Shipper) -> tuple[float, bool]:
        task = asyncio.create_task(shipper.ship())
        for _ in range(500):  # until the request is in flight (at most 5 s)
            if collector.received:
                break
            await asyncio.sleep(0.01)
        task.cancel()  # as the agent's bounded final flush does at shutdown
        with contextlib.suppress(asyncio.CancelledError):
            await task
        t0 = time.monotonic()
        await shipper.close()
        took = time.monotonic() - t0
        # The aborted request returns at once (not after its 30 s socket timeout), so the
        # worker drops the connection and exits soon after.
        threads = await shipper_threads_after_settling()
        return took, shipper.connected or threads > 0

    took, busy = run_against(collector, outbox, FakeClock(), steps, timeout_s=30.0)

    assert took < 0.5
    assert not busy
    assert outbox.depth() == 1


class FakeDns:
    """``socket.getaddrinfo`` for names under ``.test``: ``hangs.test`` never answers
    (until released), any other ``.test`` name is 127.0.0.1; everything else is real."""

    def __init__(self) -> None:
        self.real = socket.getaddrinfo
        self.release = threading.Event()
        self.hanging_calls = 0

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hangs.test":
            self.hanging_calls += 1
            self.release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if isinstance(host, str) and host.endswith(".test"):
            host = "127.0.0.1"
        return self.real(host, port, *args, **kwargs)


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDns]:
    dns = FakeDns()
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    yield dns
    dns.release.set()


def test_a_collector_name_is_looked_up_and_sent_as_the_host(
    outbox: Outbox, fake_dns: FakeDns
) -> None:
    fill(outbox, 1)
    collector = FakeCollector()

    async def main() -> ShipResult:
        async with collector as url:
            port = url.rsplit(":", 1)[1]
            shipper = make_shipper(f"http://collector.test:{port}", outbox, FakeClock())
            try:
                return await shipper.ship()
            finally:
                await shipper.close()

    assert asyncio.run(main()) == ShipResult(1, 1, None, None)
    assert collector.received[0].headers["Host"].startswith("collector.test:")


def test_a_hanging_dns_lookup_holds_neither_the_worker_nor_the_next_request(
    outbox: Outbox, fake_dns: FakeDns
) -> None:
    """A resolver that never answers: each ship still ends after its timeout, the second
    waits for the first lookup rather than starting another, and closing the shipper
    leaves no thread behind to delay the agent's exit."""
    fill(outbox, 1)
    clock = FakeClock()

    async def main() -> tuple[list[ShipResult], float, int]:
        shipper = make_shipper("http://hangs.test:9", outbox, clock, timeout_s=0.3)
        results = []
        t0 = time.monotonic()
        for _ in range(2):
            results.append(await shipper.ship())
            clock.now = shipper.backoff_until  # skip the backoff window
        took = time.monotonic() - t0
        await shipper.close()
        return results, took, await shipper_threads_after_settling()

    results, took, threads = asyncio.run(main())

    assert all(r.sent_batches == 0 and "timed out" in (r.error or "") for r in results)
    assert took < 2.0  # two timeouts of 0.3 s, not two hangs
    assert fake_dns.hanging_calls == 1
    assert threads == 0
    assert outbox.depth() == 1


# ------------------------------------------------------------------ HTTPS


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 (IP only)."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is required for the HTTPS tests in CI")
        pytest.skip("openssl not found: cannot make test certificates")
    folder = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=Vigil test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=folder,
    )  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem",
        cwd=folder,
    )  # fmt: skip
    return {
        "ca": folder / "ca.pem",
        "cert": folder / "server.pem",
        "key": folder / "server.key",
    }


def server_context(tls_files: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    return context


def test_https_refuses_a_certificate_it_does_not_trust(
    outbox: Outbox, tls_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    fill(outbox, 1)
    collector = FakeCollector(ssl_context=server_context(tls_files))

    result = run_against(collector, outbox, FakeClock(), ship_once)

    assert result.sent_events == 0
    error = result.error or ""
    assert "cannot reach collector at https://127.0.0.1:" in error
    assert "certificate verify failed" in error
    assert collector.received == []  # nothing was sent over the untrusted connection
    assert outbox.depth() == 1


def test_https_delivers_when_the_ca_is_trusted(
    outbox: Outbox, tls_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ssl.create_default_context() loads the file SSL_CERT_FILE names; the shipper makes
    # its context at the first send, so setting it here is in time.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files["ca"]))
    fill(outbox, 2)
    collector = FakeCollector(ssl_context=server_context(tls_files))

    async def steps(shipper: Shipper) -> ShipResult:
        await shipper.ship(max_batches=1)
        return await shipper.ship()

    result = run_against(collector, outbox, FakeClock(), steps, batch_max_events=1)

    assert (result.sent_events, result.error) == (1, None)
    assert outbox.depth() == 0
    assert collector.received[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert len(set(collector.peers)) == 1  # the TLS connection is kept alive too


def test_https_checks_the_hostname_even_with_a_trusted_ca(
    outbox: Outbox, tls_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate names 127.0.0.1 only; reached as "localhost" it must be refused."""
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_files["ca"]))
    fill(outbox, 1)
    collector = FakeCollector(ssl_context=server_context(tls_files))

    async def main() -> ShipResult:
        async with collector as url:
            shipper = make_shipper(url.replace("127.0.0.1", "localhost"), outbox, FakeClock())
            try:
                return await shipper.ship()
            finally:
                await shipper.close()

    result = asyncio.run(main())

    assert result.sent_events == 0
    assert "certificate verify failed" in (result.error or "")
    assert "localhost" in (result.error or "")


def test_an_outage_logs_one_warning_as_it_starts_and_one_info_as_it_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #14: each failed delivery used to log two WARNINGs, and the end of an outage
    none; the agent's whole delivery path (service and shipper) now logs one line each way."""
    from vigil.agent.config import load_agent_config
    from vigil.agent.service import build_service

    collector = FakeCollector(Reply(503), Reply(500), Reply(502))

    async def main() -> None:
        async with collector as url:
            path = tmp_path / "agent.yaml"
            path.write_text(f"agent: {{state_dir: state}}\ncollector: {{url: '{url}', token: t}}\n")
            service = build_service(load_agent_config(path), library={})
            for i in range(4):  # three failures, then a delivery
                service.outbox.put(metrics(i))
                await service.ship()
                service.shipper.wake()  # end the backoff window (not the outage)
            await service._shutdown()

    with caplog.at_level(logging.DEBUG, logger="vigil.agent"):
        asyncio.run(main())

    delivery = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.levelno >= logging.INFO and "deliver" in r.getMessage()
    ]
    assert [level for level, _ in delivery] == ["WARNING", "INFO"]
    assert delivery[0][1].startswith("delivery failing: collector answered HTTP 503")
    assert delivery[1][1].startswith("delivery resumed after 3 failed attempts over ")
