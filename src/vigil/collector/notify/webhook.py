"""A generic JSON webhook with retries and an HMAC-SHA256 signature.

The body is ``{"version": 1, "sent_at": <Unix s>, "events": [...]}``: one POST per
notifier pass carrying every change (``firing``/``resolved``), not one per incident.
With a ``secret``, ``X-Vigil-Timestamp`` holds the send time and ``X-Vigil-Signature``
is ``sha256=`` + hex HMAC-SHA256 of ``<timestamp>.<body>`` under the secret; a receiver
recomputes it (constant-time compare) and rejects old timestamps to stop replays.

Retries: up to ``max_attempts`` POSTs with exponential backoff from ``backoff_s`` on a
connection error, a timeout, 429 or a 5xx; any other 4xx is final (retrying cannot fix
it). The same body (and signature) is sent each time, so a receiver can deduplicate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

import aiohttp

from vigil.collector.notify.config import WebhookTarget

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Vigil-Signature"
TIMESTAMP_HEADER = "X-Vigil-Timestamp"
MAX_BACKOFF_S = 60.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Vigil-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def build_request(
    target: WebhookTarget, events: list[dict[str, Any]], now: float
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one webhook POST (pure)."""
    body = json.dumps(
        {"version": 1, "sent_at": now, "events": events},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,  # standard JSON only: receivers need not parse NaN/Infinity
    ).encode()
    headers = {"Content-Type": "application/json"}
    if target.secret:
        timestamp = f"{now:.0f}"
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign(target.secret, timestamp, body)
    return body, headers


class WebhookFailed(Exception):
    """Every attempt failed, or the receiver refused the body for good."""


async def send(
    session: aiohttp.ClientSession,
    target: WebhookTarget,
    events: list[dict[str, Any]],
    now: float,
) -> int:
    """POST ``events`` with retries; returns the number of attempts made.

    Raises :class:`WebhookFailed` when it gives up. Worst-case time is bounded by
    ``max_attempts * timeout_s`` plus the backoff sleeps.
    """
    body, headers = build_request(target, events, now)
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    last = ""
    for attempt in range(1, target.max_attempts + 1):
        try:
            async with session.post(
                target.url, data=body, headers=headers, timeout=timeout
            ) as resp:
                if resp.status < 300:
                    return attempt
                last = f"HTTP {resp.status}"
                if resp.status != 429 and resp.status < 500:
                    raise WebhookFailed(f"{target.url}: refused with {last}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if attempt < target.max_attempts:
            delay = min(MAX_BACKOFF_S, target.backoff_s * 2 ** (attempt - 1))
            log.info("webhook %s attempt %d failed (%s); retry in %.1f s", target.url,
                     attempt, last, delay)  # fmt: skip
            await asyncio.sleep(delay)
    raise WebhookFailed(f"{target.url}: gave up after {target.max_attempts} attempts ({last})")
