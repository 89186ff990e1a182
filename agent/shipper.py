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
  and the shipper backs off for :data:`REJECTED_BACKOFF_S` (5 minutes). A fixed token or
  collector then lets the same batch through; a truly poisoned batch blocks the queue and
  keeps logging, which is the loud failure an admin needs to see.

Pacing: while a backlog drains, batches go out at most ``drain_batches_per_s`` per second,
so a fleet returning from an outage arrives as a steady stream rather than a wall.
Backoff windows are measured on the *monotonic* clock, so a wall-clock step (a manual
change, NTP after a long sleep) can neither freeze delivery for hours nor end a backoff
early; ``sent_at`` uses the wall clock because the collector compares it with its own.
:meth:`Shipper.wake` ends a backoff at once (after a resume from sleep the collector is
probably reachable again and waiting out a pre-sleep backoff helps no one).
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from agent import wire
from agent.config import CollectorTarget
from agent.identity import Identity
from agent.outbox import Batch, Outbox

log = logging.getLogger("vigil.agent.shipper")

REPORTS_PATH = "/api/v1/reports"
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
REJECTED_BACKOFF_S = 300.0
# aiohttp's default keep-alive: an idle connection is closed after this many seconds.
KEEPALIVE_S = 15.0
# A Retry-After longer than this is treated as a collector misconfiguration, not obeyed.
MAX_RETRY_AFTER_S = 3600.0
# How much of a rejection's response body goes into the log (characters).
_LOGGED_BODY_CHARS = 2000


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
    """Sends the outbox to one collector; see the module docstring for retry rules.

    ``session``: an aiohttp session owned by the caller (not closed by :meth:`close`); when
    omitted, one is created on the first :meth:`ship` that sends, inside the running loop,
    and closed by :meth:`close`. ``hold_connection=False`` closes it at the end of every
    :meth:`ship` call instead: for deliveries further apart than the keep-alive timeout
    (:data:`KEEPALIVE_S`) a held connection is never reused, and closing it later costs a
    timer wakeup. ``clock`` gives wall-clock seconds (for ``sent_at``); ``monotonic``
    measures backoff windows; ``sleep`` paces a draining backlog; ``rng`` draws the
    backoff jitter.
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
        session: aiohttp.ClientSession | None = None,
        hold_connection: bool = True,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
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
        self._session = session
        self._owns_session = session is None
        self._hold_connection = hold_connection
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._url = target.url.rstrip("/") + REPORTS_PATH
        self._timeout = aiohttp.ClientTimeout(total=target.timeout_s)
        self._failures = 0
        self._backoff_until = 0.0
        # Two overlapping ship() calls (report interval + urgent event) would otherwise
        # both send the in-flight batch.
        self._lock = asyncio.Lock()

    @property
    def backoff_until(self) -> float:
        """Monotonic time before which :meth:`ship` will not send; 0.0 when not backing off."""
        return self._backoff_until

    def wake(self) -> None:
        """End any backoff window now (e.g. after a resume from sleep); keeps nothing else."""
        self._backoff_until = 0.0
        self._failures = 0

    async def ship(self, *, max_batches: int = 50) -> ShipResult:
        """Send pending batches until the outbox is empty, ``max_batches`` or an error.

        Inside a backoff window it returns at once with ``error="backing off"`` and sends
        nothing. Never raises for delivery problems; they are reported in the result.
        """
        async with self._lock:
            if self._monotonic() < self._backoff_until:
                return ShipResult(0, 0, "backing off", None)
            try:
                return await self._ship(max_batches)
            finally:
                if not self._hold_connection:
                    await self.close()  # see the class docstring

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
                return ShipResult(sent_batches, sent_events, error, retry_after)
            self._outbox.ack(batch.batch_id)
            self._failures = 0
            self._backoff_until = 0.0
            sent_batches += 1
            sent_events += len(batch.events)
        return ShipResult(sent_batches, sent_events, None, None)

    async def close(self) -> None:
        """Close the HTTP session if this shipper created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ----------------------------------------------------------------- internals

    async def _send(self, batch: Batch) -> tuple[str | None, float | None]:
        """POST one batch; returns ``(error, retry_after_s)``, error ``None`` on success.

        Sets the backoff window on failure.
        """
        body = gzip.compress(self._encode(batch), mtime=0)
        headers = {
            "Authorization": f"Bearer {self._target.token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                # A redirect means a wrong URL; following it would turn the POST into a GET.
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if 200 <= status < 300:
                    log.debug("delivered batch %s (%d events)", batch.batch_id, len(batch.events))
                    return None, None
                text = await _read_text(resp)
                retry_header = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"cannot reach collector at {self._url}: {_describe(exc)}"
            self._transient_failure(error)
            return error, None

        error = f"collector answered HTTP {status} for batch {batch.batch_id}: {text[:200]}"
        if status in (429, 503):
            retry_after = _parse_retry_after(retry_header, self._clock())
            if retry_after is not None:
                self._failures += 1
                self._backoff_until = self._monotonic() + retry_after
                log.warning("%s; retrying in %.1f s as asked", error, retry_after)
                return error, retry_after
            self._transient_failure(error)
            return error, None
        if status == 408 or status >= 500:
            self._transient_failure(error)
            return error, None
        self._failures += 1
        self._backoff_until = self._monotonic() + REJECTED_BACKOFF_S
        log.error(
            "collector REJECTED batch %s (%d events) with HTTP %d; the batch is kept and "
            "will be retried in %.0f s. Fix the cause (token, URL, collector version). "
            "Response: %s",
            batch.batch_id,
            len(batch.events),
            status,
            REJECTED_BACKOFF_S,
            text[:_LOGGED_BODY_CHARS],
        )
        return error, None

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
        )
        return wire.encode_report(report)

    def _transient_failure(self, error: str) -> None:
        """Exponential backoff with full jitter after a failure that may pass by itself."""
        # Exponent capped so 2**n stays a small float however long the outage lasts.
        ceiling = min(self._backoff_cap_s, self._backoff_base_s * 2 ** min(self._failures, 32))
        delay = self._rng.uniform(0, ceiling)
        self._failures += 1
        self._backoff_until = self._monotonic() + delay
        log.warning("%s; attempt %d failed, retrying in %.1f s", error, self._failures, delay)


async def _read_text(resp: aiohttp.ClientResponse) -> str:
    """The start of a response body as text, for logs; never raises for odd encodings."""
    raw = await resp.content.read(_LOGGED_BODY_CHARS * 4)
    return raw.decode("utf-8", errors="replace").strip()


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


# --------------------------------------------------------------------------- clock jumps

# time.monotonic() stops while the machine is suspended (Linux CLOCK_MONOTONIC, macOS);
# CLOCK_BOOTTIME keeps counting, so their difference is the time spent asleep.
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


@dataclass(frozen=True, slots=True)
class ClockReading:
    """Three clocks read together, in seconds.

    ``wall``: ``time.time()``. ``monotonic``: ``time.monotonic()``, which stops during
    suspend. ``boot``: ``CLOCK_BOOTTIME`` (counts suspend) where the platform has it, else
    the same as ``monotonic`` (then a sleep shows up as a forward wall-clock step).
    """

    wall: float
    monotonic: float
    boot: float


@dataclass(frozen=True, slots=True)
class ClockJump:
    """``kind`` ``"sleep"``: the machine was suspended for ``seconds``. ``"step"``: the wall
    clock was set by ``seconds`` (signed; negative is backwards) beyond elapsed time."""

    kind: str
    seconds: float


def read_clock() -> ClockReading:
    """Read the three clocks of :class:`ClockReading` now."""
    mono = time.monotonic()
    boot = time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else mono
    return ClockReading(wall=time.time(), monotonic=mono, boot=boot)


def detect_clock_jumps(
    before: ClockReading, after: ClockReading, *, tolerance_s: float = 2.0
) -> tuple[ClockJump, ...]:
    """The jumps between two readings, each beyond ``tolerance_s`` seconds.

    Pure: the caller reads the clocks. A sleep is boot time that passed while monotonic
    time did not; a step is wall time that passed (or went back) while boot time did not.
    Both can happen together (NTP corrects the clock right after a resume).
    """
    boot_elapsed = after.boot - before.boot
    slept = boot_elapsed - (after.monotonic - before.monotonic)
    step = (after.wall - before.wall) - boot_elapsed
    jumps = []
    if slept > tolerance_s:
        jumps.append(ClockJump("sleep", slept))
    if abs(step) > tolerance_s:
        jumps.append(ClockJump("step", step))
    return tuple(jumps)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
