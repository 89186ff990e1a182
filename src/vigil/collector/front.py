"""A lean HTTP front for ``POST /api/v1/reports``, in front of aiohttp on the same port.

Why: issue #17's profile put ~40 % of a durable report's CPU in aiohttp's HTTP stack
(request parsing, the per-request task and stream objects, the response writer). Agents
post the same small request over and over on a keep-alive connection, so this module
serves exactly that request itself and hands everything else to aiohttp:

* :class:`IngestFrontProtocol` is the protocol of every accepted connection. It frames
  requests itself (the head ends at the first blank line, the body is ``Content-Length``
  bytes) and parses the head with ``httptools`` (llhttp, the parser uvicorn uses).
* A request it serves is a plain ``POST /api/v1/reports`` over HTTP/1.1 with one
  ``Content-Length`` and no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``. It runs the
  very same handler as aiohttp does (:func:`vigil.collector.api.reports.post_report`,
  through :class:`LeanRequest`, which offers the handful of request attributes that
  handler reads), so authentication, the limits, the 4xx answers naming the field and the
  ack are the same code, not a copy.
* The plain report, whole in the buffer (the usual case: an agent's request fits one
  segment), takes the callback lane instead (:class:`~vigil.collector.api.reports.PlainLane`):
  checked and queued for the group commit right here in ``data_received``, answered from
  the commit's callback, with no task, future, request object or aiohttp ``Response`` per
  request (docs/benchmarks.md, delivery: ~20 % of a report's CPU). The lane only ever
  accepts: whatever it declines (any refusal, a credential to activate or rotate, a survey
  to record or offer, a big body) is served by the handler as above.
* Anything else (another path or method, a chunked body, a head that does not parse or is
  over 8 KiB, HTTP/1.0) is handed over at a request boundary: the connection is given to
  aiohttp's own protocol (``transport.set_protocol``) with the bytes not yet consumed, and
  stays with aiohttp from then on. So malformed input gets aiohttp's answer and logging,
  exactly as without this front.

Limits kept: the connection cap (``listen.max_connections`` counts lean and aiohttp
connections together; past it a ``503`` as in ``listen.py``); ``listen.idle_timeout`` both
for an idle connection and for a head that is not complete (slow headers), and as the
bound on receiving a body once its head arrived; the body size is refused from
``Content-Length`` before any of it is read, and the connection is closed after a reply
sent before its body was read; at most one request is handled at a time per connection
and reading pauses meanwhile. TLS is the listening socket's: the protocol sees plain text.

Selected by ``listen.ingest_front: lean`` (``aiohttp``: every request through aiohttp).
Measured in docs/benchmarks.md (delivery).
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import cast

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from vigil.collector.api.http import ApiError, error_response, json_bytes
from vigil.collector.api.reports import Admitted, PlainLane, finish_report
from vigil.collector.desk.apply import IngestResult
from vigil.collector.front_request import INGEST_PATH, Body, Head, LeanRequest, lean_head
from vigil.collector.listen import ConnectionGuard

log = logging.getLogger(__name__)

# Longest request head served here (aiohttp's own limit for a line is 8190 bytes); a
# longer one is aiohttp's to refuse.
MAX_HEAD_BYTES = 8192
_HEAD_END = b"\r\n\r\n"
# Seconds the rest of a refused body is read and discarded before the connection closes.
_DRAIN_S = 2.0
# What the plain lane's replies carry (as aiohttp's json_response); its 500 body.
_JSON_HEADERS = ["Content-Type: application/json; charset=utf-8"]
_INTERNAL_ERROR = json_bytes({"error": "internal server error", "field": None})
# Reason phrases by status, looked up once here rather than through the enum per reply.
_REASONS = {status.value: status.phrase for status in http.HTTPStatus}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class IngestFrontProtocol(asyncio.Protocol):
    """One client connection; see the module docstring."""

    def __init__(self, front: IngestFront) -> None:
        self._front = front
        self._transport: asyncio.Transport | None = None
        # The loop, looked up once: asyncio.get_running_loop() makes a getpid() system
        # call each time on Python 3.11, and a request needed it twice.
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._body: Body | None = None
        self._remaining = 0  # body bytes of the current request not received yet
        # The request being handled (its task, or the plain lane's wait for its commit).
        self._task: asyncio.Future[None] | None = None
        self._received_at = 0.0  # the plain lane's report: its receive time
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._closed = False
        self._draining = -1  # bytes still discarded after an early reply; -1: not draining

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._front.open.add(self)
        self._arm(self._idle_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed = True
        self._front.open.discard(self)
        self._disarm()
        if self._body is not None:
            self._body.fail(web.RequestPayloadError("connection closed before the body ended"))

    def data_received(self, data: bytes) -> None:
        if self._draining >= 0:
            self._drain(len(data))
            return
        if self._remaining:
            piece = data[: self._remaining]
            self._remaining -= len(piece)
            assert self._body is not None
            self._body.feed(bytes(piece))
            if not self._remaining:
                self._body.end()
                self._disarm()
            data = data[len(piece) :]
        if data:
            self._buffer += data
        self._process()

    # ------------------------------------------------------------------ framing

    def _process(self) -> None:
        if self._task is not None or self._closed:
            # One request at a time: what comes next waits, bounded by pausing the socket.
            if len(self._buffer) > MAX_HEAD_BYTES and not self._paused:
                self._pause()
            return
        end = self._buffer.find(_HEAD_END, 0, MAX_HEAD_BYTES)
        if end < 0:
            if len(self._buffer) >= MAX_HEAD_BYTES or (
                # A request line that already shows this is not ours: aiohttp's at once.
                len(self._buffer) > len(INGEST_PATH) + 5
                and not self._buffer.startswith(b"POST " + INGEST_PATH)
            ):
                self._hand_over()
            return
        raw = bytes(self._buffer[: end + len(_HEAD_END)])
        parsed = lean_head(raw)
        if parsed is None:
            self._hand_over()
            return
        head, keep_alive = parsed
        del self._buffer[: len(raw)]
        fields = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in head.headers
        }
        length = int(fields["content-length"])
        limit = self._front.max_body_bytes
        lane = self._front.lane
        if (
            lane is not None
            and length <= limit
            and len(self._buffer) >= length
            and len(fields) == len(head.headers)  # no field repeated
        ):
            body = bytes(self._buffer[:length])
            admitted = lane.admit(fields, body)
            if admitted is not None:
                waiter = self._loop.create_future()
                deliver = functools.partial(self._delivered, admitted, head, keep_alive, waiter)
                received_at = lane.submit(admitted, deliver)
                if received_at is not None:
                    del self._buffer[:length]
                    self._received_at = received_at
                    self._disarm()
                    self._busy(waiter)
                    return
        self._serve_general(head, keep_alive, length)

    def _serve_general(self, head: Head, keep_alive: bool, length: int) -> None:
        """Serve the request whose head was just taken off the buffer through the report
        handler (a task), feeding it the body as it arrives."""
        body = Body()
        self._body = body
        # A body over the limit is refused before any of it is read; the rest of it then
        # is not waited for (the connection closes after the reply).
        limit = self._front.max_body_bytes
        self._remaining = length if length <= limit else 0
        taken = bytes(self._buffer[: self._remaining])
        del self._buffer[: len(taken)]
        self._remaining -= len(taken)
        if taken:
            body.feed(taken)
        complete = length <= limit and not self._remaining
        if complete:
            body.end()
        request = self._request(head, body)
        self._disarm()
        if not complete and length <= limit:
            self._arm(self._body_timeout)
        reusable = keep_alive and length <= limit
        self._busy(asyncio.ensure_future(self._serve(request, reusable)))

    def _request(self, head: Head, body: Body) -> LeanRequest:
        """The report handler's view of the request with ``head`` and ``body``."""
        headers = CIMultiDict(
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers
        )
        transport = self._transport
        assert transport is not None
        peer = transport.get_extra_info("peername")
        remote = peer[0] if isinstance(peer, tuple) else None
        scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        return LeanRequest(
            self._front.app, CIMultiDictProxy(headers), head.url, remote, scheme, body
        )

    def _busy(self, inflight: asyncio.Future[None]) -> None:
        """A request of this connection is being handled until ``inflight`` is done."""
        self._task = inflight
        self._front.tasks.add(inflight)
        inflight.add_done_callback(self._front.tasks.discard)

    def _delivered(
        self,
        admitted: Admitted,
        head: Head,
        keep_alive: bool,
        waiter: asyncio.Future[None],
        result: IngestResult | Exception,
    ) -> None:
        """The plain lane's report was committed (or failed): answer it."""
        lane = self._front.lane
        assert lane is not None
        reply: tuple[int, bytes] | None
        if isinstance(result, Exception):  # as respond() renders a handler's exception
            log.error("unhandled error on POST %s", INGEST_PATH.decode(), exc_info=result)
            reply = (500, _INTERNAL_ERROR)
        else:
            reply = lane.reply(admitted, result, self._received_at)
            if reply is None:
                # The ack needs the storage (a survey may be waiting): the coroutine form
                # answers, and the request stays in flight until it has.
                self._busy(
                    asyncio.ensure_future(
                        self._finish_general(admitted, head, keep_alive, waiter, result)
                    )
                )
                return
        self._task = None
        waiter.set_result(None)
        if self._closed:
            return
        status, payload = reply
        self._send(status, _JSON_HEADERS, payload, keep_alive)
        self._next(keep_alive, body_pending=False)

    async def _finish_general(
        self,
        admitted: Admitted,
        head: Head,
        keep_alive: bool,
        waiter: asyncio.Future[None],
        result: IngestResult,
    ) -> None:
        body = Body()
        body.end()
        request = self._request(head, body)
        received_at = self._received_at
        try:
            response = await self._front.respond(
                request, lambda r: finish_report(r, admitted, result, received_at)
            )
        finally:
            waiter.set_result(None)
        self._task = None
        if not self._closed:
            self._reply(response, keep_alive)

    async def _serve(self, request: LeanRequest, keep_alive: bool) -> None:
        response = await self._front.respond(request)
        self._task = None
        if self._closed:
            return
        # The body not fully read (refused early, or cut off): the connection cannot be
        # reused, since the next request would start somewhere inside it.
        keep_alive = keep_alive and not self._remaining and self._body_complete()
        self._reply(response, keep_alive)

    def _reply(self, response: web.Response, keep_alive: bool) -> None:
        body = response.body
        payload = body if isinstance(body, bytes) else b""
        headers = [
            f"{name}: {value}"
            for name, value in response.headers.items()
            if name.lower() not in ("content-length", "connection")
        ]
        self._send(response.status, headers, payload, keep_alive)
        body_pending = not self._body_complete()
        self._body = None
        self._next(keep_alive, body_pending=body_pending)

    def _next(self, keep_alive: bool, *, body_pending: bool) -> None:
        """After a reply: close (draining what the client still sends of a body not
        read), or wait for the connection's next request."""
        if not keep_alive:
            if body_pending:
                # Closing with unread input makes the kernel send RST, which can destroy
                # the reply before the client reads it: discard what the client still
                # sends (bounded in bytes and time), then close.
                self._start_draining()
            else:
                assert self._transport is not None
                self._transport.close()
            return
        self._arm(self._idle_timeout)
        if self._paused:
            self._paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        if self._buffer:
            self._process()

    def _start_draining(self) -> None:
        assert self._transport is not None
        self._buffer.clear()
        self._remaining = 0
        self._draining = self._front.max_body_bytes
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        self._disarm()
        self._timer = self._loop.call_later(_DRAIN_S, self._transport.close)

    def _drain(self, received: int) -> None:
        self._draining -= received
        if self._draining < 0 and self._transport is not None:
            self._transport.close()

    def _body_complete(self) -> bool:
        body = self._body
        return body is None or (body._done and body._error is None)

    def _send(self, status: int, headers: list[str], payload: bytes, keep_alive: bool) -> None:
        """Write one response: the status line, ``headers`` (``"Name: value"``), the
        length, ``Connection: close`` unless kept alive, and the body."""
        if self._front.access_log:
            # One INFO line per request, as aiohttp's access log gives for the rest
            # (``logging.access_log``; off by default: every agent POST would be one).
            log.info('%s "POST %s HTTP/1.1" %d %d', self._remote(), INGEST_PATH.decode(),
                     status, len(payload))  # fmt: skip
        reason = _REASONS.get(status, "Unknown")
        lines = [f"HTTP/1.1 {status} {reason}", *headers, f"Content-Length: {len(payload)}"]
        if not keep_alive:
            lines.append("Connection: close")
        assert self._transport is not None
        self._transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)

    def _remote(self) -> str | None:
        assert self._transport is not None
        peer = self._transport.get_extra_info("peername")
        return peer[0] if isinstance(peer, tuple) else None

    def _hand_over(self) -> None:
        """Give the connection to aiohttp, with every byte not consumed yet."""
        transport = self._transport
        assert transport is not None
        self._disarm()
        self._front.open.discard(self)
        self._closed = True
        handler = self._front.server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused:
            transport.resume_reading()
        if self._buffer:
            handler.data_received(bytes(self._buffer))
            self._buffer.clear()

    # ------------------------------------------------------------------ timers

    def _arm(self, callback: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self._loop.call_later(self._front.idle_timeout_s, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_timeout(self) -> None:
        """No complete request head within ``listen.idle_timeout``: close."""
        self._timer = None
        if self._task is None and self._transport is not None:
            self._transport.close()

    def _body_timeout(self) -> None:
        """The body did not arrive within ``listen.idle_timeout`` of its head: the handler
        sees a broken body (400) and the connection closes after that reply."""
        self._timer = None
        if self._body is not None:
            self._body.fail(web.RequestPayloadError("request body not received in time"))

    def _pause(self) -> None:
        self._paused = True
        assert self._transport is not None
        self._transport.pause_reading()

    def close_if_idle(self) -> None:
        """Close the connection unless a request is being handled (shutdown)."""
        if self._task is None and self._transport is not None:
            self._transport.close()


class IngestFront:
    """What the connections of one listening socket share: the app and its report
    handler, aiohttp's protocol factory for everything else, the limits, and the open
    lean connections and in-flight requests (for the connection cap and shutdown)."""

    def __init__(
        self,
        app: web.Application,
        server: web.Server,
        handler: Handler,
        *,
        max_body_bytes: int,
        idle_timeout_s: float,
        access_log: bool = False,
        lane: PlainLane | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.server = server
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.idle_timeout_s = idle_timeout_s
        self.open: set[IngestFrontProtocol] = set()
        self.tasks: set[asyncio.Future[None]] = set()
        self.lane = lane

    async def respond(self, request: LeanRequest, handler: Handler | None = None) -> web.Response:
        """The response of ``handler`` (default: the report handler), with failures
        rendered as the app's middleware renders them (``collector/app.py``:
        ``error_middleware``)."""
        try:
            response = await (handler or self.handler)(cast(web.Request, request))
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.field, headers=exc.headers)
        except Exception:
            log.exception("unhandled error on POST %s", INGEST_PATH.decode())
            return error_response(500, "internal server error")
        assert isinstance(response, web.Response)
        return response


class IngestFrontSite(web.BaseSite):
    """A TCP site whose connections go through :class:`IngestFrontProtocol` (reports
    served lean, the rest by the runner's aiohttp server), with the connection cap."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        handler: Handler,
        max_connections: int,
        max_body_bytes: int,
        idle_timeout_s: float,
        access_log: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._reuse_port = reuse_port
        self._host = host
        self._port = port
        self._handler = handler
        self._max_connections = max_connections
        self._max_body_bytes = max_body_bytes
        self._idle_timeout_s = idle_timeout_s
        self._access_log = access_log
        self._front: IngestFront | None = None

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        runner = cast(web.AppRunner, self._runner)
        server = runner.server
        assert server is not None
        front = self._front = IngestFront(
            runner.app,
            server,
            self._handler,
            max_body_bytes=self._max_body_bytes,
            idle_timeout_s=self._idle_timeout_s,
            access_log=self._access_log,
            lane=PlainLane(runner.app),
        )
        # The cap counts lean connections and those handed to aiohttp together.
        factory = ConnectionGuard(
            self._max_connections,
            lambda: len(front.open) + len(front.server.connections),
            lambda: IngestFrontProtocol(front),
        )
        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            backlog=self._backlog,
            ssl=self._ssl_context,
            reuse_port=self._reuse_port or None,  # listen.reuse_port, as GuardedTCPSite
        )

    async def stop(self) -> None:
        """Stop accepting, close idle lean connections and let the requests in flight
        finish (their reports are committed and acked) before the app shuts down."""
        front = self._front
        if front is not None:
            if self._server is not None:
                self._server.close()
            for protocol in list(front.open):
                protocol.close_if_idle()
            if front.tasks:
                await asyncio.wait(list(front.tasks), timeout=30.0)
            for protocol in list(front.open):
                if protocol._transport is not None:
                    protocol._transport.close()
        await super().stop()
