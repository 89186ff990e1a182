"""Delivery benchmark: an offline day in the outbox, and ingest throughput vs Pushgateway.

(a) Offline day. The agent's default config (sample 15 s, heartbeat 60 s, metrics summary
    5 min, outbox bounds and shipping pace as shipped) runs for a simulated 24 h against an
    unreachable collector: time is accelerated with a fake clock; events are the ones the
    agent writes (a heartbeat a minute, a metrics summary of a real sample every 5 min, a
    check flip-flopping every 2 h). Prints the outbox size on disk, then starts a real
    collector and drains with the real shipper at the default drain rate, timed.
    Targets: <= 10 MB on disk, drained in <= 60 s, nothing dropped.

(b) Ingest. A load generator (this process, pinned to one core) posts realistic reports
    (a heartbeat plus a metrics summary of a real sample, gzip JSON) as 100,000 distinct
    agents, with a fixed number of concurrent connections for a fixed time, first to the
    real collector (SQLite, synchronous=FULL, group commit) and then, with the same
    values in its own text format and the same generator settings, to Debian's
    prometheus-pushgateway (``--push.disable-consistency-check``). Both servers are pinned
    to the same other core. Prints accepted reports/s and p50/p99 latency of each, and
    the ratio. Targets: ratio >= 1.25, Vigil p99 <= 250 ms.

Run: ``.venv/bin/python bench/delivery.py [--quick]``. The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent import wire  # noqa: E402
from agent.config import (  # noqa: E402
    CollectorTarget,
    Intervals,
    OutboxConfig,
    SamplerConfig,
    ShippingConfig,
)
from agent.identity import Identity  # noqa: E402
from agent.outbox import Outbox  # noqa: E402
from agent.sampler import Sampler  # noqa: E402
from agent.shipper import Shipper  # noqa: E402

TOKEN = "bench-agent-token"
DISTINCT_AGENTS = 100_000
SERVER_CORE = 0
LOADGEN_CORE = 1


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_sample() -> dict[str, float]:
    """One real sample of this machine, as the agent's metrics summary carries it."""
    sampler = Sampler(SamplerConfig())
    sampler.sample()
    time.sleep(0.2)
    return sampler.sample()


def start_collector(folder: Path, *, pin: bool) -> tuple[subprocess.Popen[str], str]:
    config = folder / "collector.yaml"
    config.write_text(
        "listen: {host: 127.0.0.1, port: 0}\n"
        "storage: {sqlite_path: collector.db}\n"
        f"auth: {{agent_tokens: [{TOKEN}]}}\n"
    )
    cmd = [sys.executable, "-m", "collector", "--config", str(config), "--log-level", "WARNING"]
    if pin:
        cmd = ["taskset", "-c", str(SERVER_CORE), *cmd]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(folder / "collector.log").open("w"),
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"collector did not start: {(folder / 'collector.log').read_text()}")
    return proc, line.split("listening on ", 1)[1].strip()


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- (a) offline day


def offline_day(folder: Path, values: dict[str, float], hours: float) -> dict[str, float]:
    defaults = OutboxConfig(path=folder / "outbox.db")
    iv = Intervals()
    clock = FakeClock(1_750_000_000.0)
    outbox = Outbox(
        defaults.path, max_bytes=defaults.max_bytes, max_age_s=defaults.max_age_s, clock=clock
    )
    end = clock.now + hours * 3600
    next_hb = next_metrics = next_flip = clock.now
    state = "ok"
    step = iv.sample_s
    while clock.now < end:
        if clock.now >= next_hb:
            outbox.put(
                wire.CheckEvent(
                    event_id=uuid.uuid4().hex,
                    seq=0,
                    time=clock.now,
                    check=wire.HEARTBEAT_CHECK,
                    state="ok",
                    previous_state=None,
                    value=None,
                    message="agent 0.1.0 alive",
                    ttl_s=iv.heartbeat_s * 2.5,
                )
            )
            next_hb += iv.heartbeat_s
        if clock.now >= next_metrics:
            outbox.put(
                wire.MetricsEvent(
                    event_id=uuid.uuid4().hex, seq=0, time=clock.now, values=dict(values)
                )
            )
            next_metrics += iv.metrics_s
        if clock.now >= next_flip:
            new = "critical" if state == "ok" else "ok"
            outbox.put(
                wire.CheckEvent(
                    event_id=uuid.uuid4().hex,
                    seq=0,
                    time=clock.now,
                    check="disk.root",
                    state=new,  # type: ignore[arg-type]
                    previous_state=state,  # type: ignore[arg-type]
                    value=96.0 if new == "critical" else 80.0,
                    message=f"disk.root is {new}",
                ),
                urgent=new == "critical",
            )
            state = new
            next_flip += 7200
        clock.now += step
    stats = outbox.stats()
    print(
        f"(a) offline {hours:g} h: {stats.depth} events,"
        f" payload {stats.payload_bytes / 1e6:.2f} MB,"
        f" on disk {stats.disk_bytes / 1e6:.2f} MB, dropped {stats.dropped_total}"
    )

    proc, url = start_collector(folder, pin=False)
    sh = ShippingConfig()
    try:

        async def drain() -> float:
            shipper = Shipper(
                CollectorTarget(url=url, token=TOKEN),
                outbox,
                Identity(agent_id=uuid.uuid4().hex, hostname="bench-laptop", labels={}),
                agent_version="0.1.0",
                batch_max_events=defaults.batch_max_events,
                batch_max_bytes=defaults.batch_max_bytes,
                backoff_base_s=sh.backoff_base_s,
                backoff_cap_s=sh.backoff_cap_s,
                drain_batches_per_s=sh.drain_batches_per_s,
            )
            t0 = time.perf_counter()
            try:
                for _ in range(1000):  # bounded: each call ships up to 50 batches
                    result = await shipper.ship()
                    if outbox.depth() == 0:
                        break
                    if result.error:
                        await asyncio.sleep(0.2)
            finally:
                await shipper.close()
            return time.perf_counter() - t0

        drain_s = asyncio.run(drain())
    finally:
        stop(proc)
    left = outbox.depth()
    outbox.close()
    print(f"(a) drained {stats.depth} events in {drain_s:.2f} s at the default pace; left {left}")
    return {
        "offline_day_mb": round(stats.disk_bytes / 1e6 * 24 / hours, 3),
        "offline_events": stats.depth,
        "dropped": stats.dropped_total,
        "drain_s": round(drain_s, 3),
        "left": left,
    }


# --------------------------------------------------------------------------- (b) ingest


def vigil_payload(agent_id: str, values: dict[str, float], now: float) -> bytes:
    report = wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id=agent_id,
        hostname=f"ws-{agent_id[:8]}",
        labels={"department": "bench"},
        batch_id=uuid.uuid4().hex,
        sent_at=now,
        agent_version="0.1.0",
        events=(
            wire.CheckEvent(
                event_id=uuid.uuid4().hex,
                seq=1,
                time=now,
                check=wire.HEARTBEAT_CHECK,
                state="ok",
                previous_state=None,
                value=None,
                message="agent 0.1.0 alive",
                ttl_s=150.0,
            ),
            wire.MetricsEvent(event_id=uuid.uuid4().hex, seq=2, time=now, values=values),
        ),
    )
    return gzip.compress(wire.encode_report(report), mtime=0)


def pushgateway_payload(values: dict[str, float]) -> bytes:
    """The same values in the Prometheus text format (one gauge, the series as a label)."""
    lines = ["# TYPE vigil_value gauge"]
    for series, value in values.items():
        label = series.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'vigil_value{{series="{label}"}} {value!r}')
    lines.append("# TYPE vigil_heartbeat_ttl_seconds gauge")
    lines.append("vigil_heartbeat_ttl_seconds 150")
    return ("\n".join(lines) + "\n").encode()


async def load(
    make_request: object, concurrency: int, duration_s: float, max_requests: int
) -> dict[str, float]:
    """POST from ``concurrency`` workers for ``duration_s`` (or ``max_requests``)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(max_requests))
    deadline = time.perf_counter() + duration_s
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for i in counter:
                if time.perf_counter() >= deadline:
                    return
                url, body, headers = make_request(i)  # type: ignore[operator]
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except aiohttp.ClientError:
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 2 else [0.0] * 99
    return {
        "per_s": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "ok": len(latencies),
        "statuses": statuses,  # type: ignore[dict-item]
    }


def ingest(folder: Path, values: dict[str, float], duration_s: float, concurrency: int) -> dict:
    rng = random.Random(5)
    agents = [uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(DISTINCT_AGENTS)]
    rng.shuffle(agents)
    now = time.time()
    max_requests = 2_000_000
    pinned = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {LOADGEN_CORE})
    print(
        f"(b) pinning: servers on core {SERVER_CORE}, load generator on core {LOADGEN_CORE}"
        f" ({'applied' if pinned else 'NOT applied: fewer than 2 cores'});"
        f" {concurrency} connections, {duration_s:g} s each, {DISTINCT_AGENTS} distinct agents"
    )
    # Pre-build a pool of payloads (distinct agents, batch and event ids) so the generator
    # spends its core on sending, not on JSON and gzip; the pool cycles through all agents.
    pool = [vigil_payload(agents[i], values, now) for i in range(min(DISTINCT_AGENTS, 20_000))]
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }

    vigil_dir = folder / "ingest"
    vigil_dir.mkdir()
    proc, url = start_collector(vigil_dir, pin=pinned)
    try:
        reports_url = url + "/api/v1/reports"

        def vigil_request(i: int) -> tuple[str, bytes, dict[str, str]]:
            if i < len(pool):
                body = pool[i]
            else:  # past the pool: fresh ids (a pool entry re-sent would be a cheap duplicate)
                body = vigil_payload(agents[i % DISTINCT_AGENTS], values, now)
            return reports_url, body, headers

        vigil = asyncio.run(load(vigil_request, concurrency, duration_s, max_requests))
    finally:
        stop(proc)
    print(
        f"(b) vigil collector (SQLite, synchronous=FULL, group commit): {vigil['per_s']:.0f}"
        f" reports/s, p50 {vigil['p50_ms']:.1f} ms, p99 {vigil['p99_ms']:.1f} ms,"
        f" statuses {vigil['statuses']}"
    )

    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        print("(b) prometheus-pushgateway not installed: apt-get install prometheus-pushgateway")
        return {"vigil": vigil, "pushgateway": None}
    port = free_port()
    pg_dir = folder / "pushgateway"
    pg_dir.mkdir()
    cmd = [
        binary,
        f"--web.listen-address=127.0.0.1:{port}",
        "--push.disable-consistency-check",
    ]
    if pinned:
        cmd = ["taskset", "-c", str(SERVER_CORE), *cmd]
    pg = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(pg_dir / "log").open("w"))
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        body = pushgateway_payload(values)
        pg_headers = {"Content-Type": "text/plain; version=0.0.4"}
        base = f"http://127.0.0.1:{port}/metrics/job/vigil/instance/"

        def pg_request(i: int) -> tuple[str, bytes, dict[str, str]]:
            return base + agents[i % DISTINCT_AGENTS], body, pg_headers

        pushgw = asyncio.run(load(pg_request, concurrency, duration_s, max_requests))
    finally:
        pg.send_signal(signal.SIGTERM)
        pg.wait(timeout=20)
    print(
        f"(b) prometheus-pushgateway (in memory, --push.disable-consistency-check):"
        f" {pushgw['per_s']:.0f} pushes/s, p50 {pushgw['p50_ms']:.1f} ms,"
        f" p99 {pushgw['p99_ms']:.1f} ms, statuses {pushgw['statuses']}"
    )
    return {"vigil": vigil, "pushgateway": pushgw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    duration = 5.0 if args.quick else 20.0
    values = real_sample()
    print(
        f"delivery benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
        f" {os.cpu_count()} cores; metrics summary of {len(values)} series"
    )
    with tempfile.TemporaryDirectory(prefix="vigil-bench-delivery-") as tmp:
        folder = Path(tmp)
        day = offline_day(folder, values, hours=24.0)
        result = ingest(folder, values, duration, args.concurrency)
    vigil, pushgw = result["vigil"], result["pushgateway"]
    ratio = vigil["per_s"] / pushgw["per_s"] if pushgw and pushgw["per_s"] else None
    if ratio is not None:
        print(f"(b) ratio vigil/pushgateway: {ratio:.2f} (target >= 1.25)")
    print(
        json.dumps(
            {
                "offline_day_mb": day["offline_day_mb"],
                "offline_events": day["offline_events"],
                "dropped": day["dropped"],
                "drain_s": day["drain_s"],
                "vigil_reports_per_s": round(vigil["per_s"], 1),
                "vigil_p50_ms": round(vigil["p50_ms"], 2),
                "vigil_p99_ms": round(vigil["p99_ms"], 2),
                "pushgateway_pushes_per_s": round(pushgw["per_s"], 1) if pushgw else None,
                "pushgateway_p99_ms": round(pushgw["p99_ms"], 2) if pushgw else None,
                "ratio": round(ratio, 3) if ratio is not None else None,
                "concurrency": args.concurrency,
                "duration_s": duration,
                "cores": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
