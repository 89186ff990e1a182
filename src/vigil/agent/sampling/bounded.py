"""Calls that may hang forever (``statvfs`` on a dead NFS mount, ``getaddrinfo``), bounded.

:class:`BoundedCaller` runs each call on a long-lived daemon worker thread of its own
*key* (one per mount, one per probe) and waits at most ``timeout_s`` for it. A call that
does not return in time is abandoned, not killed (Python cannot kill a thread stuck in a
syscall); its worker stays busy, and further calls for that key are refused at once with
:class:`StillRunning` until it finishes. So a hung mount costs exactly one stuck thread,
never a pile of them, and the caller is never blocked longer than ``timeout_s``.

Workers are daemon threads so a hung one never holds up the agent's exit, and they are
reused across calls, which is cheaper than starting a thread per call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class BoundedCallError(Exception):
    """A bounded call did not produce a result; ``key`` names what was being read."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


class CallTimeout(BoundedCallError):
    """The call did not return within its timeout (it keeps running on its worker)."""


class StillRunning(BoundedCallError):
    """An earlier call for this key has not returned yet, so no new one was started."""


# The worker answers each call on a queue of its own: (value, None) or (None, exception).
# A SimpleQueue (C code) rather than an Event (a Condition in Python, a new lock per
# wait): the agent makes this round trip for every mount on every sample.
_Reply = queue.SimpleQueue[tuple[Any, BaseException | None]]


class _Worker:
    """One daemon thread serving calls for one key, one at a time."""

    def __init__(self, name: str) -> None:
        self.requests: queue.SimpleQueue[tuple[Callable[[], Any], _Reply]] = queue.SimpleQueue()
        self.busy = False  # set by the caller before queueing, cleared by the worker
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            fn, reply = self.requests.get()
            try:
                answer: tuple[Any, BaseException | None] = (fn(), None)
            except BaseException as exc:  # handed to the caller, never lost
                answer = (None, exc)
            self.busy = False
            reply.put(answer)


class Pending(Generic[T]):
    """A call handed to a worker by :meth:`BoundedCaller.start`."""

    __slots__ = ("key", "reply", "timeout_s")

    def __init__(self, key: str, reply: _Reply, timeout_s: float = 0.0) -> None:
        self.key = key
        self.reply = reply
        self.timeout_s = timeout_s


class BoundedCaller:
    """Runs ``fn`` for a key on that key's worker, waiting at most ``timeout_s`` seconds.

    Thread-safe for distinct keys; calls for one key are expected from one thread (the
    sampler's). ``max_workers`` bounds how many keys may ever get a worker: beyond it,
    calls raise :class:`BoundedCallError` (a config with thousands of mounts is a bug).
    """

    def __init__(self, *, max_workers: int = 64, name: str = "vigil-bounded") -> None:
        self._workers: dict[str, _Worker] = {}
        self._max_workers = max_workers
        self._name = name
        self._lock = threading.Lock()

    def call(self, key: str, fn: Callable[[], T], timeout_s: float) -> T:
        """``fn()``'s result, or its exception re-raised; see the module docstring.

        Raises :class:`CallTimeout` when ``fn`` takes longer than ``timeout_s`` and
        :class:`StillRunning` when the previous call for ``key`` has not returned.
        """
        return self.wait(self.start(key, fn, timeout_s), timeout_s)

    def start(self, key: str, fn: Callable[[], T], timeout_s: float) -> Pending[T]:
        """Hand ``fn`` to ``key``'s worker and return at once; :meth:`wait` for the result.

        Lets a caller start several calls (one per mount) and do other work meanwhile, so
        all of them together take at most one timeout. Raises :class:`StillRunning` (which
        names ``timeout_s``) when the previous call for ``key`` has not returned.
        """
        worker = self._worker(key)
        if worker.busy:
            raise StillRunning(key, f"an earlier read has not returned (over {timeout_s:g}s)")
        reply: _Reply = queue.SimpleQueue()
        worker.busy = True
        worker.requests.put((fn, reply))
        return Pending(key, reply, timeout_s)

    @staticmethod
    def wait(pending: Pending[T], timeout_s: float) -> T:
        """The result of a started call, waiting at most ``timeout_s`` seconds (0: only
        if it is already there); raises :class:`CallTimeout` or the call's exception."""
        try:
            value, error = pending.reply.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            raise CallTimeout(pending.key, f"timed out after {pending.timeout_s:g}s") from None
        if error is not None:
            raise error
        return value  # type: ignore[no-any-return]

    def hung(self) -> list[str]:
        """Keys whose last call has not returned yet."""
        return [key for key, w in self._workers.items() if w.busy]

    def _worker(self, key: str) -> _Worker:
        worker = self._workers.get(key)
        if worker is None:
            with self._lock:
                worker = self._workers.get(key)
                if worker is None:
                    if len(self._workers) >= self._max_workers:
                        raise BoundedCallError(key, f"more than {self._max_workers} keys")
                    worker = _Worker(f"{self._name}:{key}")
                    self._workers[key] = worker
        return worker
