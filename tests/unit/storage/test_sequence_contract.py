"""Sequence dedup on every backend: the (epoch, seq) high-water mark kept with the host.

Run once per backend (``backend``), through the desk as the collector uses storage.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.desk import CATALOG, RULES
from tests.unit.storage.backends import BackendFactory
from tests.unit.storage.test_contract import FIXTURES, T0, check, report
from vigil import wire
from vigil.collector.desk.apply import IngestResult
from vigil.collector.desk.service import Desk
from vigil.collector.storage.factory import create_storage

EPOCH_A = "a" * 32
EPOCH_B = "b" * 32


def sequenced(batch: str, epoch: str, *events: wire.CheckEvent, host: str = "h1") -> wire.Report:
    """A report of an agent that numbers its events: ``epoch`` and the events' seq range."""
    return dataclasses.replace(
        report(batch, *events, host=host),
        epoch=epoch,
        seq_first=events[0].seq,
        seq_last=events[-1].seq,
    )


@pytest.fixture
def desk(backend: BackendFactory) -> Iterator[Desk]:
    d = backend.desk(catalog=CATALOG, rules=RULES)
    yield d
    d.close()


def results_checks(desk: Desk) -> list[str]:
    return sorted(i["check"] for i in desk.list_incidents())


def test_sequenced_batches_apply_in_order_and_record_no_ids(desk: Desk) -> None:
    first = desk.ingest(sequenced("b1", EPOCH_A, check(1, "c1"), check(2, "c2")), T0)
    second = desk.ingest(sequenced("b2", EPOCH_A, check(5, "c5")), T0 + 1)
    assert (first.duplicate, first.events, second.events) == (False, 2, 1)
    assert results_checks(desk) == ["c1", "c2", "c5"]
    # Nothing went into ``seen``: pruning everything finds no id.
    assert desk.prune_seen(T0 + 10) == 0


def test_the_last_batch_again_is_a_duplicate(desk: Desk) -> None:
    desk.ingest(sequenced("b1", EPOCH_A, check(1)), T0)
    again = desk.ingest(sequenced("b1", EPOCH_A, check(1)), T0 + 5)
    assert (again.duplicate, again.epoch_reset, again.events) == (True, False, 0)
    assert len(desk.list_incidents()) == 1
    assert desk.metrics_snapshot().reports_duplicate_total == 1


def test_a_batch_at_or_below_the_mark_asks_for_a_new_epoch(desk: Desk) -> None:
    """A rolled-back agent (restored snapshot) numbers new events with used seqs."""
    desk.ingest(sequenced("b1", EPOCH_A, check(1, "c1"), check(2, "c2")), T0)
    desk.ingest(sequenced("b2", EPOCH_A, check(3, "c3")), T0 + 1)
    stale = desk.ingest(sequenced("b9", EPOCH_A, check(2, "new")), T0 + 2)
    assert (stale.epoch_reset, stale.duplicate, stale.events, stale.mark) == (True, False, 0, 3)
    assert results_checks(desk) == ["c1", "c2", "c3"]
    assert desk.metrics_snapshot().reports_epoch_reset_total == 1
    # The agent's pending events under a new epoch: applied, once.
    renumbered = desk.ingest(sequenced("b9", EPOCH_B, check(2, "new")), T0 + 3)
    assert (renumbered.epoch_reset, renumbered.events) == (False, 1)
    assert desk.ingest(sequenced("b9", EPOCH_B, check(2, "new")), T0 + 4).duplicate
    assert results_checks(desk) == ["c1", "c2", "c3", "new"]


def test_a_sequenced_batch_repeated_inside_one_group_is_a_duplicate_of_the_first(
    desk: Desk,
) -> None:
    batch = sequenced("b1", EPOCH_A, check(1))
    results = desk.ingest_many([(batch, T0), (batch, T0)])
    assert [(r.duplicate, r.events) for r in results if isinstance(r, IngestResult)] == [
        (False, 1),
        (True, 0),
    ]


def test_a_new_epoch_starts_a_new_mark(desk: Desk) -> None:
    """A reinstalled agent starts again at seq 1 in a fresh epoch."""
    desk.ingest(sequenced("b1", EPOCH_A, check(100, "old")), T0)
    fresh = desk.ingest(sequenced("b2", EPOCH_B, check(1, "new")), T0 + 1)
    assert (fresh.duplicate, fresh.epoch_reset, fresh.events) == (False, False, 1)
    follow = desk.ingest(sequenced("b3", EPOCH_B, check(2, "newer")), T0 + 2)
    assert follow.events == 1
    assert results_checks(desk) == ["new", "newer", "old"]


def test_an_upgraded_agent_is_checked_against_its_old_ids_once(desk: Desk) -> None:
    """The first sequenced report of an agent known by ``seen`` ids skips ids it sent."""
    desk.ingest(report("b1", check(1, "c1")), T0)  # an older agent version, no epoch
    upgraded = desk.ingest(sequenced("b2", EPOCH_A, check(1, "c1"), check(2, "c2")), T0 + 1)
    assert (upgraded.duplicate, upgraded.events) == (False, 1)
    assert results_checks(desk) == ["c1", "c2"]
    # From then on the mark alone: a new batch records no ids.
    desk.prune_seen(T0 + 100)
    assert desk.ingest(sequenced("b3", EPOCH_A, check(3, "c3")), T0 + 2).events == 1
    assert desk.prune_seen(T0 + 100) == 0


def test_an_older_agent_keeps_the_id_path(desk: Desk) -> None:
    desk.ingest(report("b1", check(1)), T0)
    result = desk.ingest(report("b2", check(1), check(2, "mail.imap")), T0 + 5)
    assert (result.duplicate, result.events) == (False, 1)
    assert desk.prune_seen(T0 + 100) == 4  # two batch ids, two event ids


def test_the_mark_survives_a_reopen(backend: BackendFactory) -> None:
    first = backend.desk(catalog=CATALOG, rules=RULES)
    first.ingest(sequenced("b1", EPOCH_A, check(1, "c1"), check(7, "c7")), T0)
    first.close()
    second = backend.desk(catalog=CATALOG, rules=RULES)
    try:
        assert second.ingest(sequenced("b1", EPOCH_A, check(1, "c1"), check(7, "c7")), T0).duplicate
        assert second.ingest(sequenced("b2", EPOCH_A, check(6, "x")), T0).epoch_reset
        assert second.ingest(sequenced("b3", EPOCH_A, check(8, "c8")), T0).events == 1
        assert results_checks(second) == ["c1", "c7", "c8"]
    finally:
        second.close()


def test_threads_with_their_own_storage_apply_one_sequenced_batch_once(
    backend: BackendFactory,
) -> None:
    """Four writers (separate connections) race to apply the same batch: one applies it."""
    backend.desk().close()
    desks = [backend.desk(catalog=CATALOG, rules=RULES) for _ in range(4)]
    start = threading.Barrier(len(desks))
    results: list[IngestResult] = []

    def write(d: Desk) -> None:
        start.wait()
        results.append(d.ingest(sequenced("b1", EPOCH_A, check(1), check(2, "mail.imap")), T0))

    threads = [threading.Thread(target=write, args=(d,)) for d in desks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        assert sorted(r.duplicate for r in results) == [False, True, True, True]
        assert len(desks[0].list_incidents()) == 2
    finally:
        for d in desks:
            d.close()


def _ingest_in_a_process(url: str, start: Any, out: Any) -> None:
    desk = Desk(create_storage(url), catalog=CATALOG, rules=RULES)
    try:
        desk.ingest(sequenced("b0", EPOCH_A, check(1, "c1")), T0)
        start.wait(timeout=60)
        result = desk.ingest(sequenced("b1", EPOCH_A, check(2, "c2"), check(3, "c3")), T0)
        out.put((result.duplicate, result.epoch_reset, result.events))
    finally:
        desk.close()


def test_processes_apply_one_sequenced_batch_once(backend: BackendFactory) -> None:
    """Three collector processes on one database receive the same batch at once (after
    each saw the agent's previous batch, so the host row with its mark exists)."""
    backend.desk().close()  # create the schema before the race
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(3), ctx.Queue()
    procs = [
        ctx.Process(target=_ingest_in_a_process, args=(backend.url, start, out)) for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sorted(out.get(timeout=5) for _ in procs) == [
        (False, False, 2),
        (True, False, 0),
        (True, False, 0),
    ]
    desk = backend.desk(catalog=CATALOG, rules=RULES)
    try:
        assert results_checks(desk) == ["c1", "c2", "c3"]
    finally:
        desk.close()


def test_a_migrated_database_keeps_dedup_for_an_agent_upgraded_mid_batch(
    backend: BackendFactory,
) -> None:
    """A schema-2 database of today's collector, migrated: srv-1's older agent sent event
    e21 (still in ``seen``); upgraded, it sends e21 again with a new event in its first
    sequenced batch. e21 is not applied twice; the new event is, and the mark is set."""
    backend.restore_schema2((FIXTURES / "schema2.sql").read_text())
    desk = backend.desk(catalog=CATALOG, rules=RULES)
    try:
        host = "srv-1"
        e21, fresh = check(21, "mail.imap"), check(99, "fresh.check")
        first = desk.ingest(sequenced("up-1", EPOCH_A, e21, fresh, host=host), T0 + 500)
        assert (first.duplicate, first.events) == (False, 1)
        later = desk.ingest(sequenced("up-2", EPOCH_A, check(100, "later"), host=host), T0 + 501)
        assert later.events == 1
        stale = sequenced("up-3", EPOCH_A, check(100, "x"), host=host)
        assert desk.ingest(stale, T0 + 502).epoch_reset
    finally:
        desk.close()
