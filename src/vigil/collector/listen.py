"""The listening socket: a connection cap that sheds politely, and the open-files limit.

aiohttp accepts every connection and keeps it until the client goes away. Idle
connections then pile up until the process runs out of file descriptors; from there on
every ``accept()`` fails (asyncio logs a traceback per attempt), ``/healthz`` and ingest
stop answering, and nothing recovers while the idle sockets stay open. So:

* :class:`GuardedTCPSite` counts the open connections and answers any past
  ``listen.max_connections`` with a short ``503`` (``Retry-After``, ``Connection:
  close``) and closes it at once: the shipper backs off on a 503 as on a 429.
* Idle connections, and connections that never finish sending a request's headers, are
  closed after ``listen.idle_timeout`` by aiohttp's keep-alive timer, which the collector
  sets (:func:`server_options`); it also runs before a connection's first request.
* :func:`raise_open_files_limit` lifts the soft ``RLIMIT_NOFILE`` to the hard one at
  start, and :func:`effective_max_connections` keeps the cap below what the limit allows,
  so the cap, not the kernel, is what refuses a connection.
* ``listen.reuse_port`` binds with ``SO_REUSEPORT`` (Linux): several collector processes
  on one machine listen on one port and the kernel spreads connections over them; the
  connection cap is per process.
* A request aiohttp cannot parse (a request line or header over 8 KiB, a bad method or
  header) is answered ``400`` by aiohttp, which also logs an ERROR with a traceback each
  time; :func:`quiet_malformed_requests` turns those into one short INFO line at most
  every 10 s, so a client cannot fill the log with tracebacks.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger(__name__)

# File descriptors kept free for everything that is not a client connection: the
# database and its WAL, log files, the notifier's outgoing connections, the listening
# socket itself.
RESERVED_FDS = 64
_BODY = b'{"error": "too many connections, retry later", "field": null}'
SHED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 5\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)
# Shed connections logged at most once per this many seconds (a flood must not flood
# the log as well).
_SHED_LOG_INTERVAL_S = 10.0


# Longest excerpt of aiohttp's reason for a malformed request kept in the log line.
_MALFORMED_REASON_CHARS = 120


class MalformedRequestFilter(logging.Filter):
    """On aiohttp's ``aiohttp.server`` logger: a record about a request that could not be
    parsed (its exception an ``HttpProcessingError``; aiohttp has answered ``400``)
    becomes one INFO line without traceback, at most one per ``interval_s`` seconds
    (``clock``: monotonic seconds), saying how many were left out since. Every other
    record, a real server error among them, passes unchanged."""

    def __init__(
        self, interval_s: float = _SHED_LOG_INTERVAL_S, clock: Callable[[], float] | None = None
    ) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._clock = clock or time.monotonic
        self._last = -interval_s
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = self._clock()
        if now - self._last < self._interval_s:
            self._left_out += 1
            return False
        self._last = now
        reason = " ".join(str(exc.message or exc).split())[:_MALFORMED_REASON_CHARS]
        record.msg = "malformed HTTP request answered %d: %s (%d more left out of the log)"
        record.args = (exc.code or 400, reason, self._left_out)
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        self._left_out = 0
        return True


def quiet_malformed_requests() -> None:
    """Install one :class:`MalformedRequestFilter` on ``aiohttp.server`` (idempotent)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in logger.filters):
        logger.addFilter(MalformedRequestFilter())


def server_options(idle_timeout_s: float) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner``: the idle and header timeout in seconds
    (aiohttp's ``keepalive_timeout``, which otherwise keeps an idle connection an hour)."""
    return {"keepalive_timeout": idle_timeout_s}


def raise_open_files_limit() -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit where the platform allows it;
    the soft limit in force afterwards, or None where there is no such limit (Windows)."""
    try:
        import resource
    except ImportError:  # Windows: no RLIMIT_NOFILE, handles are not limited that way
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # macOS reports an unlimited hard limit that setrlimit refuses; OPEN_MAX caps it there.
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 10240)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.info("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
    return None if soft == resource.RLIM_INFINITY else soft


def effective_max_connections(configured: int, open_files: int | None) -> int:
    """``configured``, lowered to fit under ``open_files`` (minus :data:`RESERVED_FDS`)
    when the process may not open that many files; at least 1."""
    if open_files is None or configured + RESERVED_FDS <= open_files:
        return configured
    lowered = max(open_files - RESERVED_FDS, 1)
    log.warning(
        "listen.max_connections %d is over what the open-files limit (%d) allows; using %d",
        configured,
        open_files,
        lowered,
    )
    return lowered


class _Shed(asyncio.Protocol):
    """A connection past the cap: a 503 and closed, without reading the request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not subclasses of
        # asyncio.Transport, though they offer the same methods.
        stream = cast(asyncio.Transport, transport)
        stream.write(SHED_RESPONSE)
        stream.close()


class ConnectionGuard:
    """A listening socket's protocol factory: ``make()`` while fewer than ``limit``
    connections are open (``open_count()``), a 503 (:class:`_Shed`) past it, logged at
    most once per :data:`_SHED_LOG_INTERVAL_S`. The aiohttp site and the lean ingest front
    (``collector/front.py``) each count their own connections."""

    def __init__(
        self,
        limit: int,
        open_count: Callable[[], int],
        make: Callable[[], asyncio.BaseProtocol],
    ) -> None:
        self._limit = limit
        self._open_count = open_count
        self._make = make
        self.shed = 0
        self._last_log = -_SHED_LOG_INTERVAL_S

    def __call__(self) -> asyncio.BaseProtocol:
        if self._open_count() < self._limit:
            return self._make()
        self.shed += 1
        now = asyncio.get_running_loop().time()
        if now - self._last_log >= _SHED_LOG_INTERVAL_S:
            self._last_log = now
            log.warning(
                "%d connections open (listen.max_connections): shedding new ones with 503"
                " (%d so far)",
                self._limit,
                self.shed,
            )
        return _Shed()


class GuardedTCPSite(web.BaseSite):
    """A TCP site like ``web.TCPSite`` whose connections past ``max_connections`` are
    shed (see :class:`ConnectionGuard`). Built on ``BaseSite`` alone, so that it does not depend
    on how a given aiohttp version starts its own ``TCPSite``."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()  # registers the site with the runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        # Server.connections lists the handlers whose connection is open (a new handler
        # registers in connection_made, right after the factory returns it).
        factory = ConnectionGuard(self._max_connections, lambda: len(server.connections), server)
        # reuse_port: SO_REUSEPORT, so collector processes on this machine share the
        # port and the kernel spreads new connections over them (Linux; config checks).
        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            backlog=self._backlog,
            ssl=self._ssl_context,
            reuse_port=self._reuse_port or None,
        )
