"""Sequence dedup end to end: real collectors, real agents, the (epoch, seq) mark.

* A VM snapshot restored under a real agent: its state folder copied while it is stopped,
  the agent runs on and delivers more, the copy is put back and the agent restarted. The
  restored agent numbers new events with seqs the collector already applied: the
  collector answers ``epoch_reset``, the agent starts a new epoch and resends; nothing is
  lost, nothing applied twice.
* An agent that switches collector mid-stream (two collector processes on one PostgreSQL
  database behind a proxy that moves to the other one, and the first killed).
* An older agent (no epoch) through HTTP, and the 409 answer itself.

Events are compared one by one as in the chaos test: every event an agent wrote (an audit
trigger in its outbox) against the event ids the collector recorded
(``storage.record_event_ids``, an audit trail the mark never consults).
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_chaos import (
    AgentProcess,
    CollectorProcess,
    applied_twice,
    query,
    stored_event_ids,
)
from tests.support.chaos_proxy import ChaosProxy
from tests.support.peers import free_port
from tests.support.postgres import TestSchema, require_postgres
from tests.support.procs import stop, wait_for
from vigil import wire

pytestmark = pytest.mark.timeout(180)

TOKEN = "chaos-agent-token-0123456789abcdef0123456789abcdef"  # test_chaos's agents use it


@pytest.fixture(params=["sqlite", "postgresql"])
def pg_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for SQLite, else the URL of a fresh PostgreSQL schema (dropped after)."""
    if request.param == "sqlite":
        yield None
        return
    require_postgres()
    schema = TestSchema()
    try:
        yield schema.url
    finally:
        schema.drop()


def run_for(agent: AgentProcess, seconds: float) -> None:
    """Let the agent work, flipping its check so state changes are in the stream."""
    end = time.monotonic() + seconds
    on = False
    while time.monotonic() < end:
        on = not on
        agent.flip(on)
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))


def epoch_of(outbox: Path) -> str:
    with contextlib.closing(sqlite3.connect(outbox)) as db:
        return db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()[0]


def pending(outbox: Path) -> int:
    with contextlib.closing(sqlite3.connect(outbox)) as db:
        return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def counter(store: Path | str, name: str) -> int:
    rows = query(store, f"SELECT value FROM counters WHERE name = '{name}'")
    return 0 if not rows else int(rows[0][0])


def host_epoch(store: Path | str, agent_id: str) -> str | None:
    ((epoch,),) = query(store, f"SELECT epoch FROM hosts WHERE agent_id = '{agent_id}'")
    return None if epoch is None else bytes(epoch).hex()


def test_a_restored_snapshot_starts_a_new_epoch_and_loses_and_duplicates_nothing(
    tmp_path: Path, pg_url: str | None
) -> None:
    collector = CollectorProcess(tmp_path, free_port(), pg_url)
    collector.start()
    url = f"http://127.0.0.1:{collector.port}"
    agent = AgentProcess(tmp_path / "agent", url)
    state, snapshot = agent.folder / "state", tmp_path / "snapshot"
    try:
        agent.start()
        run_for(agent, 3.0)
        assert agent.proc is not None and stop(agent.proc) == 0
        # The snapshot: taken while the agent is stopped, with everything delivered (a
        # machine whose pending events were not delivered yet is covered in
        # docs/delivery.md: those may be applied twice).
        assert pending(agent.outbox) == 0
        shutil.copytree(state, snapshot)
        first_epoch = epoch_of(agent.outbox)

        agent.start()  # the machine runs on after the snapshot and delivers more
        run_for(agent, 3.0)
        assert stop(agent.proc) == 0
        assert pending(agent.outbox) == 0
        written_before = {(agent.agent_id(), e) for e in agent.written()}
        mark_before = counter(collector.store, "events")

        shutil.rmtree(state)  # the snapshot is restored
        shutil.copytree(snapshot, state)
        agent.start()
        run_for(agent, 3.0)
        expected = written_before | {(agent.agent_id(), e) for e in agent.written()}
        wait_for(
            "the collector to hold every event of both timelines",
            lambda: expected <= stored_event_ids(collector.store),
            timeout_s=20.0,
            retry_on=(),
        )
        assert stop(agent.proc) == 0
        log = (agent.folder / f"agent.{agent.starts}.log").read_text()
        assert collector.stop() == 0

        written = written_before | {(agent.agent_id(), e) for e in agent.written()}
        stored = stored_event_ids(collector.store)
        new_epoch = epoch_of(agent.outbox)
        print(
            f"\nsnapshot: {len(written)} events written over both timelines,"
            f" {len(stored)} stored; events before the restore {mark_before};"
            f" epoch resets {counter(collector.store, 'reports_epoch_reset')}"
        )
        assert new_epoch != first_epoch
        assert host_epoch(collector.store, agent.agent_id()) == new_epoch
        assert counter(collector.store, "reports_epoch_reset") >= 1
        assert "new epoch" in log
        assert written - stored == set()  # nothing lost
        assert stored - written == set()
        assert applied_twice(collector.store) == 0
        assert agent.dropped() == 0
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            stop(agent.proc)
        if collector.proc is not None and collector.proc.poll() is None:
            stop(collector.proc)


def test_an_agent_switching_collector_midstream_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """Two collector processes on one PostgreSQL database; the agent's route moves from
    the first to the second (its connections cut), then the first is killed."""
    require_postgres()
    schema = TestSchema()
    (tmp_path / "c1").mkdir()
    (tmp_path / "c2").mkdir()
    first = CollectorProcess(tmp_path / "c1", free_port(), schema.url)
    second = CollectorProcess(tmp_path / "c2", free_port(), schema.url)
    proxy = ChaosProxy(first.port)
    agent: AgentProcess | None = None
    try:
        first.start()
        second.start()
        agent = AgentProcess(tmp_path / "agent", f"http://127.0.0.1:{proxy.start()}")
        agent.start()
        run_for(agent, 2.5)
        proxy.upstream_port = second.port  # the load balancer moves the agent...
        proxy.set_mode("reset")  # ...cutting its connection mid-stream
        run_for(agent, 0.5)
        proxy.set_mode("pass")
        run_for(agent, 1.5)
        first.kill()  # the first collector dies; the agent never talks to it again
        at_kill = len(agent.written())
        run_for(agent, 2.0)
        expected = {(agent.agent_id(), e) for e in agent.written()}
        wait_for(
            "the database to hold every event",
            lambda: expected <= stored_event_ids(schema.url),
            timeout_s=20.0,
            retry_on=(),
        )
        assert agent.proc is not None and stop(agent.proc) == 0
        assert second.stop() == 0
        written = {(agent.agent_id(), e) for e in agent.written()}
        stored = stored_event_ids(schema.url)
        assert len(written) > at_kill > 10  # events before and after the first one died
        assert written - stored == set()
        assert stored - written == set()
        assert applied_twice(schema.url) == 0
        assert counter(schema.url, "reports_epoch_reset") == 0  # same epoch throughout
    finally:
        if agent is not None and agent.proc is not None and agent.proc.poll() is None:
            stop(agent.proc)
        for c in (first, second):
            if c.proc is not None and c.proc.poll() is None:
                stop(c.proc)
        proxy.close()
        schema.drop()


def _post(port: int, report: wire.Report) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            "/api/v1/reports",
            body=gzip.compress(wire.encode_report(report)),
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
            },
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _report(batch: str, *seqs: int, epoch: str | None = None) -> wire.Report:
    events = tuple(
        # An older agent's ids repeat across batches; a sequenced one's are its own.
        wire.CheckEvent(
            f"e{n}" if epoch is None else f"{batch}-{n}",
            n,
            time.time(),
            f"c{n}",
            "ok",
            None,
            1.0,
            "",
        )
        for n in seqs
    )
    return wire.Report(
        schema_version=1,
        agent_id="old-agent",
        hostname="old-agent",
        labels={},
        batch_id=batch,
        sent_at=time.time(),
        agent_version="0.0.9",
        events=events,
        epoch=epoch,
        seq_first=seqs[0] if epoch else None,
        seq_last=seqs[-1] if epoch else None,
    )


def test_an_older_agent_and_a_rolled_back_one_through_http(tmp_path: Path) -> None:
    collector = CollectorProcess(tmp_path, free_port())
    collector.start()
    try:
        port = collector.port
        # An older agent: no epoch, deduplicated by its ids as before.
        assert _post(port, _report("b1", 1, 2))[1]["duplicate"] is False
        assert _post(port, _report("b1", 1, 2))[1]["duplicate"] is True
        assert _post(port, _report("b2", 2, 3))[1]["events"] == 1  # e 2 was seen in b1
        # The same agent upgraded: an epoch, then a seq at or below its mark.
        epoch = "c" * 32
        assert _post(port, _report("b3", 4, 5, epoch=epoch))[1]["events"] == 2
        status, body = _post(port, _report("b4", 5, 6, epoch=epoch))
        assert status == 409
        assert (body["epoch_reset"], body["mark"], body["field"]) == (True, 5, "seq_first")
        assert _post(port, _report("b4", 5, 6, epoch="d" * 32))[1]["events"] == 2
        assert collector.stop() == 0
        assert counter(collector.store, "events") == 2 + 1 + 2 + 2
    finally:
        if collector.proc is not None and collector.proc.poll() is None:
            stop(collector.proc)
