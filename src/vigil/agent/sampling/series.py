"""Series bookkeeping shared by the sampler and its sources: which source a series
belongs to, which values are kept, and why a source's series are missing.

Logs under the name ``vigil.agent.sampler``, the one name an admin sees for sampling.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import psutil

log = logging.getLogger("vigil.agent.sampler")

Item = tuple[str, Any]
"""One reading from a source: ``(series name, value)``; the value may be ``None``."""

SOURCES: tuple[str, ...] = (
    "cpu",
    "load",
    "memory",
    "swap",
    "disk",
    "diskio",
    "net",
    "battery",
    "sensors",
    "processes",
    "services",
    "probes",
    "uptime",
    "agent",
    "paths",
    "clock",
    "print",
)
_SOURCE_OF_PREFIX = {
    "temperature": "sensors",
    "fan": "sensors",
    "process": "processes",
    "service": "services",
    "probe": "probes",
    "path": "paths",
    "uptime_seconds": "uptime",
    "boot_time_seconds": "uptime",
}


def source_of(metric: str) -> str | None:
    """The sampler source that produces series ``metric`` (``None``: no such source)."""
    head = metric.split("[", 1)[0].split(".", 1)[0]
    source = _SOURCE_OF_PREFIX.get(head, head)
    return source if source in SOURCES else None


def put(values: dict[str, float], items: Iterable[Item]) -> None:
    """Add the items that are real finite numbers (the wire schema rejects NaN and inf)."""
    for name, value in items:
        if value is None or isinstance(value, bool):
            continue
        number = float(value)
        if math.isfinite(number):
            values[name] = number


def describe(exc: BaseException) -> str:
    """A short, human reason for an unknown series."""
    if isinstance(exc, psutil.AccessDenied):
        return "access denied (the agent lacks the privilege to read this)"
    if isinstance(exc, psutil.NoSuchProcess):
        return "the process vanished"
    if isinstance(exc, AttributeError | NotImplementedError):
        return "not available on this platform"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class FailureLog:
    """Logs a failing source once (then at debug level) until it recovers.

    ``source`` is any label: a source name, ``disk /mnt``, ``path logs (/var/log)``.
    """

    def __init__(self) -> None:
        self._failing: set[str] = set()

    def failed(self, source: str, exc: BaseException) -> None:
        """Record that ``source`` could not be read; log it unless already logged."""
        if source in self._failing:
            log.debug("sampler: %s still unavailable: %r", source, exc)
            return
        self._failing.add(source)
        log.warning("sampler: %s unavailable, omitting its series: %r", source, exc)

    def recovered(self, source: str) -> None:
        """Record that ``source`` was read; log it if it had been failing."""
        if source in self._failing:
            self._failing.discard(source)
            log.info("sampler: %s available again", source)
