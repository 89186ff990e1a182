"""The steady-state pass of a group commit (``desk/apply.py`` ``apply_steady``), on every
backend: the repository calls it makes, and that a group applied through it ends exactly
as the per-report path leaves it (rows, results, aggregates), for every kind of report
that must not take it and for those that do."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.desk import CATALOG, RULES
from tests.unit.storage.backends import BackendFactory
from vigil import wire
from vigil.collector.desk.apply import Items, Results, apply_group, apply_steady
from vigil.collector.desk.service import Desk
from vigil.collector.storage.records import HostBefore, HostRefresh, KeyRow
from vigil.collector.telemetry.aggregates import Aggregates
from vigil.wire_fast import decode_struct

T0 = 1_700_000_000.0
EPOCH = "ab" * 16
VALUES = {"cpu.percent": 12.5, "vigil.agent.cpu_percent": 0.4, "vigil.agent.rss_bytes": 3e7}


def heartbeat(seq: int, ttl: float | None = 1e6) -> wire.CheckEvent:
    return wire.CheckEvent(
        event_id=f"hb{seq}", seq=seq, time=T0, check=wire.HEARTBEAT_CHECK, state="ok",
        previous_state=None, value=None, message="alive", ttl_s=ttl,
    )  # fmt: skip


def summary(seq: int, at: float = T0, scale: float = 1.0) -> wire.MetricsEvent:
    return wire.MetricsEvent(
        event_id=f"m{seq}", seq=seq, time=at, values={k: v * scale for k, v in VALUES.items()}
    )


def disk(seq: int, state: str = "critical") -> wire.CheckEvent:
    return wire.CheckEvent(
        event_id=f"d{seq}", seq=seq, time=T0, check="disk.root", state=state,  # type: ignore[arg-type]
        previous_state=None, value=97.0, message=f"disk {state}",
    )  # fmt: skip


def report(
    host: str, batch: str, *events: wire.Event, sent: float = T0, **fields: Any
) -> wire.Report:
    """A sequenced report of ``host`` (epoch :data:`EPOCH`, seqs from its events)."""
    seqs = [e.seq for e in events] or [1]
    base = wire.Report(
        schema_version=wire.SCHEMA_VERSION, agent_id=host, hostname=f"{host}.example.test",
        labels={"role": "server"}, batch_id=batch, sent_at=sent, agent_version="0.1.0",
        events=events, epoch=EPOCH, seq_first=min(seqs), seq_last=max(seqs),
    )  # fmt: skip
    return dataclasses.replace(base, **fields)


STEADY = [f"s{n}" for n in range(1, 14)]


@pytest.fixture
def desk(backend: BackendFactory) -> Iterator[Desk]:
    """A desk whose store knows hosts s1..s13 (sequenced, mark 2, heartbeat TTL long),
    ``open1`` with a liveness incident open, and ``legacy1`` (an agent before sequence
    numbers)."""
    d = backend.desk(catalog=CATALOG, rules=RULES)
    first: list[tuple[wire.Report, float]] = [
        (report(h, f"{h}-b1", heartbeat(1), summary(2)), T0) for h in STEADY
    ]
    first.append((report("open1", "open1-b1", heartbeat(1, ttl=10.0), summary(2)), T0))
    legacy = report("legacy1", "legacy1-b1", heartbeat(1))
    first.append((dataclasses.replace(legacy, epoch=None, seq_first=None, seq_last=None), T0))
    assert not any(isinstance(r, Exception) for r in d.ingest_many(first))
    d.tick(T0 + 200)  # open1 fell silent: a liveness incident on its heartbeat key
    yield d
    d.close()


def the_group() -> tuple[Items, set[int]]:
    """A group with every kind of report, and the positions of those the steady pass
    must take."""
    at = T0 + 300
    items: list[tuple[wire.Report, float]] = [
        # 0: the steady state
        (report("s1", "s1-b2", heartbeat(3), summary(4, at=T0 + 290), sent=T0 + 295), at),
        # 1: a summary only, from a clock an hour ahead (clamped time, a new offset)
        (report("s2", "s2-b2", summary(3, at=T0 + 3900), sent=T0 + 3900), at),
        # 2: renamed
        (report("s3", "s3-b2", heartbeat(3), hostname="renamed.example.test"), at),
        # 3: its last batch again (a lost ack)
        (report("s4", "s4-b1", heartbeat(1), summary(2)), at),
        # 4: a new batch at or below the mark (a restored snapshot)
        (report("s5", "s5-bX", heartbeat(2)), at),
        # 5, 6: one agent twice in the group
        (report("s6", "s6-b2", heartbeat(3), summary(4)), at),
        (report("s6", "s6-b3", heartbeat(5), summary(6, scale=2.0)), at + 1),
        # 7: a host never seen
        (report("n1", "n1-b1", heartbeat(1), summary(2)), at),
        # 8: a heartbeat that ends a liveness incident
        (report("open1", "open1-b2", heartbeat(3, ttl=1e6)), at),
        # 9: a check that opens an incident
        (report("s7", "s7-b2", heartbeat(3), disk(4)), at),
        # 10: reinstalled (a new epoch)
        (report("s8", "s8-b2", heartbeat(1), summary(2), epoch="cd" * 16), at),
        # 11: events out of seq order
        (report("s9", "s9-b2", summary(4), heartbeat(3)), at),
        # 12: an agent without sequence numbers
        (
            dataclasses.replace(
                report("legacy1", "legacy1-b2", heartbeat(2)),
                epoch=None,
                seq_first=None,
                seq_last=None,
            ),
            at,
        ),
        # 13: relabelled; 14: upgraded
        (report("s10", "s10-b2", heartbeat(3), labels={"role": "laptop"}), at),
        (report("s11", "s11-b2", heartbeat(3), agent_version="0.2.0"), at),
        # 15: the steady state with two heartbeats (the last TTL wins) and two summaries
        (
            report(
                "s12",
                "s12-b2",
                heartbeat(3, ttl=100.0),
                summary(4, at=T0 + 100),
                heartbeat(5, ttl=200.0),
                summary(6, at=T0 + 200, scale=3.0),
                sent=T0 + 299,
            ),
            at,
        ),
        # 16: a receive time that is not a number
        (report("s13", "s13-b2", heartbeat(3)), math.nan),
    ]
    return items, {0, 1, 15}


class _Undo(Exception):
    pass


def _apply(desk: Desk, items: Items, *, isolate: bool) -> tuple[Results, Aggregates, Any]:
    """Apply ``items`` in one transaction, read back everything they may have changed,
    and roll it all back."""
    merged = Aggregates()
    with desk.storage.session() as uow:
        try:
            with uow.transaction():
                results, deltas = apply_group(uow, CATALOG, RULES, items, isolate=isolate)
                hosts = sorted({r.agent_id for r, _ in items})
                state = {
                    "hosts": uow.hosts.list(),
                    "before": {h: uow.hosts.before(h) for h in hosts},
                    "metrics": {h: uow.metrics.latest(h) for h in hosts},
                    "keys": uow.keys.states(),
                    "incidents": uow.incidents.list(filters={}, state=None, limit=1000, offset=0),
                    "counters": uow.counters.load(),
                    # Columns no repository read returns (the agent's send time, the
                    # summary's clamped time and footprint columns), straight from SQL.
                    "sql": [
                        list(map(tuple, uow._db.execute(sql).fetchall()))
                        for sql in (
                            "SELECT agent_id, last_sent_at FROM hosts ORDER BY agent_id",
                            "SELECT host, time, received_at, agent_cpu, agent_rss"
                            " FROM host_metrics ORDER BY host",
                        )
                    ],
                    "results": uow.results.known_states("s7", "disk.root", 10),
                }
                raise _Undo
        except _Undo:
            pass
    for delta in deltas:
        merged.merge(delta)
    return results, merged, state


def _plain(results: Results, state: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """``results`` and ``state`` with the incidents the group opened numbered from 0 in
    order: PostgreSQL's sequences do not roll back, so the second run's ids are higher."""
    number = {i["id"]: n for n, i in enumerate(sorted(state["incidents"], key=lambda i: i["id"]))}
    renumber = lambda ids: tuple(number[i] for i in ids)  # noqa: E731
    plain = [
        repr(r)
        if isinstance(r, Exception)
        else dataclasses.replace(
            r,
            opened=renumber(r.opened),
            resolved=renumber(r.resolved),
            prevented=renumber(r.prevented),
        )
        for r in results
    ]
    incidents = [{**i, "id": number[i["id"]]} for i in state["incidents"]]
    return plain, {**state, "incidents": incidents}


def as_structs(items: Items) -> Items:
    """``items`` as the lean front hands them over: each report decoded to its checked
    Struct (``wire_fast.decode_struct``) from the agent's encoding; one the wire refuses
    (events out of ``seq`` order) stays as it is."""
    out: list[tuple[Any, float]] = []
    for report, received_at in items:
        struct = decode_struct(wire.encode_report(report))
        out.append((report if struct is None else struct, received_at))
    assert sum(type(r) is not wire.Report for r, _ in out) == len(out) - 1
    return out


@pytest.mark.parametrize("form", ["wire", "struct"])
def test_a_group_ends_as_the_per_report_path_leaves_it(desk: Desk, form: str) -> None:
    """Both forms of report (the wire dataclasses; the lean front's Structs) through the
    steady pass end as the wire dataclasses through the per-report path."""
    items, steady = the_group()
    slow, slow_agg, slow_state = _apply(desk, items, isolate=True)
    if form == "struct":
        items = as_structs(items)
    with desk.storage.session() as uow:
        try:
            with uow.transaction():
                assert set(apply_steady(uow, CATALOG, items, Aggregates())) == steady
                raise _Undo
        except _Undo:
            pass
    fast, fast_agg, fast_state = _apply(desk, items, isolate=False)
    assert _plain(fast, fast_state) == _plain(slow, slow_state)
    for name in (
        "host_last_seen", "host_ttl", "host_names", "host_clock_offset",
        "host_silence_expected", "counters",
    ):  # fmt: skip
        assert getattr(fast_agg, name) == getattr(slow_agg, name), name
    assert sorted(fast_agg.footprint_samples, key=repr) == sorted(
        slow_agg.footprint_samples, key=repr
    )
    # The group did what its reports say (not merely the same wrong thing twice).
    assert [type(r).__name__ for r in fast][16] == "ValueError"
    assert fast[3].duplicate and fast[4].epoch_reset  # type: ignore[union-attr]
    assert fast[8].resolved and fast[9].opened  # type: ignore[union-attr]
    assert fast[15] == fast[0].__class__(  # type: ignore[union-attr]
        duplicate=False, events=4, opened=(), resolved=(), prevented=()
    )
    # A sample 1 s off an estimate of 0 s is within the step: it ages by the drift bound.
    drift = 300 * 1e-4
    assert fast_state["before"]["s12"][:5] == ("s12-b2", drift, T0 + 300, EPOCH, 6)
    assert fast_state["metrics"]["s12"]["cpu.percent"] == 12.5 * 3.0
    assert fast_state["metrics"]["s2"]["cpu.percent"] == 12.5
    assert fast_agg.host_ttl["s12"] == 200.0


def test_a_lone_report_and_a_legacy_group_take_the_per_report_path(desk: Desk) -> None:
    lone = [(report("s1", "s1-b2", heartbeat(3)), T0 + 300)]
    with desk.storage.session() as uow, uow.transaction():
        assert apply_steady(uow, CATALOG, lone, Aggregates()) == {}
        legacy = [(dataclasses.replace(r, epoch=None, seq_first=None), t) for r, t in lone * 2]
        assert apply_steady(uow, CATALOG, legacy, Aggregates()) == {}


def test_the_steady_pass_commits_through_the_desk(desk: Desk) -> None:
    """Through ``Desk.ingest_many`` (the collector's call): acknowledged, durable, and
    a replay of the same group is all duplicates."""
    items = [(report(h, f"{h}-b2", heartbeat(3), summary(4, scale=5.0)), T0 + 300) for h in STEADY]
    first = desk.ingest_many(items)
    assert all(not r.duplicate and r.events == 2 for r in first)  # type: ignore[union-attr]
    again = desk.ingest_many(items)
    assert all(r.duplicate for r in again)  # type: ignore[union-attr]
    with desk.storage.session() as uow:
        assert uow.metrics.latest("s5") == {k: v * 5.0 for k, v in VALUES.items()}
        assert uow.hosts.before("s5") == ("s5-b2", 300.0, T0 + 300, EPOCH, 4, False)


# --------------------------------------------------------------------------- repositories


@pytest.fixture
def storage(backend: BackendFactory) -> Iterator[Any]:
    s = backend.open()
    yield s
    s.close()


def test_before_unchanged_reads_only_hosts_as_stored(storage: Any) -> None:
    ok = KeyRow("ok", None, None, None, None, "", False)
    with storage.session() as uow, uow.transaction():
        for host in ("a", "b", "c", "d", "e"):
            uow.hosts.upsert(report(host, "b1", heartbeat(1)), T0, 1.5, 60.0)
        uow.keys.save("b", wire.HEARTBEAT_CHECK, ok._replace(state="critical", incident_id=3), T0)
        asked = [
            report("a", "b2", heartbeat(2)),
            report("b", "b2", heartbeat(2)),
            report("c", "b2", heartbeat(2), hostname="other"),
            report("d", "b2", heartbeat(2), labels={"role": "server", "x": "y"}),
            report("e", "b2", heartbeat(2), agent_version="9"),
            report("nobody", "b1", heartbeat(1)),
        ]
        assert uow.hosts.before_unchanged(asked) == {
            "a": HostBefore("b1", 1.5, T0, EPOCH, 1, False),
            "b": HostBefore("b1", 1.5, T0, EPOCH, 1, True),
        }
        assert uow.hosts.before_unchanged([]) == {}


def test_refresh_many_leaves_rows_as_upsert_does(storage: Any) -> None:
    with storage.session() as uow, uow.transaction():
        for host in ("a", "b"):
            uow.hosts.upsert(report(host, "b1", heartbeat(1)), T0, 1.5, 60.0)
        uow.hosts.upsert(report("a", "b2", heartbeat(3)), T0 + 5, 0.5, None)
        uow.hosts.refresh_many([HostRefresh("b", T0 + 5, T0, 0.5, None, "b2", EPOCH, 3)])
        rows = {row.pop("agent_id"): row for row in uow.hosts.list()}
        assert rows["a"].pop("hostname") == "a.example.test"
        assert rows["b"].pop("hostname") == "b.example.test"
        assert rows["a"] == rows["b"]
        assert uow.hosts.before("a") == uow.hosts.before("b")
        uow.hosts.refresh_many([HostRefresh("b", T0 + 6, T0, 0.25, 90.0, "b3", "cd" * 16, 9)])
        assert uow.hosts.before("b") == ("b3", 0.25, T0 + 6, "cd" * 16, 9, False)
        assert uow.hosts.list(after="a")[0]["heartbeat_ttl_s"] == 90.0


def test_put_many_is_put_in_order(storage: Any) -> None:
    with storage.session() as uow, uow.transaction():
        uow.metrics.put_many(
            [
                ("h1", T0 + 60, T0 + 60, {"cpu": 2.0, "mem": 3.0}),
                ("h1", T0, T0 + 61, {"cpu": 1.0}),  # older: kept out
                ("h2", T0, T0, {"cpu": 4.0}),
                ("h2", T0 + 1, T0 + 1, {"cpu": 5.0, "mem": 6.0}),
            ]
        )
        assert uow.metrics.latest("h1") == {"cpu": 2.0, "mem": 3.0}
        assert uow.metrics.latest("h2") == {"cpu": 5.0, "mem": 6.0}
        uow.metrics.put_many([])
