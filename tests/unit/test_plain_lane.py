"""The plain lane of report ingest (``api/reports.py``: :class:`PlainLane`), on a real app
with its real storage and ingest queue: it takes a plain report and answers exactly as
the coroutine handler would, and leaves everything else to that handler (declining
changes nothing, counts nothing: the handler then refuses, counts and logs)."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.conftest import COLLECTOR_AGENT_TOKEN
from vigil import wire
from vigil.collector.api.reports import Admitted, PlainLane, finish_report
from vigil.collector.app import create_app
from vigil.collector.config import CollectorConfig
from vigil.collector.desk.apply import IngestResult
from vigil.collector.desk.satisfaction import SatisfactionPolicy
from vigil.collector.front_request import Body, LeanRequest
from vigil.collector.keys import counters_key, desk_key, ingest_key
from vigil.wire_fast import as_wire, struct_of

T = TypeVar("T")
PLAIN = {
    "authorization": f"Bearer {COLLECTOR_AGENT_TOKEN}",
    "content-type": "application/json",
    "content-encoding": "gzip",
}


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(main())


def body_of(report: wire.Report) -> bytes:
    return gzip.compress(wire.encode_report(report))


@asynccontextmanager
async def lane_of(config: CollectorConfig) -> AsyncIterator[tuple[web.Application, PlainLane]]:
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # opens the storage, starts the ingest queue
    try:
        yield app, PlainLane(app)
    finally:
        await runner.cleanup()


async def committed(lane: PlainLane, admitted: Admitted) -> tuple[IngestResult, float]:
    """Submit through the lane and wait for the group commit's callback."""
    done: asyncio.Future[IngestResult | Exception] = asyncio.get_running_loop().create_future()
    received_at = lane.submit(admitted, done.set_result)
    assert received_at is not None
    result = await asyncio.wait_for(done, 10)
    assert isinstance(result, IngestResult)
    return result, received_at


def lean_request(app: web.Application, headers: dict[str, str]) -> LeanRequest:
    body = Body()
    body.end()
    proxy = CIMultiDictProxy(CIMultiDict(headers))
    return LeanRequest(app, proxy, b"/api/v1/reports", "127.0.0.1", "http", body)


def test_a_plain_report_is_committed_and_answered_as_the_handler_answers(
    collector_config, make_report, make_check_event
) -> None:
    report = make_report(make_check_event(), make_check_event("cpu.busy", "ok", seq=2))

    async def main() -> tuple[Any, Any, int]:
        async with lane_of(collector_config) as (app, lane):
            admitted = lane.admit(PLAIN, body_of(report))
            assert admitted is not None and as_wire(admitted.report) == report
            assert type(admitted.report) is struct_of(wire.Report)  # the desk reads it as is
            result, received_at = await committed(lane, admitted)
            reply = lane.reply(admitted, result, received_at)
            assert reply is not None
            status, payload = reply
            handler = await finish_report(lean_request(app, PLAIN), admitted, result, received_at)
            assert handler.status == status == 200
            assert isinstance(handler.body, bytes)
            ingested = app[counters_key].copy()
            return json.loads(payload), json.loads(handler.body), sum(ingested.ingest_buckets)

    lane_ack, handler_ack, timed = run(main)
    assert lane_ack == handler_ack
    assert (lane_ack["batch_id"], lane_ack["accepted"], lane_ack["events"]) == (
        report.batch_id,
        True,
        2,
    )
    assert timed == 2  # each reply timed the report once (vigil_ingest_seconds)


def test_a_restored_snapshot_gets_the_409_asking_for_a_new_epoch(
    collector_config, make_report, make_check_event
) -> None:
    first = make_report(make_check_event(seq=1), make_check_event("cpu", "ok", seq=2))
    first = dataclasses.replace(first, epoch="ab" * 16, seq_first=1, seq_last=2)
    replayed = dataclasses.replace(
        make_report(make_check_event(seq=1)), epoch="ab" * 16, seq_first=1, seq_last=1
    )

    async def main() -> tuple[int, Any]:
        async with lane_of(collector_config) as (_app, lane):
            for report in (first, replayed):
                admitted = lane.admit(PLAIN, body_of(report))
                assert admitted is not None
                result, received_at = await committed(lane, admitted)
                reply = lane.reply(admitted, result, received_at)
                assert reply is not None
            status, payload = reply
            return status, json.loads(payload)

    status, body = run(main)
    assert status == 409
    assert (body["epoch_reset"], body["field"], body["mark"]) == (True, "seq_first", 2)


def _gzip_of(text: bytes) -> bytes:
    return gzip.compress(text)


DECLINED: dict[str, Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]] = {
    "unknown token": lambda h, b: ({**h, "authorization": "Bearer nope-" + "0" * 30}, b),
    "no token": lambda h, b: ({k: v for k, v in h.items() if k != "authorization"}, b),
    "rotation asked": lambda h, b: ({**h, "vigil-credential-rotate": "1"}, b),
    "another encoding": lambda h, b: ({**h, "content-encoding": "br"}, b),
    "not json": lambda h, b: ({**h, "content-type": "text/plain"}, b),
    "another charset": lambda h, b: ({**h, "content-type": "application/json; charset=latin-1"}, b),
    "a bad policy header": lambda h, b: ({**h, "x-vigil-policy": "???"}, b),
    "not gzip": lambda h, b: (h, b"not gzip at all"),
    "not a report": lambda h, b: (h, _gzip_of(b'{"schema_version": 1}')),
    "a big body": lambda h, b: (h, b + b"\0" * (17 * 1024)),
}


@pytest.mark.parametrize("case", list(DECLINED))
def test_anything_unusual_is_left_to_the_handler_and_nothing_is_counted(
    case: str, collector_config, make_report, make_check_event
) -> None:
    report = make_report(make_check_event())

    async def main() -> tuple[Admitted | None, dict[str, int]]:
        async with lane_of(collector_config) as (app, lane):
            headers, body = DECLINED[case](dict(PLAIN), body_of(report))
            admitted = lane.admit(headers, body)
            return admitted, dict(app[counters_key].copy().rejected)

    admitted, rejected = run(main)
    assert admitted is None
    assert not any(rejected.values())


def test_a_full_queue_is_left_to_the_handler_which_answers_429(
    collector_config, make_report, make_check_event
) -> None:
    async def main() -> Admitted | None:
        async with lane_of(collector_config) as (app, lane):
            queue = app[ingest_key]
            queue._closing = True  # full() is true while closing, as at the bound
            try:
                return lane.admit(PLAIN, body_of(make_report(make_check_event())))
            finally:
                queue._closing = False

    assert run(main) is None


def test_with_surveys_on_a_survey_report_and_a_waiting_survey_go_to_the_handler(
    collector_config, make_report, make_check_event
) -> None:
    config = dataclasses.replace(
        collector_config,
        satisfaction=SatisfactionPolicy(enabled=True, public_url="http://desk.example"),
    )
    report = make_report(make_check_event("cpu.busy", "ok"))

    async def main() -> tuple[Any, ...]:
        async with lane_of(config) as (app, lane):
            body = body_of(report)
            reported = lane.admit({**PLAIN, "vigil-surveys": "7=shown"}, body)
            admitted = lane.admit(PLAIN, body)
            assert admitted is not None
            result, received_at = await committed(lane, admitted)
            plain = lane.reply(admitted, result, received_at)
            app[desk_key].surveys.note_waiting(report.agent_id)
            waiting = lane.reply(admitted, result, received_at)
            resolved = lane.reply(admitted, dataclasses.replace(result, resolved=(1,)), received_at)
            return reported, plain, waiting, resolved

    reported, plain, waiting, resolved = run(main)
    assert reported is None  # recording what the agent did with a survey needs the storage
    assert plain is not None and plain[0] == 200 and "surveys" not in json.loads(plain[1])
    assert waiting is None and resolved is None  # an offer may need the storage
