"""The log filter that keeps malformed requests from filling the collector's log."""

from __future__ import annotations

import logging
import sys

from aiohttp.http_exceptions import BadStatusLine, LineTooLong

from vigil.collector.listen import MalformedRequestFilter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record_of(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s",
        ("127.0.0.1",), info,
    )  # fmt: skip


def test_a_malformed_request_is_one_info_line_per_interval_counting_the_rest() -> None:
    clock = FakeClock()
    quiet = MalformedRequestFilter(interval_s=10.0, clock=clock)
    first = record_of(LineTooLong("x" * 10_000, "8190"))
    assert quiet.filter(first)
    assert (first.levelno, first.exc_info) == (logging.INFO, None)
    assert len(first.getMessage()) < 250
    assert not quiet.filter(record_of(BadStatusLine("GARBAGE")))
    assert not quiet.filter(record_of(BadStatusLine("GARBAGE")))
    clock.now += 10.0
    later = record_of(BadStatusLine("GARBAGE"))
    assert quiet.filter(later)
    assert "(2 more left out of the log)" in later.getMessage()


def test_any_other_server_error_passes_unchanged_with_its_traceback() -> None:
    quiet = MalformedRequestFilter(clock=FakeClock())
    record = record_of(RuntimeError("a real bug"))
    assert quiet.filter(record)
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
