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

Two forms of one handler: :func:`post_report`, a coroutine (aiohttp, and the lean front
for anything unusual), and :class:`PlainLane`, the same checks and ack from callbacks for
the lean front's plain reports (``collector/front.py``); they share :func:`_ack` and
:func:`_settle`, and the lane leaves every refusal to :func:`_admit`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from vigil.collector.api.http import (
    AUTH_CHALLENGE,
    ApiError,
    BodyTooLarge,
    json_bytes,
    json_response,
    read_body,
    require_json,
)
from vigil.collector.api.survey_ack import SURVEYS_HEADER, survey_ack
from vigil.collector.desk.apply import IngestResult
from vigil.collector.identity.service import ROTATE_HEADER, AgentAuth, Forbidden
from vigil.collector.ingest import Deliver, QueueFull
from vigil.collector.keys import (
    clock_key,
    config_key,
    counters_key,
    desk_key,
    identity_key,
    ingest_key,
    policy_key,
)
from vigil.collector.policy.runtime import POLICY_HEADER, Running
from vigil.collector.telemetry.requests import RequestCounters
from vigil.wire import Report, WireError
from vigil.wire_fast import ReportStruct, decode_report, decode_struct

log = logging.getLogger(__name__)

# Bodies unpacked on the event loop itself: at most this much gzip in and JSON out (bytes).
_INLINE_BODY_BYTES = 16 * 1024
_INLINE_UNPACKED_BYTES = 256 * 1024
_ENCODINGS = ("identity", "gzip", "x-gzip")
# Content-Type values the plain lane takes as they are (require_json accepts both; any
# other spelling goes through it).
_PLAIN_JSON = ("application/json", "application/json; charset=utf-8")
_POLICY_NAME = POLICY_HEADER.lower()


@dataclass(frozen=True, slots=True)
class Admitted:
    """A report that passed every check before the commit: who sent it (``auth``), the
    policy version its agent runs (``running``), and when its unpacking started
    (``started``, ``time.perf_counter()``, for ``vigil_ingest_seconds``). The plain
    lane's ``report`` is the checked ``wire_fast`` Struct, with the same fields."""

    report: Report | ReportStruct
    auth: AgentAuth
    running: Running
    started: float


async def post_report(request: web.Request) -> web.Response:
    """``POST /api/v1/reports``: authenticate, bound, decompress, validate, commit, ack.

    The 200 reply is sent only after the storage committed the batch (through the ingest
    queue's group commit); a repeated ``batch_id`` is acknowledged with
    ``"duplicate": true`` and changes nothing. A sequenced report at or below the
    host's mark (not its last batch) changes nothing either and is answered ``409`` with
    ``"epoch_reset": true``. When the ingest queue is full the answer is ``429`` with
    ``Retry-After``, before the body is even read.
    """
    admitted = await _admit(request)
    app = request.app
    received_at = app[clock_key]()
    try:
        # Returns once the group commit that carried the report is durable.
        result = await app[ingest_key].submit(admitted.report, received_at)
    except QueueFull as exc:
        raise _overloaded(app[counters_key], exc.retry_after_s) from None
    return await finish_report(request, admitted, result, received_at)


async def _admit(request: web.Request) -> Admitted:
    """Every check before the commit, each refusal as the :class:`ApiError` to answer
    (counted by reason and logged)."""
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
    if encoding not in _ENCODINGS:
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
    try:
        running = app[policy_key].parse_header(request.headers.get(POLICY_HEADER, "none"))
    except ValueError as exc:
        raise reject("invalid", 400, str(exc), POLICY_HEADER) from None
    await identity.activate_if_pending(auth)
    return Admitted(report, auth, running, started)


async def finish_report(
    request: web.Request, admitted: Admitted, result: IngestResult, received_at: float
) -> web.Response:
    """The reply to a committed report: the ack (with surveys, the policy and release
    offers, a rotated credential when asked), or the 409 asking for a new epoch."""
    app = request.app
    refused = _settle(app, admitted, result)
    if refused is not None:
        return json_response(refused, status=409)
    report = admitted.report
    ack = _ack(app, admitted, result, received_at)
    offered = await survey_ack(
        request, report.agent_id, received_at, resolved=bool(result.resolved)
    )
    if offered is not None:
        ack["surveys"] = offered
    if request.headers.get(ROTATE_HEADER) == "1":
        issued = await app[identity_key].rotate(admitted.auth, received_at)
        if issued is not None:
            ack["credential"] = {"token": issued.credential, "expires_at": issued.expires_at}
    return json_response(ack)


class PlainLane:
    """:func:`post_report` without a coroutine, for the plain report (the lean front's
    common case, ``collector/front.py``): checked, queued and answered from callbacks,
    so a report costs no task, future or request object.

    It only ever takes the easy road: :meth:`admit` declines (None) anything the checks
    of :func:`_admit` would refuse or that needs I/O before the commit (a pending
    credential, a survey report to record, a big body), and :meth:`reply` declines when
    the ack needs the storage (a survey to offer); the front then runs the coroutine
    form for that request, so every refusal, log line and counter is :func:`_admit`'s.
    """

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._identity = app[identity_key]
        self._queue = app[ingest_key]
        self._policy = app[policy_key]
        self._surveys = app[desk_key].surveys
        self._clock = app[clock_key]
        limits = app[config_key].limits
        self._max_body = min(limits.max_body_bytes, _INLINE_BODY_BYTES)
        self._max_out = min(limits.max_decompressed_bytes, _INLINE_UNPACKED_BYTES)

    def admit(self, headers: Mapping[str, str], body: bytes) -> Admitted | None:
        """The admitted report, or None to leave it to :func:`post_report`.

        ``headers``: the request's header fields by lower-case name (each at most once;
        the caller declines a request that repeats one), ``body`` all of its body.
        """
        auth = self._identity.authenticate(headers.get("authorization", ""), self._clock())
        if auth is None or (auth.credential is not None and auth.credential.pending):
            return None
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if (
            self._queue.full()
            or encoding not in _ENCODINGS
            or headers.get("content-type", "").strip().lower() not in _PLAIN_JSON
            or len(body) > self._max_body
            or ROTATE_HEADER.lower() in headers
            or (self._surveys.policy.enabled and SURVEYS_HEADER.lower() in headers)
        ):
            return None
        started = time.perf_counter()
        try:
            # As the checked Struct (same fields), not the wire dataclasses: the desk's
            # steady pass reads it as it is (building the dataclasses cost ~40 % of
            # decoding). None: the fast decoder does not vouch for it; the handler's
            # decoder then answers, with its error.
            report = _unpack(body, encoding != "identity", self._max_out, decode_struct)
            if report is None:
                return None
            report = self._identity.authorize(auth, report)
            running = self._policy.parse_header(headers.get(_POLICY_NAME, "none"))
        except (BodyTooLarge, zlib.error, EOFError, WireError, Forbidden, ValueError):
            return None
        return Admitted(report, auth, running, started)

    def submit(self, admitted: Admitted, deliver: Deliver) -> float | None:
        """Queue the report for the group commit (``deliver`` gets its result on the
        loop); its receive time, or None, having done nothing, when the queue is full."""
        received_at: float = self._clock()
        try:
            self._queue.enqueue(admitted.report, received_at, deliver)
        except QueueFull:
            return None
        return received_at

    def reply(
        self, admitted: Admitted, result: IngestResult, received_at: float
    ) -> tuple[int, bytes] | None:
        """The status and JSON body answering a committed report, or None when the ack
        needs the storage (a survey may be waiting): :func:`finish_report` then answers.
        """
        host = admitted.report.agent_id
        surveys = self._surveys
        if (
            not result.epoch_reset
            and surveys.policy.enabled
            and (result.resolved or surveys.has_waiting(host))
        ):
            return None
        refused = _settle(self._app, admitted, result)
        if refused is not None:
            return 409, json_bytes(refused)
        # orjson: ~10x the standard library's speed on an ack, which holds no float a
        # NaN could reach (request bodies refuse NaN; times are the collector's own).
        return 200, orjson.dumps(_ack(self._app, admitted, result, received_at))


def _settle(
    app: web.Application, admitted: Admitted, result: IngestResult
) -> dict[str, Any] | None:
    """What every committed report's reply does first: time it, log it; the 409 body
    when it asked for a new epoch (None otherwise)."""
    app[counters_key].observe_ingest(time.perf_counter() - admitted.started)
    report = admitted.report
    log.debug(
        "ingested batch %s from %s: %d events, duplicate=%s",
        report.batch_id,
        report.hostname,
        result.events,
        result.duplicate,
    )
    if not result.epoch_reset:
        return None
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
    return {
        "error": f"seq_first {report.seq_first} is at or below the mark {result.mark}"
        " already applied for this epoch (restored snapshot?): start a new epoch",
        "field": "seq_first",
        "batch_id": report.batch_id,
        "accepted": False,
        "epoch_reset": True,
        "mark": result.mark,
    }


def _ack(
    app: web.Application, admitted: Admitted, result: IngestResult, received_at: float
) -> dict[str, Any]:
    """The 200 ack's body without surveys or a credential: the outcome and what the
    host should run (policy and release offers)."""
    report, auth = admitted.report, admitted.auth
    ack: dict[str, Any] = {
        "batch_id": report.batch_id,
        "accepted": True,
        "duplicate": result.duplicate,
        "events": result.events,
    }
    policy_runtime = app[policy_key]
    # What the host runs, remembered in memory and stored by the next policy pass (no
    # extra transaction here); the offer is built from the in-memory snapshot.
    policy_runtime.note(
        report.agent_id, admitted.running, report.labels, received_at, report.agent_version
    )
    offer = policy_runtime.offer(report.agent_id, report.labels)
    release = policy_runtime.release_offer(report.agent_id, report.labels)
    if auth.credential is None:  # a shared token: the fetch must name the agent
        offer["url"] = f"{offer['url']}?agent_id={report.agent_id}"
        if release is not None:
            release["url"] = f"{release['url']}?agent_id={report.agent_id}"
    ack["policy"] = offer
    if release is not None:  # the agent release its ring has reached (self-update)
        ack["release"] = release
    return ack


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


def _unpack(
    body: bytes,
    gzipped: bool,
    max_out: int,
    decode: Callable[[bytes | bytearray], Any] = decode_report,
) -> Any:
    """Gunzip (bounded by ``max_out``) and ``decode`` a report (by default to the wire
    dataclasses); raises what each step raises.

    An uncompressed body over ``max_out`` also raises :class:`BodyTooLarge`, so the
    caller's inline attempt falls back to the thread for it as for a big gzip body.
    """
    if gzipped:
        return decode(gunzip_bounded(body, max_out))
    if len(body) > max_out:
        raise BodyTooLarge
    return decode(body)


def _overloaded(counters: RequestCounters, retry_after_s: int) -> ApiError:
    """429 with ``Retry-After``: the ingest queue is full (see ``collector/ingest.py``)."""
    counters.reject("overloaded")
    log.debug("ingest queue full: asking for a retry in %d s", retry_after_s)
    return ApiError(
        429,
        f"collector overloaded, retry after {retry_after_s} s",
        headers={"Retry-After": str(retry_after_s)},
    )
