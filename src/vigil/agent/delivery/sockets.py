"""Socket plumbing for the shipper's ``http.client`` connections: a name lookup bounded
in time (``getaddrinfo`` has no timeout of its own) and the idle keep-alive check."""

from __future__ import annotations

import ipaddress
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Resolver:
    """``getaddrinfo`` with a bound: each lookup runs on a daemon thread, which the caller
    waits for only until its time is up or ``aborted()`` says so. A lookup that hangs is
    left to finish on its own (a daemon thread never delays the agent's exit), and a
    caller asking for the same name meanwhile waits for it instead of starting another,
    so a dead resolver costs at most one thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], _Lookup] = {}

    def lookup(
        self, host: str, port: int, timeout_s: float, aborted: Callable[[], bool]
    ) -> list[tuple[Any, ...]]:
        """The addresses of ``host`` (``getaddrinfo``, TCP); raises what it raised,
        ``TimeoutError`` after ``timeout_s``, or ``ConnectionAbortedError`` once
        ``aborted()`` is true (checked every 50 ms)."""
        if _is_ip_literal(host):  # nothing to look up: never blocks
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        key = (host, port)
        with self._lock:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = _Lookup()
                thread = threading.Thread(
                    target=self._run, args=(key, pending), name="vigil-dns", daemon=True
                )
                thread.start()
        deadline = time.monotonic() + timeout_s
        while not pending.done.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            if aborted():
                raise ConnectionAbortedError(f"request aborted while looking up {host}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"DNS lookup of {host} took over {timeout_s:g} s")
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _run(self, key: tuple[str, int], pending: _Lookup) -> None:
        try:
            pending.result = socket.getaddrinfo(*key, type=socket.SOCK_STREAM)
        except OSError as exc:
            pending.error = exc
        finally:
            with self._lock:
                del self._pending[key]
            pending.done.set()


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(eq=False)
class _Lookup:
    done: threading.Event = field(default_factory=threading.Event)
    result: list[tuple[Any, ...]] = field(default_factory=list)
    error: OSError | None = None


def peer_closed(sock: socket.socket) -> bool:
    """Whether an idle keep-alive socket is readable: the collector closed it (EOF) or sent
    something unasked. Either way it must not carry the next request."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)
    except (OSError, ValueError):
        return True
