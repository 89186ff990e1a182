"""The collector's HTTP API, against a real app on 127.0.0.1 with a real SQLite file.

Ingest: authentication, size and gzip bounds, schema validation, idempotency. Read API:
admin token (unless ``open_read``), query validation, JSON errors everywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import gzip
import json
import logging
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from vigil import wire
from vigil.collector.api.http import BodyTooLarge
from vigil.collector.api.reports import gunzip_bounded
from vigil.collector.app import create_app
from vigil.collector.config import CollectorConfig, LimitsConfig

T = TypeVar("T")
MiB = 2**20


def run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())  # type: ignore[arg-type]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def agent_auth(config: CollectorConfig) -> dict[str, str]:
    return bearer(config.auth.agent_tokens[0])


def admin_auth(config: CollectorConfig) -> dict[str, str]:
    return bearer(config.auth.admin_tokens[0])


def report_json(report: wire.Report) -> dict[str, Any]:
    """A report as the JSON object an agent sends, for tests that break it on purpose."""
    return json.loads(wire.encode_report(report))


async def post_body(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes | AsyncIterator[bytes],
    headers: dict[str, str],
    *,
    encoding: str | None = "gzip",
) -> tuple[int, Any]:
    """POST raw bytes to the ingest endpoint; returns (status, parsed JSON reply)."""
    extra = {"Content-Type": "application/json"}
    if encoding:
        extra["Content-Encoding"] = encoding
    async with http.post(f"{url}/api/v1/reports", data=body, headers={**headers, **extra}) as r:
        return r.status, await r.json()


async def post_report(
    http: aiohttp.ClientSession, url: str, report: wire.Report | dict[str, Any], headers: dict
) -> tuple[int, Any]:
    """POST a report (or a hand-edited JSON object) gzipped, the way the shipper does."""
    raw = (
        wire.encode_report(report)
        if isinstance(report, wire.Report)
        else json.dumps(report).encode()
    )
    return await post_body(http, url, gzip.compress(raw), headers)


async def get_json(
    http: aiohttp.ClientSession, url: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.get(f"{url}{path}", headers=headers or {}) as r:
        return r.status, await r.json()


@functools.cache
def gzip_bomb(zeros: int = 50 * 10**6) -> bytes:
    """``zeros`` zero bytes gzipped (about 1000:1), built without holding them all."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(MiB)
    parts = [packer.compress(block[: min(MiB, zeros - done)]) for done in range(0, zeros, MiB)]
    return b"".join(parts) + packer.flush()


# --------------------------------------------------------------------------- ingest


def test_a_valid_gzip_report_is_acknowledged_with_its_batch_id_and_event_count(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    report = make_report(make_check_event(), make_check_event("cpu.busy", "ok", seq=2))

    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await post_report(http, url, report, agent_auth(collector_config))

    status, body = run(main)
    assert status == 200
    # Since #18 every ack also says which policy the host should run (none published here);
    # on a shared token the fetch url names the agent.
    url = f"/api/v1/agent/policy?agent_id={report.agent_id}"
    no_policy = {"policy": None, "version": None, "url": url}
    no_policy |= {"halted": [], "halt_all": False, "run_now": []}
    assert body == {
        "batch_id": report.batch_id,
        "accepted": True,
        "duplicate": False,
        "events": 2,
        "policy": no_policy,
    }


def test_a_critical_check_without_a_fix_shows_as_an_open_incident(
    collector_config, collector_server, make_report, make_check_event, fake_clock
) -> None:
    report = make_report(make_check_event("disk.free", "critical", value=97.5))

    async def main() -> Any:
        async with (
            collector_server(collector_config, clock=fake_clock) as url,
            aiohttp.ClientSession() as http,
        ):
            await post_report(http, url, report, agent_auth(collector_config))
            return await get_json(http, url, "/api/v1/incidents", admin_auth(collector_config))

    status, body = run(main)
    assert status == 200
    [incident] = body["incidents"]
    assert (incident["host"], incident["check"], incident["state"]) == (
        report.agent_id,
        "disk.free",
        "open",
    )
    assert incident["value"] == 97.5
    assert incident["opened_at"] == fake_clock.now, "the collector's clock, not the agent's"


def test_the_same_batch_again_is_a_duplicate_and_opens_nothing_new(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    report = make_report(make_check_event())

    async def main() -> tuple[Any, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            await post_report(http, url, report, agent_auth(collector_config))
            again = await post_report(http, url, report, agent_auth(collector_config))
            listed = await get_json(http, url, "/api/v1/incidents", admin_auth(collector_config))
            return again, listed

    (status, body), (_, listed) = run(main)
    assert status == 200
    assert body["duplicate"] is True
    assert len(listed["incidents"]) == 1


def test_an_uncompressed_report_is_accepted_too(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    report = make_report(make_check_event())

    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await post_body(
                http,
                url,
                wire.encode_report(report),
                agent_auth(collector_config),
                encoding=None,
            )

    status, body = run(main)
    assert status == 200
    assert body["accepted"] is True


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("not-a-token"),
        bearer("test-admin-token-0123456789abcdef0123456789abcdef"),
        {"Authorization": "Basic dGVzdC1hZ2VudC10b2tlbjo="},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer t\u00e9st-agent-token"},
    ],
    ids=["missing", "unknown", "admin-token", "basic-scheme", "empty-bearer", "non-ascii"],
)
def test_ingest_without_a_valid_agent_token_is_401(
    headers, collector_config, collector_server, make_report, make_check_event
) -> None:
    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await post_report(http, url, make_report(make_check_event()), headers)

    status, body = run(main)
    assert status == 401
    assert body == {"error": "missing or unknown agent token", "field": None}


def test_the_bearer_scheme_is_case_insensitive(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    headers = {"Authorization": f"bearer {collector_config.auth.agent_tokens[0]}"}

    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await post_report(http, url, make_report(make_check_event()), headers)

    assert run(main)[0] == 200


def test_malformed_json_is_400_naming_the_body(collector_config, collector_server) -> None:
    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await post_body(
                http, url, gzip.compress(b'{"schema_version": 1,'), agent_auth(collector_config)
            )

    status, body = run(main)
    assert status == 400
    assert body["field"] == "body"
    assert "not valid JSON" in body["error"]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["events"][0].update(value="high"), "events[0].value"),
        (lambda d: d["events"][0].update(state="on-fire"), "events[0].state"),
        (lambda d: d.update(sent_at=None), "sent_at"),
        (lambda d: d.pop("batch_id"), "batch_id"),
        (lambda d: d.update(schema_version=2), "schema_version"),
    ],
    ids=["number-as-string", "unknown-state", "null-time", "missing-batch-id", "schema-v2"],
)
def test_a_report_that_breaks_the_schema_is_400_naming_the_field(
    edit, field, collector_config, collector_server, make_report, make_check_event
) -> None:
    data = report_json(make_report(make_check_event()))
    edit(data)

    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await post_report(http, url, data, agent_auth(collector_config))

    status, body = run(main)
    assert status == 400
    assert body["field"] == field


def test_an_unknown_field_is_400_naming_it(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    data = report_json(make_report(make_check_event()))
    data["events"][0]["severity"] = "high"

    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await post_report(http, url, data, agent_auth(collector_config))

    status, body = run(main)
    assert status == 400
    assert body == {"error": "unknown field", "field": "events[0].severity"}


def test_a_body_over_max_body_bytes_is_413(collector_config, collector_server) -> None:
    config = dataclasses.replace(collector_config, limits=LimitsConfig(max_body_bytes=64 * 1024))

    async def main() -> tuple[int, Any]:
        async with collector_server(config) as url, aiohttp.ClientSession() as http:
            return await post_body(http, url, bytes(64 * 1024 + 1), agent_auth(config))

    status, body = run(main)
    assert status == 413
    assert body == {"error": "request body over 65536 bytes", "field": None}


def test_a_chunked_body_without_content_length_is_cut_off_at_the_limit_too(
    collector_config, collector_server
) -> None:
    config = dataclasses.replace(collector_config, limits=LimitsConfig(max_body_bytes=64 * 1024))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):  # 1.6 MB in all, streamed without a Content-Length
            yield bytes(16 * 1024)

    async def main() -> tuple[int, Any]:
        async with collector_server(config) as url, aiohttp.ClientSession() as http:
            return await post_body(http, url, chunks(), agent_auth(config))

    assert run(main)[0] == 413


def test_a_gzip_bomb_is_413_without_inflating_it(collector_config, collector_server) -> None:
    bomb = gzip_bomb()
    assert len(bomb) < collector_config.limits.max_body_bytes, "the bomb itself is small"

    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await post_body(http, url, bomb, agent_auth(collector_config))

    status, body = run(main)
    assert status == 413
    assert body["error"] == f"decompressed body over {16 * MiB} bytes"


@pytest.mark.parametrize(
    "body",
    [
        b'{"not": "gzipped"}',
        gzip.compress(b'{"schema_version": 1}')[:-6],
        gzip.compress(b"{}") + b"trailing",
    ],
    ids=["plain-json", "truncated", "trailing-garbage"],
)
def test_a_body_that_is_not_valid_gzip_is_400(body, collector_config, collector_server) -> None:
    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await post_body(http, url, body, agent_auth(collector_config))

    status, reply = run(main)
    assert status == 400
    assert reply["error"].startswith("body is not valid gzip")


def test_an_unsupported_content_encoding_is_415(collector_config, collector_server) -> None:
    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await post_body(
                http, url, zlib.compress(b"{}"), agent_auth(collector_config), encoding="br"
            )

    status, body = run(main)
    assert status == 415
    assert "br" in body["error"]


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/json; charset=utf-16", "application/x-ndjson"],
)
def test_a_report_not_declared_as_utf8_json_is_415_naming_the_header(
    content_type, collector_config, collector_server, make_report, make_check_event
) -> None:
    raw = gzip.compress(wire.encode_report(make_report(make_check_event())))
    headers = {**agent_auth(collector_config), "Content-Encoding": "gzip"}
    if content_type:
        headers["Content-Type"] = content_type

    async def main() -> tuple[int, Any]:
        async with (
            collector_server(collector_config) as url,
            aiohttp.ClientSession() as http,
            http.post(f"{url}/api/v1/reports", data=raw, headers=headers) as r,
        ):
            return r.status, await r.json()

    status, body = run(main)
    assert (status, body["field"]) == (415, "Content-Type")


@pytest.mark.parametrize("codec", ["utf-16", "utf-32", "utf-16-be"])
def test_a_report_in_utf16_or_utf32_is_400_naming_the_body(
    codec, collector_config, collector_server, make_report, make_check_event
) -> None:
    text = wire.encode_report(make_report(make_check_event())).decode()

    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            body = gzip.compress(text.encode(codec))
            return await post_body(http, url, body, agent_auth(collector_config))

    status, body = run(main)
    assert (status, body["field"]) == (400, "body")
    assert "UTF-8" in body["error"] or "JSON" in body["error"]


def test_the_server_keeps_answering_after_every_kind_of_rejection(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    config = dataclasses.replace(collector_config, limits=LimitsConfig(max_body_bytes=256 * 1024))
    auth = agent_auth(config)

    async def main() -> list[int]:
        async with collector_server(config) as url, aiohttp.ClientSession() as http:
            statuses = [
                (await post_report(http, url, make_report(make_check_event()), {}))[0],
                (await post_body(http, url, gzip.compress(b"{"), auth))[0],
                (await post_body(http, url, bytes(256 * 1024 + 1), auth))[0],
                (await post_body(http, url, gzip_bomb(), auth))[0],
                (await post_body(http, url, b"not gzip", auth))[0],
            ]
            statuses.append((await get_json(http, url, "/healthz"))[0])
            statuses.append(
                (await post_report(http, url, make_report(make_check_event()), auth))[0]
            )
            return statuses

    assert run(main) == [401, 400, 413, 413, 400, 200, 200]


# --------------------------------------------------------------------------- gunzip_bounded


def test_gunzip_bounded_returns_data_exactly_at_the_limit() -> None:
    data = b"x" * 1000
    assert gunzip_bounded(gzip.compress(data), 1000) == data


def test_gunzip_bounded_refuses_one_byte_over_the_limit() -> None:
    with pytest.raises(BodyTooLarge):
        gunzip_bounded(gzip.compress(b"x" * 1001), 1000)


def test_gunzip_bounded_never_holds_much_more_than_the_limit() -> None:
    """50 MB of zeros must be refused after inflating about 1 MiB, not all of it."""
    bomb = gzip_bomb()
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            gunzip_bounded(bomb, MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB


def gzip_of(piece: bytes, total: int, head: bytes = b"", tail: bytes = b"") -> bytes:
    """``head + piece * n + tail`` (about ``total`` bytes) gzipped without holding it."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = piece * (MiB // len(piece))
    parts = [packer.compress(head)]
    parts += [packer.compress(block) for _ in range(total // len(block))]
    return b"".join(parts) + packer.compress(tail) + packer.flush()


@pytest.mark.parametrize(
    ("piece", "head", "tail", "size", "why"),
    [
        (b"{},", b"[", b"{}]", 15 * MiB, "objects and lists"),
        (b"[],", b'{"events":[', b"[]]}", 15 * MiB, "objects and lists"),
        (b"0.5,", b"[", b"0]", 15 * MiB, "too many values"),
        (b'"",', b"[", b'""]', 15 * MiB, "too many values"),
        (b'"k":0,', b"{", b'"z":0}', 15 * MiB, "more than 250000 members and items"),
        (b'"aaaa":1.5,', b'{"labels":{', b'"z":1}}', 15 * MiB, "members and items"),
    ],
    ids=["objects", "lists", "numbers", "strings", "repeated keys", "a huge map"],
)
def test_a_tiny_body_that_expands_to_millions_of_values_is_refused_before_parsing(
    piece: bytes, head: bytes, tail: bytes, size: int, why: str
) -> None:
    """16 MiB of ``{},`` is about 16 KiB of gzip and was 5.6 million objects (500 MB)
    once parsed; it is refused holding little more than its own bytes."""
    limit = 16 * MiB
    body = gzip_of(piece, size, head, tail)
    assert len(body) < 64 * 1024
    unpacked = gunzip_bounded(body, limit)  # bounded on its own (see the tests above)
    tracemalloc.start()
    try:
        with pytest.raises(wire.WireError) as err:
            wire.decode_report(unpacked)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.path == "body"
    assert why in err.value.message
    assert peak < 4 * MiB  # beyond the bytes it was given


def test_a_large_valid_report_still_passes_the_structure_check(
    make_report, make_remediation_event
) -> None:
    """5,000 events with outputs full of braces and commas are a legitimate report."""
    output = "{a},[b], " * 1800
    event = dataclasses.replace(make_remediation_event(), output=output[: wire.MAX_OUTPUT])
    events = [dataclasses.replace(event, seq=i + 1, event_id=f"e{i}") for i in range(5000)]
    raw = wire.encode_report(make_report(*events))
    assert len(raw) > 64 * MiB
    assert len(wire.decode_report(raw).events) == wire.MAX_EVENTS


def test_members_and_items_are_bounded_with_room_for_any_agent_batch(make_report) -> None:
    """60 summaries of 4,096 series each (about 246,000 members, 8 MiB of JSON: far
    more than an agent's 2 MiB batch holds) pass; 4,096 labels more are refused as the
    body, naming the bound, before anything is parsed."""
    values = {f"series.{i:04d}": float(i) for i in range(wire.MAX_MAP_ITEMS)}
    events = [
        wire.MetricsEvent(event_id=f"e{i}", seq=i + 1, time=1.7e9, values=values) for i in range(60)
    ]
    raw = wire.encode_report(make_report(*events))
    assert len(wire.decode_report(raw).events) == 60
    labels = {f"l{i}": "" for i in range(wire.MAX_MAP_ITEMS)}
    bigger = wire.encode_report(dataclasses.replace(make_report(*events), labels=labels))
    with pytest.raises(wire.WireError) as err:
        wire.decode_report(bigger)
    assert err.value.path == "body"
    assert f"more than {wire.MAX_ITEMS} members and items" in err.value.message


# --------------------------------------------------------------------------- read API


@pytest.mark.parametrize(
    "path",
    ["/api/v1/incidents", "/api/v1/incidents/1", "/api/v1/hosts", "/api/v1/remediations/runs"],
    ids=["incidents", "incident", "hosts", "runs"],
)
@pytest.mark.parametrize(
    "headers",
    [{}, bearer("test-agent-token-0123456789abcdef0123456789abcdef"), bearer("nope")],
    ids=["no-token", "agent-token", "unknown-token"],
)
def test_the_read_api_needs_an_operator_token(
    path, headers, collector_config, collector_server
) -> None:
    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await get_json(http, url, path, headers)

    status, body = run(main)
    assert status == 401
    assert body == {"error": "missing or unknown operator token", "field": None}


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/api/v1/incidents", "incidents"),
        ("/api/v1/hosts", "hosts"),
        ("/api/v1/remediations/runs", "runs"),
    ],
    ids=["incidents", "hosts", "runs"],
)
def test_open_read_serves_the_read_api_without_a_token(
    path, key, collector_config, collector_server
) -> None:
    auth = dataclasses.replace(collector_config.auth, open_read=True)
    config = dataclasses.replace(collector_config, auth=auth)

    async def main() -> tuple[int, Any]:
        async with collector_server(config) as url, aiohttp.ClientSession() as http:
            return await get_json(http, url, path)

    assert run(main) == (200, {key: [], "next": None})


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("state=closed", "state"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=-1", "limit"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
        ("stat=open", "stat"),
        ("state=open&state=resolved", "state"),
    ],
    ids=[
        "unknown-state",
        "limit-zero",
        "limit-over-1000",
        "limit-not-a-number",
        "limit-negative",
        "offset-negative",
        "offset-fraction",
        "unknown-parameter",
        "repeated-parameter",
    ],
)
def test_a_bad_incidents_query_is_400_naming_the_field(
    query, field, collector_config, collector_server
) -> None:
    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await get_json(
                http, url, f"/api/v1/incidents?{query}", admin_auth(collector_config)
            )

    status, body = run(main)
    assert status == 400
    assert body["field"] == field


def test_a_bad_runs_query_is_400_naming_the_field(collector_config, collector_server) -> None:
    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await get_json(
                http, url, "/api/v1/remediations/runs?limit=5000", admin_auth(collector_config)
            )

    status, body = run(main)
    assert status == 400
    assert body["field"] == "limit"


@pytest.mark.parametrize(
    ("state", "expected"),
    [("all", ["cpu.busy", "disk.free"]), ("open", ["cpu.busy"]), ("resolved", ["disk.free"])],
    ids=["all", "open", "resolved"],
)
def test_incidents_filter_by_state(
    state, expected, collector_config, collector_server, make_report, make_check_event
) -> None:
    opened = make_report(make_check_event("disk.free"), make_check_event("cpu.busy", seq=2))
    recovered = make_report(make_check_event("disk.free", "ok", previous_state="critical", seq=3))

    async def main() -> Any:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            for report in (opened, recovered):
                await post_report(http, url, report, agent_auth(collector_config))
            return await get_json(
                http, url, f"/api/v1/incidents?state={state}", admin_auth(collector_config)
            )

    _, body = run(main)
    assert sorted(i["check"] for i in body["incidents"]) == expected


def test_one_incident_is_served_with_its_timeline(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            auth = admin_auth(collector_config)
            await post_report(
                http, url, make_report(make_check_event()), agent_auth(collector_config)
            )
            _, listed = await get_json(http, url, "/api/v1/incidents", auth)
            return await get_json(
                http, url, f"/api/v1/incidents/{listed['incidents'][0]['id']}", auth
            )

    status, body = run(main)
    assert status == 200
    assert body["incident"]["check"] == "disk.free"
    assert body["incident"]["timeline"]


@pytest.mark.parametrize("incident_id", ["42", "9" * 30], ids=["absent", "beyond-64-bit"])
def test_an_unknown_incident_is_a_json_404(incident_id, collector_config, collector_server) -> None:
    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await get_json(
                http, url, f"/api/v1/incidents/{incident_id}", admin_auth(collector_config)
            )

    status, body = run(main)
    assert status == 404
    assert body["field"] == "id"


def test_hosts_and_remediation_runs_are_listed(
    collector_config, collector_server, make_report, make_check_event, make_remediation_event
) -> None:
    report = make_report(
        make_check_event(remediation="clean-temp"), make_remediation_event("clean-temp")
    )

    async def main() -> tuple[Any, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            auth = admin_auth(collector_config)
            await post_report(http, url, report, agent_auth(collector_config))
            _, hosts = await get_json(http, url, "/api/v1/hosts", auth)
            _, runs = await get_json(
                http, url, "/api/v1/remediations/runs?remediation=clean-temp&limit=10", auth
            )
            return hosts, runs

    hosts, runs = run(main)
    assert [h["hostname"] for h in hosts["hosts"]] == [report.hostname]
    assert [(r["remediation"], r["outcome"]) for r in runs["runs"]] == [("clean-temp", "fixed")]


# --------------------------------------------------------------------------- errors, health


def test_healthz_reports_ok_and_the_version(collector_config, collector_server) -> None:
    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await get_json(http, url, "/healthz")

    assert run(main) == (200, {"status": "ok", "version": "0.1.0"})


def test_an_unknown_route_is_a_json_404(collector_config, collector_server) -> None:
    async def main() -> tuple[int, Any]:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await get_json(http, url, "/api/v2/nothing")

    assert run(main) == (404, {"error": "not found", "field": None})


def test_a_wrong_method_is_a_json_405_with_allow(collector_config, collector_server) -> None:
    async def main() -> tuple[int, Any, str]:
        async with (
            collector_server(collector_config) as url,
            aiohttp.ClientSession() as http,
            http.get(f"{url}/api/v1/reports") as r,
        ):
            return r.status, await r.json(), r.headers.get("Allow", "")

    status, body, allow = run(main)
    assert (status, body) == (405, {"error": "method not allowed", "field": None})
    assert "POST" in allow


def test_an_unexpected_exception_is_a_logged_json_500(collector_config, caplog) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("store exploded")

    async def main() -> tuple[int, Any]:
        app = create_app(collector_config)
        app.router.add_get("/boom", boom)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            async with aiohttp.ClientSession() as http:
                return await get_json(http, url, "/boom")
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.ERROR, logger="vigil.collector.app"):
        status, body = run(main)
    assert (status, body) == (500, {"error": "internal server error", "field": None})
    assert "store exploded" in caplog.text
