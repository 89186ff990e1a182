"""HTTP handlers: parse the request, call the store, map problems to JSON errors.

Every error body is ``{"error": "<message>", "field": "<path or null>"}``. Handlers raise
:class:`ApiError`; the app's middleware renders it. Every store call runs on the store's
single thread (``executor_key``) so the event loop never waits on an fsync.

``GET /metrics`` and ``GET /healthz`` need no token so Prometheus and load balancers can
reach them; in production, firewall them to the monitoring network.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import re
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vigil import __version__
from vigil.collector.ingest import QueueFull
from vigil.collector.keys import (
    clock_key,
    config_key,
    counters_key,
    desk_key,
    executor_key,
    ingest_key,
    registry_key,
)
from vigil.collector.telemetry.requests import RequestCounters
from vigil.wire import Report, WireError, decode_report

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
# SQLite integers are signed 64-bit; a larger id cannot exist and would overflow the driver.
_MAX_ID = 2**63 - 1
_READ_CHUNK = 64 * 1024
# At most 19 digits: enough for any 64-bit value, and int() of huge strings is refused.
_DIGITS = re.compile(r"[0-9]{1,19}")


class ApiError(Exception):
    """An HTTP error with a JSON body naming the offending ``field`` (or ``None``)."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


def error_response(
    status: int,
    message: str,
    field: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The JSON error body every failure uses."""
    return web.json_response(
        {"error": message, "field": field}, status=status, headers=dict(headers or {})
    )


class BodyTooLarge(ValueError):
    """A request body, or what it decompresses to, is over the configured limit."""


# --------------------------------------------------------------------------- ingest


async def post_report(request: web.Request) -> web.Response:
    """``POST /api/v1/reports``: authenticate, bound, decompress, validate, commit, ack.

    The 200 reply is sent only after the store committed the batch (through the ingest
    queue's group commit); a repeated ``batch_id`` is acknowledged with
    ``"duplicate": true`` and changes nothing. When the ingest queue is full the answer
    is ``429`` with ``Retry-After``, before the body is even read.
    """
    app = request.app
    config = app[config_key]
    counters = app[counters_key]

    def reject(reason: str, status: int, message: str, field: str | None = None) -> ApiError:
        counters.reject(reason)
        log.info("rejected report from %s: %s (%s)", request.remote, message, reason)
        headers = {"WWW-Authenticate": 'Bearer realm="vigil"'} if status == 401 else None
        return ApiError(status, message, field, headers=headers)

    if not _bearer_matches(request, config.auth.agent_tokens):
        raise reject("unauthorized", 401, "missing or unknown agent token")
    queue = app[ingest_key]
    if queue.full():
        # Shed before reading, decompressing or parsing: overload must cost almost nothing.
        raise _overloaded(counters, queue.retry_after())

    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise reject("invalid", 415, f"unsupported Content-Encoding {encoding!r}, use gzip")

    limit = config.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise reject("too_large", 413, f"request body over {limit} bytes")
    try:
        body = await _read_body(request, limit)
    except BodyTooLarge:
        raise reject("too_large", 413, f"request body over {limit} bytes") from None
    except web.RequestPayloadError as exc:
        raise reject("invalid", 400, f"incomplete request body: {exc}") from None

    started = time.perf_counter()
    max_out = config.limits.max_decompressed_bytes
    gzipped = encoding != "identity"
    try:
        try:
            # A typical report (a few KiB) is unpacked right here: handing it to a thread
            # costs more than the work. Only when it turns out big is it redone off the
            # loop, so /healthz and scrapes stay responsive during the CPU work.
            if len(body) > _INLINE_BODY_BYTES:
                raise BodyTooLarge
            report: Report = _unpack(body, gzipped, min(max_out, _INLINE_UNPACKED_BYTES))
        except BodyTooLarge:
            loop = asyncio.get_running_loop()
            report = await loop.run_in_executor(None, _unpack, body, gzipped, max_out)
    except BodyTooLarge:
        raise reject("too_large", 413, f"decompressed body over {max_out} bytes") from None
    except (zlib.error, EOFError) as exc:
        raise reject("bad_gzip", 400, f"body is not valid gzip: {exc}") from None
    except WireError as exc:
        raise reject("invalid", 400, exc.message, exc.path) from None

    received_at = app[clock_key]()
    try:
        # Returns once the group commit that carried the report is durable.
        result = await queue.submit(report, received_at)
    except QueueFull as exc:
        raise _overloaded(counters, exc.retry_after_s) from None
    counters.observe_ingest(time.perf_counter() - started)
    log.debug(
        "ingested batch %s from %s: %d events, duplicate=%s",
        report.batch_id,
        report.hostname,
        result.events,
        result.duplicate,
    )
    return web.json_response(
        {
            "batch_id": report.batch_id,
            "accepted": True,
            "duplicate": result.duplicate,
            "events": result.events,
        }
    )


# Bodies unpacked on the event loop itself: at most this much gzip in and JSON out (bytes).
_INLINE_BODY_BYTES = 16 * 1024
_INLINE_UNPACKED_BYTES = 256 * 1024


def _unpack(body: bytes, gzipped: bool, max_out: int) -> Report:
    """Gunzip (bounded by ``max_out``) and decode a report; raises what each step raises.

    An uncompressed body over ``max_out`` also raises :class:`BodyTooLarge`, so the
    caller's inline attempt falls back to the thread for it as for a big gzip body.
    """
    if gzipped:
        body = gunzip_bounded(body, max_out)
    elif len(body) > max_out:
        raise BodyTooLarge
    return decode_report(body)


def _overloaded(counters: RequestCounters, retry_after_s: int) -> ApiError:
    """429 with ``Retry-After``: the ingest queue is full (see ``collector/ingest.py``)."""
    counters.reject("overloaded")
    log.debug("ingest queue full: asking for a retry in %d s", retry_after_s)
    return ApiError(
        429,
        f"collector overloaded, retry after {retry_after_s} s",
        headers={"Retry-After": str(retry_after_s)},
    )


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing to hold more than ``limit`` bytes (chunked bodies too)."""
    body = bytearray()
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """Decompress one gzip member, inflating at most ``limit + 1`` bytes of it.

    ``zlib.decompressobj`` with ``max_length`` stops inflating at the bound, so a gzip
    bomb (50 MB of zeros in 50 KB) costs about ``limit`` bytes of memory (twice that at
    the peak, while chunks are joined) before it is refused.
    Raises :class:`BodyTooLarge` over the limit and ``zlib.error``/``EOFError`` on corrupt,
    truncated or trailing data.
    """
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header required
    out = bytearray()
    pending = data
    while not inflater.eof:
        room = limit + 1 - len(out)  # never 0: max_length=0 would mean "unbounded"
        chunk = inflater.decompress(pending, room)
        out += chunk
        if len(out) > limit:
            raise BodyTooLarge
        pending = inflater.unconsumed_tail
        # Input used up and the output not cut short: nothing more can come out.
        if not pending and len(chunk) < room:
            break
    if not inflater.eof:
        raise EOFError("truncated gzip stream")
    if inflater.unused_data:
        raise zlib.error("unexpected data after the gzip stream")
    return bytes(out)


# --------------------------------------------------------------------------- read API


async def list_remediation_runs(request: web.Request) -> web.Response:
    """``GET /api/v1/remediations/runs?host=&remediation=&limit=&offset=``."""
    _require_reader(request)
    query = _query(request, ("host", "remediation", "limit", "offset"))
    store = request.app[desk_key]
    runs = await _in_store_thread(
        request,
        functools.partial(
            store.list_remediation_runs,
            host=query.get("host"),
            remediation=query.get("remediation"),
            limit=_int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
            offset=_int_param(query, "offset", 0, 0, _MAX_ID),
        ),
    )
    return web.json_response({"runs": runs})


# --------------------------------------------------------------------------- open endpoints


async def get_metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format, rendered from state at scrape time."""
    registry = request.app[registry_key]
    # Off the store thread: the aggregates have their own lock (never held during a
    # database call), so a scrape does not queue behind ingest commits.
    loop = asyncio.get_running_loop()
    payload = await loop.run_in_executor(None, generate_latest, registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: liveness for load balancers and the demo."""
    return web.json_response({"status": "ok", "version": __version__})


# --------------------------------------------------------------------------- helpers


async def _in_store_thread(request: web.Request, fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[executor_key], fn, *args)


def _bearer_matches(request: web.Request, tokens: tuple[str, ...]) -> bool:
    """Whether ``Authorization: Bearer <token>`` names one of ``tokens``.

    Compares against every token with ``hmac.compare_digest`` and no early exit, so the
    response time does not reveal how much of a token was right, nor which one.
    """
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    # surrogatepass: header text that is not valid UTF-8 still encodes (and never matches).
    given_bytes = given.strip().encode("utf-8", "surrogatepass")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(token.encode("utf-8"), given_bytes)
    return matched


def _require_reader(request: web.Request) -> None:
    auth = request.app[config_key].auth
    if not auth.open_read and not _bearer_matches(request, auth.admin_tokens):
        raise ApiError(
            401,
            "missing or unknown admin token",
            headers={"WWW-Authenticate": 'Bearer realm="vigil"'},
        )


def require_admin(request: web.Request) -> None:
    """401 unless the request carries an admin token. Writes always need one, even when
    ``open_read`` leaves the read API open."""
    if not _bearer_matches(request, request.app[config_key].auth.admin_tokens):
        raise ApiError(
            401,
            "missing or unknown admin token",
            headers={"WWW-Authenticate": 'Bearer realm="vigil"'},
        )


def _query(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """Query parameters as a plain dict; unknown or repeated ones are 400 (typos show)."""
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise ApiError(400, f"unknown query parameter (known: {known})", name)
        if name in out:
            raise ApiError(400, "query parameter given more than once", name)
        out[name] = value
    return out


def _int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    value = int(raw) if _DIGITS.fullmatch(raw) else None
    if value is None or not low <= value <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}, got {raw!r}", name)
    return value
