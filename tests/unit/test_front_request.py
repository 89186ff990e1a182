"""Which requests the lean ingest front serves itself (``front_request.lean_head``) and
what the report handler sees of them (``LeanRequest``)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from vigil.collector.front_request import Body, LeanRequest, lean_head

PLAIN = (
    b"POST /api/v1/reports HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\n"
    b"Content-Length: 10\r\n\r\n"
)


def test_a_plain_keep_alive_report_request_is_served_lean() -> None:
    parsed = lean_head(PLAIN)
    assert parsed is not None
    head, keep_alive = parsed
    assert head.url == b"/api/v1/reports" and keep_alive
    assert (b"Content-Length", b"10") in head.headers


@pytest.mark.parametrize(
    "raw",
    [
        PLAIN.replace(b"POST", b"GET", 1),
        PLAIN.replace(b"/api/v1/reports", b"/api/v1/reportsX", 1),
        PLAIN.replace(b"/api/v1/reports", b"/healthz", 1),
        PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        PLAIN.replace(b"Content-Length: 10", b"Transfer-Encoding: chunked"),
        PLAIN.replace(b"Content-Length: 10\r\n", b""),
        PLAIN.replace(b"Content-Length: 10\r\n", b"Content-Length: 10\r\nContent-Length: 10\r\n"),
        PLAIN.replace(b"Host: c\r\n", b"Host: c\r\nExpect: 100-continue\r\n"),
        PLAIN.replace(b"Host: c\r\n", b"Host: c\r\nUpgrade: websocket\r\n"),
        PLAIN.replace(b"Host: c\r\n", b"Bad Header\r\n"),
        PLAIN.replace(b"Content-Length: 10", b"Content-Length: -1"),
    ],
    ids=[
        "another method",
        "a longer path",
        "another path",
        "HTTP/1.0",
        "chunked",
        "no length",
        "two lengths",
        "expect",
        "upgrade",
        "a malformed header",
        "a negative length",
    ],
)
def test_anything_unusual_is_left_to_aiohttp(raw: bytes) -> None:
    assert lean_head(raw) is None


def test_connection_close_is_served_but_not_kept_alive() -> None:
    parsed = lean_head(PLAIN.replace(b"Host: c\r\n", b"Host: c\r\nConnection: close\r\n"))
    assert parsed is not None and parsed[1] is False


def request(headers: dict[str, str]) -> LeanRequest:
    return LeanRequest(
        None,  # type: ignore[arg-type]  # the app is not read by these properties
        CIMultiDictProxy(CIMultiDict(headers)),
        b"/api/v1/reports?x=1",
        "127.0.0.1",
        "https",
        Body(),
    )


def test_content_type_charset_and_length_are_parsed_as_aiohttp_parses_them() -> None:
    r = request({"Content-Type": "Application/JSON; Charset=UTF-8", "Content-Length": "12"})
    assert (r.content_type, r.charset, r.content_length) == ("application/json", "UTF-8", 12)


def test_the_url_origin_is_the_host_the_client_addressed() -> None:
    assert str(request({"Host": "collector.example:9750"}).url.origin()) == (
        "https://collector.example:9750"
    )
    assert str(request({}).url.origin()) == "https://localhost"


def test_the_body_streams_what_arrives_until_it_ends() -> None:
    async def read() -> list[bytes]:
        body = Body()
        body.feed(b"ab")
        asyncio.get_running_loop().call_soon(body.feed, b"c")  # arrives while waiting
        asyncio.get_running_loop().call_soon(body.end)
        return [chunk async for chunk in body.iter_chunked(1024)]

    assert asyncio.run(read()) == [b"ab", b"c"]


def test_a_body_cut_off_raises_what_aiohttp_raises() -> None:
    async def read() -> list[bytes]:
        body = Body()
        body.feed(b"ab")
        body.fail(web.RequestPayloadError("gone"))
        return [chunk async for chunk in body.iter_chunked(1024)]

    with pytest.raises(web.RequestPayloadError):
        asyncio.run(read())
