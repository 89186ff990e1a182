"""Operators, roles and the audit log against a real app on 127.0.0.1 with a real
SQLite file: who may do what, the actor of every write, and the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vigil import wire
from vigil.collector.cli import main as collector_main
from vigil.collector.config import load_collector_config
from vigil.collector.identity.audit import AuditEntry, append_audit
from vigil.collector.identity.operators import OperatorError, add_operator
from vigil.collector.identity.roles import (
    ADMIN,
    RESPONDER,
    VIEWER,
    Directory,
    Principal,
    allows,
    hash_token,
    new_token,
)
from vigil.collector.storage.factory import create_storage
from vigil.collector.storage.sqlite.schema import SCHEMA_VERSION
from vigil.collector.storage.url import sqlite_url
from vigil.configio import ConfigError

# --------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("role", "needed", "allowed"),
    [
        (VIEWER, VIEWER, True),
        (VIEWER, RESPONDER, False),
        (VIEWER, ADMIN, False),
        (RESPONDER, VIEWER, True),
        (RESPONDER, RESPONDER, True),
        (RESPONDER, ADMIN, False),
        (ADMIN, ADMIN, True),
        ("root", VIEWER, False),
    ],
    ids=lambda v: str(v),
)
def test_each_role_allows_what_the_roles_below_it_allow(role, needed, allowed) -> None:
    assert allows(role, needed) is allowed


def test_the_directory_finds_a_token_by_its_hash_and_nothing_else() -> None:
    token = new_token()
    directory = Directory([(hash_token(token), Principal("alice", RESPONDER))])

    assert directory.find(token) == Principal("alice", RESPONDER)
    assert directory.find(token[:-1]) is None
    assert directory.find(hash_token(token)) is None  # the stored hash is not a token
    assert len(token) >= 32 and token.startswith("vigil_op_")


# --------------------------------------------------------------------------- storage


def test_the_audit_log_refuses_updates_and_deletes(tmp_path: Path) -> None:
    storage = create_storage(sqlite_url(tmp_path / "c.db"))
    with storage.session() as uow, uow.transaction():
        append_audit(uow, AuditEntry("alice", "silence.create", "silence:1", "127.0.0.1", 5.0))
    storage.close()

    with sqlite3.connect(tmp_path / "c.db") as db:
        for statement in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)
        assert db.execute("SELECT actor FROM audit").fetchall() == [("alice",)]


def test_the_token_is_never_stored_only_its_hash(tmp_path: Path) -> None:
    storage = create_storage(sqlite_url(tmp_path / "c.db"))
    token = add_operator(storage, "alice", VIEWER, actor="cli:root", peer="local", now=1.0)
    storage.close()

    raw = (tmp_path / "c.db").read_bytes()
    assert token.encode() not in raw
    with sqlite3.connect(tmp_path / "c.db") as db:
        assert db.execute("SELECT token_hash FROM operators").fetchone() == (hash_token(token),)


def test_a_taken_name_or_an_unknown_role_is_refused_naming_the_field(tmp_path: Path) -> None:
    storage = create_storage(sqlite_url(tmp_path / "c.db"))
    add_operator(storage, "alice", VIEWER, actor="x", peer="local", now=1.0)
    with pytest.raises(OperatorError) as taken:
        add_operator(storage, "alice", ADMIN, actor="x", peer="local", now=1.0)
    with pytest.raises(OperatorError) as role:
        add_operator(storage, "bob", "root", actor="x", peer="local", now=1.0)
    with pytest.raises(OperatorError) as name:
        add_operator(storage, "Bob Smith", VIEWER, actor="x", peer="local", now=1.0)
    storage.close()
    assert (taken.value.status, taken.value.field) == (409, "name")
    assert (role.value.status, role.value.field) == (400, "role")
    assert (name.value.status, name.value.field) == (400, "name")


def test_reopening_the_database_keeps_operators_and_audit(tmp_path: Path) -> None:
    """The identity migration is idempotent: a second open changes nothing."""
    url = sqlite_url(tmp_path / "c.db")
    storage = create_storage(url)
    token = add_operator(storage, "alice", ADMIN, actor="x", peer="local", now=1.0)
    storage.close()
    storage = create_storage(url)
    with storage.session() as uow:
        assert uow.operators.credentials() == [("alice", ADMIN, hash_token(token))]
        assert uow.audit.counts() == {"operator.add": 1}
    storage.close()


# --------------------------------------------------------------------------- config


def test_open_read_is_refused_unless_the_collector_listens_on_loopback(tmp_path: Path) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"listen: {{host: 0.0.0.0}}\nauth: {{agent_tokens: [{'a' * 40}], open_read: true}}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_collector_config(config)
    assert "auth.open_read" in str(error.value) and "loopback" in str(error.value)

    config.write_text(
        f"listen: {{host: '::1'}}\nauth: {{agent_tokens: [{'a' * 40}], open_read: true}}\n"
    )
    assert load_collector_config(config).auth.open_read


# --------------------------------------------------------------------------- API


class Client:
    """Requests to a running collector as one token or another."""

    def __init__(self, http: aiohttp.ClientSession, url: str, admin: str, agent: str) -> None:
        self.http, self.url, self.admin, self.agent = http, url, admin, agent

    async def call(
        self, method: str, path: str, token: str | None, json: Any = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.request(method, self.url + path, json=json, headers=headers) as r:
            if r.status == 204 or r.content_type != "application/json":
                return r.status, await r.text()
            return r.status, await r.json()

    async def add(self, name: str, role: str) -> str:
        status, reply = await self.call(
            "POST", "/api/v1/operators", self.admin, {"name": name, "role": role}
        )
        assert status == 201, reply
        return reply["token"]

    async def open_incident(self, make_report, make_check_event) -> int:
        report = make_report(make_check_event("mail.imap", "critical"), agent_id="agent-1")
        headers = {
            "Authorization": f"Bearer {self.agent}",
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
        }
        body = gzip.compress(wire.encode_report(report))
        async with self.http.post(f"{self.url}/api/v1/reports", data=body, headers=headers) as r:
            assert r.status == 200
        _, listed = await self.call("GET", "/api/v1/incidents", self.admin)
        return listed["incidents"][0]["id"]


@pytest.fixture
def api(collector_config, collector_server, fake_clock):
    """``api(body, **auth_changes)`` runs ``body(client)`` against a fresh collector."""

    def run(body: Callable[[Client], Awaitable[Any]], **auth: Any) -> Any:
        config = dataclasses.replace(
            collector_config, auth=dataclasses.replace(collector_config.auth, **auth)
        )

        async def main() -> Any:
            async with (
                collector_server(config, clock=fake_clock) as url,
                aiohttp.ClientSession() as http,
            ):
                return await body(
                    Client(http, url, config.auth.admin_tokens[0], config.auth.agent_tokens[0])
                )

        return asyncio.run(main())

    return run


def test_a_viewer_reads_but_cannot_acknowledge(api, make_report, make_check_event) -> None:
    async def body(c: Client) -> Any:
        viewer = await c.add("vera", VIEWER)
        iid = await c.open_incident(make_report, make_check_event)
        read = await c.call("GET", f"/api/v1/incidents/{iid}", viewer)
        ack = await c.call("POST", f"/api/v1/incidents/{iid}/acknowledge", viewer, {})
        after = await c.call("GET", f"/api/v1/incidents/{iid}", viewer)
        return read, ack, after

    read, ack, after = api(body)
    assert read[0] == 200
    assert ack == (
        403,
        {"error": "operator 'vera' is a viewer; this needs responder", "field": None},
    )
    assert after[1]["incident"]["state"] == "open"


def test_a_responders_acknowledgement_records_the_operator_as_actor_and_in_the_audit_log(
    api, make_report, make_check_event
) -> None:
    async def body(c: Client) -> Any:
        responder = await c.add("rita", RESPONDER)
        iid = await c.open_incident(make_report, make_check_event)
        ack = await c.call("POST", f"/api/v1/incidents/{iid}/acknowledge", responder, {})
        resolve = await c.call(
            "POST", f"/api/v1/incidents/{iid}/resolve", responder, {"note": "done"}
        )
        audit = await c.call("GET", "/api/v1/audit", c.admin)
        return iid, ack, resolve, audit

    iid, ack, resolve, audit = api(body)
    assert ack[0] == 200 and ack[1]["incident"]["acknowledged_by"] == "rita"
    assert resolve[0] == 200
    records = audit[1]["records"]
    assert [(r["actor"], r["action"], r["target"], r["peer"]) for r in records] == [
        ("rita", "incident.resolve", f"incident:{iid}", "127.0.0.1"),
        ("rita", "incident.acknowledge", f"incident:{iid}", "127.0.0.1"),
        ("config:admin_tokens.0", "operator.add", "operator:rita", "127.0.0.1"),
    ]


def test_a_by_field_is_refused_naming_it(api, make_report, make_check_event) -> None:
    async def body(c: Client) -> Any:
        iid = await c.open_incident(make_report, make_check_event)
        ack = await c.call("POST", f"/api/v1/incidents/{iid}/acknowledge", c.admin, {"by": "bob"})
        audit = await c.call("GET", "/api/v1/audit", c.admin)
        return ack, audit

    ack, audit = api(body)
    assert ack[0] == 400 and ack[1]["field"] == "by"
    assert audit[1]["records"] == []


def test_silence_writes_are_audited_with_their_actor(api) -> None:
    async def body(c: Client) -> Any:
        responder = await c.add("rita", RESPONDER)
        created = await c.call(
            "POST",
            "/api/v1/silences",
            responder,
            {"matcher": "host", "value": "ws-1", "duration": "1h"},
        )
        sid = created[1]["silence"]["id"]
        await c.call("PATCH", f"/api/v1/silences/{sid}", responder, {"comment": "longer"})
        await c.call("DELETE", f"/api/v1/silences/{sid}", responder)
        audit = await c.call("GET", "/api/v1/audit?action=silence.create", c.admin)
        everything = await c.call("GET", "/api/v1/audit?limit=3", c.admin)
        return created, audit, everything

    created, audit, everything = api(body)
    assert created[1]["silence"]["created_by"] == "rita"
    sid = created[1]["silence"]["id"]
    assert [(r["actor"], r["target"]) for r in audit[1]["records"]] == [("rita", f"silence:{sid}")]
    assert [r["action"] for r in everything[1]["records"]] == [
        "silence.delete",
        "silence.update",
        "silence.create",
    ]


def test_a_responder_cannot_manage_operators_or_read_the_audit_log(api) -> None:
    async def body(c: Client) -> Any:
        responder = await c.add("rita", RESPONDER)
        add = await c.call("POST", "/api/v1/operators", responder, {"name": "x", "role": ADMIN})
        audit = await c.call("GET", "/api/v1/audit", responder)
        listed = await c.call("GET", "/api/v1/operators", c.admin)
        return add, audit, listed

    add, audit, listed = api(body)
    assert add[0] == 403 and audit[0] == 403
    assert [o["name"] for o in listed[1]["operators"]] == ["rita"]


def test_rotation_replaces_the_token_and_removal_revokes_it(api) -> None:
    async def body(c: Client) -> list[int]:
        old = await c.add("vera", VIEWER)
        statuses = [(await c.call("GET", "/api/v1/hosts", old))[0]]
        rotated = await c.call("POST", "/api/v1/operators/vera/rotate", c.admin)
        new = rotated[1]["token"]
        statuses.append((await c.call("GET", "/api/v1/hosts", old))[0])
        statuses.append((await c.call("GET", "/api/v1/hosts", new))[0])
        statuses.append((await c.call("DELETE", "/api/v1/operators/vera", c.admin))[0])
        statuses.append((await c.call("GET", "/api/v1/hosts", new))[0])
        statuses.append((await c.call("DELETE", "/api/v1/operators/vera", c.admin))[0])
        return statuses

    assert api(body) == [200, 401, 200, 204, 401, 404]


@pytest.mark.parametrize(
    ("json", "status", "field"),
    [
        ({"name": "Bad Name", "role": VIEWER}, 400, "name"),
        ({"name": "ok", "role": "root"}, 400, "role"),
        ({"name": "ok"}, 400, "role"),
        ({"name": "ok", "role": VIEWER, "token": "mine"}, 400, "token"),
    ],
    ids=["bad name", "unknown role", "no role", "own token refused"],
)
def test_bad_operator_bodies_name_the_field(api, json, status, field) -> None:
    async def body(c: Client) -> Any:
        return await c.call("POST", "/api/v1/operators", c.admin, json)

    got_status, reply = api(body)
    assert (got_status, reply["field"]) == (status, field)


def test_metrics_need_a_viewer_and_count_audit_records_by_action(api) -> None:
    async def body(c: Client) -> Any:
        anonymous = await c.call("GET", "/metrics", None)
        viewer = await c.add("vera", VIEWER)
        await c.add("rita", RESPONDER)
        scraped = await c.call("GET", "/metrics", viewer)
        return anonymous, scraped

    anonymous, scraped = api(body)
    assert anonymous[0] == 401
    samples = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families(scraped[1])
        for s in family.samples
    }
    assert samples[("vigil_audit_records_total", (("action", "operator.add"),))] == 2


def test_open_read_opens_reads_and_metrics_but_never_writes(api) -> None:
    async def body(c: Client) -> list[int]:
        return [
            (await c.call("GET", "/api/v1/hosts", None))[0],
            (await c.call("GET", "/metrics", None))[0],
            (await c.call("POST", "/api/v1/silences", None, {}))[0],
            (await c.call("GET", "/api/v1/audit", None))[0],
        ]

    assert api(body, open_read=True) == [200, 200, 401, 401]


def test_a_schema_2_database_gains_operators_and_audit_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    """Upgrading today's collector: its database opens, nothing is lost, and the new
    tables work at once."""
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "schema2.sql"
    db_path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        db.executescript(fixture.read_text())
        before = {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("hosts", "incidents", "problems", "silences", "remediation_runs")
        }
    storage = create_storage(sqlite_url(db_path))
    token = add_operator(storage, "alice", ADMIN, actor="cli:root", peer="local", now=1.0)
    with storage.session() as uow:
        assert uow.operators.credentials() == [("alice", ADMIN, hash_token(token))]
        assert uow.audit.counts() == {"operator.add": 1}
    storage.close()
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        after = {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in before
        }
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert after == before and all(before.values())


def test_a_host_override_off_loopback_with_open_read_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "collector.yaml"
    config.write_text(f"auth: {{agent_tokens: [{'a' * 40}], open_read: true}}\n")

    assert collector_main(["--config", str(config), "--host", "0.0.0.0"]) == 2
    assert "auth.open_read needs a loopback address" in capsys.readouterr().err
