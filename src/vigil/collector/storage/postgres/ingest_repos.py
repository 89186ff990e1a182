"""PostgreSQL repositories of what reports bring: hosts, seen ids, check results and key
states, remediation runs, metrics summaries, counters. Queries only; no decisions.

The statements mirror ``sqlite/ingest_repos.py`` one for one (same order, same
results); where they differ it is for a PostgreSQL type (``jsonb``, arrays, booleans)
or idiom (``ANY(array)`` instead of a list of placeholders, so one prepared statement
serves every size).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from vigil import wire
from vigil.collector.storage.postgres.schema import SEEN_BATCH, SEEN_EVENT
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
from vigil.collector.storage.unit_of_work import NameSets
from vigil.collector.telemetry.buckets import AGENT_CPU_SERIES, AGENT_RSS_SERIES

HOST_METRICS_UPSERT = (
    "INSERT INTO host_metrics (host, time, received_at, agent_cpu, agent_rss, names_id,"
    " vals) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (host) DO UPDATE SET"
    " time = excluded.time, received_at = excluded.received_at,"
    " agent_cpu = excluded.agent_cpu, agent_rss = excluded.agent_rss,"
    " names_id = excluded.names_id, vals = excluded.vals"
    " WHERE excluded.time >= host_metrics.time"
)


def names_id(db: psycopg.Connection, names: Sequence[str]) -> int:
    """The ``metric_names`` id of a series-name list, stored if new."""
    row = db.execute(
        "WITH added AS (INSERT INTO metric_names (names) VALUES (%s)"
        " ON CONFLICT (names) DO NOTHING RETURNING id)"
        " SELECT id FROM added UNION ALL SELECT id FROM metric_names WHERE names = %s",
        (list(names), list(names)),
    ).fetchone()
    assert row is not None
    return int(row[0])


class PgHosts:
    """:class:`~collector.storage.protocols.HostRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def before(self, agent_id: str) -> HostBefore | None:
        # FOR UPDATE: the row stays locked until the transaction ends, so the dedup
        # check and the new mark (upsert) are atomic per host. A host not stored yet has
        # no row to lock: the schema's write lock (PgUnitOfWork.begin), which every
        # write transaction takes first, covers that case (and today every other too).
        # The heartbeat key comes along (one round trip, not two); only the host row is
        # locked (FOR UPDATE OF h: the key's side of the outer join may be absent).
        row = self._db.execute(
            "SELECT h.last_batch_id, h.clock_offset_s, h.last_seen, h.epoch, h.mark,"
            " c.incident_id IS NOT NULL FROM hosts h LEFT JOIN check_state c"
            " ON c.host = h.agent_id AND c.check_id = %s WHERE h.agent_id = %s FOR UPDATE OF h",
            (wire.HEARTBEAT_CHECK, agent_id),
        ).fetchone()
        if row is None:
            return None
        batch, offset, seen, epoch, mark, heartbeat_open = row
        return HostBefore(
            batch,
            offset,
            seen,
            None if epoch is None else bytes(epoch).hex(),
            mark,
            bool(heartbeat_open),
        )

    def before_unchanged(self, reports: Sequence[wire.Report]) -> dict[str, HostBefore]:
        # As before(), for a group: FOR UPDATE OF h locks the rows read, in agent_id
        # order (the LockRows step runs over the sorted rows, so two writers never lock
        # one group's hosts in opposite orders). jsonb labels come back as a dict.
        by_agent = {report.agent_id: report for report in reports}
        rows = self._db.execute(
            f"{UNCHANGED_COLUMNS} ON c.host = h.agent_id AND c.check_id = %s"
            " WHERE h.agent_id = ANY(%s) ORDER BY h.agent_id FOR UPDATE OF h",
            (wire.HEARTBEAT_CHECK, list(by_agent)),
        ).fetchall()
        return unchanged_hosts(rows, by_agent)

    def refresh_many(self, rows: Sequence[HostRefresh]) -> None:
        # By agent_id alone: before_unchanged locked these rows and read their identity
        # in this transaction; only unindexed columns are set, so the updates stay HOT.
        with self._db.cursor() as cur:
            cur.executemany(
                "UPDATE hosts SET last_seen = %s, last_sent_at = %s, clock_offset_s = %s,"
                " heartbeat_ttl_s = COALESCE(%s::double precision, heartbeat_ttl_s),"
                " last_batch_id = %s, epoch = %s, mark = %s WHERE agent_id = %s",
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
        params["labels"] = Jsonb(dict(report.labels))
        # The steady state first: a known host whose name, labels and version are as
        # stored gets a plain UPDATE of its liveness and dedup columns (no speculative
        # insert, and no indexed name/label column set); the row ends as the upsert below
        # would leave it, which any other case (a new host, a rename) takes.
        if self._db.execute(
            "UPDATE hosts SET last_seen = %(at)s, last_sent_at = %(sent)s,"
            " clock_offset_s = %(offset)s,"
            " heartbeat_ttl_s = COALESCE(%(ttl)s::double precision, heartbeat_ttl_s),"
            " last_batch_id = %(batch)s, epoch = COALESCE(%(epoch)s::bytea, epoch),"
            " mark = COALESCE(%(mark)s::bigint, mark)"
            " WHERE agent_id = %(agent)s AND hostname = %(hostname)s"
            " AND labels = %(labels)s AND agent_version = %(version)s",
            params,
        ).rowcount:
            return
        self._db.execute(
            "INSERT INTO hosts (agent_id, hostname, labels, agent_version, first_seen,"
            " last_seen, last_sent_at, clock_offset_s, heartbeat_ttl_s, last_batch_id,"
            " epoch, mark)"
            " VALUES (%(agent)s, %(hostname)s, %(labels)s, %(version)s, %(at)s, %(at)s,"
            " %(sent)s, %(offset)s, %(ttl)s::double precision, %(batch)s,"
            " %(epoch)s::bytea, %(mark)s::bigint)"
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
            "SELECT hostname, labels FROM hosts WHERE agent_id = %s", (agent_id,)
        ).fetchone()
        return None if row is None else (row[0], _labels_or_empty(row[1]))

    def versions(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT agent_id, agent_version FROM hosts").fetchall())

    def count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM hosts").fetchone()
        return int(row[0]) if row else 0

    def fleet(self) -> list[dict[str, Any]]:
        # labels as text, each distinct text decoded once (a fleet has few label sets;
        # jsonb would be decoded row by row).
        decoded = functools.lru_cache(maxsize=4096)(_labels_from_text)
        return [
            {"agent_id": agent, "labels": decoded(labels), "last_seen": seen, "agent_version": v}
            for agent, labels, seen, v in self._db.execute(
                "SELECT agent_id, labels::text, last_seen, agent_version FROM hosts"
            ).fetchall()
        ]

    def all_labels(self) -> Iterator[dict[str, str]]:
        for (labels,) in self._db.execute("SELECT labels FROM hosts").fetchall():
            yield _labels_or_empty(labels)

    def liveness(
        self, heartbeat_check: str, deadline_before: float, *, noted: bool = True
    ) -> list[LivenessRow]:
        # Two indexed halves bounded by what is due, not by the fleet (issue #17): hosts
        # whose deadline passed (the hosts_deadline expression index) and hosts whose
        # heartbeat key is not plainly ok (the check_state_abnormal partial index, whose
        # predicate the second WHERE repeats so the planner can prove it).
        # labels as text, each distinct set decoded once per tick (as in load()): psycopg's
        # jsonb decode per row was ~10 ms of a 45 ms tick with 1,000 silent hosts.
        cols = (
            "SELECT h.agent_id, h.hostname, h.labels::text, h.last_seen, h.heartbeat_ttl_s,"
            " c.state, c.incident_id"
        )
        rows = self._db.execute(  # type: ignore[call-overload]  # constants only
            f"{cols} FROM hosts h LEFT JOIN check_state c"
            " ON c.host = h.agent_id AND c.check_id = %(check)s"
            " WHERE (h.last_seen + h.heartbeat_ttl_s) < %(before)s"
            f"{'' if noted else SILENCE_NOT_NOTED}"
            f" UNION ALL {cols} FROM check_state c JOIN hosts h ON h.agent_id = c.host"
            " WHERE c.check_id = %(check)s"
            " AND (c.state <> 'ok' OR c.incident_id IS NOT NULL)"
            # Not those the first half returned (a silent host with its incident open is
            # in both): half the rows and label decodes in a long outage.
            " AND ((h.last_seen + h.heartbeat_ttl_s) < %(before)s) IS NOT TRUE",
            {"check": heartbeat_check, "before": deadline_before},
        ).fetchall()
        decoded = functools.lru_cache(maxsize=4096)(_labels_from_text)
        out: dict[str, LivenessRow] = {}
        for host, hostname, labels, seen, ttl, state, incident in rows:
            out[host] = LivenessRow(host, hostname, decoded(labels), seen, ttl, state, incident)
        return list(out.values())

    def list(self, *, after: str | None = None, limit: int = -1) -> list[dict[str, Any]]:
        # COLLATE "C": byte order, as SQLite sorts text, whatever the database's locale;
        # the hosts_agent_c index serves this order, so any keyset page costs the same.
        # Two statements rather than "IS NULL OR >": a generic plan would not seek.
        where = "" if after is None else ' WHERE agent_id COLLATE "C" > %(after)s'
        rows = self._db.execute(  # type: ignore[call-overload]  # constants only
            "SELECT agent_id, hostname, labels, agent_version, first_seen, last_seen,"
            f" clock_offset_s, heartbeat_ttl_s FROM hosts{where}"
            ' ORDER BY agent_id COLLATE "C" LIMIT %(limit)s',
            {"after": after, "limit": None if limit < 0 else limit},
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
        # labels as text, each distinct set decoded once (a fleet has few; hosts sharing
        # one share the dict, which start-up only reads), not one jsonb parse per host.
        rows = self._db.execute(
            "SELECT agent_id, hostname, labels::text, last_seen, heartbeat_ttl_s,"
            " clock_offset_s FROM hosts ORDER BY first_order"
        ).fetchall()
        decoded = functools.lru_cache(maxsize=4096)(_labels_from_text)
        return [(a, h, decoded(labels), s, t, o) for a, h, labels, s, t, o in rows]


class PgSeen:
    """:class:`~collector.storage.protocols.SeenRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def record(
        self, host: str, batch_id: str, event_ids: Sequence[str], received_at: float
    ) -> tuple[bool, set[str]]:
        # One statement for the batch id and every event id; RETURNING yields only the
        # rows inserted. A concurrent writer of the same id waits for this transaction
        # (unique index), then inserts nothing.
        kinds = [SEEN_BATCH] + [SEEN_EVENT] * len(event_ids)
        rows = self._db.execute(
            "INSERT INTO seen (host, kind, id, received_at)"
            " SELECT %s, k, i, %s FROM unnest(%s::smallint[], %s::text[]) AS t (k, i)"
            " ON CONFLICT DO NOTHING RETURNING kind, id",
            (host, received_at, kinds, [batch_id, *event_ids]),
        ).fetchall()
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
            "DELETE FROM seen WHERE host = %s AND kind = %s AND id = ANY(%s::text[])",
            (host, SEEN_EVENT, list(event_ids)),
        )

    def prune(self, before: float, limit: int | None) -> int:
        if limit is None:
            cur = self._db.execute("DELETE FROM seen WHERE received_at < %s", (before,))
        else:
            cur = self._db.execute(
                "DELETE FROM seen WHERE ctid = ANY(ARRAY(SELECT ctid FROM seen"
                " WHERE received_at < %s ORDER BY received_at LIMIT %s))",
                (before, limit),
            )
        return cur.rowcount


class PgCheckResults:
    """:class:`~collector.storage.protocols.CheckResultRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def add(self, host: str, event: wire.CheckEvent, received_at: float) -> None:
        self._db.execute(
            "INSERT INTO check_results (host, event_id, seq, time, received_at, check_id,"
            " state, previous_state, value, message, remediation, ttl_s, flapping)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
                bool(event.flapping),
            ),
        )

    def latest_flapping(self, host: str, check: str) -> bool:
        row = self._db.execute(
            "SELECT flapping FROM check_results WHERE host = %s AND check_id = %s"
            " ORDER BY id DESC LIMIT 1",
            (host, check),
        ).fetchone()
        return row is not None and bool(row[0])

    def known_states(self, host: str, check: str, limit: int) -> list[tuple[float, str]]:
        # Newest first through the (host, check_id, id) index, as on SQLite.
        rows = self._db.execute(
            "SELECT received_at, state FROM check_results WHERE host = %s AND check_id = %s"
            " AND state != 'unknown' ORDER BY id DESC LIMIT %s",
            (host, check, limit),
        ).fetchall()
        return [(t, state) for t, state in reversed(rows)]


class PgKeys:
    """:class:`~collector.storage.protocols.KeyRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def load(self, host: str, check: str) -> KeyRow | None:
        row = self._db.execute(
            "SELECT state, awaiting, awaiting_since, incident_id, value, message, flapping"
            " FROM check_state WHERE host = %s AND check_id = %s",
            (host, check),
        ).fetchone()
        if row is None:
            return None
        return KeyRow(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))

    def save(self, host: str, check: str, key: KeyRow, updated_at: float) -> None:
        self._db.execute(
            "INSERT INTO check_state (host, check_id, state, value, message, updated_at,"
            " awaiting, awaiting_since, incident_id, flapping)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
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
                bool(key.flapping),
            ),
        )

    def pending(
        self, awaiting_before: float, deadline_before: float
    ) -> list[tuple[str, str, str, bool]]:
        # UNION, not OR: each half uses its partial index instead of a full scan; only
        # waits that began before ``awaiting_before`` (or never recorded a start).
        key = (
            "SELECT c.host, c.check_id, COALESCE(h.hostname, c.host),"
            " COALESCE((h.last_seen + h.heartbeat_ttl_s) < %(deadline)s, FALSE)"
            " FROM check_state c LEFT JOIN hosts h ON h.agent_id = c.host WHERE "
        )
        rows = self._db.execute(  # type: ignore[call-overload]  # constants only
            f"{key}c.awaiting IS NOT NULL AND c.awaiting_since < %(before)s"
            f" UNION {key}c.awaiting IS NOT NULL AND c.awaiting_since IS NULL"
            f" UNION {key}c.flapping",
            {"before": awaiting_before, "deadline": deadline_before},
        ).fetchall()
        return [(host, check, name, bool(silent)) for host, check, name, silent in rows]

    def detach_incident(self, incident_id: int) -> None:
        self._db.execute(
            "UPDATE check_state SET incident_id = NULL WHERE incident_id = %s", (incident_id,)
        )

    def states(self, hosts: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
        where = "" if hosts is None else " WHERE host = ANY(%s)"
        rows = self._db.execute(  # type: ignore[call-overload]  # constants only
            f"SELECT host, check_id, state FROM check_state{where}"
            ' ORDER BY host COLLATE "C", check_id COLLATE "C"',
            () if hosts is None else (list(hosts),),
        ).fetchall()
        return [tuple(r) for r in rows]

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


class PgHostMetrics:
    """:class:`~collector.storage.protocols.HostMetricsRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection, name_sets: NameSets) -> None:
        self._db = db
        self._name_sets = name_sets

    def put(self, host: str, at: float, received_at: float, values: Mapping[str, float]) -> None:
        self._db.execute(HOST_METRICS_UPSERT, self._row(host, at, received_at, values))

    def put_many(self, rows: Sequence[tuple[str, float, float, Mapping[str, float]]]) -> None:
        with self._db.cursor() as cur:
            cur.executemany(HOST_METRICS_UPSERT, [self._row(*row) for row in rows])

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
            [float(v) for v in values.values()],
        )

    def _store_names(self, names: tuple[str, ...]) -> int:
        return names_id(self._db, names)

    def latest(self, host: str) -> dict[str, float] | None:
        row = self._db.execute(
            "SELECT n.names, h.vals FROM host_metrics h JOIN metric_names n"
            " ON n.id = h.names_id WHERE h.host = %s",
            (host,),
        ).fetchone()
        if row is None:
            return None
        return dict(zip(row[0], row[1], strict=True))

    def footprints(self) -> Iterator[tuple[str, float, dict[str, float]]]:
        for host, at, cpu, rss in self._db.execute(
            "SELECT host, time, agent_cpu, agent_rss FROM host_metrics"
            " WHERE agent_cpu IS NOT NULL OR agent_rss IS NOT NULL"
        ).fetchall():
            own = {AGENT_CPU_SERIES: cpu, AGENT_RSS_SERIES: rss}
            yield host, at, {k: v for k, v in own.items() if v is not None}


class PgCounters:
    """:class:`~collector.storage.protocols.CounterRepository` on PostgreSQL."""

    def __init__(self, db: psycopg.Connection) -> None:
        self._db = db

    def add(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
            (name, n),
        )

    def load(self) -> dict[str, int]:
        return {n: int(v) for n, v in self._db.execute("SELECT name, value FROM counters")}


def _labels_from_text(text: str) -> dict[str, str]:
    try:
        return _labels_or_empty(json.loads(text))
    except (TypeError, ValueError):
        return {}


def _labels_or_empty(labels: Any) -> dict[str, str]:
    # jsonb comes back decoded; anything but an object (a row edited by hand) reads as no
    # labels, as in the SQLite backend: start-up reads every host and must not fail.
    return labels if isinstance(labels, dict) else {}
