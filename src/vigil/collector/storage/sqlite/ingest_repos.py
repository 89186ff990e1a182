"""SQLite repositories of what reports bring: hosts, seen ids, check results and key
states, remediation runs, metrics summaries, counters. Queries only; no decisions."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson

from vigil import wire
from vigil.collector.storage.records import (
    SILENCE_NOT_NOTED,
    UNCHANGED_COLUMNS,
    HostBefore,
    HostRefresh,
    KeyRow,
    LivenessRow,
    host_row,
    unchanged_hosts,
)
from vigil.collector.storage.sqlite.codec import (
    HOST_METRICS_UPSERT,
    JsonMemo,
    fetch_strict_text,
    names_id,
    pack_floats,
    unpack_floats,
)
from vigil.collector.storage.sqlite.schema import SEEN_BATCH, SEEN_EVENT
from vigil.collector.storage.unit_of_work import NameSets
from vigil.collector.telemetry.buckets import AGENT_CPU_SERIES, AGENT_RSS_SERIES


class SqliteHosts:
    """:class:`~collector.storage.protocols.HostRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection, memo: JsonMemo) -> None:
        self._db = db
        self._memo = memo

    def before(self, agent_id: str) -> HostBefore | None:
        # No lock needed: SQLite has one writer, and the caller's transaction holds it.
        row = self._db.execute(
            "SELECT h.last_batch_id, h.clock_offset_s, h.last_seen, h.epoch, h.mark,"
            " c.incident_id IS NOT NULL FROM hosts h LEFT JOIN check_state c"
            " ON c.host = h.agent_id AND c.check_id = ? WHERE h.agent_id = ?",
            (wire.HEARTBEAT_CHECK, agent_id),
        ).fetchone()
        if row is None:
            return None
        batch, offset, seen, epoch, mark, heartbeat_open = row
        return HostBefore(
            batch, offset, seen, None if epoch is None else epoch.hex(), mark, bool(heartbeat_open)
        )

    def before_unchanged(self, reports: Sequence[wire.Report]) -> dict[str, HostBefore]:
        # One statement text for any group size (the ids as one JSON array), so the
        # statement cache holds it. The row stores labels as the memo's (sorted JSON)
        # text, which is what a report's labels are compared in.
        by_agent = {report.agent_id: report for report in reports}
        rows = self._db.execute(
            f"{UNCHANGED_COLUMNS} ON c.host = h.agent_id AND c.check_id = ?"
            " WHERE h.agent_id IN (SELECT value FROM json_each(?))",
            (wire.HEARTBEAT_CHECK, orjson.dumps(list(by_agent)).decode()),
        ).fetchall()
        return unchanged_hosts(rows, by_agent, self._memo.labels)

    def refresh_many(self, rows: Sequence[HostRefresh]) -> None:
        # By agent_id alone: the caller read the identity under this transaction (SQLite
        # has one writer), and only unindexed columns are set (see upsert).
        self._db.executemany(
            "UPDATE hosts SET last_seen = ?, last_sent_at = ?, clock_offset_s = ?,"
            " heartbeat_ttl_s = COALESCE(?, heartbeat_ttl_s), last_batch_id = ?,"
            " epoch = ?, mark = ? WHERE agent_id = ?",
            [
                (at, sent, offset, ttl, batch, bytes.fromhex(epoch), mark, agent)
                for agent, at, sent, offset, ttl, batch, epoch, mark in rows
            ],
        )

    def upsert(
        self,
        report: wire.Report,
        received_at: float,
        clock_offset_s: float,
        heartbeat_ttl_s: float | None,
    ) -> None:
        params = host_row(report, received_at, clock_offset_s, heartbeat_ttl_s)
        params["labels"] = self._memo.labels(report.labels)
        # The steady state first: a known host whose name, labels and version are as
        # stored. Only the liveness and dedup columns are set, so SQLite leaves the
        # hostname, department and os indexes alone (an UPDATE rewrites the entries of
        # every index over a column it sets, changed or not). Measured at 100,000 hosts:
        # ~22 us a report instead of ~50 for the upsert (issue #17). The row ends as the
        # upsert below would leave it; any other case (a new host, a rename) takes that.
        if self._db.execute(
            "UPDATE hosts SET last_seen = :at, last_sent_at = :sent, clock_offset_s = :offset,"
            " heartbeat_ttl_s = COALESCE(:ttl, heartbeat_ttl_s), last_batch_id = :batch,"
            " epoch = COALESCE(:epoch, epoch), mark = COALESCE(:mark, mark)"
            " WHERE agent_id = :agent AND hostname = :hostname AND labels = :labels"
            " AND agent_version = :version",
            params,
        ).rowcount:
            return
        self._db.execute(
            "INSERT INTO hosts (agent_id, hostname, labels, agent_version, first_seen,"
            " last_seen, last_sent_at, clock_offset_s, heartbeat_ttl_s, last_batch_id,"
            " epoch, mark)"
            " VALUES (:agent, :hostname, :labels, :version, :at, :at, :sent, :offset, :ttl,"
            " :batch, :epoch, :mark)"
            " ON CONFLICT (agent_id) DO UPDATE SET hostname = excluded.hostname,"
            " last_batch_id = excluded.last_batch_id,"
            " epoch = COALESCE(excluded.epoch, hosts.epoch),"
            " mark = COALESCE(excluded.mark, hosts.mark),"
            " labels = excluded.labels, agent_version = excluded.agent_version,"
            " last_seen = excluded.last_seen, last_sent_at = excluded.last_sent_at,"
            " clock_offset_s = excluded.clock_offset_s,"
            " heartbeat_ttl_s = COALESCE(excluded.heartbeat_ttl_s, hosts.heartbeat_ttl_s)",
            params,
        )

    def info(self, agent_id: str) -> tuple[str, dict[str, str]] | None:
        row = self._db.execute(
            "SELECT hostname, labels FROM hosts WHERE agent_id = ?", (agent_id,)
        ).fetchone()
        # As in load(): a labels text that does not decode reads as no labels, so one
        # hand-edited row cannot fail the ingest or tick transaction that asks.
        return None if row is None else (row[0], _labels_or_empty(row[1]))

    def versions(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT agent_id, agent_version FROM hosts").fetchall())

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM hosts").fetchone()[0])

    def fleet(self) -> list[dict[str, Any]]:
        # A fleet has few distinct label sets: each text is decoded once (at 100,000
        # hosts the per-row decode was most of list()'s ~0.8 s).
        decoded = functools.lru_cache(maxsize=4096)(_labels_or_empty)
        return [
            {"agent_id": agent, "labels": decoded(labels), "last_seen": seen, "agent_version": v}
            for agent, labels, seen, v in self._db.execute(
                "SELECT agent_id, labels, last_seen, agent_version FROM hosts"
            ).fetchall()
        ]

    def all_labels(self) -> Iterator[dict[str, str]]:
        for (labels,) in self._db.execute("SELECT labels FROM hosts").fetchall():
            yield _labels_or_empty(labels)

    def liveness(
        self, heartbeat_check: str, deadline_before: float, *, noted: bool = True
    ) -> list[LivenessRow]:
        # Two indexed halves, each bounded by what is due rather than by the fleet
        # (issue #17: the full join cost 0.6 s a tick at 100k hosts): hosts whose
        # deadline (the hosts_deadline expression index) passed, and hosts whose
        # heartbeat key is not plainly ok (the check_state_abnormal partial index).
        # The second half's WHERE repeats the index's own predicate word for word:
        # SQLite uses a partial index only when the query states its condition.
        cols = (
            "SELECT h.agent_id, h.hostname, h.labels, h.last_seen, h.heartbeat_ttl_s,"
            " c.state, c.incident_id"
        )
        rows = self._db.execute(
            f"{cols} FROM hosts h LEFT JOIN check_state c"
            " ON c.host = h.agent_id AND c.check_id = ?1"
            " WHERE h.last_seen + h.heartbeat_ttl_s < ?2"
            f"{'' if noted else SILENCE_NOT_NOTED}"
            f" UNION ALL {cols} FROM check_state c JOIN hosts h ON h.agent_id = c.host"
            " WHERE c.check_id = ?1 AND (c.state <> 'ok' OR c.incident_id IS NOT NULL)"
            # Not those the first half returned (a silent host with its incident open is
            # in both): no duplicate rows to sort out in a long outage.
            " AND (h.last_seen + h.heartbeat_ttl_s < ?2) IS NOT 1",
            (heartbeat_check, deadline_before),
        ).fetchall()
        return _liveness_rows(rows)

    def list(self, *, after: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        # Keyset paging on the primary key: any page costs the same (issue #17). Two
        # statements, not "? IS NULL OR agent_id > ?": with the OR, SQLite scans the key
        # from its start instead of seeking to ``after``.
        where, args = ("", (limit,)) if after is None else (" WHERE agent_id > ?", (after, limit))
        rows = self._db.execute(
            "SELECT agent_id, hostname, labels, agent_version, first_seen, last_seen,"
            f" clock_offset_s, heartbeat_ttl_s FROM hosts{where} ORDER BY agent_id LIMIT ?",
            args,
        ).fetchall()
        return [
            {
                "agent_id": agent_id,
                "hostname": hostname,
                "labels": _labels_or_empty(labels),
                "agent_version": version,
                "first_seen": first_seen,
                "last_seen": last_seen,
                "clock_offset_s": offset,
                "heartbeat_ttl_s": ttl,
            }
            for agent_id, hostname, labels, version, first_seen, last_seen, offset, ttl in rows
        ]

    def load(self) -> list[tuple[str, str, dict[str, str], float, float | None, float]]:
        # ORDER BY rowid: first-seen order, which decides which hosts get per-host series.
        rows = fetch_strict_text(
            self._db,
            "SELECT agent_id, hostname, labels, last_seen, heartbeat_ttl_s, clock_offset_s"
            " FROM hosts ORDER BY rowid",
        )
        # A labels text that does not decode (a row edited by hand) reads as no labels:
        # start-up reads every host through here and must not fail on one row. A fleet
        # has few distinct label sets: each is decoded once (hosts sharing one share the
        # dict, which start-up only reads).
        decoded = functools.lru_cache(maxsize=4096)(_labels_or_empty)
        return [(a, h, decoded(labels), s, t, o) for a, h, labels, s, t, o in rows]


class SqliteSeen:
    """:class:`~collector.storage.protocols.SeenRepository` on SQLite.

    Keyed by host first so one report's ids share a page of the key index.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def record(
        self, host: str, batch_id: str, event_ids: Sequence[str], received_at: float
    ) -> tuple[bool, set[str]]:
        # One statement for the batch id and every event id; RETURNING yields only the
        # rows actually inserted.
        params: list[Any] = [host, SEEN_BATCH, batch_id, received_at]
        for event_id in event_ids:
            params += (host, SEEN_EVENT, event_id, received_at)
        rows = self._db.execute(_seen_insert_sql(1 + len(event_ids)), params).fetchall()
        batch_is_new = False
        new_ids: set[str] = set()
        for kind, ident in rows:
            if kind == SEEN_BATCH:
                batch_is_new = True
            else:
                new_ids.add(ident)
        return batch_is_new, new_ids

    def forget_events(self, host: str, event_ids: set[str]) -> None:
        self._db.execute(
            "DELETE FROM seen WHERE host = ? AND kind = ? AND id IN"
            f" ({', '.join('?' * len(event_ids))})",
            (host, SEEN_EVENT, *event_ids),
        )

    def prune(self, before: float, limit: int | None) -> int:
        if limit is None:
            cur = self._db.execute("DELETE FROM seen WHERE received_at < ?", (before,))
        else:
            cur = self._db.execute(
                "DELETE FROM seen WHERE rowid IN (SELECT rowid FROM seen"
                " WHERE received_at < ? ORDER BY received_at LIMIT ?)",
                (before, limit),
            )
        return cur.rowcount


class SqliteCheckResults:
    """:class:`~collector.storage.protocols.CheckResultRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def add(self, host: str, event: wire.CheckEvent, received_at: float) -> None:
        self._db.execute(
            "INSERT INTO check_results (host, event_id, seq, time, received_at, check_id,"
            " state, previous_state, value, message, remediation, ttl_s, flapping)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                host,
                event.event_id,
                event.seq,
                event.time,
                received_at,
                event.check,
                event.state,
                event.previous_state,
                event.value,
                event.message,
                event.remediation,
                event.ttl_s,
                int(event.flapping),
            ),
        )

    def latest_flapping(self, host: str, check: str) -> bool:
        row = self._db.execute(
            "SELECT flapping FROM check_results WHERE host = ? AND check_id = ?"
            " ORDER BY id DESC LIMIT 1",
            (host, check),
        ).fetchone()
        return row is not None and bool(row[0])

    def known_states(self, host: str, check: str, limit: int) -> list[tuple[float, str]]:
        # Newest first through the (host, check_id, id) index; unknown rows are stored on
        # change only, so they alternate with known ones and the scan stays near ``limit``.
        rows = self._db.execute(
            "SELECT received_at, state FROM check_results WHERE host = ? AND check_id = ?"
            " AND state != 'unknown' ORDER BY id DESC LIMIT ?",
            (host, check, limit),
        ).fetchall()
        return [(t, state) for t, state in reversed(rows)]


class SqliteKeys:
    """:class:`~collector.storage.protocols.KeyRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def load(self, host: str, check: str) -> KeyRow | None:
        row = self._db.execute(
            "SELECT state, awaiting, awaiting_since, incident_id, value, message, flapping"
            " FROM check_state WHERE host = ? AND check_id = ?",
            (host, check),
        ).fetchone()
        if row is None:
            return None
        return KeyRow(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))

    def save(self, host: str, check: str, key: KeyRow, updated_at: float) -> None:
        self._db.execute(
            "INSERT INTO check_state (host, check_id, state, value, message, updated_at,"
            " awaiting, awaiting_since, incident_id, flapping)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (host, check_id) DO UPDATE SET state = excluded.state,"
            " value = excluded.value, message = excluded.message,"
            " updated_at = excluded.updated_at, awaiting = excluded.awaiting,"
            " awaiting_since = excluded.awaiting_since, incident_id = excluded.incident_id,"
            " flapping = excluded.flapping",
            (
                host,
                check,
                key.state,
                key.value,
                key.message,
                updated_at,
                key.awaiting,
                key.awaiting_since,
                key.incident_id,
                int(key.flapping),
            ),
        )

    def pending(
        self, awaiting_before: float, deadline_before: float
    ) -> list[tuple[str, str, str, bool]]:
        # UNION, not OR: each half uses its partial index instead of a full scan; only
        # waits that began before ``awaiting_before`` (or never recorded a start).
        key = (
            "SELECT c.host, c.check_id, COALESCE(h.hostname, c.host),"
            " COALESCE(h.last_seen + h.heartbeat_ttl_s < ?2, 0) FROM check_state c"
            " LEFT JOIN hosts h ON h.agent_id = c.host WHERE "
        )
        rows = self._db.execute(
            f"{key}c.awaiting IS NOT NULL AND c.awaiting_since < ?1"
            f" UNION {key}c.awaiting IS NOT NULL AND c.awaiting_since IS NULL"
            f" UNION {key}c.flapping = 1",
            (awaiting_before, deadline_before),
        ).fetchall()
        return [(host, check, name, bool(silent)) for host, check, name, silent in rows]

    def detach_incident(self, incident_id: int) -> None:
        self._db.execute(
            "UPDATE check_state SET incident_id = NULL WHERE incident_id = ?", (incident_id,)
        )

    def states(self, hosts: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
        if hosts is None:
            return self._db.execute(
                "SELECT host, check_id, state FROM check_state ORDER BY host, check_id"
            ).fetchall()
        found: list[tuple[str, str, str]] = []
        for chunk in _chunks(hosts):
            found += self._db.execute(
                "SELECT host, check_id, state FROM check_state WHERE host IN"
                f" ({', '.join('?' * len(chunk))}) ORDER BY host, check_id",
                chunk,
            ).fetchall()
        return sorted(found)

    def unknown_by_check(self) -> dict[str, int]:
        return dict(
            self._db.execute(
                "SELECT check_id, COUNT(*) FROM check_state WHERE state = 'unknown'"
                " GROUP BY check_id"
            ).fetchall()
        )

    def critical_by_check(self) -> dict[str, int]:
        return dict(
            self._db.execute(
                "SELECT check_id, COUNT(*) FROM check_state WHERE state = 'critical'"
                " GROUP BY check_id"
            ).fetchall()
        )


class SqliteHostMetrics:
    """:class:`~collector.storage.protocols.HostMetricsRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection, name_sets: NameSets) -> None:
        self._db = db
        self._name_sets = name_sets

    def put(self, host: str, at: float, received_at: float, values: Mapping[str, float]) -> None:
        self._db.execute(HOST_METRICS_UPSERT, self._row(host, at, received_at, values))

    def put_many(self, rows: Sequence[tuple[str, float, float, Mapping[str, float]]]) -> None:
        self._db.executemany(HOST_METRICS_UPSERT, [self._row(*row) for row in rows])

    def _row(
        self, host: str, at: float, received_at: float, values: Mapping[str, float]
    ) -> tuple[Any, ...]:
        return (
            host,
            at,
            received_at,
            values.get(AGENT_CPU_SERIES),
            values.get(AGENT_RSS_SERIES),
            self._name_sets.id_of(tuple(values), self._store_names),
            pack_floats(values.values()),
        )

    def _store_names(self, names: tuple[str, ...]) -> int:
        return names_id(self._db, json.dumps(names))

    def latest(self, host: str) -> dict[str, float] | None:
        row = self._db.execute(
            "SELECT n.names, h.vals FROM host_metrics h JOIN metric_names n"
            " ON n.id = h.names_id WHERE h.host = ?",
            (host,),
        ).fetchone()
        if row is None:
            return None
        return dict(zip(json.loads(row[0]), unpack_floats(row[1]), strict=True))

    def footprints(self) -> Iterator[tuple[str, float, dict[str, float]]]:
        for host, at, cpu, rss in self._db.execute(
            "SELECT host, time, agent_cpu, agent_rss FROM host_metrics"
            " WHERE agent_cpu IS NOT NULL OR agent_rss IS NOT NULL"
        ).fetchall():
            own = {AGENT_CPU_SERIES: cpu, AGENT_RSS_SERIES: rss}
            yield host, at, {k: v for k, v in own.items() if v is not None}


class SqliteCounters:
    """:class:`~collector.storage.protocols.CounterRepository` on SQLite."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def add(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def load(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT name, value FROM counters").fetchall())


def _labels_or_empty(text: Any) -> dict[str, str]:
    try:
        labels = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return labels if isinstance(labels, dict) else {}


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    """``items`` in slices of at most ``size`` (bounded IN lists)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _liveness_rows(rows: list[tuple[Any, ...]]) -> list[LivenessRow]:
    """Rows of :meth:`SqliteHosts.liveness` as records, each host once."""
    # Each distinct label set decoded once (a fleet has few; the rows share the dict,
    # which the tick only reads), not one json.loads per silent host.
    decoded = functools.lru_cache(maxsize=4096)(_labels_or_empty)
    out: dict[str, LivenessRow] = {}
    for host, hostname, labels, seen, ttl, state, incident in rows:
        out[host] = LivenessRow(host, hostname, decoded(labels), seen, ttl, state, incident)
    return list(out.values())


@functools.lru_cache(maxsize=64)
def _seen_insert_sql(rows: int) -> str:
    """``INSERT OR IGNORE`` of ``rows`` ids into ``seen``, returning those inserted
    (RETURNING needs SQLite 3.35, 2021)."""
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return (
        f"INSERT OR IGNORE INTO seen (host, kind, id, received_at) VALUES {values}"
        " RETURNING kind, id"
    )
