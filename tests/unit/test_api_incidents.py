"""The service-desk API against a real app on 127.0.0.1 with a real SQLite file.

Reads need a viewer token unless ``open_read``; writes always need a responder's. Every error is
JSON naming the field. Reports go in through the real ingest endpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from vigil import wire
from vigil.collector.desk.catalog import Catalog, HostGroup, Service

CATALOG = Catalog(
    services=(Service("email", "mail", "msg-team", "high", ("mail.*",)),),
    groups=(
        HostGroup("servers", {"role": "server"}, "high", silence_expected=False),
        HostGroup("laptops", {"role": "laptop"}, "medium", silence_expected=True),
    ),
    default_impact="low",
)


class Api:
    """A tiny client: ``await api.call("GET", path, json=..., token=...)``."""

    def __init__(self, http: aiohttp.ClientSession, url: str, config: Any) -> None:
        self.http, self.url, self.config = http, url, config

    async def ingest(self, report: wire.Report) -> None:
        headers = {
            "Authorization": f"Bearer {self.config.auth.agent_tokens[0]}",
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
        }
        body = gzip.compress(wire.encode_report(report))
        async with self.http.post(f"{self.url}/api/v1/reports", data=body, headers=headers) as r:
            assert r.status == 200, await r.text()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        admin: bool = True,
        raw: bool = False,
    ) -> tuple[int, Any]:
        """One request; ``data`` is a raw JSON body (for bodies ``json=`` cannot build)."""
        headers = {"Authorization": f"Bearer {self.config.auth.admin_tokens[0]}"} if admin else {}
        if data is not None:
            headers["Content-Type"] = "application/json"
        async with self.http.request(
            method, self.url + path, json=json, data=data, headers=headers
        ) as r:
            if raw or r.status == 204:
                return r.status, await r.text()
            return r.status, await r.json()


def scenario(
    collector_config, collector_server, clock, body: Callable[[Api], Awaitable[Any]], **changes
) -> Any:
    config = dataclasses.replace(collector_config, catalog=CATALOG, **changes)

    async def main() -> Any:
        async with (
            collector_server(config, clock=clock) as url,
            aiohttp.ClientSession() as http,
        ):
            return await body(Api(http, url, config))

    return asyncio.run(main())


@pytest.fixture
def desk(collector_config, collector_server, fake_clock):
    """``desk(body, **config_changes)`` runs ``body(api)`` against a fresh collector."""
    return lambda body, **changes: scenario(
        collector_config, collector_server, fake_clock, body, **changes
    )


def mail_down(make_report, make_check_event, host: str = "agent-1", role: str = "server"):
    report = make_report(make_check_event("mail.imap", "critical"), agent_id=host)
    return dataclasses.replace(report, labels={"role": role})


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("POST", "/api/v1/incidents/1/acknowledge", {}),
        ("POST", "/api/v1/incidents/1/resolve", {}),
        ("POST", "/api/v1/problems/1/resolve", {}),
        ("POST", "/api/v1/silences", {}),
        ("PATCH", "/api/v1/silences/1", {}),
        ("DELETE", "/api/v1/silences/1", None),
    ],
    ids=["ack", "resolve", "resolve problem", "create silence", "patch silence", "delete"],
)
def test_writes_need_an_operator_token_even_with_open_read(
    desk, collector_config, method, path, json
) -> None:
    async def body(api: Api) -> Any:
        return await api.call(method, path, json=json, admin=False)

    status, reply = desk(body, auth=dataclasses.replace(collector_config.auth, open_read=True))
    assert status == 401
    assert reply["error"] == "missing or unknown operator token"


# --------------------------------------------------------------------------- incidents


def test_acknowledge_then_resolve_with_notes_and_report(
    desk, make_report, make_check_event
) -> None:
    async def body(api: Api) -> Any:
        await api.ingest(mail_down(make_report, make_check_event))
        _, listed = await api.call("GET", "/api/v1/incidents?state=open")
        iid = listed["incidents"][0]["id"]
        ack = await api.call("POST", f"/api/v1/incidents/{iid}/acknowledge", json={})
        notes = {
            "note": "fixed",
            "root_cause": "expired certificate",
            "corrective_action": "renewed",
            "preventive_action": "alert 30 days ahead",
        }
        resolved = await api.call("POST", f"/api/v1/incidents/{iid}/resolve", json=notes)
        report = await api.call("GET", f"/api/v1/incidents/{iid}/report", raw=True)
        return ack, resolved, report

    ack, resolved, report = desk(body)
    assert ack[0] == 200 and ack[1]["incident"]["state"] == "acknowledged"
    assert resolved[0] == 200 and resolved[1]["incident"]["state"] == "resolved"
    assert resolved[1]["incident"]["root_cause"] == "expired certificate"
    status, markdown = report
    assert status == 200
    assert markdown.startswith("# Incident 1: mail.imap on ws-0001")
    assert "**Root cause:** expired certificate" in markdown
    assert "| priority | P1 (impact high, urgency high) |" in markdown
    assert "acknowledged by config:admin_tokens.0" in markdown


@pytest.mark.parametrize(
    ("path", "json", "status", "field"),
    [
        ("/api/v1/incidents/1/acknowledge", {"by": "alice"}, 400, "by"),
        ("/api/v1/incidents/1/acknowledge", {"by": 3}, 400, "by"),
        ("/api/v1/incidents/1/acknowledge", {"who": "b"}, 400, "who"),
        ("/api/v1/incidents/1/acknowledge", [1], 400, None),
        ("/api/v1/incidents/99/acknowledge", {}, 404, "id"),
        ("/api/v1/incidents/1/resolve", {"root_cause": "x" * 5000}, 400, "root_cause"),
        ("/api/v1/problems/7/acknowledge", {}, 404, "id"),
    ],
    ids=[
        "by refused: the actor is the token's operator",
        "by not a string",
        "unknown field",
        "not an object",
        "unknown incident",
        "note too long",
        "unknown problem",
    ],
)
def test_bad_writes_name_the_field(
    desk, make_report, make_check_event, path, json, status, field
) -> None:
    async def body(api: Api) -> Any:
        await api.ingest(mail_down(make_report, make_check_event))
        return await api.call("POST", path, json=json)

    got, reply = desk(body)
    assert (got, reply["field"]) == (status, field)


def test_an_oversized_write_body_is_413(desk) -> None:
    async def body(api: Api) -> Any:
        return await api.call("POST", "/api/v1/silences", json={"comment": "x" * 70_000})

    status, reply = desk(body)
    assert status == 413
    assert "request body over" in reply["error"]


def test_acknowledging_a_resolved_incident_is_a_conflict(
    desk, make_report, make_check_event
) -> None:
    async def body(api: Api) -> Any:
        await api.ingest(mail_down(make_report, make_check_event))
        await api.call("POST", "/api/v1/incidents/1/resolve", json={})
        return await api.call("POST", "/api/v1/incidents/1/acknowledge", json={})

    status, reply = desk(body)
    assert (status, reply["field"]) == (409, "state")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("service=email", 1),
        ("service=printing", 0),
        ("priority=P1", 1),
        ("priority=P4", 0),
        ("state=acknowledged", 0),
        ("state=open&priority=P1&service=email", 1),
    ],
    ids=["service", "other service", "priority", "other priority", "acknowledged", "combined"],
)
def test_incidents_filter(desk, make_report, make_check_event, query, expected) -> None:
    async def body(api: Api) -> Any:
        await api.ingest(mail_down(make_report, make_check_event))
        return await api.call("GET", f"/api/v1/incidents?{query}")

    status, reply = desk(body)
    assert status == 200
    assert len(reply["incidents"]) == expected


@pytest.mark.parametrize(
    ("query", "field"),
    [("priority=P9", "priority"), ("state=closed", "state"), ("sort=id", "sort")],
    ids=["bad priority", "bad state", "unknown parameter"],
)
def test_bad_incident_queries_name_the_field(desk, query, field) -> None:
    async def body(api: Api) -> Any:
        return await api.call("GET", f"/api/v1/incidents?{query}")

    status, reply = desk(body)
    assert (status, reply["field"]) == (400, field)


# --------------------------------------------------------------------------- problems


def test_a_fleet_outage_is_listed_as_one_problem_with_a_report(
    desk, make_report, make_check_event
) -> None:
    async def body(api: Api) -> Any:
        for n in range(3):
            await api.ingest(mail_down(make_report, make_check_event, host=f"agent-{n}"))
        _, problems = await api.call("GET", "/api/v1/problems?kind=fleet&state=open")
        pid = problems["problems"][0]["id"]
        _, one = await api.call("GET", f"/api/v1/problems/{pid}")
        status, md = await api.call("GET", f"/api/v1/problems/{pid}/report", raw=True)
        return problems, one, status, md

    problems, one, status, md = desk(body)
    assert len(problems["problems"]) == 1
    assert one["problem"]["incidents"] == [1, 2, 3]
    assert one["problem"]["priority"] == "P1"
    assert status == 200 and md.startswith("# Problem 1 (fleet): mail.imap")


# --------------------------------------------------------------------------- silences


def test_silences_crud(desk, fake_clock) -> None:
    now = fake_clock.now

    async def body(api: Api) -> Any:
        created = await api.call(
            "POST",
            "/api/v1/silences",
            json={"matcher": "group", "value": "laptops", "duration": "2h",
                  "comment": "patch night"},
        )  # fmt: skip
        sid = created[1]["silence"]["id"]
        active = await api.call("GET", "/api/v1/silences?active=true")
        patched = await api.call("PATCH", f"/api/v1/silences/{sid}", json={"ends_at": now + 60})
        deleted = await api.call("DELETE", f"/api/v1/silences/{sid}")
        gone = await api.call("GET", f"/api/v1/silences/{sid}")
        return created, active, patched, deleted, gone

    created, active, patched, deleted, gone = desk(body)
    assert created[0] == 201
    assert created[1]["silence"]["ends_at"] == now + 7200
    assert [s["value"] for s in active[1]["silences"]] == ["laptops"]
    assert patched[1]["silence"]["ends_at"] == now + 60
    assert deleted[0] == 204
    assert gone[0] == 404


@pytest.mark.parametrize(
    ("json", "field"),
    [
        ({"matcher": "room", "value": "x", "duration": "1h"}, "matcher"),
        ({"matcher": "host", "value": " ", "duration": "1h"}, "value"),
        ({"matcher": "host", "value": "x"}, "ends_at"),
        ({"matcher": "host", "value": "x", "ends_at": 5}, "ends_at"),
        ({"matcher": "host", "value": "x", "duration": "soon"}, "duration"),
        ({"matcher": "host", "value": "x", "duration": "1h", "created_by": "o"}, "created_by"),
    ],
    ids=[
        "bad matcher",
        "empty value",
        "no end",
        "end in the past",
        "bad duration",
        "author refused",
    ],
)
def test_bad_silences_name_the_field(desk, json, field) -> None:
    async def body(api: Api) -> Any:
        return await api.call("POST", "/api/v1/silences", json=json)

    status, reply = desk(body)
    assert (status, reply["field"]) == (400, field)


HOSTILE_SILENCE = '{"matcher": "host", "value": "x", '


@pytest.mark.parametrize(
    ("method", "path", "data", "field"),
    [
        ("POST", "/api/v1/silences", HOSTILE_SILENCE + '"duration": "' + "9" * 400 + 's"}',
         "duration"),
        ("POST", "/api/v1/silences", HOSTILE_SILENCE + '"duration": ' + "9" * 400 + "}",
         "duration"),
        ("POST", "/api/v1/silences", HOSTILE_SILENCE + '"duration": "' + "9" * 12 + 'd"}',
         "duration"),
        ("POST", "/api/v1/silences", HOSTILE_SILENCE + '"ends_at": ' + "9" * 400 + "}",
         "ends_at"),
        ("POST", "/api/v1/silences", HOSTILE_SILENCE + '"ends_at": 1e300}', "ends_at"),
        ("POST", "/api/v1/silences", HOSTILE_SILENCE + '"starts_at": -1e300, "duration": "1h"}',
         "starts_at"),
        ("POST", "/api/v1/silences", HOSTILE_SILENCE + '"duration": "1h", "comment": "\\ud800"}',
         "comment"),
        ("POST", "/api/v1/silences", '{"matcher": "host", "value": "\\udfff", "duration": "1h",'
         ' "comment": ""}', "value"),
        ("POST", "/api/v1/silences", "[" * 30_000 + "]" * 30_000, None),
        ("POST", "/api/v1/silences", '{"comment": ' + "[" * 30_000 + "]" * 30_000 + "}", None),
        ("PATCH", "/api/v1/silences/1", '{"ends_at": ' + "9" * 400 + "}", "ends_at"),
        ("PATCH", "/api/v1/silences/1", '{"comment": "\\ud800"}', "comment"),
        ("PATCH", "/api/v1/silences/1", "[" * 30_000 + "]" * 30_000, None),
    ],
    ids=[
        "400-digit duration string",
        "400-digit duration number",
        "duration past year 9999",
        "400-digit ends_at",
        "ends_at past year 9999",
        "starts_at before 1970",
        "lone surrogate in comment",
        "lone surrogate in value",
        "30000-deep body",
        "30000-deep field",
        "patch 400-digit ends_at",
        "patch lone surrogate",
        "patch 30000-deep body",
    ],
)  # fmt: skip
def test_hostile_silence_bodies_are_400_naming_the_field(desk, method, path, data, field) -> None:
    """No body an admin client can send stores an unrenderable value or answers 500."""

    async def body(api: Api) -> Any:
        created = await api.call(
            "POST", "/api/v1/silences",
            json={"matcher": "host", "value": "a", "duration": "1h"},
        )  # fmt: skip
        assert created[0] == 201
        reply = await api.call(method, path, data=data.encode())
        listed = await api.call("GET", "/api/v1/silences")
        return reply, listed

    (status, reply), (list_status, listed) = desk(body)
    assert (status, reply["field"]) == (400, field), reply
    assert len(reply["error"]) < 300
    assert list_status == 200
    assert [s["value"] for s in listed["silences"]] == ["a"]


# --------------------------------------------------------------------------- hosts, stats


def test_hosts_show_liveness_health_and_groups(
    desk, fake_clock, make_report, make_check_event
) -> None:
    def heartbeat(host: str, role: str) -> wire.Report:
        hb = make_check_event(wire.HEARTBEAT_CHECK, "ok", ttl_s=60.0, value=None)
        return dataclasses.replace(make_report(hb, agent_id=host), labels={"role": role})

    async def body(api: Api) -> Any:
        await api.ingest(heartbeat("srv", "server"))
        await api.ingest(heartbeat("lap", "laptop"))
        fake_clock.advance(120)
        await api.ingest(mail_down(make_report, make_check_event, host="up", role="server"))
        return await api.call("GET", "/api/v1/hosts")

    status, reply = desk(body)
    hosts = {h["agent_id"]: h for h in reply["hosts"]}
    assert status == 200
    assert (hosts["srv"]["liveness"], hosts["lap"]["liveness"]) == ("silent", "asleep")
    assert (hosts["up"]["health"], hosts["up"]["open_incidents"]) == ("critical", 1)
    assert hosts["lap"]["groups"] == ["laptops"]


def test_remediation_stats(desk, make_report, make_check_event, make_remediation_event) -> None:
    async def body(api: Api) -> Any:
        await api.ingest(
            make_report(
                make_check_event("disk.free", "critical", remediation="clean-temp"),
                make_remediation_event("clean-temp", "disk.free", "fixed"),
            )
        )
        return await api.call("GET", "/api/v1/remediations/stats")

    status, reply = desk(body)
    assert status == 200
    (stats,) = reply["remediations"]
    assert (stats["runs"], stats["success_rate"], stats["prevented"]) == (1, 1.0, 1)


# --------------------------------------------------------------------------- report rendering


def test_the_report_lists_the_remediation_attempts(
    desk, make_report, make_check_event, make_remediation_event
) -> None:
    async def body(api: Api) -> Any:
        await api.ingest(
            make_report(
                make_check_event("disk.free", "critical", remediation="clean-temp"),
                make_remediation_event("clean-temp", "disk.free", "not_fixed"),
            )
        )
        _, one = await api.call("GET", "/api/v1/incidents/1")
        _, md = await api.call("GET", "/api/v1/incidents/1/report", raw=True)
        return one, md

    one, markdown = desk(body)
    assert [r["outcome"] for r in one["incident"]["remediation_runs"]] == ["not_fixed"]
    assert "| clean-temp | not_fixed | 0 | 1.5 s | 95 → 60 | removed 3 files |" in markdown
