"""Scale benchmark: a store the size of a large fleet, read through the real HTTP API.

Fills a fresh store (SQLite file, or a fresh schema of a PostgreSQL database, dropped
afterwards) to ``--hosts`` hosts, ``--incidents`` incidents spread over ``--days`` days of
history, plus problems, remediation runs, check states and dedup ids (``seen``) in
proportion, then starts a real collector process on it (loopback, ephemeral port) and
measures:

* ``start_s``: collector process start to the first ``/healthz`` 200, the median of
  ``--starts`` starts (default 3; the modules compiled to bytecode first, as an install
  does);
* p50/p99 of every list endpoint with each filter (incidents by state, service, check,
  host, priority, ``offset`` at its bound and a ``cursor`` half-way down; problems by
  state, kind, check and a cursor; hosts (the default page, a 1000-host page, a cursor
  half-way); remediation stats and runs by host, remediation, offset and cursor),
  sequential requests on one keep-alive connection, while the collector's own
  tick runs every 5 s as in production (so a request that meets a tick waits for it);
* ``tick_ms``: the collector exposes no tick duration, so after it stops, the desk is
  opened on the same store exactly as the collector opens it (``app.open_desk``) and one
  tick's work is timed the way ``app.tick_once`` does it as leader: ``desk.tick``, then
  ``refresh_metrics_figures``, then ``prune_seen`` (one chunk); median of ``--ticks``;
* ``db_bytes``: the database on disk (SQLite file + WAL; PostgreSQL: every relation of
  the schema incl. indexes and TOAST), and ``dedup_bytes_per_agent``: each host's
  sequence dedup state (its last batch id, epoch and mark: fixed-size columns of the
  host row, summed per value) plus the ``seen`` table with its indexes, divided by the
  number of hosts. Agents that send sequence numbers leave no ids in ``seen``; only
  older agents do, for ``storage.dedup_retention`` (``--seen-per-host`` fills such ids,
  0 by default; ``dedup_bytes_per_id`` measures them and
  ``dedup_bytes_per_agent_steady`` extrapolates them to :data:`IDS_PER_AGENT_DAY` ids a
  day over ``--days``, a floor for an older agent).

How the fill is fast: no row goes through Python. Each table is filled by one
``INSERT ... SELECT`` over a generated sequence inside the database (SQLite: a recursive
CTE in one transaction with ``synchronous=OFF``; PostgreSQL: ``generate_series``), with
values derived from the row number (deterministic: same arguments, same store). The
schema itself is created by the storage layer (``create_storage``), so the tables and
indexes are exactly the collector's; ids come from the tables' own sequences. 1M
incidents take seconds to tens of seconds on either backend (printed as ``fill_s``).

What the fill contains per host: 2 check states (one ``ok``, 1% of hosts ``critical``
awaiting a remediation result), ``--seen-per-host`` dedup ids spread over the history
(half batch ids, half event ids; 0 by default), a last batch id, epoch and mark,
``last_seen`` within the last 2 minutes and a heartbeat TTL of a day for 99% of hosts
(none falls silent during the run: agents would be reporting), 1% silent for two days.
Incidents: 1% open, 4% prevented, the rest resolved; 8 checks, 5 services, P1..P4; one
problem per 100 incidents (linked to one incident each), one remediation run per 4
incidents. Not filled: timelines, metrics summaries, check result history (no list
endpoint reads them).

Run: ``.venv/bin/python bench/scale.py --backend sqlite|postgresql [--dsn URL]
[--hosts N] [--incidents N] [--days D]``. Targets: every endpoint p99 <= 100 ms, tick
<= 50 ms, start <= 2 s, dedup state <= 64 B per agent. The last line is JSON.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.procs import collector_config, read_line, spawn_collector, stop  # noqa: E402
from vigil.collector.storage.factory import create_storage  # noqa: E402
from vigil.collector.storage.url import sqlite_url  # noqa: E402

AGENT_TOKEN = "scale-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "scale-admin-token-0123456789abcdef0123456789abcdef"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CHECKS = ("disk_free", "mem_pressure", "cpu_load", "service_up", "cert_expiry", "dns", "vpn", "av")
SERVICES = ("mail", "vpn", "storage", "identity", "print")
REMEDIATIONS = ("clean_tmp", "restart_service", "flush_dns", "renew_cert")
# The dedup ids a default agent leaves per day: a batch a minute (the heartbeat) holding
# at least one event, each id kept for ``storage.dedup_retention`` (14 days by default).
# Metrics summaries and check events add more; this is a floor, for the extrapolation.
IDS_PER_AGENT_DAY = 2 * 1440
# Events a default agent writes a day (docs/delivery.md), for the filled marks' size.
EVENTS_PER_AGENT_DAY = 1750
TARGET_P99_MS, TARGET_TICK_MS, TARGET_START_S, TARGET_DEDUP_B = 100.0, 50.0, 2.0, 64.0
# Live hosts' heartbeat TTL in the fill: a day, so no host falls silent while the bench
# runs (no agent reports; with a real 180 s TTL thousands would go silent a few minutes in
# and every tick would open incidents for them: a mass outage, not the steady state).
HEARTBEAT_TTL_S = 86400.0
START_TIMEOUT_S = 120.0  # a collector not answering /healthz by then is a failed run
FIRST_TICK_MAX_S = 60.0  # bound of the first-tick phase


@dataclass(frozen=True)
class Dialect:
    """The few SQL spellings that differ between the backends."""

    name: str
    seq: str  # a CTE header naming a sequence s(x) of 1..{n}
    seq_from: str  # FROM clause for it
    json_cast: str  # suffix turning a text literal into the JSON column type
    false: str  # a boolean column's false (SQLite stores 0)

    def agent(self, expr: str) -> str:
        """The agent id of host number ``expr`` (0-based): ``agent-00000042``."""
        if self.name == "sqlite":
            return f"printf('agent-%08d', {expr})"
        return f"('agent-' || lpad(({expr})::text, 8, '0'))"

    def text(self, expr: str) -> str:
        """``expr`` as text (for ``||``)."""
        return f"CAST({expr} AS TEXT)"

    def hex32(self, expr: str) -> str:
        """32 lowercase hex digits derived from ``expr`` (a batch id as the agent makes)."""
        if self.name == "sqlite":
            return "lower(hex(randomblob(16)))"
        return f"md5(({expr})::text)"

    def bytes16(self, expr: str) -> str:
        """16 bytes derived from ``expr`` (an epoch as the collector stores it)."""
        if self.name == "sqlite":
            return "randomblob(16)"
        return f"decode(md5(({expr})::text || 'epoch'), 'hex')"


SQLITE = Dialect(
    "sqlite",
    "WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < {n}) ",
    "s",
    "",
    "0",
)
# bigint: the row number times the host stride (7919) overflows int4 past 271,000 rows.
POSTGRES = Dialect("postgresql", "", "generate_series(1::bigint, {n}) AS s(x)", "::jsonb", "false")


def pick(expr: str, values: tuple[str, ...]) -> str:
    """SQL choosing ``values[expr % len(values)]`` (a CASE: portable, no arrays)."""
    whens = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values))
    return f"(CASE ({expr}) % {len(values)} {whens} END)"


def fill_statements(
    d: Dialect, hosts: int, incidents: int, days: float, seen_per_host: int, now: float
) -> list[tuple[str, str]]:
    """``(table, INSERT ... SELECT)`` for every table the fill touches, in order.

    Host of row x is ``(x * 7919) % hosts`` (a prime stride: spread, deterministic);
    times spread linearly over ``days`` before ``now``.
    """
    span = days * 86400.0
    h = f"((x * 7919) % {hosts})"

    def q(n: int, table: str, cols: str, select: str) -> str:
        return (
            d.seq.format(n=n)
            + f"INSERT INTO {table} ({cols}) SELECT {select} FROM {d.seq_from.format(n=n)}"
        )

    at = f"({now} - {span} * (x % 100003) / 100003.0)"
    n_problems = max(1, incidents // 100)
    n_runs = max(1, incidents // 4)
    n_seen = hosts * seen_per_host
    return [
        (
            "hosts",
            q(
                hosts,
                "hosts",
                "agent_id, hostname, labels, agent_version, first_seen, last_seen,"
                " last_sent_at, clock_offset_s, heartbeat_ttl_s, last_batch_id, epoch, mark",
                f"{d.agent('x - 1')}, 'ws-' || {d.text('x - 1')},"
                f" '{{\"role\": \"laptop\"}}'{d.json_cast}, '0.9.0', {now - span},"
                f" CASE WHEN x % 100 = 0 THEN {now - 2 * HEARTBEAT_TTL_S}"
                f" ELSE {now} - (x % 120) END,"
                f" {now} - (x % 120), 0.0, {HEARTBEAT_TTL_S},"
                # The sequence dedup state: the last batch id, the epoch and the mark (the
                # seq an agent reaches in ``days`` at ~1,750 events a day).
                f" {d.hex32('x')}, {d.bytes16('x')},"
                f" {round(EVENTS_PER_AGENT_DAY * days)} + x % 1000",
            ),
        ),
        (
            # What each host's reports say it runs (the collector reads them all at
            # start, so a restart does not rewrite them): half on each of two versions.
            "policy_hosts",
            q(
                hosts,
                "policy_hosts",
                "agent_id, policy, version, seen_at",
                f"{d.agent('x - 1')}, 'baseline', 1 + x % 2, {now} - (x % 120)",
            ),
        ),
        (
            "check_state",
            q(
                hosts * 2,
                "check_state",
                "host, check_id, state, value, message, updated_at, awaiting,"
                " awaiting_since, incident_id, flapping",
                f"{d.agent('(x - 1) / 2')}, {pick('x', ('disk_free', 'mem_pressure'))},"
                " CASE WHEN x % 200 = 1 THEN 'critical' ELSE 'ok' END, 42.0, 'fill',"
                f" {now} - (x % 600),"
                " CASE WHEN x % 200 = 1 THEN 'clean_tmp' END,"
                f" CASE WHEN x % 200 = 1 THEN {now} - 30 END, NULL, {d.false}",
            ),
        ),
        (
            "incidents",
            q(
                incidents,
                "incidents",
                "host, hostname, check_id, state, priority, opened_at, resolved_at, value,"
                " message, remediation, remediation_outcome, resolution, service, impact,"
                " urgency, sla_due, groups, flapping",
                f"{d.agent(h)}, 'ws-' || {d.text(h)}, {pick('x / 7', CHECKS)},"
                " CASE WHEN x % 100 = 0 THEN 'open' WHEN x % 25 = 1 THEN 'prevented'"
                " ELSE 'resolved' END,"
                f" {pick('x / 3', ('P1', 'P2', 'P3', 'P4'))}, {at},"
                f" CASE WHEN x % 100 = 0 THEN NULL ELSE {at} + 600 END, 91.5,"
                " 'disk 91.5% used', 'clean_tmp', 'success',"
                " CASE WHEN x % 100 = 0 THEN NULL ELSE 'recovered' END,"
                f" {pick('x / 11', SERVICES)}, 'medium', 'medium', {at} + 86400,"
                f" '[]'{d.json_cast}, {d.false}",
            ),
        ),
        (
            "problems",
            q(
                n_problems,
                "problems",
                "kind, check_id, host, hostname, service, impact, urgency, priority, sla_due,"
                " state, opened_at, resolved_at, summary",
                f"{pick('x', ('recurring', 'recurring', 'fleet', 'self_healed'))},"
                f" {pick('x / 4', CHECKS)},"
                f" CASE WHEN x % 4 IN (0, 1) THEN {d.agent(h)} END,"
                f" CASE WHEN x % 4 IN (0, 1) THEN 'ws-' || {d.text(h)} END,"
                f" {pick('x / 5', SERVICES)}, 'medium', 'medium', 'P3', {at} + 86400,"
                f" CASE WHEN x % 10 = 0 THEN 'open' ELSE 'resolved' END, {at},"
                f" CASE WHEN x % 10 = 0 THEN NULL ELSE {at} + 3600 END, 'fill problem'",
            ),
        ),
        (
            "problem_incidents",
            q(
                n_problems,
                "problem_incidents",
                "problem_id, incident_id",
                f"x, ((x * 97) % {incidents}) + 1",
            ),
        ),
        (
            "remediation_runs",
            q(
                n_runs,
                "remediation_runs",
                "host, hostname, received_at, event_id, seq, time, remediation, check_id,"
                " outcome, exit_code, started_at, duration_s, value_before, value_after,"
                " output, output_truncated, script_sha256, dry_run",
                f"{d.agent(h)}, 'ws-' || {d.text(h)}, {at}, 'ev-' || {d.text('x')}, x, {at},"
                f" {pick('x', REMEDIATIONS)}, {pick('x / 4', CHECKS)},"
                " CASE WHEN x % 10 = 0 THEN 'failed' ELSE 'success' END,"
                f" CASE WHEN x % 10 = 0 THEN 1 ELSE 0 END, {at}, 1.5, 91.5, 40.0,"
                f" 'freed 2 GB', {d.false}, '{'0' * 64}', {d.false}",
            ),
        ),
        # The remediation summaries the collector keeps as each run is stored (schema 10 /
        # migration 6), filled from the runs just as a migration fills them.
        (
            "remediation_outcomes",
            "INSERT INTO remediation_outcomes (remediation, version, outcome, runs)"
            " SELECT remediation, script_sha256, outcome, COUNT(*) FROM remediation_runs"
            " GROUP BY remediation, script_sha256, outcome",
        ),
        (
            "remediation_hosts",
            "INSERT INTO remediation_hosts (remediation, host)"
            " SELECT DISTINCT remediation, host FROM remediation_runs",
        ),
        (
            "remediation_totals",
            "INSERT INTO remediation_totals (remediation, hosts)"
            " SELECT remediation, COUNT(*) FROM remediation_hosts GROUP BY remediation",
        ),
        (
            "seen",
            q(
                n_seen,
                "seen",
                "host, kind, id, received_at",
                f"{d.agent(f'(x - 1) % {hosts}')}, x % 2,"
                f" '0f3c2a1e-5b7d-4c9a-8e6f-' || {d.text('x')},"
                f" {now} - {span} * ((x - 1) / {hosts}) / {max(1, seen_per_host)}",
            ),
        ),
    ]


# --------------------------------------------------------------------------- backends


@dataclass
class Store:
    """A filled store: the collector's ``storage`` YAML, and how to size and drop it."""

    backend: str
    url: str  # the storage URL, for opening it from this process
    storage_yaml: str
    db_bytes: Callable[[], int]
    seen_bytes: Callable[[], int]
    drop: Callable[[], None]
    # Bytes the hosts rows spend on sequence dedup (last_batch_id, epoch, mark), summed.
    mark_bytes: Callable[[], int] = lambda: 0


def sqlite_store(folder: Path, stmts: list[tuple[str, str]]) -> tuple[Store, dict[str, float]]:
    """Create the schema through the storage layer, then fill it with raw SQL."""
    import sqlite3

    path = folder / "collector.db"
    create_storage(sqlite_url(path)).close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")  # a bench fill: nothing to lose on a crash
    timings: dict[str, float] = {}
    seen_before = 0
    for table, sql in stmts:
        if table == "seen":
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            seen_before = path.stat().st_size
        t0 = time.perf_counter()
        db.execute("BEGIN")
        db.execute(sql)
        db.execute("COMMIT")
        timings[table] = time.perf_counter() - t0
    db.execute("ANALYZE")  # what an operator's periodic `PRAGMA optimize` would leave
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    seen_size = path.stat().st_size - seen_before  # seen is filled last: its pages
    # Each value's stored bytes plus its one-byte type code in the record header; the
    # mark is counted at 8 bytes although SQLite stores small integers in fewer.
    (mark_size,) = db.execute(
        "SELECT COALESCE(SUM(length(epoch) + 1 + 8 + 1 + length(last_batch_id) + 1), 0) FROM hosts"
    ).fetchone()
    db.close()

    def size() -> int:
        return sum(p.stat().st_size for p in folder.glob("collector.db*"))

    return (
        Store(
            "sqlite",
            sqlite_url(path),
            "{sqlite_path: collector.db}",
            size,
            lambda: seen_size,
            lambda: None,
            lambda: int(mark_size),
        ),
        timings,
    )


def with_schema(dsn: str, schema: str) -> str:
    """``dsn`` with ``options=-csearch_path=schema`` added (libpq URI query)."""
    sep = "&" if "?" in dsn else "?"
    return f"{dsn}{sep}options=" + urllib.parse.quote(f"-csearch_path={schema}")


def postgres_store(dsn: str, stmts: list[tuple[str, str]]) -> tuple[Store, dict[str, float]]:
    """A fresh schema ``vigil_scale_<pid>`` in ``dsn``'s database, dropped by ``drop``."""
    import psycopg
    from psycopg import sql

    schema = f"vigil_scale_{os.getpid()}"
    admin = psycopg.connect(dsn, autocommit=True)
    admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))

    def drop() -> None:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        admin.close()

    url = with_schema(dsn, schema)
    timings: dict[str, float] = {}
    try:
        create_storage(url).close()
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("SET synchronous_commit = off")
            for table, stmt in stmts:
                t0 = time.perf_counter()
                db.execute(stmt)  # type: ignore[call-overload]  # our constants
                timings[table] = time.perf_counter() - t0
            db.execute("VACUUM ANALYZE")  # visibility map + statistics, as autovacuum would
    except BaseException:
        drop()
        raise

    def total(where: str) -> int:
        row = admin.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            f" WHERE n.nspname = %s AND c.relkind IN ('r', 'm') {where}",
            (schema,),
        ).fetchone()
        return int(row[0]) if row else 0

    store = Store(
        "postgresql",
        url,
        "{url: " + json.dumps(url) + "}",
        lambda: total(""),
        lambda: total("AND c.relname = 'seen'"),
        drop,
        lambda: int(
            admin.execute(
                sql.SQL(
                    "SELECT COALESCE(SUM(pg_column_size(epoch) + pg_column_size(mark)"
                    " + pg_column_size(last_batch_id)), 0) FROM {}.hosts"
                ).format(sql.Identifier(schema))
            ).fetchone()[0]  # type: ignore[index]
        ),
    )
    return store, timings


# --------------------------------------------------------------------------- measuring


def endpoints(hosts: int, incidents: int) -> list[tuple[str, str]]:
    """``(name, path)`` of every list endpoint with each filter (deep pages: a cursor
    half-way; ``offset`` at its bound, :data:`MAX_OFFSET`)."""
    from vigil.collector.api.paging import MAX_OFFSET, encode_cursor

    host = f"agent-{(7919 * 42) % hosts:08d}"
    inc = "/api/v1/incidents"
    runs = "/api/v1/remediations/runs"
    half_host = encode_cursor(f"agent-{hosts // 2:08d}")
    return [
        ("incidents", inc),
        ("incidents state=open", f"{inc}?state=open"),
        ("incidents state=resolved", f"{inc}?state=resolved"),
        ("incidents service", f"{inc}?service=vpn"),
        ("incidents check", f"{inc}?check=dns"),
        ("incidents host", f"{inc}?host={host}"),
        ("incidents priority", f"{inc}?priority=P1"),
        ("incidents priority+open", f"{inc}?priority=P1&state=open"),
        ("incidents offset", f"{inc}?offset={MAX_OFFSET}"),
        ("incidents cursor", f"{inc}?cursor={encode_cursor(incidents // 2)}"),
        ("incidents cursor+check", f"{inc}?check=dns&cursor={encode_cursor(incidents // 2)}"),
        ("problems", "/api/v1/problems"),
        ("problems state=open", "/api/v1/problems?state=open"),
        ("problems kind=fleet", "/api/v1/problems?kind=fleet"),
        ("problems check", "/api/v1/problems?check=dns"),
        ("problems cursor", f"/api/v1/problems?cursor={encode_cursor(incidents // 200)}"),
        ("hosts", "/api/v1/hosts"),
        ("hosts cursor", f"/api/v1/hosts?cursor={half_host}"),
        ("hosts limit=1000", "/api/v1/hosts?limit=1000"),
        ("remediations/stats", "/api/v1/remediations/stats"),
        ("runs", runs),
        ("runs host", f"{runs}?host={host}"),
        ("runs remediation", f"{runs}?remediation=flush_dns"),
        ("runs offset", f"{runs}?offset={MAX_OFFSET}"),
        ("runs cursor", f"{runs}?cursor={encode_cursor(incidents // 8)}"),
    ]


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, int]:
    """One GET with the admin token; ``(status, body bytes)``."""
    conn.request("GET", path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    resp = conn.getresponse()
    return resp.status, len(resp.read())


def measure(base: str, path: str, requests: int, budget_s: float) -> dict[str, Any]:
    """``requests`` sequential GETs (after one warm-up), stopping early after ``budget_s``
    (at least 3 then); p50/p99 in ms, p99 by nearest rank (of fewer than 100 samples:
    the worst one)."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
    try:
        status, size = get(conn, path)
        samples: list[float] = []
        deadline = time.monotonic() + budget_s
        for i in range(requests):
            if i >= 3 and time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            status, size = get(conn, path)
            samples.append((time.perf_counter() - t0) * 1000.0)
    finally:
        conn.close()
    samples.sort()
    p99 = samples[max(0, math.ceil(0.99 * len(samples)) - 1)]
    return {
        "status": status,
        "bytes": size,
        "n": len(samples),
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(p99, 2),
    }


def during_first_tick(base: str, started: float, log_path: Path) -> dict[str, Any]:
    """Requests while the collector's first tick opens the fill's silent hosts' incidents
    (1 % of hosts: a mass outage in miniature, thousands of state changes in bounded
    steps with the storage thread free in between).

    Waits for the first tick (``TICK_INTERVAL_S`` after ``started``), then GETs the
    first page of incidents sequentially until the collector's log has shown no new
    ``tick opened incidents`` line for 2 s (at most :data:`FIRST_TICK_MAX_S`). Returns
    the latencies (p50/p99/max ms, ``n``) and ``opening_s``, from the first such line to
    the last; ``steps``: how many such lines (transactions that opened incidents).
    """
    from vigil.collector.app import TICK_INTERVAL_S

    time.sleep(max(0.0, started + TICK_INTERVAL_S - time.monotonic()))
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
    samples: list[float] = []
    quiet_since, lines = time.monotonic(), 0
    deadline = time.monotonic() + FIRST_TICK_MAX_S
    try:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            get(conn, "/api/v1/incidents?limit=50")
            samples.append((time.perf_counter() - t0) * 1000.0)
            now_lines = log_path.read_text(errors="replace").count("tick opened incidents")
            if now_lines != lines:
                lines, quiet_since = now_lines, time.monotonic()
            elif lines and time.monotonic() - quiet_since > 2.0:
                break
    finally:
        conn.close()
    stamps = [
        ln[:23]
        for ln in log_path.read_text(errors="replace").splitlines()
        if "tick opened incidents" in ln
    ]
    opening_s = 0.0
    if len(stamps) > 1:  # the collector log's timestamps: "2026-12-06 20:29:00,183"
        first, last = (
            datetime.strptime(x, "%Y-%m-%d %H:%M:%S,%f") for x in (stamps[0], stamps[-1])
        )
        opening_s = (last - first).total_seconds()
    samples.sort()
    return {
        "n": len(samples),
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(samples[max(0, math.ceil(0.99 * len(samples)) - 1)], 2),
        "max_ms": round(samples[-1], 2),
        "steps": len(stamps),
        "opening_s": round(opening_s, 2),
    }


def wait_healthz(base: str, started: float) -> float:
    """Seconds from ``started`` to the first ``/healthz`` 200 (bounded by START_TIMEOUT_S)."""
    parts = urllib.parse.urlsplit(base)
    while time.monotonic() - started < START_TIMEOUT_S:
        try:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
            status, _ = get(conn, "/healthz")
            conn.close()
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.01)
    raise SystemExit(f"collector not healthy within {START_TIMEOUT_S} s")


def time_ticks(config: Path, ticks: int) -> dict[str, float]:
    """Median ms of one leader tick's parts on the store (and ``total_max``), the desk opened as the
    collector opens it (run after the collector stopped: one writer)."""
    from vigil.collector.app import PRUNE_CHUNK, open_desk
    from vigil.collector.config import load_collector_config

    cfg = load_collector_config(config)
    desk = open_desk(cfg)
    parts: dict[str, list[float]] = {"tick": [], "refresh": [], "prune": [], "total": []}
    try:
        for _ in range(ticks):
            now = time.time()
            t0 = time.perf_counter()
            desk.tick(now)
            t1 = time.perf_counter()
            desk.refresh_metrics_figures(now)
            t2 = time.perf_counter()
            desk.prune_seen(now - cfg.dedup_retention_s, limit=PRUNE_CHUNK)
            t3 = time.perf_counter()
            for key, value in (("tick", t1 - t0), ("refresh", t2 - t1), ("prune", t3 - t2)):
                parts[key].append(value * 1000.0)
            parts["total"].append((t3 - t0) * 1000.0)
    finally:
        desk.storage.close()
    medians = {key: round(statistics.median(values), 1) for key, values in parts.items()}
    # The first tick after the collector stopped can be far slower than the median (it
    # finds what the running collector's ticks left undone): report the worst too.
    return {**medians, "total_max": round(max(parts["total"]), 1)}


def compile_bytecode() -> None:
    """Compile the collector's modules to bytecode, as installing the package does.

    A development checkout under ``PYTHONDONTWRITEBYTECODE`` (set on these machines)
    otherwise compiles every module at every start (~0.15-0.3 s of a start here), which
    no installed collector pays: pip compiles a wheel's modules when it installs it."""
    import compileall

    import vigil

    compileall.compile_dir(Path(vigil.__file__).parent, quiet=1)


def first_open(url: str) -> float:
    """Seconds for the first desk to open the filled store. A store written without the
    histogram summaries (the fill writes history only, as an upgraded store has it) gets
    them filled from history here, once; the collector's ``start_s`` is then what every
    later start costs."""
    from vigil.collector.desk.service import Desk

    t0 = time.perf_counter()
    Desk(create_storage(url)).close()
    return time.perf_counter() - t0


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    now = time.time()
    dialect = SQLITE if args.backend == "sqlite" else POSTGRES
    stmts = fill_statements(dialect, args.hosts, args.incidents, args.days, args.seen_per_host, now)
    t0 = time.perf_counter()
    if args.backend == "sqlite":
        store, timings = sqlite_store(folder, stmts)
    else:
        store, timings = postgres_store(args.dsn, stmts)
    fill_s = time.perf_counter() - t0
    print(f"fill {fill_s:.1f} s: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    try:
        histograms_s = first_open(store.url)
        print(f"first open (histograms filled from history, once): {histograms_s:.2f} s")
        config = collector_config(
            folder, agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN, storage=store.storage_yaml
        )
        compile_bytecode()
        # Start-up alone, ``--starts`` times (a single sample is at the mercy of whatever
        # else the machine does): the median is ``start_s``. The last start stays up for
        # the API measurements.
        starts: list[float] = []
        while True:
            log = (folder / "collector.log").open("w")
            started = time.monotonic()
            proc = spawn_collector(config, log, cwd=folder)
            line = read_line(proc, START_TIMEOUT_S)
            if "listening on" not in line:
                stop(proc, 30.0)
                raise SystemExit(
                    f"collector did not start: {(folder / 'collector.log').read_text()}"
                )
            base = line.split("listening on ", 1)[1].strip()
            try:
                starts.append(wait_healthz(base, started))
            except BaseException:
                stop(proc, 30.0)
                raise
            print(f"collector start {starts[-1]:.2f} s ({base})")
            if len(starts) == args.starts:
                break
            stop(proc, 30.0)
            log.close()
        start_s = statistics.median(starts)
        try:
            first_tick = during_first_tick(base, started, folder / "collector.log")
            print(
                f"during the first tick ({first_tick['steps']} steps opening incidents over"
                f" {first_tick['opening_s']} s): incidents page p50 {first_tick['p50_ms']} ms"
                f" p99 {first_tick['p99_ms']} ms max {first_tick['max_ms']} ms"
                f" n={first_tick['n']}"
            )
            api: dict[str, dict[str, Any]] = {}
            for name, path in endpoints(args.hosts, args.incidents):
                api[name] = measure(base, path, args.requests, args.budget)
                r = api[name]
                print(
                    f"  {name:26s} {r['status']} p50 {r['p50_ms']:9.1f} ms"
                    f"  p99 {r['p99_ms']:9.1f} ms  n={r['n']:3d}  {r['bytes']} B"
                )
        finally:
            stop(proc, 30.0)
            log.close()
        # The log goes with the temporary folder: show what explains a latency spike.
        lines = (folder / "collector.log").read_text(errors="replace").splitlines()
        notable = [ln for ln in lines if "WARNING" in ln or "ERROR" in ln or "tick" in ln]
        print(f"collector log: {len(lines)} lines; notable (last 5 of {len(notable)}):")
        for ln in notable[-5:]:
            print(f"  {ln[:200]}")
        tick = time_ticks(config, args.ticks)
        print(f"tick (median of {args.ticks}): {tick}")
        db_bytes, seen_bytes, mark_bytes = store.db_bytes(), store.seen_bytes(), store.mark_bytes()
    finally:
        store.drop()
    ok = {k: v for k, v in api.items() if v["status"] == 200}
    worst = max(ok, key=lambda k: ok[k]["p99_ms"])
    # The dedup state: each host's mark (fixed size) plus the ``seen`` ids of agents that
    # send no sequence numbers (--seen-per-host, 0 by default: every agent sequenced).
    dedup = (seen_bytes + mark_bytes) / args.hosts
    # Per id only when ids were filled (an empty table's pages are no cost per id).
    per_id = seen_bytes / (args.hosts * args.seen_per_host) if args.seen_per_host else None
    steady = None if per_id is None else per_id * IDS_PER_AGENT_DAY * args.days
    older = (
        "no older agents' ids filled"
        if per_id is None or steady is None
        else f"{per_id:.0f} B/id; an older agent over {args.days:g} days: >= {steady / 1e6:.1f} MB"
    )
    print(
        f"db {db_bytes / 1e6:.1f} MB, dedup {dedup:.1f} B/agent: mark"
        f" {mark_bytes / args.hosts:.1f} B/agent + seen {seen_bytes / 1e6:.1f} MB ({older})"
    )
    return {
        "backend": args.backend,
        "hosts": args.hosts,
        "incidents": args.incidents,
        "days": args.days,
        "seen_per_host": args.seen_per_host,
        "fill_s": round(fill_s, 1),
        "api_p99_ms_max": ok[worst]["p99_ms"],
        "api_p99_worst": worst,
        "api_not_200": sorted(k for k, v in api.items() if v["status"] != 200),
        "api": {k: [v["status"], v["p50_ms"], v["p99_ms"], v["n"]] for k, v in api.items()},
        "tick_ms": tick["total"],
        "tick_parts_ms": tick,
        "start_s": round(start_s, 2),
        "start_s_all": [round(x, 2) for x in starts],
        "first_tick": first_tick,
        "first_open_s": round(histograms_s, 2),
        "dedup_bytes_per_agent": round(dedup, 1),
        "dedup_mark_bytes_per_agent": round(mark_bytes / args.hosts, 1),
        "dedup_bytes_per_id": None if per_id is None else round(per_id, 1),
        "dedup_bytes_per_agent_steady": None if steady is None else round(steady),
        "db_bytes": db_bytes,
        "targets": {
            "api_p99_ms": TARGET_P99_MS,
            "tick_ms": TARGET_TICK_MS,
            "start_s": TARGET_START_S,
            "dedup_bytes_per_agent": TARGET_DEDUP_B,
        },
        "met": {
            "api": ok[worst]["p99_ms"] <= TARGET_P99_MS and len(ok) == len(api),
            "tick": tick["total"] <= TARGET_TICK_MS,
            "start": start_s <= TARGET_START_S,
            "dedup": dedup <= TARGET_DEDUP_B,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL URL (a schema is made)")
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--incidents", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument(
        "--seen-per-host",
        type=int,
        default=0,
        help="dedup ids per host in the fill (older agents without sequence numbers)",
    )
    parser.add_argument("--requests", type=int, default=50, help="per endpoint (max)")
    parser.add_argument("--budget", type=float, default=15.0, help="seconds per endpoint")
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--starts", type=int, default=3, help="collector starts timed (median)")
    args = parser.parse_args()
    for name in ("hosts", "incidents", "requests", "ticks", "starts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.days <= 0 or args.seen_per_host < 0:
        parser.error("--days must be > 0 and --seen-per-host >= 0")
    # SIGTERM unwinds like Ctrl-C, so the PostgreSQL schema and the folder are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    folder = Path(tempfile.mkdtemp(prefix="vigil-scale-"))
    try:
        result = run(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
