"""The request side of the lean ingest front (``collector/front.py``): parsing a report
request's head with ``httptools`` and the request object the report handler sees.

:func:`lean_head` decides whether the front serves a request at all (anything unusual is
aiohttp's); :class:`LeanRequest` offers the attributes of ``web.Request`` that
``api/reports.py`` reads, parsed the way aiohttp parses them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools
from aiohttp import web
from aiohttp.helpers import HeadersMixin
from multidict import CIMultiDictProxy
from yarl import URL

INGEST_PATH = b"/api/v1/reports"


class Body:
    """A request body arriving while the handler may already run: what aiohttp's
    ``request.content`` offers to ``read_body`` (``iter_chunked``), fed by the protocol."""

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._done = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._wake()

    def end(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: Exception) -> None:
        if not self._done:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        """The body in the pieces it arrived in (``n`` is accepted for aiohttp's
        signature; pieces are never larger than what the socket delivered)."""
        while True:
            while self._chunks:
                yield self._chunks.popleft()
            if self._error is not None:
                raise self._error
            if self._done:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None


class LeanRequest(HeadersMixin):
    """The part of ``web.Request`` the report handler uses, for a request this front
    parsed: ``app``, ``headers``, ``remote``, ``url``, ``content`` (the body stream) and,
    from aiohttp's own ``HeadersMixin``, ``content_type``, ``charset`` and
    ``content_length`` (parsed exactly as aiohttp parses them)."""

    method = "POST"
    body_exists = True

    def __init__(
        self,
        app: web.Application,
        headers: CIMultiDictProxy[str],
        target: bytes,
        remote: str | None,
        scheme: str,
        body: Body,
    ) -> None:
        self.app = app
        self._headers = headers
        self._target = target
        self.remote = remote
        self._scheme = scheme
        self.content = body

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return cast(CIMultiDictProxy[str], self._headers)

    @property
    def path(self) -> str:
        return INGEST_PATH.decode()

    @property
    def url(self) -> URL:
        """The request URL as the client addressed it (``Host`` header), for links; a
        ``Host`` that is not a valid authority gives ``localhost`` instead of an error."""
        host = self._headers.get("Host", "localhost")
        try:
            base = URL(f"{self._scheme}://{host}")
            if not base.host:
                raise ValueError(host)
        except ValueError:
            base = URL(f"{self._scheme}://localhost")
        return base.join(URL(INGEST_PATH.decode()))


class Head:
    """``httptools`` callbacks collecting one request head."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def lean_head(raw: bytes) -> tuple[Head, bool] | None:
    """Parse a request head (up to and with its blank line); the parsed head and whether
    the client keeps the connection open, or None when this front does not serve it
    (handed to aiohttp: wrong method or path, unusual framing, or a head that does not
    parse, which aiohttp then answers)."""
    if not raw.startswith(b"POST " + INGEST_PATH):
        return None
    head = Head()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserError:
        return None
    if not head.complete or parser.get_http_version() != "1.1":
        return None
    path = head.url.split(b"?", 1)[0]
    if path != INGEST_PATH:
        return None
    lengths = 0
    for name, _ in head.headers:
        lower = name.lower()
        if lower == b"content-length":
            lengths += 1
        elif lower in (b"transfer-encoding", b"expect", b"upgrade"):
            return None
    if lengths != 1:
        return None
    return head, parser.should_keep_alive()
