"""Several collector processes on one PostgreSQL database: throughput, fail-over, no loss.

Every phase starts real collector processes on one port (``listen.reuse_port``, so the
kernel spreads connections over them) and a fresh schema on the PostgreSQL server
``--dsn`` names; simulated agents (``tests/support/simagents.py``: sequenced reports as a
real outbox numbers them, each on a new connection, retried until acknowledged as the
shipper does) send ``--reports`` reports each from ``--agents`` agents, ``--threads`` at
a time.

1. **peer: one collector** (no kill): accepted reports/s.
2. **two collectors** (no kill): the same load; reports/s, to compare with (1).
3. **two collectors, the leader SIGKILLed** once half the reports were acknowledged.
   Two fleet-wide faults are reported (every agent fails check ``bench.fault_a`` at a
   quarter of its reports, ``bench.fault_b`` at three quarters), so each goes through
   both collectors (and ``fault_b`` mostly through the survivor). Measured: events lost
   (sent, never stored) and applied twice (the ``events`` counter over the distinct event
   ids stored, plus repeated event ids among the check results), reports never
   acknowledged within 30 s; ``failover_s``, the longest of: the survivor holding the
   leader lock, its first notification (a local webhook receiver), and its tick opening
   the silent-host incident of a canary agent whose heartbeat TTL (2 s) plus grace (1 s)
   runs out right after the kill, less that 3 s the canary was allowed; and fleet problems
   opened per fleet-wide fault (1 expected).

Localhost only; every loop is bounded in count and time. Run:
``.venv/bin/python bench/multicollector.py [--dsn URL] [--agents 40] [--reports 20]``.
Prints each phase, then a last JSON line with ``collectors``, ``agents``, ``lost``,
``duplicated``, ``failover_s``, ``problems_per_fleet_fault`` and the throughputs.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AGENT_TOKEN = "mcb-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "mcb-admin-token-0123456789abcdef0123456789abcdef"
LEADER_LOCK = 0x76696733  # storage/postgres/schema.py
CANARY_TTL_S, GRACE_S = 2.0, 1.0
FAULTS = ("bench.fault_a", "bench.fault_b")
DEADLINE_S = 180.0  # the whole of one phase's load, at most


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Webhooks:
    """A local webhook receiver: the monotonic time of every POST it got."""

    def __init__(self) -> None:
        self.times: list[float] = []
        times = self.times

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                times.append(time.monotonic())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_config(folder: Path, url: str, port: int, hook: str) -> Path:
    config = folder / "collector.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}, reuse_port: true}}\n"
        f"storage: {{url: '{url}', record_event_ids: true}}\n"
        f"auth: {{agent_tokens: [{AGENT_TOKEN}], admin_tokens: [{ADMIN_TOKEN}]}}\n"
        f"incidents: {{heartbeat_grace: {GRACE_S:g}s}}\n"
        "metrics: {fleet_refresh: 5s}\n"
        f"notifications: {{delay: 0s, interval: 1s, webhooks: [{{url: '{hook}'}}]}}\n"
    )
    return config


def start(config: Path, log: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil.collector", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: the collector prints it or exits
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"collector did not start: {log.read_text()[-2000:]}")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        return [tuple(r) for r in db.execute(sql, args).fetchall()]  # type: ignore[call-overload]


def leader_pid(url: str) -> int | None:
    rows = query(
        url,
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.granted"
        " AND a.datname = current_database()",
        LEADER_LOCK,
    )
    return int(str(rows[0][0]).rsplit("-", 1)[1]) if rows else None


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system, every thread) the processes ``pids`` used so far;
    a process gone meanwhile counts 0 (read from /proc, Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def backend_pids(url: str, collectors: list[int]) -> list[int]:
    """The PostgreSQL server processes serving these collector processes' sessions."""
    names = [f"vigil-collector-{pid}" for pid in collectors]
    rows = query(url, "SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)", names)
    return [int(r[0]) for r in rows]


def api(port: int, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait(what: str, probe: Any, timeout_s: float) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            got = probe()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def run_phase(
    args: argparse.Namespace, dsn_schema: Any, collectors: int, *, kill: bool
) -> dict[str, Any]:
    from tests.support.simagents import SimAgent, deliver

    schema = dsn_schema()
    hooks = Webhooks()
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="vigil-mc-"))
    config = write_config(folder, schema.url, port, hooks.url)
    procs = [start(config, folder / f"c{i}.log") for i in range(collectors)]
    out: dict[str, Any] = {"collectors": collectors}
    try:
        wait("a leader", lambda: leader_pid(schema.url), 15)
        agents = [SimAgent(f"mcb{i:04d}") for i in range(args.agents)]
        acked = [0]
        unacked = [0]
        lock = threading.Lock()
        quarter, three = args.reports // 4, (3 * args.reports) // 4
        end = time.monotonic() + DEADLINE_S

        def run_agent(agent: SimAgent) -> None:
            for r in range(args.reports):
                if time.monotonic() > end:
                    return
                fault = FAULTS[0] if r == quarter and kill else None
                fault = FAULTS[1] if r == three and kill else fault
                ok, _ = deliver(port, agent.report(check=fault, state="critical"), AGENT_TOKEN)
                with lock:
                    acked[0] += ok
                    unacked[0] += not ok

        pids = [p.pid for p in procs]
        backends = backend_pids(schema.url, pids)
        cpu_before = cpu_s(pids), cpu_s(backends)
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            futures = [pool.submit(run_agent, a) for a in agents]
            if kill:
                half = args.agents * args.reports // 2
                wait("half the reports", lambda: acked[0] >= half, DEADLINE_S)
                canary = SimAgent("mcb-canary")
                ok, _ = deliver(port, canary.report(), AGENT_TOKEN)  # ttl 60 s
                assert ok
                short = canary.report(heartbeat_ttl_s=CANARY_TTL_S)  # then silent
                assert deliver(port, short, AGENT_TOKEN)[0]
                victim_pid = leader_pid(schema.url)
                victim = next(p for p in procs if p.pid == victim_pid)
                victim.send_signal(signal.SIGKILL)
                killed = time.monotonic()
                victim.wait(timeout=10)
                survivor = next(p for p in procs if p is not victim)
                wait("the survivor to lead", lambda: leader_pid(schema.url) == survivor.pid, 60)
                lock_s = time.monotonic() - killed
            for f in futures:
                f.result()
        elapsed = time.monotonic() - started
        total = sum(a.batches for a in agents)
        if not kill:  # CPU per report: collectors, and their PostgreSQL server processes
            out["collector_cpu_us"] = round((cpu_s(pids) - cpu_before[0]) / total * 1e6)
            out["postgres_cpu_us"] = round((cpu_s(backends) - cpu_before[1]) / total * 1e6)
        out["reports"] = total
        out["reports_per_s"] = round(total / elapsed, 1)
        out["unacknowledged"] = unacked[0]
        if kill:
            wait(
                "the canary's silent-host incident",
                lambda: [
                    i
                    for i in api(port, "/api/v1/incidents?check=agent.heartbeat")["incidents"]
                    if i["host"] == "mcb-canary"
                ],
                60,
            )
            tick_s = time.monotonic() - killed - (CANARY_TTL_S + GRACE_S)
            first_hook = wait(
                "a notification after the kill",
                lambda: next((t for t in list(hooks.times) if t > killed), None),
                60,
            )
            out["leader_lock_s"] = round(lock_s, 2)
            out["tick_failover_s"] = round(tick_s, 2)
            out["notify_failover_s"] = round(first_hook - killed, 2)
            out["failover_s"] = round(max(lock_s, tick_s, first_hook - killed), 2)
            sent = {(a.agent_id, e) for a in [*agents, canary] for e in a.sent}
            stored = set(query(schema.url, "SELECT host, id FROM seen WHERE kind = 1"))
            out["lost"] = len(sent - stored)
            ((counted,),) = query(schema.url, "SELECT value FROM counters WHERE name='events'")
            ((checks,),) = query(
                schema.url,
                "SELECT COUNT(*) - COUNT(DISTINCT host || ' ' || event_id) FROM check_results",
            )
            out["duplicated"] = int(counted) - len(stored) + int(checks)
            per_fault = []
            for check in FAULTS:
                problems = api(port, f"/api/v1/problems?kind=fleet&state=all&check={check}")
                per_fault.append(len(problems["problems"]))
            out["problems_by_fault"] = per_fault
            out["problems_per_fleet_fault"] = max(per_fault)
    finally:
        for proc in procs:
            stop(proc)
        hooks.close()
        schema.drop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get("VIGIL_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--reports", type=int, default=20, help="reports per agent (>= 4)")
    parser.add_argument("--threads", type=int, default=16, help="agents sending at once")
    args = parser.parse_args()
    if args.reports < 4 or args.agents < 4:
        parser.error("--reports and --agents must be at least 4")
    os.environ["VIGIL_TEST_PG_DSN"] = args.dsn
    from tests.support.postgres import TestSchema, pg_unavailable

    why = pg_unavailable()
    if why:
        raise SystemExit(why)
    single = run_phase(args, TestSchema, 1, kill=False)
    double = run_phase(args, TestSchema, 2, kill=False)
    for name, phase in (("peer, one collector:", single), ("two collectors:", double)):
        print(
            f"{name:22} {phase['reports']} reports, {phase['reports_per_s']}/s; CPU per"
            f" report: collectors {phase['collector_cpu_us']} us, PostgreSQL"
            f" {phase['postgres_cpu_us']} us"
        )
    chaos = run_phase(args, TestSchema, 2, kill=True)
    print(
        f"two, leader SIGKILLed: {chaos['reports']} reports, {chaos['reports_per_s']}/s;"
        f" lost {chaos['lost']}, applied twice {chaos['duplicated']}, unacknowledged"
        f" {chaos['unacknowledged']}; leader lock after {chaos['leader_lock_s']} s, tick"
        f" {chaos['tick_failover_s']} s, first notification {chaos['notify_failover_s']} s;"
        f" fleet problems per fault {chaos['problems_by_fault']}"
    )
    result = {
        "collectors": 2,
        "agents": args.agents,
        "reports": chaos["reports"],
        "lost": chaos["lost"],
        "duplicated": chaos["duplicated"],
        "unacknowledged": chaos["unacknowledged"],
        "failover_s": chaos["failover_s"],
        "leader_lock_s": chaos["leader_lock_s"],
        "tick_failover_s": chaos["tick_failover_s"],
        "notify_failover_s": chaos["notify_failover_s"],
        "problems_per_fleet_fault": chaos["problems_per_fleet_fault"],
        "reports_per_s_one": single["reports_per_s"],
        "reports_per_s_two": double["reports_per_s"],
        "collector_cpu_us_one": single["collector_cpu_us"],
        "postgres_cpu_us_one": single["postgres_cpu_us"],
        "collector_cpu_us_two": double["collector_cpu_us"],
        "postgres_cpu_us_two": double["postgres_cpu_us"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
