"""The outbox: a durable, bounded spool that hands out idempotent batches."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from vigil import wire
from vigil.agent.delivery.outbox import Outbox, OutboxError

ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def metrics(n: int = 0, padding: int = 0) -> wire.MetricsEvent:
    values = {"cpu.busy_percent": float(n)}
    if padding:
        values["pad." + "x" * padding] = 0.0
    return wire.MetricsEvent(event_id=uuid.uuid4().hex, seq=0, time=1.0 + n, values=values)


def check(name: str = "disk.full", state: wire.CheckState = "critical") -> wire.CheckEvent:
    return wire.CheckEvent(
        event_id=uuid.uuid4().hex,
        seq=0,
        time=5.0,
        check=name,
        state=state,
        previous_state="ok",
        value=97.5,
        message="disk / at 97.5%",
    )


def remediation() -> wire.RemediationEvent:
    return wire.RemediationEvent(
        event_id=uuid.uuid4().hex,
        seq=0,
        time=6.0,
        remediation="clean-tmp",
        check="disk.full",
        outcome="fixed",
        exit_code=0,
        started_at=5.5,
        duration_s=0.4,
        value_before=97.5,
        value_after=60.0,
        output="removed 3 files\n",
        output_truncated=False,
        script_sha256="ab" * 32,
        dry_run=False,
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db")
    yield box
    box.close()


def ids(events: tuple[wire.Event, ...] | list[wire.Event]) -> list[str]:
    return [e.event_id for e in events]


# ------------------------------------------------------------------ put / batch / ack


def test_put_returns_increasing_seqs(outbox: Outbox) -> None:
    seqs = [outbox.put(metrics(i)) for i in range(3)]

    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3


def test_a_batch_carries_the_events_put_with_their_real_seq(outbox: Outbox) -> None:
    put = [metrics(1), check(), remediation()]
    seqs = [outbox.put(e) for e in put]

    batch = outbox.next_batch(10)

    assert batch is not None
    assert list(batch.events) == [replace(e, seq=s) for e, s in zip(put, seqs, strict=True)]


def test_ack_deletes_the_batch_and_returns_its_size(outbox: Outbox) -> None:
    for i in range(3):
        outbox.put(metrics(i))
    batch = outbox.next_batch(10)
    assert batch is not None

    assert outbox.ack(batch.batch_id) == 3
    assert outbox.depth() == 0
    assert outbox.next_batch(10) is None


def test_acking_an_unknown_batch_deletes_nothing(outbox: Outbox) -> None:
    outbox.put(metrics())

    assert outbox.ack("0" * 32) == 0
    assert outbox.depth() == 1


def test_next_batch_is_none_when_empty(outbox: Outbox) -> None:
    assert outbox.next_batch(10) is None


def test_batches_take_the_oldest_events_up_to_the_limit(outbox: Outbox) -> None:
    put = [metrics(i) for i in range(5)]
    for e in put:
        outbox.put(e)

    first = outbox.next_batch(2)
    assert first is not None
    outbox.ack(first.batch_id)
    second = outbox.next_batch(2)

    assert second is not None
    assert ids(first.events) == ids(put[:2])
    assert ids(second.events) == ids(put[2:4])
    assert second.batch_id != first.batch_id


def test_an_unacked_batch_is_handed_out_again_unchanged(outbox: Outbox) -> None:
    for i in range(3):
        outbox.put(metrics(i))
    first = outbox.next_batch(2)
    outbox.put(check())

    again = outbox.next_batch(10)

    assert again == first


def test_seq_is_never_reused_after_the_newest_event_is_acked(outbox: Outbox) -> None:
    last = outbox.put(metrics())
    batch = outbox.next_batch(10)
    assert batch is not None
    outbox.ack(batch.batch_id)

    assert outbox.put(metrics()) > last


def test_urgent_is_reported_until_the_urgent_event_is_acked(outbox: Outbox) -> None:
    outbox.put(metrics())
    assert not outbox.has_urgent()
    outbox.put(check(), urgent=True)
    assert outbox.has_urgent()

    batch = outbox.next_batch(10)
    assert batch is not None
    outbox.ack(batch.batch_id)

    assert not outbox.has_urgent()


def test_stats_report_depth_bytes_and_backlog_age(tmp_path: Path) -> None:
    clock = FakeClock(1_000.0)
    box = Outbox(tmp_path / "o.db", clock=clock)
    box.put(metrics())
    box.put(check())
    clock.now = 1_030.0

    stats = box.stats()
    box.close()

    assert stats.depth == 2
    assert stats.payload_bytes > 0
    assert stats.disk_bytes > stats.payload_bytes
    assert stats.oldest_age_s == 30.0
    assert stats.dropped == {}


def test_an_event_with_a_non_finite_value_is_refused_naming_the_event(outbox: Outbox) -> None:
    bad = wire.MetricsEvent(event_id="ev-nan", seq=0, time=1.0, values={"x": float("nan")})

    with pytest.raises(ValueError, match="ev-nan"):
        outbox.put(bad)
    assert outbox.depth() == 0


# ------------------------------------------------------------------ durability


def test_reopening_keeps_pending_events_and_the_unacked_batch(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    put = [metrics(i) for i in range(4)]
    for e in put:
        box.put(e, urgent=True)
    in_flight = box.next_batch(3)
    box.close()

    reopened = Outbox(path)
    again = reopened.next_batch(10)
    assert again is not None
    reopened.ack(again.batch_id)
    rest = reopened.next_batch(10)
    reopened.close()

    assert again == in_flight
    assert rest is not None
    assert ids(rest.events) == ids(put[3:])


_CHILD = textwrap.dedent(
    """
    import sys, time, uuid
    from pathlib import Path
    from vigil import wire
    from vigil.agent.delivery.outbox import Outbox

    box = Outbox(Path(sys.argv[1]))
    count = int(sys.argv[2])
    n = 0
    while count == 0 or n < count:
        n += 1
        seq = box.put(wire.MetricsEvent(
            event_id=uuid.uuid4().hex, seq=0, time=float(n), values={"n": float(n)}))
        print(seq, flush=True)  # only after put() returned: this event is promised durable
    print("done", flush=True)
    time.sleep(60)
    """
)


@contextlib.contextmanager
def _writer(path: Path, count: int) -> Iterator[subprocess.Popen[str]]:
    """A child process putting ``count`` events (0: forever), printing each seq once stored.

    Whatever happens in the test, the child is SIGKILLed and reaped on exit.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(count)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert child.stdout is not None
        child.stdout.close()


def _pending_seqs(path: Path) -> list[int]:
    box = Outbox(path)
    try:
        batch = box.next_batch(100_000)
        return [] if batch is None else [e.seq for e in batch.events]
    finally:
        box.close()


def test_events_put_before_a_sigkill_are_all_there_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with _writer(path, 200) as child:
        assert child.stdout is not None
        lines = [child.stdout.readline().strip() for _ in range(201)]
        assert lines[-1] == "done"

        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)

    assert child.returncode == -signal.SIGKILL
    assert _pending_seqs(path) == [int(s) for s in lines[:-1]]


def test_a_sigkill_in_the_middle_of_writing_loses_no_promised_event(tmp_path: Path) -> None:
    """Killed while putting as fast as it can, every put that had returned is found."""
    path = tmp_path / "outbox.db"
    with _writer(path, 0) as child:
        assert child.stdout is not None
        promised = [int(child.stdout.readline()) for _ in range(300)]

        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)

    assert child.returncode == -signal.SIGKILL
    found = _pending_seqs(path)
    assert found[: len(promised)] == promised


def test_a_file_that_is_not_a_database_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(OutboxError, match=r"outbox\.db"):
        Outbox(path)


def test_an_unreadable_row_is_discarded_and_counted(tmp_path: Path) -> None:
    """A row this agent cannot parse (e.g. written by another version) must not block shipping."""
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    bad_seq = box.put(metrics(1))
    good = metrics(2)
    box.put(good)
    box.close()
    with sqlite3.connect(path) as db:
        db.execute('UPDATE events SET payload = \'{"type": "nope"}\' WHERE seq = ?', (bad_seq,))
    db.close()

    box = Outbox(path)
    batch = box.next_batch(10)
    stats = box.stats()
    box.close()

    assert batch is not None
    assert ids(batch.events) == [good.event_id]
    assert stats.dropped == {"invalid": 1}


# ------------------------------------------------------------------ byte bound


def _size_of_one_metrics_event(tmp_path: Path, padding: int) -> int:
    box = Outbox(tmp_path / "probe.db")
    box.put(metrics(1, padding))
    size = box.stats().payload_bytes
    box.close()
    return size


def test_over_the_bound_the_oldest_metrics_go_first(tmp_path: Path) -> None:
    size = _size_of_one_metrics_event(tmp_path, 200)
    box = Outbox(tmp_path / "o.db", max_bytes=int(size * 3.5))
    put = [metrics(i, 200) for i in range(6)]
    for e in put:
        box.put(e)

    batch = box.next_batch(100)
    stats = box.stats()
    box.close()

    assert batch is not None
    assert ids(batch.events) == ids(put[3:])
    assert stats.dropped == {"metrics": 3}
    assert stats.payload_bytes <= int(size * 3.5)


def test_check_and_remediation_events_are_kept_while_metrics_remain(tmp_path: Path) -> None:
    size = _size_of_one_metrics_event(tmp_path, 200)
    box = Outbox(tmp_path / "o.db", max_bytes=size * 4)
    first_check, first_fix = check(), remediation()
    box.put(first_check)
    box.put(first_fix)
    for i in range(10):
        box.put(metrics(i, 200))

    batch = box.next_batch(100)
    stats = box.stats()
    box.close()

    assert batch is not None
    assert ids(batch.events)[:2] == [first_check.event_id, first_fix.event_id]
    assert set(stats.dropped) == {"metrics"}


def test_heartbeats_go_before_state_changes(tmp_path: Path) -> None:
    size = _size_of_one_metrics_event(tmp_path, 0)
    box = Outbox(tmp_path / "o.db", max_bytes=size * 3)
    change = check()
    seq = box.put(change)
    for _ in range(6):
        box.put(check(wire.HEARTBEAT_CHECK, "ok"))

    batch = box.next_batch(100)
    box.close()

    assert batch is not None
    assert batch.events[0] == replace(change, seq=seq)


def test_when_only_records_are_left_the_oldest_are_dropped_and_counted(tmp_path: Path) -> None:
    probe = Outbox(tmp_path / "probe.db")
    probe.put(check())
    size = probe.stats().payload_bytes
    probe.close()
    box = Outbox(tmp_path / "o.db", max_bytes=size * 2)
    put = [check(f"c{i}") for i in range(5)]
    for e in put:
        box.put(e)

    batch = box.next_batch(100)
    stats = box.stats()
    box.close()

    assert batch is not None
    assert ids(batch.events) == ids(put[3:])
    assert stats.dropped == {"check": 3}


def test_the_in_flight_batch_is_never_dropped(tmp_path: Path) -> None:
    size = _size_of_one_metrics_event(tmp_path, 200)
    box = Outbox(tmp_path / "o.db", max_bytes=size * 3)
    for i in range(3):
        box.put(metrics(i, 200))
    in_flight = box.next_batch(2)
    for i in range(3, 8):
        box.put(metrics(i, 200))

    again = box.next_batch(100)
    box.close()

    assert again == in_flight


def test_drop_counts_survive_a_restart(tmp_path: Path) -> None:
    size = _size_of_one_metrics_event(tmp_path, 200)
    path = tmp_path / "o.db"
    bound = int(size * 2.5)
    box = Outbox(path, max_bytes=bound)
    for i in range(5):
        box.put(metrics(i, 200))
    box.close()

    reopened = Outbox(path, max_bytes=bound)
    reopened.put(metrics(9, 200))
    stats = reopened.stats()
    reopened.close()

    assert stats.dropped == {"metrics": 4}
    assert stats.dropped_total == 4


# ------------------------------------------------------------------ size-capped batches


def test_a_batch_stops_before_its_byte_cap(outbox: Outbox) -> None:
    put = [metrics(i, padding=200) for i in range(5)]
    for e in put:
        outbox.put(e)
    one = outbox.stats().payload_bytes // 5

    batch = outbox.next_batch(100, max_bytes=one * 2 + one // 2)

    assert batch is not None
    assert ids(batch.events) == ids(put[:2])


def test_an_event_larger_than_the_byte_cap_still_goes_alone(outbox: Outbox) -> None:
    big = metrics(0, padding=900)
    outbox.put(big)
    outbox.put(metrics(1))

    batch = outbox.next_batch(100, max_bytes=10)

    assert batch is not None
    assert ids(batch.events) == [big.event_id]


# ------------------------------------------------------------------ age bound


def test_metrics_and_heartbeats_older_than_max_age_are_dropped_and_counted(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    box = Outbox(tmp_path / "o.db", max_age_s=3600, clock=clock)
    box.put(metrics(1))
    box.put(check(wire.HEARTBEAT_CHECK, "ok"))
    clock.now += 3601
    fresh = metrics(2)
    box.put(fresh)

    assert box.expire() == 0  # put already ran the age scan: the old ones are gone
    assert box.stats().dropped == {"check": 1, "metrics": 1}
    batch = box.next_batch(10)
    assert batch is not None and ids(batch.events) == [fresh.event_id]
    box.close()


def test_state_changes_and_remediation_records_are_never_aged_out(tmp_path: Path) -> None:
    clock = FakeClock()
    box = Outbox(tmp_path / "o.db", max_age_s=3600, clock=clock)
    kept = [check(), remediation()]
    for e in kept:
        box.put(e)
    clock.now += 30 * 86400

    assert box.expire() == 0
    batch = box.next_batch(10)
    assert batch is not None and ids(batch.events) == ids(kept)
    box.close()


def test_the_age_scan_runs_at_most_once_a_minute_of_puts(tmp_path: Path) -> None:
    clock = FakeClock()
    box = Outbox(tmp_path / "o.db", max_age_s=10, clock=clock)
    box.put(metrics(1))  # scans (the first put always does)
    clock.now += 30
    box.put(metrics(2))  # metrics(1) is too old, but the next scan is not due yet
    kept_between_scans = box.depth()
    clock.now += 30
    box.put(metrics(3))  # a minute after the first scan: both old ones go

    assert kept_between_scans == 2
    assert box.stats().dropped == {"metrics": 2}
    assert box.depth() == 1
    box.close()


def test_an_in_flight_batch_is_not_aged_out(tmp_path: Path) -> None:
    clock = FakeClock()
    box = Outbox(tmp_path / "o.db", max_age_s=60, clock=clock)
    old = metrics(1)
    box.put(old)
    batch = box.next_batch(10)
    clock.now += 3600

    assert box.expire() == 0
    again = box.next_batch(10)
    assert batch is not None and again == batch
    box.close()


# ------------------------------------------------------------------ idle cost


def test_pending_counts_what_depth_counts_through_puts_acks_drops_and_reopen(
    tmp_path: Path,
) -> None:
    """The in-memory count never needs a query, and agrees with the table throughout."""
    clock = FakeClock()
    box = Outbox(tmp_path / "o.db", max_age_s=60, clock=clock)
    seen = []
    for i in range(4):
        box.put(metrics(i))
        seen.append((box.pending, box.depth()))
    batch = box.next_batch(2)
    assert batch is not None
    box.ack(batch.batch_id)
    seen.append((box.pending, box.depth()))
    clock.now += 3600
    box.expire()  # the two left are an hour old
    seen.append((box.pending, box.depth()))
    box.put(check())
    box.close()
    reopened = Outbox(tmp_path / "o.db", clock=clock)
    seen.append((reopened.pending, reopened.depth()))
    reopened.close()

    assert seen == [(1, 1), (2, 2), (3, 3), (4, 4), (2, 2), (0, 0), (1, 1)]


def test_pending_follows_drops_over_the_byte_bound(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=2000)
    for i in range(20):
        box.put(metrics(i, padding=100))

    assert box.stats().dropped_total > 0
    assert box.pending == box.depth()
    box.close()


def test_an_empty_outbox_hands_out_no_batch_without_touching_the_database(
    outbox: Outbox,
) -> None:
    """An idle agent asking for work costs no SQLite transaction (and no WAL write)."""
    statements: list[str] = []
    outbox._db.set_trace_callback(statements.append)

    assert outbox.next_batch(10) is None
    assert statements == []


def test_on_put_is_called_after_each_put_with_its_urgency(tmp_path: Path) -> None:
    calls: list[tuple[bool, int]] = []
    box = Outbox(tmp_path / "o.db")
    box.on_put = lambda urgent: calls.append((urgent, box.depth()))

    box.put(metrics(1))
    box.put(check(), urgent=True)

    assert calls == [(False, 1), (True, 2)]  # the event is committed before the call
    box.close()


def test_forming_a_batch_and_its_ack_are_fsynced_and_puts_are_not(outbox: Outbox) -> None:
    """A power cut must not re-form a batch the collector may have under a new id, nor
    bring back an acknowledged one; a put may be lost (documented) and costs no fsync.
    SQLite fsyncs a WAL commit only under ``synchronous=FULL``, so the statements that
    ran under each setting tell which commits were made durable."""
    level = ["NORMAL"]
    durable: list[bool] = []

    def trace(statement: str) -> None:
        if statement.startswith("PRAGMA synchronous="):
            level[0] = statement.split("=", 1)[1]
        elif statement.startswith(("INSERT", "UPDATE", "DELETE")):
            durable.append(level[0] == "FULL")

    outbox._db.set_trace_callback(trace)
    outbox.put(metrics(1))
    writes_by_put = len(durable)
    batch = outbox.next_batch(10)
    assert batch is not None
    writes_by_batching = len(durable)
    outbox.ack(batch.batch_id)

    assert writes_by_put >= 1 and not any(durable[:writes_by_put])
    assert writes_by_batching > writes_by_put
    assert all(durable[writes_by_put:])  # the batch's formation, then the ack
    assert level == ["NORMAL"]  # restored for the next put


# ------------------------------------------------------------------ epoch


def test_the_epoch_is_random_hex_and_kept_across_reopens(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    epoch = box.epoch
    box.close()
    again = Outbox(tmp_path / "o.db")
    other = Outbox(tmp_path / "other.db")
    try:
        assert len(epoch) == 32 and set(epoch) <= set("0123456789abcdef")
        assert again.epoch == epoch
        assert other.epoch != epoch
    finally:
        again.close()
        other.close()


def test_a_new_epoch_keeps_the_in_flight_batch_and_is_durable(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for i in range(3):
        box.put(_epoch_event(i))
    batch = box.next_batch(2)
    assert batch is not None and batch.epoch == box.epoch
    new = box.new_epoch()
    again = box.next_batch(2)
    box.close()
    reopened = Outbox(tmp_path / "o.db")
    try:
        assert new != batch.epoch and reopened.epoch == new
        assert again is not None
        assert (again.batch_id, again.events, again.epoch) == (batch.batch_id, batch.events, new)
    finally:
        reopened.close()


def test_a_schema1_outbox_gets_an_epoch_and_keeps_its_events(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    box.put(_epoch_event(1))
    box.close()
    with sqlite3.connect(path) as db:  # what an agent before epochs left behind
        db.execute("DROP TABLE meta")
        db.execute("PRAGMA user_version=1")
    db.close()
    box = Outbox(path)
    try:
        assert len(box.epoch) == 32 and box.depth() == 1
    finally:
        box.close()


def _epoch_event(n: int) -> wire.MetricsEvent:
    return wire.MetricsEvent(event_id=f"ep{n}", seq=0, time=float(n), values={"x": float(n)})
