"""The collector's event loop: uvloop where it is installed (the default, ``auto``), or
asyncio's own.

Why uvloop: issue #17's profile of a durable report put ~93 µs of ~717 µs in asyncio's
event loop and ~41 µs in its socket handling; uvloop (libuv, Cython) runs the same
coroutines and transports, and aiohttp works on it unchanged. Alone it was not a clear
win (~20 µs per report at 128 connections, nothing at 32); with the lean ingest front,
the pair took 28-33 % less CPU per report at 128 connections than aiohttp on asyncio
(docs/benchmarks.md, delivery), so both are the defaults. ``pip install
vigil[collector]`` brings it on Linux and macOS (it has no Windows build):
``listen.event_loop: auto`` takes it when it imports and falls back to asyncio
otherwise; ``uvloop`` refuses to start without it; ``asyncio`` never uses it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Accepted values of ``listen.event_loop``.
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


class EventLoopUnavailable(RuntimeError):
    """``listen.event_loop: uvloop`` was asked for and uvloop cannot be imported."""


def loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The loop factory for ``choice`` (one of :data:`EVENT_LOOPS`) and the name of the
    loop it makes; a None factory means asyncio's default loop.

    ``auto`` takes uvloop when it imports and asyncio otherwise (Windows, or an install
    without it); ``uvloop`` raises :class:`EventLoopUnavailable` when it does not import,
    rather than silently running the slower loop the operator ruled out.
    """
    if choice not in EVENT_LOOPS:
        raise ValueError(f"event loop must be one of {', '.join(EVENT_LOOPS)}, got {choice!r}")
    if choice == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise EventLoopUnavailable(
                f"listen.event_loop is uvloop but it cannot be imported ({exc});"
                " pip install uvloop, or set listen.event_loop: auto"
            ) from None
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """Run ``main`` to completion on the loop ``choice`` selects (see :func:`loop_factory`),
    like ``asyncio.run`` (the loop is closed afterwards)."""
    try:
        factory, name = loop_factory(choice)
    except EventLoopUnavailable:
        main.close()  # never awaited: do not leave a "never awaited" warning behind
        raise
    log.info("event loop: %s", name)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
