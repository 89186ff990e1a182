"""Per-target health of the notification targets: backoff, one log line each way, counts.

A target (one Alertmanager, one webhook) that fails is not tried again at every notifier
pass: it waits ``base_s`` after its first failure, then twice as long after each further
one, up to ``max_backoff_s``; one success resets it. The log gets one WARNING when a
target starts failing and one INFO line when it recovers (further failures in between
are DEBUG), and :meth:`NotifyHealth.failed_totals` counts every failed delivery for
``vigil_notifications_failed_total``.

Labels are bounded by the configuration: the targets are known at start-up, and a
target's name is its URL without credentials, query or fragment.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# The longest a failing target waits between two attempts.
MAX_BACKOFF_S = 300.0

# (kind, name): ("alertmanager" | "webhook", the URL as :func:`target_name` shows it)
TargetKey = tuple[str, str]


def target_name(url: str) -> str:
    """``url`` without user info, query or fragment: a label value that leaks no secret."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass
class _Target:
    failures: int = 0  # consecutive failures; 0 = healthy
    failed_total: int = 0
    retry_at: float = 0.0


class NotifyHealth:
    """Backoff and failure counts per target; time is a parameter (epoch seconds).

    ``targets`` are the configured ones (each counted from 0 at once, so the counter
    exists before the first failure); ``base_s`` is the first wait after a failure.
    """

    def __init__(
        self,
        targets: Iterable[TargetKey],
        *,
        base_s: float,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self._targets = {key: _Target() for key in targets}
        self._base_s = base_s
        self._max_s = max(max_backoff_s, base_s)

    def due(self, key: TargetKey, now: float) -> bool:
        """Whether ``key`` may be tried at ``now`` (healthy, or its backoff has passed)."""
        return now >= self._targets.setdefault(key, _Target()).retry_at

    def succeeded(self, key: TargetKey, now: float) -> None:
        """``key`` accepted a delivery: its backoff resets (logged if it was failing)."""
        t = self._targets.setdefault(key, _Target())
        if t.failures:
            log.info(
                "notification target %s %s recovered after %d failed attempt(s)",
                key[0], key[1], t.failures,
            )  # fmt: skip
        t.failures, t.retry_at = 0, 0.0

    def failed(self, key: TargetKey, now: float, error: str) -> float:
        """``key`` failed at ``now`` with ``error``; returns the seconds until its next try."""
        t = self._targets.setdefault(key, _Target())
        t.failures += 1
        t.failed_total += 1
        delay = min(self._max_s, self._base_s * 2.0 ** min(t.failures - 1, 64))
        t.retry_at = now + delay
        level = logging.WARNING if t.failures == 1 else logging.DEBUG
        log.log(
            level, "notification target %s %s failing (%s); next try in %.0f s",
            key[0], key[1], error[:200], delay,
        )  # fmt: skip
        return delay

    def failed_totals(self) -> dict[TargetKey, int]:
        """Failed deliveries per target since start (a copy)."""
        return {key: t.failed_total for key, t in self._targets.items()}
