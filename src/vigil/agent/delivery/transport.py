"""The shipper's transport: one worker thread and one kept-alive connection to the
collector, every request bounded in time.

The standard library's :mod:`http.client`, not aiohttp (importing aiohttp cost the agent
~13 MB of RSS). Every request is a blocking call on ONE worker thread owned by the
:class:`Connection` (created on the first request, stopped by :meth:`Connection.close`,
which the shipper's ``close`` calls); the
event loop awaits it, so a slow collector never blocks the loop and at most one request is
in flight. One persistent connection (``HTTPConnection`` or, for ``https://``,
``HTTPSConnection`` with ``ssl.create_default_context()``: system CA store, or the file
named by ``SSL_CERT_FILE``; certificate and hostname verified) is reused for the next
request, unless it has been idle for more than :data:`KEEPALIVE_S`, the collector closed
it (it is checked before reuse) or the last response asked for a close. Any error closes
it; the next request opens a new one. One race is left after that check: the collector
closing the idle connection just as the request goes out. A reused connection that fails
before any byte of a response is therefore retried once, at once, on a new connection,
within the same time budget (as urllib3 does): resending is safe because the collector
deduplicates by ``batch_id``. Redirects are never followed (the shipper takes a 3xx
for a rejection); at most ``LOGGED_BODY_CHARS * 4`` bytes of an error response (and
:data:`MAX_ACK_BODY_BYTES` of a 2xx one) are read: a longer body costs the connection, not
memory.

Timeout (``CollectorTarget.timeout_s``, *T*): the whole request (connect, send, response
head and the bounded body read) gets *T* seconds in total, like aiohttp's ``total``
timeout: when the loop stops waiting it shuts the socket down, which ends the worker's
blocking call at once, and the connection is dropped. Each socket operation also has *T*
as its own timeout (a backstop). The DNS lookup (``getaddrinfo``) cannot be interrupted,
so it runs on a daemon thread of its own (``sockets.Resolver``) that the worker waits for at
most until the request is aborted or *T* runs out: a resolver that hangs (a captive
portal, an unreachable VPN DNS server) never holds the worker, the next request or the
agent's exit; while a lookup still hangs the next request waits for that one rather than
starting another. A request that timed out may still have reached the collector;
resending it is safe (same ``batch_id``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import http.client
import socket
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from vigil.agent.config import CollectorTarget
from vigil.agent.delivery.sockets import Resolver, peer_closed
from vigil.agent.delivery.tls import client_context

# A held connection idle for longer than this is not reused: it is closed and replaced at
# the next request (checked then, so no timer wakes the agent to close it).
KEEPALIVE_S = 15.0
# How much of a rejection's response body goes into the log (characters); four times as
# many bytes are read, UTF-8's worst case.
LOGGED_BODY_CHARS = 2000
# At most this much of a 2xx response body is read (the collector's ack is a few bytes);
# the connection is dropped rather than reused when the body is longer.
MAX_ACK_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Reply:
    """What the worker thread read of one response: status, ``Retry-After``, body start."""

    status: int
    retry_after: str | None
    text: str
    etag: str | None = None
    body: bytes = b""


class Connection:
    """Requests to one collector (``target.url``) on one worker thread over one
    kept-alive connection; see the module docstring for reuse, aborts and timeouts.

    Raises ``ValueError`` for a URL that is not ``http://`` or ``https://`` with a host.
    """

    def __init__(self, target: CollectorTarget) -> None:
        split = urllib.parse.urlsplit(target.url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"collector url: must be http:// or https://, got {target.url!r}")
        self._target = target
        self._https = split.scheme == "https"
        self._host = split.hostname
        self._port = split.port  # None: the scheme's default
        self.base_path = split.path.rstrip("/")
        """The URL's path, without a trailing slash: request paths go below it."""
        # _conn and _conn_used_at are only touched by the worker thread (or by the loop
        # while no request is in flight); the loop may shut the socket down under a
        # request to abort it (_abort).
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: asyncio.Future[Reply] | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._conn_used_at = 0.0  # time.monotonic() at the end of the last request
        self._aborted = False  # the loop gave up on the request in flight (see _abort)
        self._resolver = Resolver()
        self._ssl_context: ssl.SSLContext | None = None

    @property
    def connected(self) -> bool:
        """Whether a connection to the collector is held open for the next request."""
        conn = self._conn
        return conn is not None and conn.sock is not None

    def close(self) -> None:
        """Close the connection and stop the worker thread; usable again afterwards (a
        new thread and connection are made on the next request). Never waits for a
        request in flight: it is aborted (see :meth:`drop`) and the thread exits at once."""
        self.drop()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    def drop(self) -> None:
        """Close the connection now; if a request is in flight, abort it and let the
        worker close the connection once the aborted call has returned."""
        if self._inflight is not None and not self._inflight.done():
            self._abort()
            if self._executor is not None:
                self._executor.submit(self._close_connection)
            return
        self._close_connection()

    async def request(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        method: str = "POST",
        path: str,
        max_body: int | None = None,
    ) -> Reply:
        """``method`` ``path`` (a POST sends ``body``; a GET none) on the worker thread,
        within ``timeout_s`` in total; at most ``max_body`` bytes of a 2xx body are read
        (default :data:`MAX_ACK_BODY_BYTES`), of another 4 * :data:`LOGGED_BODY_CHARS` bytes.

        Raises ``TimeoutError`` when the time is up (the request is aborted), or what
        :meth:`_post` raised.
        """
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="vigil-shipper"
            )
        loop = asyncio.get_running_loop()
        self._aborted = False
        call = functools.partial(
            self._post, body, headers, method=method, path=path, max_body=max_body
        )
        future = loop.run_in_executor(self._executor, call)
        self._inflight = future
        try:
            # shield: on timeout or cancellation the worker cannot be cancelled anyway;
            # _abort makes its blocking call return instead.
            return await asyncio.wait_for(asyncio.shield(future), self._target.timeout_s)
        finally:
            if not future.done():
                self._abort()
                future.add_done_callback(_consume)

    def _post(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        method: str = "POST",
        path: str,
        max_body: int | None = None,
    ) -> Reply:
        """The blocking exchange, on the worker thread: POST (or ``method`` on ``path``),
        read status, headers and at most a bounded part of the body (``max_body`` bytes
        of a GET's). Closes the connection on any error (and when the body was not read
        to its end, so it cannot be reused)."""
        conn = self._connection()
        reused = conn.sock is not None
        payload = body if method == "POST" else None
        try:
            try:
                conn.request(method, path, body=payload, headers=dict(headers))
                resp = conn.getresponse()
            except _CLOSED_UNDER_US:
                if not reused or self._aborted:
                    raise
                # The collector closed the kept-alive connection as this request went out
                # (see the module docstring): no answer came, so send it again, once.
                self._close_connection()
                conn = self._conn = self._new_connection()
                conn.request(method, path, body=payload, headers=dict(headers))
                resp = conn.getresponse()
            ok = 200 <= resp.status < 300
            if max_body is not None and ok:
                cap = max_body
            else:
                cap = MAX_ACK_BODY_BYTES if ok else LOGGED_BODY_CHARS * 4
            raw = resp.read(cap)
            if not resp.isclosed():  # more body than we read: the stream is mid-response
                self._close_connection()
            self._conn_used_at = time.monotonic()
            is_get = method == "GET"
            return Reply(
                resp.status,
                resp.getheader("Retry-After"),
                "" if is_get and ok else raw.decode("utf-8", errors="replace").strip(),
                etag=resp.getheader("ETag"),
                body=raw if is_get else b"",
            )
        except BaseException:
            self._close_connection()
            raise

    def _connection(self) -> http.client.HTTPConnection:
        """The held connection if it is still usable, else a new (not yet connected) one."""
        conn = self._conn
        if conn is not None and conn.sock is not None:
            idle_s = time.monotonic() - self._conn_used_at
            if idle_s > KEEPALIVE_S or peer_closed(conn.sock):
                self._close_connection()
                conn = None
        if conn is None:
            conn = self._conn = self._new_connection()
        return conn

    def _new_connection(self) -> http.client.HTTPConnection:
        timeout = self._target.timeout_s
        conn: http.client.HTTPConnection
        if not self._https:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        else:
            if self._ssl_context is None:
                # Verifies the certificate chain and the hostname against collector.ca_file
                # (else the system's CAs, honouring SSL_CERT_FILE); see delivery/tls.py.
                target = self._target
                self._ssl_context = client_context(
                    target.ca_file, target.client_cert_file, target.client_key_file
                )
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl_context
            )
        # http.client's own hook for opening the TCP connection: the name is looked up
        # by the bounded resolver; TLS still verifies the certificate against self._host.
        conn._create_connection = self._open_socket  # type: ignore[attr-defined]
        return conn

    def _open_socket(
        self, address: tuple[str, int], timeout: float, source_address: object = None
    ) -> socket.socket:
        """``socket.create_connection`` for :meth:`_new_connection`, with the lookup
        bounded by ``sockets.Resolver`` (the request's timeout, or until it is aborted).
        ``source_address`` is part of http.client's hook; the shipper never sets one."""
        host, port = address
        infos = self._resolver.lookup(host, port, timeout, lambda: self._aborted)
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in infos:
            if self._aborted:  # a connect has no socket to shut down yet: stop between them
                raise ConnectionAbortedError(f"request aborted while connecting to {host}")
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
        raise error or OSError(f"no address for {host}")

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _abort(self) -> None:
        """From the loop: make the request in flight fail now by shutting its socket down
        (closing it from this thread could race with the worker over the descriptor).
        A request still connecting has no socket yet; its connect timeout bounds it."""
        self._aborted = True  # before the shutdown: the worker must not retry after it
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            # The plain socket's method: SSLSocket.shutdown would also drop its SSL object
            # under the worker's feet. OSError: already closed, or never connected.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


# How a kept-alive connection the collector closed under a request fails, before any
# response: EOF instead of a status line (RemoteDisconnected, a ConnectionResetError), a
# reset, or a broken pipe while sending.
_CLOSED_UNDER_US = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def _consume(future: asyncio.Future[Reply]) -> None:
    """Retrieve an abandoned request's outcome so asyncio does not log it as unhandled."""
    if not future.cancelled():
        future.exception()
