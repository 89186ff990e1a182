"""A per-client token bucket for ``POST /api/v1/enroll``.

Enrollment is the one unauthenticated write: without a limit a client could try secrets
as fast as the collector answers (each attempt also writes an audit record). Each peer
address gets a bucket of ``burst`` tries, refilled at ``per_minute`` per minute (the
collector's ``enrollment.rate_limit`` for both, default 10); an empty bucket is ``429``
with ``Retry-After``.

Memory is bounded: at most :data:`MAX_PEERS` buckets are kept, the least recently used
one is forgotten first (a forgotten peer starts again with a full bucket, which only
matters under a flood from more addresses than that).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

# Defaults; the collector uses ``enrollment.rate_limit`` for both.
ENROLL_BURST = 10  # tries a peer may make at once
ENROLL_PER_MINUTE = 10  # tries regained per minute
MAX_PEERS = 10_000


class RateLimiter:
    """Token buckets keyed by client address. ``clock``: monotonic seconds (injectable
    for tests). Thread-safe (a lock around each check)."""

    def __init__(
        self,
        *,
        burst: int = ENROLL_BURST,
        per_minute: float = float(ENROLL_PER_MINUTE),
        max_peers: int = MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or per_minute <= 0 or max_peers < 1:
            raise ValueError("burst, per_minute and max_peers must be positive")
        self._burst = float(burst)
        self._rate_per_s = per_minute / 60.0
        self._max_peers = max_peers
        self._clock = clock
        self._lock = threading.Lock()
        # peer -> (tokens left, when last updated); most recently used last.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, peer: str) -> float:
        """Spend one try for ``peer``: 0.0 if allowed, else the seconds until the next
        try is available (the ``Retry-After``, rounded up to whole seconds, at least 1)."""
        now = self._clock()
        with self._lock:
            tokens, since = self._buckets.pop(peer, (self._burst, now))
            tokens = min(self._burst, tokens + (now - since) * self._rate_per_s)
            if tokens >= 1.0:
                self._remember(peer, tokens - 1.0, now)
                return 0.0
            self._remember(peer, tokens, now)
            return float(max(1, math.ceil((1.0 - tokens) / self._rate_per_s)))

    def _remember(self, peer: str, tokens: float, now: float) -> None:
        self._buckets[peer] = (tokens, now)
        while len(self._buckets) > self._max_peers:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
