"""The shipper: delivers outbox batches to the collector over HTTP(S), with backoff.

One call to :meth:`Shipper.ship` sends batches until the outbox is empty, a limit is
reached or a send fails. A batch is deleted from the outbox only after a 2xx response;
a failed batch is sent again later under the same ``batch_id`` with the same events, and
the collector treats a repeated ``batch_id`` as already done (at-least-once delivery,
exactly-once effect).

How responses are handled:

* **2xx**: acknowledged; the batch is deleted and the failure count resets.
* **429 / 503**: the collector is shedding load. A ``Retry-After`` (seconds or an HTTP
  date) sets the wait; without one the exponential backoff below applies.
* **408, other 5xx, connection errors, timeouts**: transient. Exponential backoff with
  full jitter: the n-th consecutive failure waits ``uniform(0, min(cap, base * 2**n))``
  seconds (n from 0; defaults base 1 s, cap 300 s), see
  https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/.
* **Any other status (4xx, 3xx)**: the collector refuses this batch or this agent (bad
  token, schema rejected, wrong URL). Retrying at once cannot help, but deleting data
  would lose it for good, so the batch is *kept*, the response text is logged at ERROR,
  and the shipper backs off for :data:`REJECTED_BACKOFF_S` (5 minutes; a new credential,
  e.g. after re-enrolling a revoked agent, ends it at once). A fixed token or collector
  then lets the same batch through; a truly poisoned batch blocks the queue and keeps
  logging, which is the loud failure an admin needs to see. The bearer token is the
  agent's enrolled credential (``delivery/credential.py``), else ``collector.token``.

Pacing: while a backlog drains, batches go out at most ``drain_batches_per_s`` per second,
so a fleet returning from an outage arrives as a steady stream rather than a wall.
Backoff windows are measured on the *monotonic* clock, so a wall-clock step (a manual
change, NTP after a long sleep) can neither freeze delivery for hours nor end a backoff
early; ``sent_at`` uses the wall clock because the collector compares it with its own.
:meth:`Shipper.wake` ends a backoff at once (after a resume from sleep the collector is
probably reachable again and waiting out a pre-sleep backoff helps no one).

Transport (one worker thread, one kept-alive ``http.client`` connection, the total
timeout, the bounded DNS lookup): :mod:`vigil.agent.delivery.transport`.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import http.client
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from vigil import wire
from vigil.agent.config import CollectorTarget
from vigil.agent.delivery.credential import ROTATE_HEADER, CredentialSource
from vigil.agent.delivery.outbox import Batch, Outbox
from vigil.agent.delivery.transport import LOGGED_BODY_CHARS, Connection, Reply
from vigil.agent.identity import Identity

log = logging.getLogger("vigil.agent.shipper")

REPORTS_PATH = "/api/v1/reports"
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
REJECTED_BACKOFF_S = 300.0
# A Retry-After longer than this is treated as a collector misconfiguration, not obeyed.
MAX_RETRY_AFTER_S = 3600.0


class AckExchange(Protocol):
    """Something that rides on report delivery: :meth:`headers` go with every report,
    and :meth:`take_ack` reads each 2xx ack (``sent``: the headers that went with it).
    Satisfaction surveys, central policy and self-update each are one. Both run on the
    event loop between requests: they must not block, and what they raise is logged."""

    def headers(self) -> dict[str, str]:
        """Extra request headers for the next report."""

    def take_ack(self, text: str, sent: Mapping[str, str]) -> None:
        """Read an ack's body (after a 2xx)."""


@dataclass(frozen=True, slots=True)
class ShipResult:
    """What one :meth:`Shipper.ship` call achieved.

    ``error`` is the last error (``None`` when everything pending was delivered, or when
    ``max_batches`` was reached without error); ``retry_after_s`` is the wait the collector
    asked for with ``Retry-After`` (429/503), else ``None``.
    """

    sent_batches: int
    sent_events: int
    error: str | None
    retry_after_s: float | None


class Shipper:
    """Sends the outbox to one collector; see the module docstring for retry rules and the
    transport (one worker thread, one persistent ``http.client`` connection, timeouts).

    ``hold_connection=False`` closes the connection at the end of every :meth:`ship` call
    instead of keeping it for the next: for deliveries further apart than
    :data:`~vigil.agent.delivery.transport.KEEPALIVE_S` a held connection would never be
    reused, only left open. ``clock`` gives wall-clock seconds (for ``sent_at``);
    ``monotonic`` measures backoff windows; ``sleep`` paces a draining backlog; ``rng``
    draws the backoff jitter. ``console_user`` gives each report's ``console_user`` (the
    opaque id of who is at the console, None: unknown); it is called on the event loop
    for every batch sent, so it must answer from a cache.

    Raises ``ValueError`` for a URL that is not ``http://`` or ``https://`` with a host.
    """

    def __init__(
        self,
        target: CollectorTarget,
        outbox: Outbox,
        identity: Identity,
        *,
        agent_version: str,
        batch_max_events: int = 500,
        batch_max_bytes: int = 2 * 2**20,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        drain_batches_per_s: float | None = None,
        hold_connection: bool = True,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        credentials: CredentialSource | None = None,
        exchanges: Sequence[AckExchange] = (),
        console_user: Callable[[], str | None] | None = None,
    ) -> None:
        if not 1 <= batch_max_events <= wire.MAX_EVENTS:
            raise ValueError(
                f"batch_max_events: must be 1-{wire.MAX_EVENTS}, got {batch_max_events!r}"
            )
        if not 0 < backoff_base_s <= backoff_cap_s:
            raise ValueError(
                f"backoff: need 0 < base <= cap, got base={backoff_base_s!r} cap={backoff_cap_s!r}"
            )
        if drain_batches_per_s is not None and not drain_batches_per_s > 0:
            raise ValueError(f"drain_batches_per_s: must be positive, got {drain_batches_per_s!r}")
        self._transport = Connection(target)  # ValueError for a URL it cannot use
        self._target = target
        self._outbox = outbox
        self._batch_max_bytes = batch_max_bytes
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._drain_gap_s = 0.0 if drain_batches_per_s is None else 1.0 / drain_batches_per_s
        self._monotonic = monotonic
        self._sleep = sleep
        self._identity = identity
        self._agent_version = agent_version
        self._batch_max_events = batch_max_events
        self._hold_connection = hold_connection
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        # The per-agent credential (enrollment), else ``target.token`` is sent.
        self._credentials = credentials
        # What else rides on a report and its ack (surveys, policy, self-update).
        self._exchanges: list[AckExchange] = list(exchanges)
        # Who is at the console, as the report's opaque ``console_user`` (cached by the
        # survey inbox: this is called on the loop for every batch and must not block).
        self._console_user = console_user
        self._rejected_token: str | None = None  # the token a 4xx backoff was for
        self._url = target.url.rstrip("/") + REPORTS_PATH
        self._path = self._transport.base_path + REPORTS_PATH
        self._failures = 0
        self._backoff_until = 0.0
        # For the agent's self-health: failed sends in a row (wake() does not reset it,
        # unlike _failures) and the monotonic time of the last acknowledged batch.
        self._failed_in_a_row = 0
        self._last_delivery: float | None = None
        # The current outage (failed attempts, monotonic start) for its two log lines: a
        # WARNING as it starts, an INFO as delivery resumes. wake() does not end it.
        self._outage_failures = 0
        self._outage_started = 0.0
        # Two overlapping ship() calls (report interval + urgent event) would otherwise
        # both send the in-flight batch.
        self._lock = asyncio.Lock()

    def add_exchange(self, exchange: AckExchange) -> None:
        """Let ``exchange`` ride on every later report and ack (see :class:`AckExchange`)."""
        self._exchanges.append(exchange)

    @property
    def backoff_until(self) -> float:
        """Monotonic time before which :meth:`ship` will not send; 0.0 when not backing off."""
        return self._backoff_until

    @property
    def connected(self) -> bool:
        """Whether a connection to the collector is held open for the next request."""
        return self._transport.connected

    @property
    def failures_in_a_row(self) -> int:
        """Attempts that failed since the last acknowledged batch (a self-health figure)."""
        return self._failed_in_a_row

    @property
    def last_delivery(self) -> float | None:
        """Monotonic time the collector last acknowledged a batch; ``None`` before the first."""
        return self._last_delivery

    def wake(self) -> None:
        """End any backoff window now (e.g. after a resume from sleep); keeps nothing else."""
        self._backoff_until = 0.0
        self._failures = 0

    async def ship(self, *, max_batches: int = 50) -> ShipResult:
        """Send pending batches until the outbox is empty, ``max_batches`` or an error.

        Inside a backoff window it returns at once with ``error="backing off"`` and sends
        nothing. Never raises for delivery problems; they are reported in the result.
        Cancelled while a request is in flight, it aborts that request (the batch stays in
        the outbox; the collector may have stored it, and a resend is deduplicated).
        """
        async with self._lock:
            if self._rejected_token is not None and self._rejected_token != self._token():
                self.wake()  # refused, then (re-)enrolled: the new credential may go now
            if self._monotonic() < self._backoff_until:
                return ShipResult(0, 0, "backing off", None)
            try:
                return await self._ship(max_batches)
            finally:
                if not self._hold_connection:
                    self._transport.drop()  # see the class docstring

    async def _ship(self, max_batches: int) -> ShipResult:
        sent_batches = sent_events = 0
        for i in range(max_batches):
            batch = self._outbox.next_batch(self._batch_max_events, self._batch_max_bytes)
            if batch is None:
                break
            if i and self._drain_gap_s:
                # A backlog: pace it (the first batch of a call goes at once, so
                # urgent events and ordinary reports are never delayed by this).
                await self._sleep(self._drain_gap_s)
            error, retry_after = await self._send(batch)
            if error is not None:
                self._failed_in_a_row += 1
                return ShipResult(sent_batches, sent_events, error, retry_after)
            self._outbox.ack(batch.batch_id)
            self._failed_in_a_row = 0
            self._last_delivery = self._monotonic()
            self._failures = 0
            self._backoff_until = 0.0
            self._rejected_token = None
            if self._outage_failures:
                took, n = self._monotonic() - self._outage_started, self._outage_failures
                log.info("delivery resumed after %d failed attempts over %.0f s", n, took)
                self._outage_failures = 0
            sent_batches += 1
            sent_events += len(batch.events)
        return ShipResult(sent_batches, sent_events, None, None)

    async def close(self) -> None:
        """Close the connection and stop the worker thread; the shipper may be used again
        afterwards (a new thread and connection are made on the next send).

        Never waits for a request in flight (e.g. one whose :meth:`ship` was cancelled):
        that request is aborted by shutting its socket down (or, during a DNS lookup, by
        no longer waiting for it), and the thread exits at once.
        """
        self._transport.close()

    # ----------------------------------------------------------------- internals

    async def _send(
        self, batch: Batch, *, may_reset: bool = True
    ) -> tuple[str | None, float | None]:
        """POST one batch; returns ``(error, retry_after_s)``, error ``None`` on success.

        Sets the backoff window on failure. A ``409`` with ``"epoch_reset": true`` (the
        collector already applied seqs up to above this batch's in this epoch: the
        machine was rolled back to a snapshot) starts a new epoch in the outbox and sends
        the batch again at once under it, once (``may_reset``).
        """
        body = gzip.compress(self._encode(batch), mtime=0)
        token = self._token()
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
            "User-Agent": f"vigil-agent/{self._agent_version}",
        }
        rotate = self._credentials is not None and self._credentials.wants_rotation()
        if rotate:
            headers[ROTATE_HEADER] = "1"
        for exchange in self._exchanges:
            headers.update(exchange.headers())
        try:
            reply = await self._transport.request(body, headers, path=self._path)
        except (http.client.HTTPException, OSError) as exc:  # OSError: TimeoutError, ssl
            error = f"cannot reach collector at {self._url}: {_describe(exc)}"
            self._transient_failure(error)
            return error, None
        status, text = reply.status, reply.text
        if 200 <= status < 300:
            log.debug("delivered batch %s (%d events)", batch.batch_id, len(batch.events))
            if rotate and self._credentials is not None:
                self._credentials.take_from_ack(text)
            for exchange in self._exchanges:
                try:
                    exchange.take_ack(text, headers)
                except Exception:  # the batch is delivered whatever a listener thinks
                    log.exception("reading the ack's extras failed (%r)", exchange)
            return None, None

        error = f"collector answered HTTP {status} for batch {batch.batch_id}: {text[:200]}"
        if status == 409 and may_reset and _asks_epoch_reset(text):
            log.warning(
                "collector has applied seqs beyond batch %s (seq %d-%d) in epoch %s: this"
                " machine was probably restored from a snapshot; sending the pending events"
                " again in a new epoch",
                batch.batch_id,
                batch.events[0].seq,
                batch.events[-1].seq,
                batch.epoch,
            )
            self._outbox.new_epoch()
            again = self._outbox.next_batch(self._batch_max_events, self._batch_max_bytes)
            if again is not None:
                return await self._send(again, may_reset=False)
            return None, None  # nothing pending any more (cannot happen: the batch is kept)
        if status in (429, 503):
            retry_after = _parse_retry_after(reply.retry_after, self._clock())
            if retry_after is not None:
                self._failures += 1
                self._backoff_until = self._monotonic() + retry_after
                self._log_failure("%s; retrying in %.1f s as asked", error, retry_after)
                return error, retry_after
            self._transient_failure(error)
            return error, None
        if status == 408 or status >= 500:
            self._transient_failure(error)
            return error, None
        self._failures += 1
        self._backoff_until = self._monotonic() + REJECTED_BACKOFF_S
        self._rejected_token = token
        self._log_failure("batch rejected", level=logging.DEBUG)  # the ERROR below is loud
        log.error(
            "collector REJECTED batch %s (%d events) with HTTP %d; the batch is kept and "
            "will be retried in %.0f s. Fix the cause (token, URL, collector version). "
            "Response: %s",
            batch.batch_id,
            len(batch.events),
            status,
            REJECTED_BACKOFF_S,
            text[:LOGGED_BODY_CHARS],
        )
        return error, None

    async def get(self, path: str, headers: Mapping[str, str], max_body: int) -> Reply:
        """GET ``path`` (below the collector URL) with the agent's bearer token, on the same
        worker thread and connection as reports, within ``timeout_s`` in total; the reply
        carries ``etag`` and at most ``max_body`` bytes of ``body`` (a longer body raises
        ``ValueError``). Raises ``OSError``/``http.client.HTTPException`` when the
        collector cannot be reached (no backoff is set: the caller retries on a later ack).
        """
        all_headers = {
            "Authorization": f"Bearer {self._token()}",
            "User-Agent": f"vigil-agent/{self._agent_version}",
            **headers,
        }
        async with self._lock:
            reply = await self._transport.request(
                b"",
                all_headers,
                method="GET",
                path=self._transport.base_path + path,
                max_body=max_body + 1,
            )
        if len(reply.body) > max_body:
            raise ValueError(f"GET {path}: body longer than {max_body} bytes")
        return reply

    def _encode(self, batch: Batch) -> bytes:
        report = wire.Report(
            schema_version=wire.SCHEMA_VERSION,
            agent_id=self._identity.agent_id,
            hostname=self._identity.hostname,
            labels=dict(self._identity.labels),
            batch_id=batch.batch_id,
            sent_at=self._clock(),
            agent_version=self._agent_version,
            events=batch.events,
            # Sequence dedup at the collector (docs/delivery.md): a collector older than
            # these fields answers 400 naming them, so upgrade collectors before agents.
            epoch=batch.epoch,
            seq_first=batch.events[0].seq,
            seq_last=batch.events[-1].seq,
            # The survey rate limit per person (docs/satisfaction.md): sent only while
            # known, and like the fields above refused by collectors older than it.
            console_user=self._console_user() if self._console_user is not None else None,
        )
        return wire.encode_report(report)

    def _token(self) -> str:
        return self._credentials.token() if self._credentials else self._target.token

    def _transient_failure(self, error: str) -> None:
        """Exponential backoff with full jitter after a failure that may pass by itself."""
        # Exponent capped so 2**n stays a small float however long the outage lasts.
        ceiling = min(self._backoff_cap_s, self._backoff_base_s * 2 ** min(self._failures, 32))
        delay = self._rng.uniform(0, ceiling)
        self._failures += 1
        self._backoff_until = self._monotonic() + delay
        self._log_failure("%s; attempt %d failed, retrying in %.1f s", error, self._failures, delay)

    def _log_failure(self, message: str, *args: object, level: int = logging.WARNING) -> None:
        """Count a failed attempt; log it at ``level`` if it starts an outage, else at DEBUG
        (no line per retry in a long outage; the INFO on resumption closes it)."""
        self._outage_failures += 1
        if self._outage_failures == 1:
            self._outage_started = self._monotonic()
        else:
            level = logging.DEBUG
        log.log(level, "delivery failing: " + message, *args)


def _asks_epoch_reset(text: str) -> bool:
    """Whether a response body is the collector's ``{"epoch_reset": true, ...}``."""
    try:
        body = json.loads(text)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("epoch_reset") is True


def _parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date).

    ``None`` when missing, unparseable or absurd (over :data:`MAX_RETRY_AFTER_S`), so the
    caller falls back to its own backoff.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now
    if seconds != seconds or seconds > MAX_RETRY_AFTER_S:  # NaN, or absurdly long
        return None
    return max(0.0, seconds)  # a date in the past means "now"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
