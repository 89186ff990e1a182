"""A loopback TCP proxy that a test switches between passing, resetting and black-holing.

It runs its own asyncio loop in a daemon thread, listens on 127.0.0.1 (ephemeral port)
and forwards to one upstream port on 127.0.0.1. Modes:

* ``pass``: forward both ways; a refused upstream resets the client.
* ``reset``: every open connection is reset now (RST, via ``SO_LINGER`` 0) and every new
  one is reset on accept, as when a network path dies.
* ``blackhole``: nothing comes back, as when packets are silently dropped; the client has
  to time out. New connections are accepted and swallowed. On connections already open,
  requests still reach the upstream but its answers are dropped: the path died on the
  way back, so the server may commit work whose acknowledgement never arrives (the case
  idempotent delivery exists for). Leaving this mode resets the connections it held
  (a NAT entry that expired).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field

MODES = ("pass", "reset", "blackhole")


@dataclass(eq=False)
class _Conn:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    blackholed: bool = False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN, so the peer sees ECONNRESET."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class ChaosProxy:
    """See the module docstring. ``start()`` returns the listening port; ``close()`` stops."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.connections_total = 0
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> int:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        return self._server.sockets[0].getsockname()[1]

    def set_mode(self, mode: str) -> None:
        """Switch behaviour now (see the module docstring); returns once applied."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

        async def apply() -> None:
            previous, self.mode = self.mode, mode
            for conn in list(self._conns):
                if mode == "reset" or (previous == "blackhole" and conn.blackholed):
                    for w in conn.writers:
                        _reset(w)
                    self._conns.discard(conn)
                elif mode == "blackhole":
                    conn.blackholed = True

        self._call(apply())

    def close(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for conn in list(self._conns):
                for w in conn.writers:
                    _reset(w)

        self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        if self.mode == "reset":
            _reset(writer)
            return
        conn = _Conn(writers=[writer], blackholed=self.mode == "blackhole")
        self._conns.add(conn)
        try:
            if conn.blackholed:
                await self._swallow(reader, conn)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.upstream_port), timeout=5
                )
            except (OSError, TimeoutError):
                _reset(writer)  # like a refused connection, seen through the proxy
                return
            conn.writers.append(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer, conn, upstream=True),
                self._pump(up_reader, writer, conn, upstream=False),
                return_exceptions=True,
            )
        finally:
            self._conns.discard(conn)
            for w in conn.writers:
                w.transport.abort() if conn.blackholed else w.close()

    @staticmethod
    async def _swallow(reader: asyncio.StreamReader, conn: _Conn) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                pass

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: _Conn, *, upstream: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if conn.blackholed and not upstream:
                    continue  # answers dropped on the floor, like a dead return path
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            # Half-close politely unless the path is dead (then the other side must time out).
            if not conn.blackholed:
                with contextlib.suppress(OSError, RuntimeError):
                    if dst.can_write_eof():
                        dst.write_eof()
