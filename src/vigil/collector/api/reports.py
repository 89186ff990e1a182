"""Agent report ingest, ``POST /api/v1/reports``: authenticate, bound, unpack, commit, ack.

Authentication (``collector/identity/service.py``): an enrolled agent's own credential,
which may only write as that agent's id (else 403, nothing changed), or a shared
``auth.agent_tokens`` token for agents not enrolled yet. An enrolled agent may ask for a
rotated credential with the ``Vigil-Credential-Rotate: 1`` header; the ack then carries
``"credential": {"token", "expires_at"}``. Satisfaction surveys for the host ride on the
ack too (``"surveys"``; see ``api/survey_ack.py``).

Every rejection is counted by reason (``vigil_reports_rejected_total``) and logged at
INFO with the client address. The commit itself goes through the ingest queue's group
commit (``collector/ingest.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib

from aiohttp import web

from vigil.collector.api.http import (
    AUTH_CHALLENGE,
    ApiError,
    BodyTooLarge,
    json_response,
    read_body,
    require_json,
)
from vigil.collector.api.survey_ack import survey_ack
from vigil.collector.identity.service import ROTATE_HEADER, Forbidden
from vigil.collector.ingest import QueueFull
from vigil.collector.keys import (
    clock_key,
    config_key,
    counters_key,
    identity_key,
    ingest_key,
    policy_key,
)
from vigil.collector.policy.runtime import POLICY_HEADER
from vigil.collector.telemetry.requests import RequestCounters
from vigil.wire import Report, WireError
from vigil.wire_fast import decode_report

log = logging.getLogger(__name__)

# Bodies unpacked on the event loop itself: at most this much gzip in and JSON out (bytes).
_INLINE_BODY_BYTES = 16 * 1024
_INLINE_UNPACKED_BYTES = 256 * 1024


async def post_report(request: web.Request) -> web.Response:
    """``POST /api/v1/reports``: authenticate, bound, decompress, validate, commit, ack.

    The 200 reply is sent only after the storage committed the batch (through the ingest
    queue's group commit); a repeated ``batch_id`` is acknowledged with
    ``"duplicate": true`` and changes nothing. A sequenced report at or below the
    host's mark (not its last batch) changes nothing either and is answered ``409`` with
    ``"epoch_reset": true``. When the ingest queue is full the answer is ``429`` with
    ``Retry-After``, before the body is even read.
    """
    app = request.app
    config = app[config_key]
    counters = app[counters_key]

    def reject(reason: str, status: int, message: str, field: str | None = None) -> ApiError:
        counters.reject(reason)
        log.info("rejected report from %s: %s (%s)", request.remote, message, reason)
        return ApiError(status, message, field, headers=AUTH_CHALLENGE if status == 401 else None)

    identity = app[identity_key]
    auth = identity.authenticate(request.headers.get("Authorization", ""), app[clock_key]())
    if auth is None:
        raise reject("unauthorized", 401, "missing or unknown agent token")
    queue = app[ingest_key]
    if queue.full():
        # Shed before reading, decompressing or parsing: overload must cost almost nothing.
        raise _overloaded(counters, queue.retry_after())

    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        raise reject("invalid", 415, f"unsupported Content-Encoding {encoding[:80]!r}, use gzip")
    try:
        require_json(request)
    except ApiError as exc:
        raise reject("invalid", exc.status, exc.message, exc.field) from None

    limit = config.limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise reject("too_large", 413, f"request body over {limit} bytes")
    try:
        body = await read_body(request, limit)
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
    try:
        report = identity.authorize(auth, report)
    except Forbidden as exc:
        raise reject("forbidden", 403, str(exc), "agent_id") from None
    policy_runtime = app[policy_key]
    try:
        running = policy_runtime.parse_header(request.headers.get(POLICY_HEADER, "none"))
    except ValueError as exc:
        raise reject("invalid", 400, str(exc), POLICY_HEADER) from None
    await identity.activate_if_pending(auth)

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
    if result.epoch_reset:
        # The agent's seq is at or below what this collector already applied for its
        # epoch (a restored snapshot): nothing was applied; it must start a new epoch and
        # send its pending events again (desk/sequence.py, docs/delivery.md).
        log.warning(
            "agent %s sent seq %s-%s in epoch %s, at or below the applied mark %s:"
            " asking it to start a new epoch",
            report.agent_id,
            report.seq_first,
            report.seq_last,
            report.epoch,
            result.mark,
        )
        return json_response(
            {
                "error": f"seq_first {report.seq_first} is at or below the mark {result.mark}"
                " already applied for this epoch (restored snapshot?): start a new epoch",
                "field": "seq_first",
                "batch_id": report.batch_id,
                "accepted": False,
                "epoch_reset": True,
                "mark": result.mark,
            },
            status=409,
        )
    ack = {
        "batch_id": report.batch_id,
        "accepted": True,
        "duplicate": result.duplicate,
        "events": result.events,
    }
    offered = await survey_ack(
        request, report.agent_id, received_at, resolved=bool(result.resolved)
    )
    if offered is not None:
        ack["surveys"] = offered
    # What the host runs, remembered in memory and stored by the next policy pass (no
    # extra transaction here); the offer is built from the in-memory snapshot.
    policy_runtime.note(report.agent_id, running, report.labels, received_at, report.agent_version)
    offer = policy_runtime.offer(report.agent_id, report.labels)
    release = policy_runtime.release_offer(report.agent_id, report.labels)
    if auth.credential is None:  # a shared token: the fetch must name the agent
        offer["url"] = f"{offer['url']}?agent_id={report.agent_id}"
        if release is not None:
            release["url"] = f"{release['url']}?agent_id={report.agent_id}"
    ack["policy"] = offer
    if release is not None:  # the agent release its ring has reached (self-update)
        ack["release"] = release
    if request.headers.get(ROTATE_HEADER) == "1":
        issued = await identity.rotate(auth, received_at)
        if issued is not None:
            ack["credential"] = {"token": issued.credential, "expires_at": issued.expires_at}
    return json_response(ack)


# Bytes inflated per zlib call in gunzip_bounded: the transient memory beyond the body.
_INFLATE_STEP = 1024 * 1024


def gunzip_bounded(data: bytes, limit: int) -> bytearray:
    """Decompress one gzip member, inflating at most ``limit + 1`` bytes of it.

    ``zlib.decompressobj`` with ``max_length`` stops inflating at the bound, so a gzip
    bomb (50 MB of zeros in 50 KB) costs about ``limit`` bytes of memory before it is
    refused. The result is the buffer it was inflated into, not a ``bytes`` copy of it
    (which would hold the body twice at the peak); the decoder reads either.
    Raises :class:`BodyTooLarge` over the limit and ``zlib.error``/``EOFError`` on corrupt,
    truncated or trailing data.
    """
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header required
    out = bytearray()
    pending = data
    while not inflater.eof:
        # Never 0 (max_length=0 would mean "unbounded"), and at most one step at a time:
        # a chunk as large as the limit would sit beside the buffer it is appended to.
        room = min(limit + 1 - len(out), _INFLATE_STEP)
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
    return out


def _unpack(body: bytes, gzipped: bool, max_out: int) -> Report:
    """Gunzip (bounded by ``max_out``) and decode a report; raises what each step raises.

    An uncompressed body over ``max_out`` also raises :class:`BodyTooLarge`, so the
    caller's inline attempt falls back to the thread for it as for a big gzip body.
    """
    if gzipped:
        return decode_report(gunzip_bounded(body, max_out))
    if len(body) > max_out:
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
