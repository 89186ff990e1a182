"""Console page times at fleet scale: queue, host search and service quality with
100,000 hosts and 1,000,000 incidents in the store (issue #19).

The store is made and filled exactly as ``bench/scale.py`` does (the storage layer
creates the schema, one ``INSERT … SELECT`` per table inside the database), then host
labels get a department and an OS (one ``UPDATE``). A real collector process is started
on it (127.0.0.1, ephemeral port); the bench logs in through the console's form with an
admin token and GETs each page with a real HTTP client (``http.client``, one keep-alive
connection, the session cookie). One warm-up request, then up to ``--requests``
sequential requests per page within ``--budget`` seconds; p95 by nearest rank.

The service-quality figures scan the period's incidents and are cached for a minute
(``console/quality.py``): the warm-up computes them (reported as ``quality_cold_ms``),
the measured requests are served from the cache. As a reference in the same run, the
JSON API's open-incidents list is measured the same way.

Prints the figures, and as its last line one JSON object with ``hosts``, ``incidents``,
``queue_p95_ms``, ``search_p95_ms``, ``quality_p95_ms`` (and more).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scale import (  # noqa: E402
    ADMIN_TOKEN,
    AGENT_TOKEN,
    DEFAULT_DSN,
    POSTGRES,
    SQLITE,
    fill_statements,
    postgres_store,
    sqlite_store,
    wait_healthz,
)
from tests.support.procs import collector_config, read_line, spawn_collector, stop  # noqa: E402

TARGET_P95_MS = 200.0
DEPARTMENTS = ("sales", "hr", "it", "finance", "legal", "ops", "support", "rnd")
OSES = ("debian-12", "ubuntu-24.04", "macos-15", "windows-11")
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def derived(backend: str) -> list[str]:
    """After the raw fill: the incidents' department from their host (as the schema
    migration does for older rows), then the quality rollup the desk keeps, computed
    from the incidents (the migration's backfill): the fill bypasses the desk."""
    from vigil.collector.storage.postgres.console_repo import POSTGRES as PG_DIALECT
    from vigil.collector.storage.sqlite.console_repo import SQLITE as SQLITE_DIALECT
    from vigil.collector.storage.sqlite.console_repo import rollup_backfill_sql

    if backend == "sqlite":
        dept = (
            "UPDATE incidents SET department = (SELECT"
            f" {SQLITE_DIALECT.label('h.labels', 'department')}"
            " FROM hosts h WHERE h.agent_id = incidents.host)"
        )
        return [dept, rollup_backfill_sql(SQLITE_DIALECT)]
    dept = (
        "UPDATE incidents i SET department = h.labels ->> 'department' FROM hosts h"
        " WHERE h.agent_id = i.host"
    )
    return [dept, rollup_backfill_sql(PG_DIALECT)]


def label_update(backend: str) -> str:
    """One UPDATE giving every host a department and an OS label (a spread by rowid)."""

    def case(expr: str, values: tuple[str, ...]) -> str:
        whens = " ".join(f"WHEN {i} THEN '{v}'" for i, v in enumerate(values))
        return f"(CASE ({expr}) % {len(values)} {whens} END)"

    if backend == "sqlite":
        return (
            "UPDATE hosts SET labels = json_object('role', 'laptop', 'department', "
            f"{case('rowid', DEPARTMENTS)}, 'os', {case('rowid / 8', OSES)})"
        )
    return (
        "UPDATE hosts SET labels = jsonb_build_object('role', 'laptop', 'department', "
        f"{case('first_order', DEPARTMENTS)}, 'os', {case('first_order / 8', OSES)})"
    )


class Client:
    """One keep-alive connection with the console's cookies."""

    def __init__(self, base: str) -> None:
        parts = urllib.parse.urlsplit(base)
        self.conn = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=120
        )
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, body: str | None = None, bearer: str | None = None
    ) -> tuple[int, bytes]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        for value in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return resp.status, data

    def login(self, token: str) -> None:
        status, page = self.request("GET", "/console/login")
        found = _CSRF.search(page.decode())
        assert status == 200 and found, status
        body = urllib.parse.urlencode({"token": token, "csrf": found.group(1), "next": "/console/"})
        status, _ = self.request("POST", "/console/login", body)
        assert status == 303 and "vigil_session" in self.cookies, status


def measure(
    client: Client, path: str, requests: int, budget_s: float, bearer: str | None = None
) -> dict[str, Any]:
    """One warm-up (timed: ``cold_ms``), then up to ``requests`` GETs within ``budget_s``
    (at least 5); p50/p95 in ms by nearest rank."""
    t0 = time.perf_counter()
    status, body = client.request("GET", path, bearer=bearer)
    cold = (time.perf_counter() - t0) * 1000.0
    assert status == 200, (path, status, body[:300])
    samples: list[float] = []
    deadline = time.monotonic() + budget_s
    for i in range(requests):
        if i >= 5 and time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        status, body = client.request("GET", path, bearer=bearer)
        samples.append((time.perf_counter() - t0) * 1000.0)
        assert status == 200, (path, status)
    samples.sort()
    p95 = samples[max(0, math.ceil(0.95 * len(samples)) - 1)]
    return {
        "n": len(samples),
        "bytes": len(body),
        "cold_ms": round(cold, 1),
        "p50_ms": round(statistics.median(samples), 1),
        "p95_ms": round(p95, 1),
    }


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    now = time.time()
    dialect = SQLITE if args.backend == "sqlite" else POSTGRES
    stmts = fill_statements(dialect, args.hosts, args.incidents, args.days, 0, now)
    stmts = [s for s in stmts if s[0] != "seen"]
    t0 = time.perf_counter()
    if args.backend == "sqlite":
        store, _ = sqlite_store(folder, stmts)
        import sqlite3

        with sqlite3.connect(folder / "collector.db", isolation_level=None) as db:
            db.execute(label_update("sqlite"))
            for statement in derived("sqlite"):
                db.execute(statement)
            db.execute("ANALYZE")
    else:
        store, _ = postgres_store(args.dsn, stmts)
        import psycopg

        url = json.loads(store.storage_yaml[len("{url: ") : -1])
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(label_update("postgresql"))  # type: ignore[call-overload]
            for statement in derived("postgresql"):
                db.execute(statement)  # type: ignore[call-overload]
            db.execute("VACUUM ANALYZE")
    fill_s = time.perf_counter() - t0
    print(
        f"filled {args.hosts} hosts, {args.incidents} incidents in {fill_s:.1f} s ({args.backend})"
    )
    config = collector_config(
        folder,
        agent_token=AGENT_TOKEN,
        admin_token=ADMIN_TOKEN,
        storage=store.storage_yaml,
    )
    pages: dict[str, dict[str, Any]] = {}
    try:
        log = (folder / "collector.log").open("w")
        started = time.monotonic()
        proc = spawn_collector(config, log, cwd=folder)
        line = read_line(proc, 120.0)
        base = line.split("listening on ", 1)[1].strip()
        wait_healthz(base, started)
        try:
            client = Client(base)
            client.login(ADMIN_TOKEN)
            paths = {
                "queue": "/console/",
                "queue filtered": "/console/?department=hr&state=unacknowledged",
                "queue page 10": "/console/?offset=500",
                "search": "/console/hosts?hostname=ws-4242",
                "search department+os": "/console/hosts?department=finance&os=macos-15",
                "search failing": "/console/hosts?health=failing&department=it",
                "quality": "/console/quality?days=30",
                "incident": "/console/incidents/4200",
            }
            for name, path in paths.items():
                pages[name] = measure(client, path, args.requests, args.budget)
                print(f"{name:24s} {path:52s} {pages[name]}")
            api = "/api/v1/incidents?state=open"
            pages["api"] = measure(client, api, args.requests, args.budget, ADMIN_TOKEN)
            print(f"{'api (reference)':24s} {api:52s} {pages['api']}")
        finally:
            stop(proc)
            log.close()
    finally:
        store.drop()

    def worst(*names: str) -> float:
        return max(pages[n]["p95_ms"] for n in names)

    result = {
        "backend": args.backend,
        "hosts": args.hosts,
        "incidents": args.incidents,
        "queue_p95_ms": worst("queue", "queue filtered", "queue page 10"),
        "search_p95_ms": worst("search", "search department+os", "search failing"),
        "quality_p95_ms": pages["quality"]["p95_ms"],
        "quality_cold_ms": pages["quality"]["cold_ms"],
        "incident_p95_ms": pages["incident"]["p95_ms"],
        "api_open_p95_ms": pages["api"]["p95_ms"],
        "target_p95_ms": TARGET_P95_MS,
        "fill_s": round(fill_s, 1),
    }
    met = all(
        result[k] <= TARGET_P95_MS for k in ("queue_p95_ms", "search_p95_ms", "quality_p95_ms")
    )
    verdict = "met" if met else "NOT met"
    print(f"target p95 <= {TARGET_P95_MS:g} ms on queue, search, quality: {verdict}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL URL (a schema is made)")
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--incidents", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--requests", type=int, default=50, help="per page (max)")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per page")
    args = parser.parse_args()
    if args.hosts < 1 or args.incidents < 1 or args.requests < 5:
        raise SystemExit("hosts and incidents must be >= 1, requests >= 5")
    with tempfile.TemporaryDirectory(prefix="vigil-console-bench-") as tmp:
        print(json.dumps(run(args, Path(tmp))))


if __name__ == "__main__":
    main()
