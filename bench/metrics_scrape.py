"""Metrics scrape benchmark: Vigil's /metrics at fleet scale vs Debian's Pushgateway.

(a) Vigil. A collector database is filled with 100,000 hosts' state, written straight
    into the store's tables in one transaction (what a collector holds after a long run):
    every host with a heartbeat TTL, a clock offset and its agent's CPU and RSS; 5 % of
    hosts failing a check; 2 % with an open incident (priorities P1-P4, 12 checks); 20,000
    resolved incidents (time to restore); 50,000 remediation runs of 20 remediations.
    A real collector process opens it (loading the in-memory aggregates once) and its
    ``GET /metrics`` is timed over HTTP, median of 20, as Prometheus would scrape it; then
    again with per-host series switched on (capped at the default 1,000 hosts).

(b) Pushgateway. In the same run, Debian's ``prometheus-pushgateway`` gets 10,000
    equivalent hosts pushed to it (one group per host, the same facts: last seen,
    heartbeat TTL, clock offset, agent CPU and RSS, failing checks, open incidents,
    remediation runs by outcome), with 32 concurrent connections on 127.0.0.1 (started
    with ``--push.disable-consistency-check`` so filling it takes seconds), and its
    ``GET /metrics`` is timed the same way (median of 5: each takes seconds).

``ratio`` = Pushgateway median ÷ Vigil median. Targets: Vigil at 100,000 hosts <= 100 ms,
ratio >= 20 although Vigil has ten times the hosts.

Run: ``.venv/bin/python bench/metrics_scrape.py [--quick]`` (``--quick``: 10,000 Vigil
hosts, 1,000 Pushgateway hosts, fewer renders). The last line is JSON.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vigil.collector.storage.sqlite.backend import SqliteStorage  # noqa: E402

TOKEN = "bench-agent-token-0123456789abcdef0123456789abcdef"
CHECKS = [f"check.{n:02d}" for n in range(12)]
REMEDIATIONS = [f"fix-{n:02d}" for n in range(20)]
OUTCOMES = ["fixed", "fixed", "fixed", "not_fixed", "error", "timeout"]
PRIORITIES = ["P1", "P2", "P3", "P4"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout_s:.0f} s")


def time_get(url: str, renders: int) -> tuple[float, int]:
    """Median wall time (ms) of ``renders`` GETs of ``url``, and the body size (bytes)."""
    times = []
    size = 0
    for _ in range(renders):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as response:
            size = len(response.read())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), size


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- (a) Vigil


def fill_database(path: Path, hosts: int, now: float) -> None:
    """Write ``hosts`` hosts' state into a collector database (schema made by SQLite)."""
    SqliteStorage(path).close()  # creates the current schema
    rng = random.Random(7)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    host_rows, metric_rows, state_rows, incident_rows, run_rows = [], [], [], [], []
    for n in range(hosts):
        agent_id = f"agent-{n:06d}"
        seen = now - rng.uniform(0, 120)
        offset = rng.gauss(0.05, 0.2) if n % 500 else 900.0  # a few clocks 15 min off
        host_rows.append(
            (agent_id, f"ws-{n:06d}", '{"site": "hq"}', "0.1.0", now - 86400, seen, seen, offset)
        )
        ttl_time = now - rng.uniform(0, 300)
        cpu, rss = rng.uniform(5, 500), rng.uniform(25, 60) * 2**20
        vals = array.array("d", [cpu, rss]).tobytes()  # the store's float64 form
        metric_rows.append((agent_id, ttl_time, cpu, rss, vals))
        check = CHECKS[n % len(CHECKS)]
        if n % 20 == 0:
            state_rows.append((agent_id, check, "critical", 97.0, "failing", seen))
        if n % 50 == 0:
            incident_rows.append(
                (agent_id, f"ws-{n:06d}", check, "open", PRIORITIES[n % 4], seen, None)
            )
    for n in range(hosts // 5):
        opened = now - rng.uniform(3600, 30 * 86400)
        agent_id = f"agent-{rng.randrange(hosts):06d}"
        incident_rows.append(
            (
                agent_id,
                agent_id,
                rng.choice(CHECKS),
                "resolved",
                PRIORITIES[n % 4],
                opened,
                opened + rng.expovariate(1 / 3600),
            )
        )
    for n in range(hosts // 2):
        agent_id = f"agent-{rng.randrange(hosts):06d}"
        run_rows.append(
            (
                agent_id,
                agent_id,
                now,
                f"ev-{n}",
                n,
                now,
                REMEDIATIONS[n % len(REMEDIATIONS)],
                rng.choice(CHECKS),
                rng.choice(OUTCOMES),
                0,
                now,
                rng.expovariate(1 / 3.0),
                97.0,
                40.0,
                "",
                0,
                "0" * 64,
                0,
            )
        )
    db.executemany(
        "INSERT INTO hosts (agent_id, hostname, labels, agent_version, first_seen, last_seen,"
        " last_sent_at, clock_offset_s, heartbeat_ttl_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 60)",
        host_rows,
    )
    # Every host's summary has the same two series: one name list (schema 14).
    names = json.dumps(["agent.cpu_seconds_total", "agent.rss_bytes"])
    names_id = db.execute(
        "INSERT INTO metric_names (names) VALUES (?) RETURNING id", (names,)
    ).fetchone()[0]
    db.executemany(
        "INSERT INTO host_metrics (host, time, received_at, agent_cpu, agent_rss, names_id,"
        f" vals) VALUES (?1, ?2, ?2, ?3, ?4, {int(names_id)}, ?5)",
        metric_rows,
    )
    db.executemany(
        "INSERT INTO check_state (host, check_id, state, value, message, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        state_rows,
    )
    db.executemany(
        "INSERT INTO incidents (host, hostname, check_id, state, priority, opened_at,"
        " resolved_at, message) VALUES (?, ?, ?, ?, ?, ?, ?, 'failing')",
        incident_rows,
    )
    db.executemany(
        "INSERT INTO remediation_runs (host, hostname, received_at, event_id, seq, time,"
        " remediation, check_id, outcome, exit_code, started_at, duration_s, value_before,"
        " value_after, output, output_truncated, script_sha256, dry_run)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        run_rows,
    )
    db.execute("COMMIT")
    db.close()


def bench_vigil(tmp: Path, hosts: int, renders: int) -> dict[str, float]:
    db_path = tmp / "collector.db"
    started = time.perf_counter()
    fill_database(db_path, hosts, time.time())
    print(f"vigil: filled {hosts:,} hosts in {time.perf_counter() - started:.1f} s", flush=True)
    figures: dict[str, float] = {}
    for per_host in (False, True):
        port = free_port()
        config = tmp / f"collector-{per_host}.yaml"
        config.write_text(
            f"listen: {{host: 127.0.0.1, port: {port}}}\n"
            f"storage: {{sqlite_path: {db_path}}}\n"
            # /metrics open without a token: allowed on a loopback listener only.
            f"auth: {{agent_tokens: [{TOKEN}], open_read: true}}\n"
            f"metrics: {{per_host_series: {str(per_host).lower()}}}\n"
        )
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "vigil.collector", "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "collector.log").open("a"),
        )
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            wait_http(url)
            loaded = time.perf_counter() - started
            time_get(url, 2)  # warm-up
            median_ms, size = time_get(url, renders)
        finally:
            stop(proc)
        label = "per-host series on (1,000 hosts)" if per_host else "default"
        print(
            f"vigil /metrics, {hosts:,} hosts, {label}: median {median_ms:.1f} ms of"
            f" {renders}, {size:,} bytes (collector start with aggregates loaded:"
            f" {loaded:.1f} s)",
            flush=True,
        )
        key = "vigil_per_host" if per_host else "vigil"
        figures[f"{key}_render_ms"] = round(median_ms, 2)
        figures[f"{key}_bytes"] = size
    return figures


# --------------------------------------------------------------------------- (b) Pushgateway


def host_body(n: int, rng: random.Random, now: float) -> bytes:
    """The same facts Vigil aggregates, as one host would push them (text format)."""
    lines = [
        f"vigil_host_last_seen_timestamp_seconds {now - rng.uniform(0, 120):.3f}",
        "vigil_host_heartbeat_ttl_seconds 60",
        f"vigil_host_clock_offset_seconds {rng.gauss(0.05, 0.2):.4f}",
        f"vigil_agent_cpu_seconds_total {rng.uniform(5, 500):.3f}",
        f"vigil_agent_resident_memory_bytes {int(rng.uniform(25, 60) * 2**20)}",
    ]
    for check in CHECKS[:3]:
        failing = 1 if (n % 20 == 0 and check == CHECKS[n % len(CHECKS)]) else 0
        lines.append(f'vigil_host_check_failing{{check="{check}"}} {failing}')
    lines.append(f'vigil_host_incidents_open{{priority="{PRIORITIES[n % 4]}"}} {int(n % 50 == 0)}')
    for outcome in ("fixed", "not_fixed"):
        lines.append(
            f'vigil_host_remediation_runs_total{{remediation="{REMEDIATIONS[n % 20]}",'
            f'outcome="{outcome}"}} {rng.randrange(5)}'
        )
    return ("\n".join(lines) + "\n").encode()


async def push_all(base: str, hosts: int, concurrency: int = 32) -> float:
    """PUT every host's group; returns seconds taken. Bounded: one request per host."""
    rng = random.Random(11)
    now = time.time()
    bodies = [host_body(n, rng, now) for n in range(hosts)]
    sem = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def push(n: int) -> None:
            async with (
                sem,
                http.put(f"{base}/metrics/job/vigil/instance/ws-{n:06d}", data=bodies[n]) as r,
            ):
                if r.status >= 300:
                    raise SystemExit(f"pushgateway said {r.status}: {await r.text()}")

        await asyncio.gather(*(push(n) for n in range(hosts)))
    return time.perf_counter() - started


def bench_pushgateway(tmp: Path, hosts: int, renders: int) -> dict[str, float]:
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        raise SystemExit("prometheus-pushgateway not found: apt-get install prometheus-pushgateway")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            "--persistence.file=",
            # Without this every push re-checks the whole registry (O(groups) per push), and
            # filling 10,000 groups takes many minutes; the render is unaffected.
            "--push.disable-consistency-check",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "pushgateway.log").open("w"),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/metrics")
        pushed_s = asyncio.run(push_all(base, hosts))
        print(f"pushgateway: pushed {hosts:,} hosts in {pushed_s:.1f} s", flush=True)
        time_get(f"{base}/metrics", 1)  # warm-up
        median_ms, size = time_get(f"{base}/metrics", renders)
    finally:
        stop(proc)
    print(
        f"pushgateway /metrics, {hosts:,} hosts: median {median_ms:.1f} ms of {renders},"
        f" {size:,} bytes",
        flush=True,
    )
    return {"pushgateway_render_ms": round(median_ms, 2), "pushgateway_bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10x fewer hosts, fewer renders")
    args = parser.parse_args()
    vigil_hosts, push_hosts = (10_000, 1_000) if args.quick else (100_000, 10_000)
    vigil_renders, push_renders = (10, 3) if args.quick else (20, 5)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        figures = bench_vigil(Path(tmp), vigil_hosts, vigil_renders)
        figures.update(bench_pushgateway(Path(tmp), push_hosts, push_renders))
    ratio = figures["pushgateway_render_ms"] / figures["vigil_render_ms"]
    verdict = (
        "(--quick: the targets apply to the full run)"
        if args.quick
        else f"targets: vigil <= 100 ms -> {figures['vigil_render_ms'] <= 100},"
        f" ratio >= 20 -> {ratio >= 20}"
    )
    print(
        f"ratio (pushgateway {push_hosts:,} hosts / vigil {vigil_hosts:,} hosts): {ratio:.1f}x"
        f"  {verdict}"
    )
    result = {
        "vigil_hosts": vigil_hosts,
        "vigil_render_ms": figures["vigil_render_ms"],
        "vigil_bytes": figures["vigil_bytes"],
        "vigil_per_host_render_ms": figures["vigil_per_host_render_ms"],
        "vigil_per_host_bytes": figures["vigil_per_host_bytes"],
        "pushgateway_hosts": push_hosts,
        "pushgateway_render_ms": figures["pushgateway_render_ms"],
        "pushgateway_bytes": figures["pushgateway_bytes"],
        "ratio": round(ratio, 1),
        "quick": args.quick,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
