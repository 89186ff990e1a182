"""Delivery benchmark: an offline day in the outbox, and ingest throughput vs Pushgateway.

(a) Offline day. The agent's default config (sample 15 s, heartbeat 60 s, metrics summary
    5 min, outbox bounds and shipping pace as shipped) runs for a simulated 24 h against an
    unreachable collector: time is accelerated with a fake clock; events are the ones the
    agent writes (a heartbeat a minute, a metrics summary of a real sample every 5 min, a
    check flip-flopping every 2 h). Prints the outbox size on disk, then starts a real
    collector and drains with the real shipper at the default drain rate, timed.
    Targets: <= 10 MB on disk, drained in <= 60 s, nothing dropped.

(b) Ingest. A load generator (this process, pinned to one core; ``bench/loadgen.py``,
    pre-built requests on keep-alive connections, a few microseconds a request, so it is
    never the bottleneck; its CPU share is printed) posts realistic reports (a heartbeat
    plus a metrics summary of a real sample, gzip JSON) as 100,000 distinct agents, every
    request a new batch, with a fixed number of concurrent connections for a fixed time, to
    the real collector (SQLite, synchronous=FULL, group commit), its store pre-filled
    with ``--prefill`` hosts (default 100,000: the load's agents, so every report updates
    a known host and fleet-size costs show); and, with the same values
    in its own text format, the same generator settings and the same agents in the same
    order, to Debian's prometheus-pushgateway (``--push.disable-consistency-check``),
    first pre-filled with a push from each of those ``--prefill`` agents (so each measured
    push replaces a group, as each report updates a host). Both servers are pinned
    to the same other core and stay up the whole run; phases alternate for ``--rounds``
    rounds. Prints accepted reports/s, p50/p99 latency, server CPU per request (read
    from /proc, all threads) and resident memory of each phase, and the medians. ``ratio``
    compares throughput; ``cpu_ratio`` compares CPU per request (pushgateway's / Vigil's),
    which other load on a shared machine disturbs less. Targets (issue #17): ratio >= 1.5
    at 128 connections and >= 1.0 at 32, Vigil p99 <= 250 ms.

``--floor`` adds a third server to (b), measured the same way: the real collector with
its ingest queue answering at once and storing nothing, i.e. what a report costs before
the store (a diagnostic of where Vigil's CPU goes, not a configuration anyone runs).

``--credentials`` adds a fourth phase to (b): a collector where every one of the 100,000
agents is enrolled (its credential stored as a hash, loaded into the in-memory cache at
start) and every request carries that agent's own credential instead of the shared
token; ``credential_overhead`` is its CPU per report over the shared-token collector's,
minus one (target <= 0.10, issue #16).

``--against DIR`` adds a phase to (b): the collector of another checkout (``DIR`` is its
``src`` folder, e.g. after ``git worktree add /tmp/base main``) on a copy of the same
pre-filled store, with the same requests, before or after this checkout's phase in
alternate rounds; ``against_change`` is this checkout's CPU per report over it, minus one.

``--dsn URL`` runs (b)'s collector on a fresh schema of that PostgreSQL server instead of
SQLite (sizing: docs/deployment.md); not with ``--credentials``.

Run: ``.venv/bin/python bench/delivery.py [--quick] [--rounds N] [--ingest-only] [--floor]
[--credentials] [--against DIR] [--dsn URL] [--prefill N]``.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import http_request, run_load  # noqa: E402
from vigil import wire  # noqa: E402
from vigil.agent.config import (  # noqa: E402
    CollectorTarget,
    Intervals,
    OutboxConfig,
    SamplerConfig,
    ShippingConfig,
)
from vigil.agent.delivery.outbox import Outbox  # noqa: E402
from vigil.agent.delivery.shipper import Shipper  # noqa: E402
from vigil.agent.identity import Identity  # noqa: E402
from vigil.agent.sampling.sampler import Sampler  # noqa: E402
from vigil.collector.config import (  # noqa: E402
    DEFAULT_EVENT_LOOP,
    DEFAULT_INGEST_FRONT,
    INGEST_FRONTS,
)
from vigil.collector.eventloop import EVENT_LOOPS  # noqa: E402

TOKEN = "bench-agent-token-0123456789abcdef0123456789abcdef"
DISTINCT_AGENTS = 100_000
PEER_PREFILL_MAX_S = 600.0  # bound on pre-filling Pushgateway (~30 s for 100,000 pushes)
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


# ``--floor``: the real collector with the ingest queue answering at once, storing nothing.
# Everything else a report costs (HTTP, auth, gunzip, parse, validation, the ack) is paid:
# what is left of Vigil's CPU per report if the store were free. A diagnostic, not Vigil.
FLOOR_SERVER = """\
import asyncio, sys
from vigil.collector import cli, ingest
from vigil.collector.desk.apply import IngestResult

async def submit(self, report, received_at):
    return IngestResult(False, len(report.events), (), (), ())

def enqueue(self, report, received_at, deliver):
    result = IngestResult(False, len(report.events), (), (), ())
    asyncio.get_running_loop().call_soon(deliver, result)

ingest.IngestQueue.submit = submit
ingest.IngestQueue.enqueue = enqueue
sys.exit(cli.main())
"""


# The ``storage:`` section of the measured collector in (b): SQLite, or with ``--dsn`` a
# fresh schema on that PostgreSQL server (sizing for docs/deployment.md).
INGEST_STORAGE = ["{sqlite_path: collector.db}"]
# Its storage URL, for the pre-fill (None: the SQLite file in the phase's folder).
INGEST_URL: list[str | None] = [None]


def start_collector(
    folder: Path,
    *,
    pin: bool,
    floor: bool = False,
    storage: str = "{sqlite_path: collector.db}",
    event_loop: str = DEFAULT_EVENT_LOOP,
    front: str = DEFAULT_INGEST_FRONT,
    wrapper: tuple[str, ...] = (),
    source: Path | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """Start a collector (``floor``: the store-less one) on a free port in ``folder``;
    the process and the URL it listens on. ``wrapper``: a command it runs under (e.g.
    valgrind); ``source``: the ``src`` folder of another checkout to run instead."""
    config = folder / "collector.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: 0, event_loop: {event_loop}, ingest_front: {front}}}\n"
        f"storage: {storage}\n"
        f"auth: {{agent_tokens: [{TOKEN}]}}\n"
    )
    program = ["-c", FLOOR_SERVER] if floor else ["-m", "vigil.collector"]
    cmd = [sys.executable, *program, "--config", str(config), "--log-level", "WARNING"]
    cmd = [*wrapper, *cmd]
    if pin:
        cmd = ["taskset", "-c", str(SERVER_CORE), *cmd]
    env = None if source is None else {**os.environ, "PYTHONPATH": str(source)}
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(folder / "collector.log").open("w"),
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"collector did not start: {(folder / 'collector.log').read_text()}")
    return proc, line.split("listening on ", 1)[1].strip()


def enroll_all(folder: Path, agents: list[str], now: float) -> dict[str, str]:
    """Store a credential for every agent in ``folder/collector.db`` (one transaction,
    through the storage API, as enrollment would); ``{agent_id: credential}``."""
    from vigil.collector.identity.credentials import CREDENTIAL_PREFIX, new_token, token_hash
    from vigil.collector.storage.factory import create_storage
    from vigil.collector.storage.url import sqlite_url

    tokens = {agent: new_token(CREDENTIAL_PREFIX) for agent in agents}
    storage = create_storage(sqlite_url(folder / "collector.db"))
    try:
        with storage.session() as uow, uow.transaction():
            for agent, token in tokens.items():
                uow.enrollment.put_credential(
                    {
                        "token_hash": token_hash(token),
                        "agent_id": agent,
                        "secret_id": "bench",
                        "labels": {"role": "laptop"},
                        "hostname": f"ws-{agent[:8]}",
                        "issued_at": now,
                        "expires_at": now + 86400.0,
                        "pending": False,
                    }
                )
    finally:
        storage.close()
    return tokens


def prefill(url: str, agents: list[str], values: dict[str, float], now: float) -> float:
    """Store every agent in ``agents`` as a known host with a metrics summary, as a
    fleet that has been reporting leaves the store; seconds taken.

    Written through the storage API (the collector's own statements, either backend),
    one transaction. Each host's epoch is the one the load generator's reports carry
    (the agent's id) with mark 0, so the measured reports are that epoch's next batches,
    and its stored policy is the one they say it runs (none): the steady state of an
    enrolled fleet, where every report updates an existing host and the collector starts
    with the whole fleet in memory (issue #17: fleet-size costs must show).
    """
    from vigil.collector.storage.factory import create_storage

    t0 = time.perf_counter()
    storage = create_storage(url)
    try:
        with storage.session() as uow, uow.transaction():
            for agent in agents:
                report = wire.Report(
                    schema_version=wire.SCHEMA_VERSION,
                    agent_id=agent,
                    hostname=f"ws-{agent[:8]}",
                    labels={"department": "bench"},
                    batch_id=uuid.uuid4().hex,
                    sent_at=now - 60.0,
                    agent_version="0.1.0",
                    events=(),
                    epoch=agent,
                    seq_first=0,
                    seq_last=0,
                )
                uow.hosts.upsert(report, now - 60.0, 0.0, BENCH_TTL_S)
                uow.metrics.put(agent, now - 60.0, now - 60.0, values)
            # What each agent runs, as its reports said (no policy: the load's reports
            # carry no X-Vigil-Policy, which reads as "none").
            uow.policy.set_running([(agent, None, None, now - 60.0) for agent in agents])
    finally:
        storage.close()
    return time.perf_counter() - t0


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


# Stand-ins in the report template for an agent's epoch and its two events' seqs (see
# vigil_payloads); digits no real value in the template contains.
_EPOCH_MARK, _SEQ_MARKS = "c" * 32, ("7770001", "7770002")
# The heartbeat TTL the pre-filled hosts and the load's reports announce (seconds). An
# hour, not the agent's 150 s: the load visits 100,000 agents round-robin and Vigil is
# idle during Pushgateway's phases, so a slower store (PostgreSQL: ~1,000 reports/s, an
# agent every ~200 s; its pre-fill alone takes ~100 s) let hosts pass a 150 s deadline
# mid-run, and the measured phases then held the collector's tick opening liveness
# incidents for them (2026-12-07: 147 reports/s at 4.9 ms of CPU each). This bench
# measures ingest; the tick's cost is bench/scale.py's.
BENCH_TTL_S = 3600.0


def _report_json(
    agent_id: str, batch_id: str, values: dict[str, float], now: float, sequenced: bool
) -> bytes:
    """A report as an agent sends it in steady state: a heartbeat plus a metrics summary;
    ``sequenced``: with ``epoch``/``seq_first``/``seq_last`` as today's agent sends them
    (else as an agent before sequence numbers, deduplicated by ids)."""
    first, last = (int(m) for m in _SEQ_MARKS)
    report = wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id=agent_id,
        hostname=f"ws-{agent_id[:8]}",
        labels={"department": "bench"},
        batch_id=batch_id,
        sent_at=now,
        agent_version="0.1.0",
        events=(
            wire.CheckEvent(
                event_id=batch_id[:31] + "h",
                seq=first,
                time=now,
                check=wire.HEARTBEAT_CHECK,
                state="ok",
                previous_state=None,
                value=None,
                message="agent 0.1.0 alive",
                ttl_s=BENCH_TTL_S,
            ),
            wire.MetricsEvent(event_id=batch_id[:31] + "m", seq=last, time=now, values=values),
        ),
        epoch=_EPOCH_MARK if sequenced else None,
        seq_first=first if sequenced else None,
        seq_last=last if sequenced else None,
    )
    return wire.encode_report(report)


def vigil_payloads(
    agents: list[str], values: dict[str, float], now: float, n: int, *, sequenced: bool = True
) -> list[bytes]:
    """``n`` distinct reports (agents round-robin, fresh batch and event ids), gzipped.

    Encoded once with the agent's wire code, then only the ids are substituted (a 32-hex
    id for a 32-hex id), so building 100,000s of them takes seconds, not minutes.
    ``sequenced``: each agent's epoch is its id and its reports' seqs go up by two per
    report (the collector applies them by its mark); else no sequence fields (ids).
    """
    agent_mark, batch_mark = "a" * 32, "b" * 32
    template = _report_json(agent_mark, batch_mark, values, now, sequenced).decode()
    hostname_mark = f"ws-{agent_mark[:8]}"
    assert template.count(agent_mark) == 1 and template.count(batch_mark[:31]) == 3
    if sequenced:  # seq_first and the heartbeat's seq; seq_last and the summary's
        assert all(template.count(f":{mark}") == 2 for mark in _SEQ_MARKS)
    out = []
    for i in range(n):
        agent = agents[i % len(agents)]
        body = template.replace(agent_mark, agent).replace(hostname_mark, f"ws-{agent[:8]}")
        body = body.replace(batch_mark[:31], uuid.uuid4().hex[:31])
        if sequenced:
            k = i // len(agents)  # this agent's k-th report
            body = body.replace(_EPOCH_MARK, agent)
            # With the colon before it: the bare digits can occur inside a random hex
            # id (an agent's id holding "7770001" became an invalid epoch, a 400, in
            # ~2 % of runs with fresh agents); a JSON number after a colon cannot.
            body = body.replace(f":{_SEQ_MARKS[0]}", f":{2 * k + 1}").replace(
                f":{_SEQ_MARKS[1]}", f":{2 * k + 2}"
            )
        out.append(gzip.compress(body.encode(), mtime=0))
    return out


def report_request(body: bytes, token: str = TOKEN) -> bytes:
    """The bytes of an agent's ``POST /api/v1/reports`` carrying ``body`` (gzip JSON)."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    return http_request("POST", "127.0.0.1", "/api/v1/reports", body, headers)


def pushgateway_payload(values: dict[str, float]) -> bytes:
    """The same values in the Prometheus text format (one gauge, the series as a label)."""
    lines = ["# TYPE vigil_value gauge"]
    for series, value in values.items():
        label = series.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'vigil_value{{series="{label}"}} {value!r}')
    lines.append("# TYPE vigil_heartbeat_ttl_seconds gauge")
    lines.append(f"vigil_heartbeat_ttl_seconds {BENCH_TTL_S:g}")
    return ("\n".join(lines) + "\n").encode()


def rss_mb(pid: int) -> float:
    """A process's resident memory now, MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def process_times_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds (all threads) a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def measure(
    pid: int, port: int, make_request: Callable[[int], bytes], args: LoadArgs
) -> dict[str, Any]:
    """One load phase against a server process: throughput, latency and CPU per request."""
    user0, sys0 = process_times_s(pid)
    result = asyncio.run(
        run_load(
            "127.0.0.1",
            port,
            make_request,
            concurrency=args.concurrency,
            duration_s=args.duration_s,
            max_requests=args.max_requests,
        )
    )
    user1, sys1 = process_times_s(pid)
    during = (user1 - user0) + (sys1 - sys0)
    # The work the phase left behind (a garbage collector finishing, the last COMMIT)
    # is the phase's, and must not run into the next server's phase on the same core.
    settle_s = settle(pid)
    user2, sys2 = process_times_s(pid)
    server_cpu = (user2 - user0) + (sys2 - sys0)
    return {
        "per_s": result.per_s,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "ok": result.ok,
        "statuses": result.statuses,
        # Per accepted request, with what the phase left behind; robust to other load on
        # the machine, unlike per_s.
        "server_cpu_us": 1e6 * server_cpu / max(result.ok, 1),
        # Of that, the kernel's (system time: sockets, fsync, page cache), and the part
        # used after the load stopped.
        "server_sys_us": 1e6 * (sys2 - sys0) / max(result.ok, 1),
        "server_after_us": 1e6 * (server_cpu - during) / max(result.ok, 1),
        "server_cpu_share": during / result.elapsed_s,
        "generator_cpu_share": result.generator_cpu_s / result.elapsed_s,
        "server_rss_mb": rss_mb(pid),
        "settle_s": settle_s,
    }


# After a phase, a server counts as idle once it uses under this share of a core over a
# step; it is waited for at most SETTLE_MAX_S.
SETTLE_STEP_S = 0.1
SETTLE_IDLE_SHARE = 0.02
SETTLE_MAX_S = 30.0


def settle(pid: int) -> float:
    """Wait until process ``pid`` is idle after a phase; the seconds waited.

    Why: Pushgateway's garbage collector keeps working for seconds after a phase ends
    (its heap is several GiB at 100,000 groups). That CPU was not counted as its own,
    and it ran on the shared core during the next server's phase (2026-12-07: the
    store-less collector measured right after it got 51-78 % of its core).
    """
    t0 = time.perf_counter()
    before = sum(process_times_s(pid))
    while time.perf_counter() - t0 < SETTLE_MAX_S:
        time.sleep(SETTLE_STEP_S)
        now = sum(process_times_s(pid))
        if now - before < SETTLE_IDLE_SHARE * SETTLE_STEP_S:
            break
        before = now
    return time.perf_counter() - t0


@dataclass(frozen=True)
class LoadArgs:
    concurrency: int
    duration_s: float
    max_requests: int


def describe(name: str, m: dict[str, Any], unit: str) -> str:
    return (
        f"(b) {name}: {m['per_s']:.0f} {unit}/s, p50 {m['p50_ms']:.1f} ms,"
        f" p99 {m['p99_ms']:.1f} ms, server CPU {m['server_cpu_us']:.0f} us per request"
        f" ({m['server_sys_us']:.0f} in the kernel, {m['server_after_us']:.0f} after the load,"
        f" {m['server_cpu_share']:.0%} of its core),"
        f" generator {m['generator_cpu_share']:.0%}"
        f" of its core, RSS {m['server_rss_mb']:,.0f} MiB, idle {m['settle_s']:.1f} s after,"
        f" statuses {m['statuses']}"
    )


def ingest(
    folder: Path,
    values: dict[str, float],
    args: LoadArgs,
    rounds: int,
    *,
    floor: bool = False,
    credentials: bool = False,
    event_loop: str = DEFAULT_EVENT_LOOP,
    front: str = DEFAULT_INGEST_FRONT,
    prefill_hosts: int = 0,
    against: Path | None = None,
) -> dict:
    """Alternate Vigil and Pushgateway phases ``rounds`` times (and the store-less floor
    collector's with ``floor``, the enrolled-agents collector's with ``credentials``);
    every phase's measurements, per server. ``prefill_hosts``: hosts stored before the
    measured collector starts (the load's agents first, see :func:`prefill`).
    ``against``: another checkout's ``src`` folder, whose collector is measured too, on
    a copy of the same pre-filled store with the same requests, its phase before or after
    this checkout's in alternate rounds (SQLite only)."""
    rng = random.Random(5)
    agents = [uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(DISTINCT_AGENTS)]
    rng.shuffle(agents)
    now = time.time()
    pinned = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {LOADGEN_CORE})
    print(
        f"(b) pinning: servers on core {SERVER_CORE}, load generator on core {LOADGEN_CORE}"
        f" ({'applied' if pinned else 'NOT applied: fewer than 2 cores'});"
        f" {args.concurrency} connections, {args.duration_s:g} s a phase, {rounds} rounds,"
        f" at most {args.max_requests} requests a phase, {DISTINCT_AGENTS} distinct agents"
    )
    # Every request of every Vigil phase is distinct (agent, batch and event ids): a
    # re-sent batch would be a cheap duplicate. Built up front so the generator's core
    # only sends; agents are taken round-robin from the 100,000.
    total = args.max_requests * rounds
    t0 = time.perf_counter()
    pool = [report_request(body) for body in vigil_payloads(agents, values, now, total)]
    print(f"(b) built {total} distinct Vigil requests in {time.perf_counter() - t0:.1f} s")
    cred_pool: list[bytes] = []
    cred_proc = cred_port = None
    if credentials:
        (folder / "credentials").mkdir(exist_ok=True)
        tokens = enroll_all(folder / "credentials", agents, now)
        # The same reports, each with its own agent's credential (agents round-robin).
        cred_pool = [
            report_request(body, tokens[agents[i % len(agents)]])
            for i, body in enumerate(vigil_payloads(agents, values, now, total))
        ]
        cred_proc, cred_url = start_collector(
            folder / "credentials", pin=pinned, event_loop=event_loop, front=front
        )
        cred_port = int(cred_url.rsplit(":", 1)[1])
    pg_body = pushgateway_payload(values)
    pg_headers = {"Content-Type": "text/plain; version=0.0.4"}

    def push(agent: str) -> bytes:
        path = f"/metrics/job/vigil/instance/{agent}"
        return http_request("POST", "127.0.0.1", path, pg_body, pg_headers)

    pg_pool = [push(a) for a in agents]

    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        print("(b) prometheus-pushgateway not installed: apt-get install prometheus-pushgateway")
    vigil_dir = folder / "ingest"
    vigil_dir.mkdir(exist_ok=True)
    known = agents[:prefill_hosts] + [
        uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(max(0, prefill_hosts - len(agents)))
    ]
    if prefill_hosts:
        from vigil.collector.storage.url import sqlite_url

        url = INGEST_URL[0] or sqlite_url(vigil_dir / "collector.db")
        took = prefill(url, known, values, now)
        print(f"(b) pre-filled the store with {len(known)} hosts in {took:.1f} s")
    against_proc = against_port = None
    if against is not None:
        against_dir = folder / "against"
        against_dir.mkdir()
        for name in ("collector.db", "collector.db-wal"):  # the store as pre-filled
            if (vigil_dir / name).exists():
                shutil.copy(vigil_dir / name, against_dir / name)
        against_proc, against_url = start_collector(
            against_dir, pin=pinned, event_loop=event_loop, front=front, source=against
        )
        against_port = int(against_url.rsplit(":", 1)[1])
    proc, url = start_collector(
        vigil_dir, pin=pinned, storage=INGEST_STORAGE[0], event_loop=event_loop, front=front
    )
    vigil_port = int(url.rsplit(":", 1)[1])
    pg_port = free_port()
    pg = None
    if binary is not None:
        cmd = [
            binary,
            f"--web.listen-address=127.0.0.1:{pg_port}",
            "--push.disable-consistency-check",
        ]
        if pinned:
            cmd = ["taskset", "-c", str(SERVER_CORE), *cmd]
        pg = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=(folder / "pushgateway.log").open("w")
        )
        wait_for_port(pg_port)
        if known:
            prefill_pushgateway(pg.pid, pg_port, [push(a) for a in known], args.concurrency)
    floor_proc = floor_port = None
    if floor:
        (folder / "floor").mkdir(exist_ok=True)
        floor_proc, floor_url = start_collector(
            folder / "floor", pin=pinned, floor=True, event_loop=event_loop, front=front
        )
        floor_port = int(floor_url.rsplit(":", 1)[1])
    vigil_runs: list[dict[str, Any]] = []
    pg_runs: list[dict[str, Any]] = []
    floor_runs: list[dict[str, Any]] = []
    cred_runs: list[dict[str, Any]] = []
    against_runs: list[dict[str, Any]] = []
    try:
        for r in range(rounds):
            # Both servers are up the whole time, each idle while the other is measured.
            phase = pool[r * args.max_requests : (r + 1) * args.max_requests]
            # The other checkout's collector: the same requests, on its own copy of the
            # store; before this checkout's phase in odd rounds, last in even ones.
            against_phase = None
            if against_proc is not None and against_port is not None:
                against_phase = functools.partial(
                    measure, against_proc.pid, against_port, phase.__getitem__, args
                )
            if against_phase is not None and r % 2 == 1:
                against_runs.append(against_phase())
                print(describe(f"against {against}", against_runs[-1], "reports"))
            m = measure(proc.pid, vigil_port, phase.__getitem__, args)
            vigil_runs.append(m)
            backend = "SQLite" if INGEST_STORAGE[0].startswith("{sqlite") else "PostgreSQL"
            print(describe(f"vigil collector ({backend}, durable commits)", m, "reports"))
            if pg is not None:
                # The same agents, in the same order, as this round's Vigil phase.
                rotated = functools.partial(_rotated, pg_pool, r * args.max_requests)
                m = measure(pg.pid, pg_port, rotated, args)
                pg_runs.append(m)
                print(describe("prometheus-pushgateway (memory)", m, "pushes"))
            if floor_proc is not None and floor_port is not None:
                m = measure(floor_proc.pid, floor_port, phase.__getitem__, args)
                floor_runs.append(m)
                print(describe("floor: vigil collector storing nothing", m, "reports"))
            if cred_proc is not None and cred_port is not None:
                cphase = cred_pool[r * args.max_requests : (r + 1) * args.max_requests]
                m = measure(cred_proc.pid, cred_port, cphase.__getitem__, args)
                cred_runs.append(m)
                print(describe("vigil collector, per-agent credentials", m, "reports"))
            if against_phase is not None and r % 2 == 0:
                against_runs.append(against_phase())
                print(describe(f"against {against}", against_runs[-1], "reports"))
    finally:
        stop(proc)
        if against_proc is not None:
            stop(against_proc)
        if cred_proc is not None:
            stop(cred_proc)
        if floor_proc is not None:
            stop(floor_proc)
        if pg is not None:
            stop(pg)  # with 100,000 groups it may not exit within the wait: killed then
    return {
        "vigil": vigil_runs,
        "pushgateway": pg_runs,
        "floor": floor_runs,
        "cred": cred_runs,
        "against": against_runs,
    }


def _rotated(pool: list[bytes], first: int, i: int) -> bytes:
    return pool[(first + i) % len(pool)]


def prefill_pushgateway(pid: int, port: int, pushes: list[bytes], concurrency: int) -> None:
    """Push every one of ``pushes`` once (not measured): Pushgateway then holds a group
    for each pre-filled agent, as Vigil's store holds its host, so both are measured at
    the same fleet size (each measured push replaces a group, each report updates a host).
    Before 2026-12-07 Pushgateway started empty and each round pushed the first agents
    again: it held ~20,000-45,000 groups while Vigil held 100,000 hosts."""
    t0 = time.perf_counter()
    result = asyncio.run(
        run_load(
            "127.0.0.1",
            port,
            pushes.__getitem__,
            concurrency=concurrency,
            duration_s=PEER_PREFILL_MAX_S,
            max_requests=len(pushes),
        )
    )
    if result.statuses != {202: len(pushes)}:
        raise SystemExit(f"pre-filling Pushgateway: statuses {result.statuses}")
    took = time.perf_counter() - t0
    idle = settle(pid)  # its collector's work after the pre-fill is not the first phase's
    print(
        f"(b) pre-filled Pushgateway with {len(pushes)} groups in {took:.1f} s, idle"
        f" {idle:.1f} s after (RSS {rss_mb(pid):,.0f} MiB)"
    )


def wait_for_port(port: int, timeout_s: float = 60.0) -> None:
    """Wait until something accepts on 127.0.0.1:``port`` (Pushgateway can take ~12 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout_s:g} s")


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarise(result: dict[str, Any], concurrency: int, rounds: int) -> dict[str, Any]:
    """Print one concurrency level's medians and return them (None where not measured)."""
    vigil_runs, pg_runs = result["vigil"], result["pushgateway"]
    keys = ("per_s", "p50_ms", "p99_ms", "server_cpu_us")
    vigil = {k: median_of(vigil_runs, k) for k in keys}
    pushgw = {k: median_of(pg_runs, k) for k in keys} if pg_runs else None
    # Memory: the largest resident size seen at the end of a phase.
    vigil["rss_mb"] = max(r["server_rss_mb"] for r in vigil_runs)
    if pushgw is not None:
        pushgw["rss_mb"] = max(r["server_rss_mb"] for r in pg_runs)
    ratio = cpu_ratio = None
    if pushgw:
        ratio = vigil["per_s"] / pushgw["per_s"]
        cpu_ratio = pushgw["server_cpu_us"] / vigil["server_cpu_us"]
        print(
            f"(b) {concurrency} connections, medians of {rounds}: vigil {vigil['per_s']:.0f}"
            f" reports/s ({vigil['server_cpu_us']:.0f} us CPU each, p99"
            f" {vigil['p99_ms']:.1f} ms), pushgateway {pushgw['per_s']:.0f} pushes/s"
            f" ({pushgw['server_cpu_us']:.0f} us CPU each)"
        )
        print(
            f"(b) {concurrency} connections: ratio vigil/pushgateway {ratio:.2f} by throughput,"
            f" {cpu_ratio:.2f} by CPU per request (target >= 1.5 at 128, >= 1.0 at 32)"
        )
    floor_us = median_of(result["floor"], "server_cpu_us") if result["floor"] else None
    if floor_us is not None:
        print(
            f"(b) floor: {floor_us:.0f} us CPU per report with the store skipped, so the store"
            f" path costs {vigil['server_cpu_us'] - floor_us:.0f} us of Vigil's"
            f" {vigil['server_cpu_us']:.0f}"
            + (f"; pushgateway/floor {pushgw['server_cpu_us'] / floor_us:.2f}" if pushgw else "")
        )
    cred_us = median_of(result["cred"], "server_cpu_us") if result["cred"] else None
    overhead = None
    if cred_us is not None:
        overhead = cred_us / vigil["server_cpu_us"] - 1
        print(
            f"(b) per-agent credentials: {cred_us:.0f} us CPU per report vs"
            f" {vigil['server_cpu_us']:.0f} us with the shared token: overhead"
            f" {overhead:+.1%} (target <= +10%)"
        )
    against_us = median_of(result["against"], "server_cpu_us") if result["against"] else None
    change = None
    if against_us is not None:
        change = vigil["server_cpu_us"] / against_us - 1
        print(
            f"(b) against the other checkout: {vigil['server_cpu_us']:.0f} us CPU per report"
            f" vs {against_us:.0f} us ({change:+.1%}); reports/s {vigil['per_s']:.0f} vs"
            f" {median_of(result['against'], 'per_s'):.0f}"
        )
    return {
        "against_us": against_us,
        "against_change": change,
        "vigil": vigil,
        "pushgw": pushgw,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "floor_us": floor_us,
        "cred_us": cred_us,
        "overhead": overhead,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    parser.add_argument(
        "--concurrency",
        default="128,32",
        help="connection counts, comma-separated; each is a run of its own (default 128,32)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="load phases per server")
    parser.add_argument("--ingest-only", action="store_true", help="skip (a), the offline day")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure the collector with its store skipped (what HTTP and parsing cost)",
    )
    parser.add_argument(
        "--credentials",
        action="store_true",
        help="also measure a collector where every agent sends its own enrolled credential",
    )
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default=DEFAULT_EVENT_LOOP,
        help=f"the collectors' listen.event_loop (default {DEFAULT_EVENT_LOOP})",
    )
    parser.add_argument(
        "--front",
        choices=INGEST_FRONTS,
        default=DEFAULT_INGEST_FRONT,
        help=f"the collectors' listen.ingest_front (default {DEFAULT_INGEST_FRONT})",
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds a phase (default 10, 5 with --quick)"
    )
    parser.add_argument(
        "--prefill",
        type=int,
        default=DISTINCT_AGENTS,
        help=f"agents (b)'s servers hold before the phases: hosts in the collector's store,"
        f" groups pushed to Pushgateway (default {DISTINCT_AGENTS:,}; 0: both empty)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="also measure another checkout's collector (its src folder), alternated",
    )
    parser.add_argument(
        "--dsn",
        help="run (b)'s collector on a fresh schema of this PostgreSQL server, not SQLite",
    )
    args = parser.parse_args()
    if args.against is not None and not (args.against / "vigil" / "collector").is_dir():
        parser.error(f"--against: {args.against} is not a checkout's src folder")
    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        parser.error(
            f"--concurrency: expected connection counts like 128,32, got {args.concurrency!r}"
        )
    if args.rounds < 1:
        parser.error(f"--rounds: at least 1, got {args.rounds}")
    if args.prefill < 0:
        parser.error(f"--prefill: 0 or more agents, got {args.prefill}")
    if args.seconds is not None and not args.seconds > 0:
        parser.error(f"--seconds: must be positive, got {args.seconds:g}")
    schema = None
    if args.dsn:
        if args.credentials or args.against:
            parser.error("--credentials and --against use SQLite stores: not with --dsn")
        os.environ["VIGIL_TEST_PG_DSN"] = args.dsn
        from tests.support.postgres import TestSchema

        schema = TestSchema()
        INGEST_STORAGE[0] = f"{{url: '{schema.url}'}}"
        INGEST_URL[0] = schema.url
    duration_s = args.seconds or (5.0 if args.quick else 10.0)
    values = real_sample()
    print(
        f"delivery benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
        f" {os.cpu_count()} cores; metrics summary of {len(values)} series;"
        f" event loop {args.event_loop}, ingest front {args.front}"
    )
    summaries: dict[int, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="vigil-bench-delivery-") as tmp:
            folder = Path(tmp)
            day = None if args.ingest_only else offline_day(folder, values, hours=24.0)
            for concurrency in levels:
                load_args = LoadArgs(
                    concurrency=concurrency,
                    duration_s=duration_s,
                    max_requests=60_000 if args.quick else 150_000,
                )
                level_dir = folder / f"c{concurrency}"
                level_dir.mkdir()
                result = ingest(
                    level_dir,
                    values,
                    load_args,
                    args.rounds,
                    floor=args.floor,
                    credentials=args.credentials,
                    event_loop=args.event_loop,
                    front=args.front,
                    prefill_hosts=args.prefill,
                    against=args.against,
                )
                summaries[concurrency] = summarise(result, concurrency, args.rounds)
    finally:
        if schema is not None:
            schema.drop()
    # The headline figures are the first level's (128 connections by default); every
    # level also gets ratio_N, cpu_ratio_N and vigil_p99_ms_N.
    head = summaries[levels[0]]
    vigil, pushgw = head["vigil"], head["pushgw"]
    per_level: dict[str, float | None] = {}
    for concurrency, summary in summaries.items():
        per_level[f"ratio_{concurrency}"] = _round(summary["ratio"], 3)
        per_level[f"cpu_ratio_{concurrency}"] = _round(summary["cpu_ratio"], 3)
        per_level[f"vigil_p99_ms_{concurrency}"] = _round(summary["vigil"]["p99_ms"], 2)
        per_level[f"vigil_cpu_us_per_report_{concurrency}"] = _round(
            summary["vigil"]["server_cpu_us"], 1
        )
        per_level[f"floor_cpu_us_per_report_{concurrency}"] = _round(summary["floor_us"], 1)
        if args.against is not None:
            per_level[f"against_change_{concurrency}"] = _round(summary["against_change"], 3)
    print(
        json.dumps(
            {
                "offline_day_mb": day["offline_day_mb"] if day else None,
                "offline_events": day["offline_events"] if day else None,
                "dropped": day["dropped"] if day else None,
                "drain_s": day["drain_s"] if day else None,
                "vigil_backend": "postgresql" if schema is not None else "sqlite",
                "vigil_reports_per_s": round(vigil["per_s"], 1),
                "vigil_p50_ms": round(vigil["p50_ms"], 2),
                "vigil_p99_ms": round(vigil["p99_ms"], 2),
                "vigil_cpu_us_per_report": round(vigil["server_cpu_us"], 1),
                "pushgateway_pushes_per_s": round(pushgw["per_s"], 1) if pushgw else None,
                "pushgateway_p99_ms": round(pushgw["p99_ms"], 2) if pushgw else None,
                "pushgateway_cpu_us_per_push": round(pushgw["server_cpu_us"], 1)
                if pushgw
                else None,
                "vigil_rss_mb": round(vigil["rss_mb"]),
                "pushgateway_rss_mb": round(pushgw["rss_mb"]) if pushgw else None,
                "ratio": _round(head["ratio"], 3),
                "cpu_ratio": _round(head["cpu_ratio"], 3),
                **per_level,
                "floor_cpu_us_per_report": _round(head["floor_us"], 1),
                "credentials_cpu_us_per_report": _round(head["cred_us"], 1),
                "credential_overhead": _round(head["overhead"], 3),
                "against_cpu_us_per_report": _round(head["against_us"], 1),
                "against_change": _round(head["against_change"], 3),
                "concurrency": levels[0],
                "concurrency_levels": levels,
                "event_loop": args.event_loop,
                "ingest_front": args.front,
                "prefilled_hosts": args.prefill,
                "duration_s": duration_s,
                "rounds": args.rounds,
                "cores": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
