"""Agent footprint: the real agent with the default config vs Debian's node_exporter.

Runs, all on 127.0.0.1 and in the same run:

- a real collector (``python -m vigil.collector --port 0``) behind a byte-counting TCP proxy,
  so every byte the agent sends (HTTP headers included) is counted on the wire;
- a real agent (``python -m vigil.agent run``) with ``config/agent.yaml`` (only the collector
  URL, token, state folder and remediation folder are rewritten for the sandbox);
- ``prometheus-node-exporter``, scraped by this script at the agent's sample interval.

After a warm-up (imports, first cycle, first full process scan), it reads both
processes' CPU times (user + system, children included) at every interval tick, so each
tick-to-tick delta holds one agent sampling cycle and one node_exporter scrape. It
prints CPU ms per cycle (median, p90, mean), average CPU % of one core, the agent's RSS
(start, end, peak, growth), bytes sent per day, the same for node_exporter and the
ratios, then one JSON line.

Bytes: measured over the window and scaled to a day. A window shorter than the agent's
``intervals.metrics`` contains no metric summary, so one is added from a model: a real
sample of this machine, encoded and gzipped as the shipper does, plus the average HTTP
request size measured on the wire. Runs of 600 s or more measure summaries directly.

Usage: ``.venv/bin/python bench/agent_footprint.py [--quick | --seconds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vigil import wire  # noqa: E402
from vigil.agent.config import load_agent_config  # noqa: E402
from vigil.agent.sampling.sampler import Sampler  # noqa: E402

TOKEN = "bench-agent-token-0123456789abcdef0123456789abcdef"
WARMUP_S = 8.0


class CountingProxy:
    """A TCP proxy on 127.0.0.1 counting bytes each way, on its own event-loop thread."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.up = 0  # agent -> collector
        self.down = 0
        self.requests = 0
        self.sizes: list[int] = []  # bytes of each request, headers included
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, daemon=True).start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upward: bool) -> None:
            try:
                while data := await src.read(65536):
                    if upward:
                        self.up += len(data)
                        posts = data.count(b"POST /api/")
                        self.requests += posts
                        if posts or not self.sizes:
                            self.sizes.append(0)
                        self.sizes[-1] += len(data)
                    else:
                        self.down += len(data)
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_w, True), pump(up_r, writer, False))


def start_collector(tmp: Path) -> tuple[subprocess.Popen[str], int]:
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "storage": {"sqlite_path": str(tmp / "collector.db")},
        "auth": {"agent_tokens": [TOKEN], "open_read": True},
    }
    path = tmp / "collector.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil.collector", "--config", str(path), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(tmp / "collector.log", "w"),  # noqa: SIM115
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on http://" not in line:
        proc.kill()
        raise RuntimeError(f"collector did not start: {line!r}; see {tmp / 'collector.log'}")
    return proc, int(line.rsplit(":", 1)[1])


def agent_config(tmp: Path, source: Path, url: str) -> Path:
    """The default config, with only sandbox-specific keys rewritten."""
    data = yaml.safe_load(source.read_text())
    data["collector"] = {"url": url, "token": TOKEN}
    data.setdefault("agent", {})["state_dir"] = str(tmp / "agent-state")
    rem = data.get("remediation") or {}
    rem["folders"] = [str((source.parent / f).resolve()) for f in rem.get("folders", [])]
    data["remediation"] = rem
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cpu_s(proc: psutil.Process) -> float:
    """CPU seconds used by ``proc`` so far, as precisely as the OS tells.

    ``cpu_times`` counts in scheduler ticks (10 ms on most Linux kernels), too coarse for
    a few milliseconds per cycle, so on Linux the nanosecond ``schedstat`` of every
    thread is summed (the time of a thread that exits between two readings is lost;
    the agent's and node_exporter's worker threads are long-lived). Children (a plugin,
    ``systemctl``) are added from ``cpu_times`` once they are reaped.
    """
    t = proc.cpu_times()
    children = t.children_user + t.children_system
    try:
        total = 0
        for task in os.scandir(f"/proc/{proc.pid}/task"):
            with open(f"{task.path}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9 + children
    except (OSError, ValueError, IndexError):
        return t.user + t.system + children


def scrape(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return len(resp.read())


def metrics_summary_bytes(config_path: Path) -> int:
    """Gzipped size of one metric-summary report, built from a real sample of this host."""
    config = load_agent_config(config_path)
    sampler = Sampler(config.sampler)
    sampler.sample()
    time.sleep(1.0)
    values = sampler.sample()
    values |= {
        "agent.outbox_events": 1.0,
        "agent.outbox_bytes": 1.0,
        "agent.outbox_dropped_total": 0.0,
    }
    event = wire.MetricsEvent(event_id="0" * 32, seq=1, time=time.time(), values=values)
    report = wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id="0" * 32,
        hostname="bench-host",
        labels=dict(config.labels),
        batch_id="0" * 32,
        sent_at=time.time(),
        agent_version="0",
        events=(event,),
    )
    return len(gzip.compress(wire.encode_report(report), mtime=0))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="60 s instead of --seconds")
    parser.add_argument("--config", type=Path, default=ROOT / "config" / "agent.yaml")
    args = parser.parse_args()
    seconds = 60.0 if args.quick else args.seconds
    exporter = shutil.which("prometheus-node-exporter")
    if exporter is None:
        print("prometheus-node-exporter not found (apt install prometheus-node-exporter)")
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="vigil-footprint-"))
    procs: list[subprocess.Popen[Any]] = []
    cfg_path: Path | None = None
    try:
        collector, port = start_collector(tmp)
        procs.append(collector)
        proxy = CountingProxy(port)
        cfg_path = agent_config(tmp, args.config, f"http://127.0.0.1:{proxy.port}")
        config = load_agent_config(cfg_path)
        interval = config.intervals.sample_s
        agent = subprocess.Popen(
            [sys.executable, "-m", "vigil.agent", "--config", str(cfg_path), "run"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "agent.log", "w"),  # noqa: SIM115
        )
        procs.append(agent)
        ne_port = _free_port()
        node = subprocess.Popen(
            [
                exporter,
                f"--web.listen-address=127.0.0.1:{ne_port}",
                "--log.level=error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(node)
        agent_p, node_p = psutil.Process(agent.pid), psutil.Process(node.pid)

        time.sleep(WARMUP_S)
        # The first delivery (jittered up to one report interval) carries every check's
        # initial state: a start-up cost, kept out of the window.
        deadline = time.monotonic() + config.intervals.report_s + 5
        while proxy.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        scrape(ne_port)  # node_exporter's first scrape also warms up its collectors
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited with {agent.returncode}; see {tmp / 'agent.log'}")

        rss: list[int] = []
        agent_deltas: list[float] = []
        node_deltas: list[float] = []
        scrape_bytes: list[int] = []
        start = time.monotonic()
        a_start, n_start = cpu_s(agent_p), cpu_s(node_p)
        a_prev, n_prev = a_start, n_start
        up_start, req_start, sizes_start = proxy.up, proxy.requests, len(proxy.sizes)
        rss_start = agent_p.memory_info().rss
        ticks = int(seconds // interval)
        print(f"measuring {ticks} intervals of {interval:g} s ...", flush=True)
        for k in range(1, ticks + 1):
            tick_at = start + k * interval
            while (left := tick_at - time.monotonic()) > 0:
                rss.append(agent_p.memory_info().rss)
                time.sleep(min(1.0, left))
            scrape_bytes.append(scrape(ne_port))
            a_now, n_now = cpu_s(agent_p), cpu_s(node_p)
            agent_deltas.append((a_now - a_prev) * 1000)
            node_deltas.append((n_now - n_prev) * 1000)
            a_prev, n_prev = a_now, n_now
        elapsed = time.monotonic() - start
        rss_end = agent_p.memory_info().rss
        node_rss = node_p.memory_info().rss
        rss.append(rss_end)
        up = proxy.up - up_start
        requests = proxy.requests - req_start
        window_sizes = proxy.sizes[sizes_start:]
        all_sizes = list(proxy.sizes)
        if agent.poll() is not None:
            raise RuntimeError(f"agent exited with {agent.returncode}; see {tmp / 'agent.log'}")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    iv = config.intervals
    measured_day = up * 86400.0 / elapsed
    bytes_day = measured_day
    how = "measured"
    summary = metrics_summary_bytes(args.config)
    # A window shorter than two of the slowest periodic deliveries cannot measure their
    # share: model the day from the schedule and request sizes seen on the wire instead.
    request = statistics.median(window_sizes or all_sizes or [1000])
    modelled_day = request * 86400.0 / iv.heartbeat_s + (request + summary) * 86400.0 / iv.metrics_s
    if elapsed < 2 * max(iv.heartbeat_s, iv.metrics_s):
        bytes_day = modelled_day
        how = (
            f"modelled: a {request:.0f} B request per {iv.heartbeat_s:g} s heartbeat, "
            f"plus a {summary} B gzip metric summary per {iv.metrics_s:g} s"
        )
    a_med, n_med = statistics.median(agent_deltas), statistics.median(node_deltas)
    a_mean, n_mean = statistics.fmean(agent_deltas), statistics.fmean(node_deltas)
    mb = 2**20
    result = {
        "seconds": round(elapsed, 1),
        "interval_s": interval,
        "cycles": len(agent_deltas),
        "agent_cpu_ms_per_cycle": round(a_med, 3),
        "agent_cpu_ms_per_cycle_p90": round(pct(agent_deltas, 0.9), 3),
        "agent_cpu_ms_per_cycle_mean": round(a_mean, 3),
        "agent_cpu_percent_avg": round(a_mean / (interval * 1000) * 100, 4),
        "node_exporter_cpu_ms_per_scrape": round(n_med, 3),
        "node_exporter_cpu_ms_per_scrape_p90": round(pct(node_deltas, 0.9), 3),
        "node_exporter_cpu_ms_per_scrape_mean": round(n_mean, 3),
        "node_exporter_cpu_percent_avg": round(n_mean / (interval * 1000) * 100, 4),
        "cpu_ratio": round(a_med / n_med, 3) if n_med else None,
        "cpu_ratio_mean": round(a_mean / n_mean, 3) if n_mean else None,
        "agent_rss_mb_start": round(rss_start / mb, 2),
        "agent_rss_mb_end": round(rss_end / mb, 2),
        "agent_rss_mb_peak": round(max(rss) / mb, 2),
        "agent_rss_growth_mb": round((rss_end - rss_start) / mb, 2),
        "agent_bytes_per_day": round(bytes_day),
        "agent_bytes_per_day_measured": round(measured_day),
        "agent_bytes_per_day_modelled": round(modelled_day),
        "agent_request_bytes_median": round(request),
        "agent_metric_summary_gzip_bytes": summary,
        "agent_requests": requests,
        "node_exporter_bytes_per_day": round(statistics.fmean(scrape_bytes) * 86400 / interval),
        "node_exporter_rss_mb": round(node_rss / mb, 2),
    }
    print(f"window: {elapsed:.0f} s, {len(agent_deltas)} cycles of {interval:g} s")
    print(
        f"agent CPU per cycle:          median {a_med:.2f} ms, p90 "
        f"{result['agent_cpu_ms_per_cycle_p90']:.2f} ms, mean {a_mean:.2f} ms "
        f"({result['agent_cpu_percent_avg']:.4f} % of a core)"
    )
    print(
        f"node_exporter CPU per scrape: median {n_med:.2f} ms, p90 "
        f"{result['node_exporter_cpu_ms_per_scrape_p90']:.2f} ms, mean {n_mean:.2f} ms "
        f"({result['node_exporter_cpu_percent_avg']:.4f} % of a core)"
    )
    print(
        f"cpu ratio (agent/node_exporter): median {result['cpu_ratio']}, mean "
        f"{result['cpu_ratio_mean']}"
    )
    print(
        f"agent RSS: start {result['agent_rss_mb_start']} MB, end {result['agent_rss_mb_end']} "
        f"MB, peak {result['agent_rss_mb_peak']} MB, growth {result['agent_rss_growth_mb']} MB"
    )
    print(
        f"agent sent {up} B in {requests} requests in the window; per day {bytes_day / 1e6:.3f} MB "
        f"({how}); "
        f"node_exporter serves {result['node_exporter_bytes_per_day'] / 1e6:.1f} MB/day"
    )
    print(json.dumps(result))
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
