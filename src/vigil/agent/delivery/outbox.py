"""The agent's durable outbox: a bounded SQLite spool between event producers and the shipper.

Every event is stored here *before* any delivery attempt and deleted only when the
collector has acknowledged the batch that carried it, so delivery is at-least-once and
nothing is lost when the agent is killed or the collector is down.

Durability: WAL journal with ``synchronous=NORMAL``. Every committed ``put`` survives a
crash or SIGKILL of the agent process; after a power loss or OS crash the last few
transactions may be rolled back (SQLite's documented trade-off for this mode), which is
acceptable for monitoring data and far cheaper than an fsync per event. The two
transactions delivery depends on are fsynced (``synchronous=FULL`` for them: two fsyncs
per delivery, not per event): forming a batch, so a batch the collector may already have
is retried under its own id after a power cut, never re-formed under a new one; and the
ack, so an acknowledged batch never comes back. The collector remembers each agent's
last batch for good (the collector's ``desk/apply.py``), so together a retry is recognised however
late it comes.

Batches: :meth:`Outbox.next_batch` assigns a ``batch_id`` to the oldest pending events and
records it; until :meth:`Outbox.ack` deletes them, every call returns that same batch
again, so a retry after a failed send or a restart carries the same id and events and the
collector can deduplicate it.

Epoch: seqs count within a random ``epoch`` (``meta`` table) that every batch carries, so
the collector deduplicates by the highest seq it applied per epoch (``desk/sequence.py``).
:meth:`Outbox.new_epoch` starts another when the collector says the seqs were used before.

Batches are size-capped: at most ``max_events`` events and ``max_bytes`` of stored JSON
(but always at least one event, so one large record can never block the queue).

Idle cost: the number of stored events is kept in memory (:attr:`Outbox.pending`), so
asking for a batch when nothing is pending touches no file, and :attr:`Outbox.on_put` lets
the owner arm its shipper only when there is something to send (the agent does no
delivery work at all while its outbox is empty).

Age: metric samples and heartbeats stored more than ``max_age_s`` ago are dropped (and
counted) by :meth:`Outbox.expire`, which ``put`` runs at most once a minute. Check state
changes and remediation records are not aged out: they are small, they are what the
service desk needs, and only the byte bound below can drop them.

Bound: the sum of stored payload bytes is kept under ``max_bytes``. When a ``put`` goes
over, the oldest events not in the in-flight batch are dropped in this order: metric
samples, then heartbeats, and only when nothing else is left, check state changes and
remediation records. Every drop is counted in the database (``stats().dropped``) so the
loss is reported rather than silent. The file itself may stay larger than the payload
bound (SQLite page overhead, free pages reused rather than returned to the OS).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vigil import wire

log = logging.getLogger("vigil.agent.outbox")

# 2: the ``meta`` table with the epoch (sequence dedup at the collector).
_SCHEMA_VERSION = 2

# Drop order when over the byte bound: lower tiers go first.
_TIER_METRICS = 0
_TIER_HEARTBEAT = 1
_TIER_RECORD = 2  # check state changes and remediation records
# Seconds between age scans (the scan is one indexed DELETE, but not worth doing per put).
_EXPIRY_EVERY_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    -- AUTOINCREMENT: a seq is never reused, even after the newest row was acked and deleted.
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL,
    tier       INTEGER NOT NULL,
    urgent     INTEGER NOT NULL,
    created_at REAL    NOT NULL,
    size       INTEGER NOT NULL,
    batch_id   TEXT,
    payload    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_batch ON events (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_drop ON events (tier, seq) WHERE batch_id IS NULL;
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
-- 'epoch': the random id the events' seqs are numbered in (see Outbox.new_epoch).
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class OutboxError(Exception):
    """The outbox file cannot be used (not a database, newer schema, unwritable)."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True, slots=True)
class Batch:
    """Events to send together under one ``batch_id`` (uuid4 hex), oldest first, with
    the ``epoch`` their seqs are numbered in."""

    batch_id: str
    events: tuple[wire.Event, ...]
    epoch: str


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A snapshot for metrics and logs.

    ``depth``: events not yet acknowledged. ``payload_bytes``: their stored JSON size,
    the quantity bounded by ``max_bytes``. ``disk_bytes``: database plus WAL file size.
    ``dropped``: events dropped since the outbox was created, by event type
    (``metrics``/``check``/``remediation``, plus ``invalid`` for unreadable rows).
    ``oldest_age_s``: seconds since the oldest pending event was stored, ``None`` if empty.
    """

    depth: int
    payload_bytes: int
    disk_bytes: int
    dropped: dict[str, int]
    oldest_age_s: float | None

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class Outbox:
    """A durable, bounded FIFO of wire events with idempotent batch hand-out.

    ``on_put`` (also settable as the attribute) is called as ``on_put(urgent)`` after each
    committed :meth:`put`, in the putting thread; it must not raise.

    One SQLite connection guarded by a lock: safe to call from several threads of one
    process, and every call is short (one small transaction), so the asyncio shipper calls
    it directly. Only one process may use a given file at a time.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 64 * 2**20,
        max_age_s: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
        on_put: Callable[[bool], None] | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes: must be positive, got {max_bytes!r}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s: must be positive, got {max_age_s!r}")
        self._path = Path(path)
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._next_expiry = float("-inf")
        self._clock = clock
        # Called as on_put(urgent) after each committed put, in the putting thread.
        self.on_put = on_put
        self._lock = threading.Lock()
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=5.0
            )
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(self._path, f"cannot open outbox: {exc}") from None
        try:
            self._setup()
        except sqlite3.Error as exc:
            self._db.close()
            raise OutboxError(self._path, f"cannot open outbox: {exc}") from None
        # Running totals of payload bytes and of events, so a put need not SUM the table
        # and an empty outbox answers without a query.
        self._bytes = self._sum_bytes()
        self._pending = self._count_events()

    def _setup(self) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this agent supports ({_SCHEMA_VERSION})"
            )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Keep the WAL from staying huge after a burst (bytes).
        db.execute("PRAGMA journal_size_limit=4194304")
        with self._transaction():
            # Not executescript(): it would COMMIT first and escape the transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            # A new outbox (or one of schema 1) gets its first epoch.
            db.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('epoch', ?)", (uuid.uuid4().hex,)
            )
            self._epoch: str = db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()[
                0
            ]
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    # ----------------------------------------------------------------- public API

    def put(self, event: wire.Event, *, urgent: bool = False) -> int:
        """Store ``event`` durably and return its ``seq`` (the row id, strictly increasing).

        Callers build events with ``seq=0``; the stored payload carries the real seq.
        ``urgent`` marks events that should be shipped at once (see :meth:`has_urgent`).
        To stay within ``max_bytes`` it may drop stored events outside the in-flight batch,
        cheapest kind first (see the module docstring); that can be this very event, e.g. a
        metric sample when only check records are left. Raises ``ValueError`` naming the
        event for a non-finite number, which the collector would reject.
        """
        kind = event.type
        tier = _tier(event)
        with self._lock, self._transaction():
            cur = self._db.execute(
                "INSERT INTO events (kind, tier, urgent, created_at, size, payload)"
                " VALUES (?, ?, ?, ?, 0, '')",
                (kind, tier, int(urgent), self._clock()),
            )
            seq = cur.lastrowid
            assert seq is not None
            payload = _encode(dataclasses.replace(event, seq=seq))
            size = len(payload.encode())
            self._db.execute(
                "UPDATE events SET payload = ?, size = ? WHERE seq = ?", (payload, size, seq)
            )
            self._bytes += size
            self._pending += 1
            if self._bytes > self._max_bytes:
                self._enforce_bound()
        if self.on_put is not None:
            self.on_put(urgent)
        now = self._clock()
        # Bounded work per put: the age scan runs at most once a minute (or after a clock
        # step backwards, which makes ``now`` smaller than the last scan).
        if now >= self._next_expiry or now < self._next_expiry - 2 * _EXPIRY_EVERY_S:
            self.expire()
        return seq

    def expire(self) -> int:
        """Drop metric samples and heartbeats stored more than ``max_age_s`` ago.

        Events of the in-flight batch are kept (they may already be at the collector).
        Returns how many were dropped; each is counted under ``dropped``. Ages are
        measured on the wall clock (they must survive restarts), so a forward clock step
        can age events out early; the agent reports such a step as an ``agent.clock`` event.
        """
        now = self._clock()
        self._next_expiry = now + _EXPIRY_EVERY_S
        cutoff = now - self._max_age_s
        with self._lock, self._transaction():
            rows = self._db.execute(
                "DELETE FROM events WHERE batch_id IS NULL AND tier < ? AND created_at < ?"
                " RETURNING kind, size",
                (_TIER_RECORD, cutoff),
            ).fetchall()
            by_kind: dict[str, int] = {}
            for kind, size in rows:
                by_kind[kind] = by_kind.get(kind, 0) + 1
                self._bytes -= size
            self._pending -= len(rows)
            for kind, n in by_kind.items():
                self._count(f"dropped.{kind}", n)
        if rows:
            log.warning(
                "outbox: dropped %d metric samples/heartbeats older than %.0f s",
                len(rows),
                self._max_age_s,
            )
        return len(rows)

    def next_batch(self, max_events: int, max_bytes: int = 2**62) -> Batch | None:
        """The batch to send now, or ``None`` when nothing is pending.

        If a batch was handed out and not acknowledged (a failed send, a crash), it is
        returned again with the same id and events, whatever the limits are now.
        Otherwise the oldest (by seq) pending events get a new id: up to ``max_events`` of
        them whose stored JSON adds up to at most ``max_bytes``, and never fewer than one.
        """
        if max_events < 1:
            raise ValueError(f"max_events: must be at least 1, got {max_events!r}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes: must be at least 1, got {max_bytes!r}")
        if self._pending == 0:
            # Nothing stored (so no in-flight batch either): no write transaction at all.
            return None
        with self._lock, self._transaction(durable=True):
            row = self._db.execute(
                "SELECT batch_id FROM events WHERE batch_id IS NOT NULL ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is not None:
                batch_id = row[0]
            else:
                batch_id = uuid.uuid4().hex
                # Running byte total over the oldest events; the first always fits.
                cur = self._db.execute(
                    "UPDATE events SET batch_id = ? WHERE seq IN (SELECT seq FROM"
                    " (SELECT seq, SUM(size) OVER (ORDER BY seq) AS running,"
                    "  ROW_NUMBER() OVER (ORDER BY seq) AS n"
                    "  FROM events WHERE batch_id IS NULL ORDER BY seq LIMIT ?)"
                    " WHERE running <= ? OR n = 1)",
                    (batch_id, max_events, max_bytes),
                )
                if cur.rowcount == 0:
                    return None
            events = self._load_batch(batch_id)
            epoch = self._epoch
        if not events:
            # Every row of the batch was unreadable and has been discarded; try the next.
            return self.next_batch(max_events)
        return Batch(batch_id=batch_id, events=events, epoch=epoch)

    def ack(self, batch_id: str) -> int:
        """Delete the events of an acknowledged batch; returns how many (0 if unknown)."""
        with self._lock, self._transaction(durable=True):
            freed = self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM events WHERE batch_id = ?", (batch_id,)
            ).fetchone()[0]
            cur = self._db.execute("DELETE FROM events WHERE batch_id = ?", (batch_id,))
            self._bytes -= freed
            self._pending -= cur.rowcount
            return cur.rowcount

    @property
    def epoch(self) -> str:
        """The epoch the stored events' seqs count in: 32 hex digits, random, chosen when
        the outbox was created and again by :meth:`new_epoch`."""
        return self._epoch

    def new_epoch(self) -> str:
        """Switch (durably) to a fresh epoch and return it: for when the collector says
        this outbox's seqs are at or below what it applied in this epoch (a restored
        snapshot). Seqs stay; in the new epoch the collector's mark starts again, so the
        pending events, the in-flight batch included, are sent again and applied."""
        epoch = uuid.uuid4().hex
        with self._lock, self._transaction(durable=True):
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'epoch'", (epoch,))
            self._count("epoch_resets", 1)
        self._epoch = epoch
        log.warning("outbox: the collector asked for a new epoch; pending events go as %s", epoch)
        return epoch

    def has_urgent(self) -> bool:
        """Whether any unacknowledged event was put with ``urgent=True``."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM events WHERE urgent = 1 LIMIT 1").fetchone()
        return row is not None

    @property
    def pending(self) -> int:
        """Events stored and not yet acknowledged, from memory (no query): what
        :meth:`depth` counts, kept up to date by every call of this object."""
        return self._pending

    def depth(self) -> int:
        """Events stored and not yet acknowledged (including the in-flight batch)."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def stats(self) -> OutboxStats:
        """Depth, sizes, drop counters and backlog age; see :class:`OutboxStats`."""
        with self._lock:
            depth, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM events"
            ).fetchone()
            dropped = dict(
                self._db.execute(
                    "SELECT substr(name, 9), value FROM counters WHERE name LIKE 'dropped.%'"
                    " ORDER BY name"
                ).fetchall()
            )
            payload_bytes = self._bytes
        disk = sum(
            p.stat().st_size
            for p in (self._path, self._path.with_name(self._path.name + "-wal"))
            if p.exists()
        )
        age = None if oldest is None else max(0.0, self._clock() - oldest)
        return OutboxStats(
            depth=depth,
            payload_bytes=payload_bytes,
            disk_bytes=disk,
            dropped=dropped,
            oldest_age_s=age,
        )

    def close(self) -> None:
        """Close the database; further calls raise ``sqlite3.ProgrammingError``."""
        with self._lock:
            self._db.close()

    # ----------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _transaction(self, *, durable: bool = False) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any exception.

        IMMEDIATE takes the write lock up front, so the read-then-write in ``next_batch``
        cannot interleave with another writer. On rollback the byte total is recounted,
        since the failed transaction may have adjusted it. ``durable``: the COMMIT is
        fsynced (``synchronous=FULL`` for this transaction; one that wrote nothing costs
        no fsync), which also makes every earlier commit durable.
        """
        if durable:
            self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                self._bytes = self._sum_bytes()
                self._pending = self._count_events()
                raise
            self._db.execute("COMMIT")
        finally:
            if durable:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def _sum_bytes(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(size), 0) FROM events").fetchone()[0]

    def _count_events(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def _enforce_bound(self) -> None:
        """Drop the cheapest, oldest events outside the in-flight batch until under bound.

        Runs inside the caller's transaction, so the new event and the drops commit together.
        """
        excess = self._bytes - self._max_bytes
        victims: list[int] = []
        by_kind: dict[str, int] = {}
        freed = 0
        rows = self._db.execute(
            "SELECT seq, kind, size FROM events WHERE batch_id IS NULL ORDER BY tier, seq"
        )
        for seq, kind, size in rows:
            if freed >= excess:
                break
            victims.append(seq)
            by_kind[kind] = by_kind.get(kind, 0) + 1
            freed += size
        rows.close()
        self._db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in victims])
        self._bytes -= freed
        self._pending -= len(victims)
        for kind, n in by_kind.items():
            self._count(f"dropped.{kind}", n)
        if victims:
            log.warning(
                "outbox over its bound of %d bytes: dropped the oldest events (%s)",
                self._max_bytes,
                ", ".join(f"{n} {k}" for k, n in sorted(by_kind.items())),
            )

    def _load_batch(self, batch_id: str) -> tuple[wire.Event, ...]:
        """Parse a batch's rows; unreadable rows are deleted and counted, not retried forever."""
        events: list[wire.Event] = []
        bad: list[tuple[int, int]] = []
        rows = self._db.execute(
            "SELECT seq, size, payload FROM events WHERE batch_id = ? ORDER BY seq", (batch_id,)
        ).fetchall()
        for seq, size, payload in rows:
            try:
                event = wire.parse_event(json.loads(payload))
            except (ValueError, TypeError) as exc:  # WireError and JSONDecodeError are ValueErrors
                log.error("outbox row seq=%d is unreadable and is discarded: %s", seq, exc)
                bad.append((seq, size))
                continue
            events.append(dataclasses.replace(event, seq=seq))
        if bad:
            self._db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s, _ in bad])
            self._bytes -= sum(size for _, size in bad)
            self._pending -= len(bad)
            self._count("dropped.invalid", len(bad))
        return tuple(events)

    def _count(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )


def _tier(event: wire.Event) -> int:
    if isinstance(event, wire.MetricsEvent):
        return _TIER_METRICS
    if isinstance(event, wire.CheckEvent) and event.check == wire.HEARTBEAT_CHECK:
        return _TIER_HEARTBEAT
    return _TIER_RECORD


def _encode(event: wire.Event) -> str:
    try:
        return json.dumps(wire.to_dict(event), separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # NaN/inf: the collector would reject the whole batch
        raise ValueError(f"event {event.event_id!r} ({event.type}): {exc}") from None
