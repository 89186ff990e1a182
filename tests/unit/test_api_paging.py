"""Keyset paging of the list endpoints (issue #17): ``cursor`` and ``next`` links, a
bounded ``offset``, and ``/api/v1/hosts`` a page at a time.

The pure parts (cursor codec, query parsing) are tested directly; following ``next``
runs against a real app on 127.0.0.1 with a real SQLite file, fed through the real
ingest endpoint.
"""

from __future__ import annotations

import base64
import urllib.parse
from typing import Any

import pytest

from tests.unit.test_api_incidents import Api, mail_down, scenario
from vigil.collector.api.http import MAX_ID, ApiError
from vigil.collector.api.paging import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_OFFSET,
    decode_cursor,
    encode_cursor,
    host_page,
    page,
)

HOSTS = ("agent-3", "agent-1", "agent-5", "agent-2", "agent-4")


@pytest.fixture
def desk(collector_config, collector_server, fake_clock):
    """``desk(body)`` runs ``body(api)`` against a fresh collector (as in
    test_api_incidents)."""
    return lambda body, **changes: scenario(
        collector_config, collector_server, fake_clock, body, **changes
    )


def api_error(func: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        func(*args)
    return caught.value


# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize("key", [1, MAX_ID, "agent-1", "ünï/cødé?&="], ids=repr)
def test_a_cursor_gives_back_its_key(key: int | str) -> None:
    cursor = encode_cursor(key)
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor
    assert decode_cursor(cursor, type(key)) == key


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("", int),
        ("!!!", int),
        (base64.urlsafe_b64encode(b"not json").decode(), int),
        (encode_cursor("agent-1"), int),  # a hosts cursor on an id-ordered list
        (encode_cursor(7), str),
        (encode_cursor(0), int),
        (encode_cursor(-5), int),
        (encode_cursor(MAX_ID + 1), int),
        (base64.urlsafe_b64encode(b"[true]").decode(), int),
        (base64.urlsafe_b64encode(b"[1, 2]").decode(), int),
        (base64.urlsafe_b64encode(b'{"id": 1}').decode(), int),
        (encode_cursor(""), str),
        ("A" * 2000, int),
    ],
    ids=repr,
)
def test_a_cursor_not_issued_here_is_400_naming_cursor(raw: str, kind: type) -> None:
    error = api_error(decode_cursor, raw, kind)
    assert (error.status, error.field) == (400, "cursor")


def test_page_defaults_to_the_first_page_of_default_size() -> None:
    assert page({}) == {"limit": DEFAULT_LIMIT, "offset": 0, "before": None}


def test_page_takes_a_cursor_or_an_offset_up_to_the_bound() -> None:
    assert page({"cursor": encode_cursor(42), "limit": "5"}) == {
        "limit": 5,
        "offset": 0,
        "before": 42,
    }
    assert page({"offset": str(MAX_OFFSET), "limit": str(MAX_LIMIT)}) == {
        "limit": MAX_LIMIT,
        "offset": MAX_OFFSET,
        "before": None,
    }


def test_an_offset_past_the_bound_is_400_pointing_to_the_cursor() -> None:
    error = api_error(page, {"offset": str(MAX_OFFSET + 1)})
    assert (error.status, error.field) == (400, "offset")
    assert "cursor" in error.message


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": str(MAX_LIMIT + 1)}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "1", "cursor": encode_cursor(5)}, "offset"),
    ],
    ids=["limit zero", "limit over the maximum", "negative offset", "offset and cursor"],
)
def test_a_bad_page_is_400_naming_the_parameter(query: dict[str, str], field: str) -> None:
    assert api_error(page, query).field == field


def test_a_host_page_has_a_default_limit_and_an_agent_id_cursor() -> None:
    assert host_page({}) == {"limit": DEFAULT_LIMIT, "after": None}
    assert host_page({"cursor": encode_cursor("agent-2")}) == {
        "limit": DEFAULT_LIMIT,
        "after": "agent-2",
    }


# --------------------------------------------------------------------------- over HTTP


async def follow(api: Api, path: str, key: str) -> tuple[list[list[Any]], list[str | None]]:
    """Every page from ``path`` on, following ``next`` (at most 20 pages): the rows of
    each page and each page's ``next``."""
    pages: list[list[Any]] = []
    links: list[str | None] = []
    url: str | None = path
    while url is not None and len(pages) < 20:
        status, reply = await api.call("GET", url)
        assert status == 200, reply
        pages.append(reply[key])
        links.append(reply["next"])
        url = reply["next"]
    return pages, links


def test_incidents_are_paged_by_cursor_newest_first_without_gaps_or_repeats(
    desk, make_report, make_check_event
) -> None:
    async def body(api: Api) -> Any:
        for host in HOSTS:
            await api.ingest(mail_down(make_report, make_check_event, host=host))
        _, everything = await api.call("GET", "/api/v1/incidents")
        return everything, await follow(api, "/api/v1/incidents?state=open&limit=2", "incidents")

    everything, (pages, links) = desk(body)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i["id"] for p in pages for i in p] == [i["id"] for i in everything["incidents"]]
    assert everything["next"] is None  # fewer than the default limit
    assert links[-1] is None
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(links[0]).query)
    assert (query["state"], query["limit"]) == (["open"], ["2"])  # filters carried on


def test_a_full_last_page_is_followed_by_an_empty_one(desk, make_report, make_check_event) -> None:
    async def body(api: Api) -> Any:
        for host in HOSTS[:4]:
            await api.ingest(mail_down(make_report, make_check_event, host=host))
        return await follow(api, "/api/v1/incidents?limit=2", "incidents")

    pages, links = desk(body)
    assert [len(p) for p in pages] == [2, 2, 0]
    assert links[-1] is None


def test_next_drops_the_offset_it_was_reached_with(desk, make_report, make_check_event) -> None:
    async def body(api: Api) -> Any:
        for host in HOSTS:
            await api.ingest(mail_down(make_report, make_check_event, host=host))
        _, first = await api.call("GET", "/api/v1/incidents?limit=2&offset=1")
        return first, await api.call("GET", first["next"])

    first, (status, second) = desk(body)
    assert status == 200
    assert "offset" not in first["next"]
    assert [i["id"] for i in first["incidents"] + second["incidents"]] == [4, 3, 2, 1]


def test_hosts_come_a_page_at_a_time_by_agent_id(desk, make_report, make_check_event) -> None:
    async def body(api: Api) -> Any:
        for host in HOSTS:
            await api.ingest(mail_down(make_report, make_check_event, host=host))
        return await follow(api, "/api/v1/hosts?limit=2", "hosts")

    pages, links = desk(body)
    assert [[h["agent_id"] for h in p] for p in pages] == [
        ["agent-1", "agent-2"],
        ["agent-3", "agent-4"],
        ["agent-5"],
    ]
    # The per-host figures are the page's own hosts', not a neighbour's.
    assert all(h["open_incidents"] == 1 and h["health"] == "critical" for p in pages for h in p)
    assert links[-1] is None


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/hosts?offset=100", "offset"),
        ("/api/v1/hosts?limit=1001", "limit"),
        ("/api/v1/hosts?cursor=" + encode_cursor(3), "cursor"),
        ("/api/v1/incidents?offset=10001", "offset"),
        ("/api/v1/incidents?cursor=" + encode_cursor("agent-1"), "cursor"),
        ("/api/v1/problems?cursor=bad", "cursor"),
        ("/api/v1/remediations/runs?offset=20000", "offset"),
        ("/api/v1/audit?cursor=x", "cursor"),
    ],
    ids=repr,
)
def test_bad_pages_are_400_naming_the_field(desk, path: str, field: str) -> None:
    async def body(api: Api) -> Any:
        return await api.call("GET", path)

    status, reply = desk(body)
    assert (status, reply["field"]) == (400, field)


def test_runs_and_audit_answer_with_next(
    desk, make_report, make_check_event, make_remediation_event
) -> None:
    async def body(api: Api) -> Any:
        for n, host in enumerate(HOSTS):
            event = make_remediation_event("clean-temp", "disk.free", "fixed")
            await api.ingest(make_report(event, agent_id=host, batch_id=f"b{n}"))
        runs = await follow(api, "/api/v1/remediations/runs?limit=3", "runs")
        _, audit = await api.call("GET", "/api/v1/audit")
        return runs, audit

    (pages, links), audit = desk(body)
    assert [len(p) for p in pages] == [3, 2]
    assert sorted(r["host"] for p in pages for r in p) == sorted(HOSTS)
    assert [r["id"] for p in pages for r in p] == [5, 4, 3, 2, 1]
    assert links == [links[0], None] and links[0].startswith("/api/v1/remediations/runs?")
    assert audit["next"] is None
