"""A lean HTTP/1.1 keep-alive load generator for the ingest benchmarks.

Why not aiohttp's client: at several thousand requests per second on one core the
client's own per-request cost (~150 us) becomes the ceiling, so a fast server would be
measured at the generator's speed, not its own. This generator writes pre-built request
bytes on a fixed number of keep-alive connections (asyncio protocols, no streams) and
parses only the status line and ``Content-Length`` of each reply: a few microseconds a
request, so one core drives any server here well past its limit (the benchmark prints
the generator's own CPU share to show it).

Bounded by design: a run stops at ``duration_s`` or after ``max_requests``, whichever
comes first; it talks only to the host and port it is given (127.0.0.1 in the benchmarks).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    """What one run measured. ``per_s``: 2xx replies per second of wall time."""

    per_s: float
    p50_ms: float
    p99_ms: float
    ok: int
    elapsed_s: float
    generator_cpu_s: float
    statuses: dict[int, int] = field(default_factory=dict)


def http_request(
    method: str, host: str, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    """The bytes of one HTTP/1.1 request with ``Content-Length`` (keep-alive is implied)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One keep-alive connection: send a request, read its reply, ask for the next."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._buffer = b""
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._run.lost(self)

    def send(self, request: bytes) -> None:
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].lower()
            at = head.find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            if len(self._buffer) < end + 4 + length:
                return
            status = int(head[9:12])
            self._buffer = self._buffer[end + 4 + length :]
            self._run.finished(self, status)


class _Run:
    def __init__(
        self, make_request: Callable[[int], bytes], duration_s: float, max_requests: int
    ) -> None:
        self._make = make_request
        self._deadline = time.perf_counter() + duration_s
        self._max = max_requests
        self._next = 0
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.active = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self, conn: _Connection) -> None:
        self.active += 1
        self._send_next(conn)

    def finished(self, conn: _Connection, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            self.latencies.append(time.perf_counter() - conn.sent_at)
        self._send_next(conn)

    def lost(self, conn: _Connection) -> None:
        if conn.sent_at:  # a connection dropped mid-run: count it, stop using it
            self.statuses[0] = self.statuses.get(0, 0) + 1
            conn.sent_at = 0.0
            self._retire()

    def _send_next(self, conn: _Connection) -> None:
        if self._next >= self._max or time.perf_counter() >= self._deadline:
            conn.sent_at = 0.0
            self._retire()
            return
        request = self._make(self._next)
        self._next += 1
        conn.send(request)

    def _retire(self) -> None:
        self.active -= 1
        if self.active == 0 and not self.done.done():
            self.done.set_result(None)


async def run_load(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int,
) -> LoadResult:
    """Send ``make_request(i)`` for i = 0, 1, ... on ``concurrency`` keep-alive connections.

    Each connection has one request in flight (no pipelining). Stops after ``duration_s``
    seconds or ``max_requests`` requests. Latency (send to complete reply) is kept for
    2xx replies only; ``statuses`` counts every status (0: connection lost).
    """
    loop = asyncio.get_running_loop()
    run = _Run(make_request, duration_s, max_requests)
    connections = []
    for _ in range(concurrency):
        _transport, conn = await loop.create_connection(lambda: _Connection(run), host, port)
        connections.append(conn)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for conn in connections:
        run.start(conn)
    await run.done
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    for conn in connections:
        if conn.transport is not None:
            conn.transport.close()
    latencies = sorted(run.latencies)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 2 else [0.0] * 99
    return LoadResult(
        per_s=len(latencies) / elapsed,
        p50_ms=q[49] * 1000,
        p99_ms=q[98] * 1000,
        ok=len(latencies),
        elapsed_s=elapsed,
        generator_cpu_s=cpu,
        statuses=run.statuses,
    )
