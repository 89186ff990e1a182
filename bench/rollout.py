"""Rollout benchmark (#18): publish, kill switch and blast-radius guard on a real fleet.

One real collector (SQLite, ephemeral loopback port) and N real agent processes
(``python -m vigil.agent run``, default 50), each enrolled with its own credential (so it
trusts the collector's policy key from enrollment), reporting every ``--interval``
seconds (default 5 s). The policy is a real signed bundle built with ``vigil-collector
policy sign``'s code path and published over the admin API. Measured:

1. *publish → 95 %*: ``POST /api/v1/policies`` (version 1, rings ``1.0``: every host at
   once; this phase measures delivery, the ring rules are phase 3's) until 95 % of the
   agents report (``X-Vigil-Policy``) that they run it. Read from the rollout status the
   collector stores once per ``policy.refresh`` (0.5 s here), so it errs late.
2. *kill switch → all*: version 1 enables ``noop-fix``, a fix that runs every ~2 s on
   every host and succeeds. ``POST /api/v1/policy-halts`` halts it; for each agent, the
   first report the collector receives after the halt carries it in the ack (the host's
   ``last_seen``, polled every 0.1 s). Reported: the time until every agent got it, and
   the number of ``noop-fix`` runs any agent *started* after it got the halt (must be 0).
3. *bad fix*: version 2 adds ``bad-fix`` (it always fails) and is published to named
   canary hosts first (ring 0: 4 % of the agents, at least one; 2 of 50), then 25 %, then
   all, with a soak of 2 intervals. The guard (2 failed runs, 50 %) must pause the
   rollout and halt ``bad-fix``. Reported: the share of hosts that ran it
   (``bad_fix_hosts_pct``), read at a fixed time after the publish (``bad_fix_window_s``:
   the soak plus 4 intervals), by which a rollout *without* the guard would have
   advanced past the canaries (their evidence within about an interval, then the soak)
   and ring 1 (~21 % of the hosts) would have run ``bad-fix``: the figure can fail.

Targets (issue #18): 50 agents, 5 s interval: ``publish_to_95pct_s`` <= 2 intervals,
``killswitch_to_all_s`` <= 1 interval, ``bad_fix_hosts_pct`` <= 5 with the rollout paused
and ``bad-fix`` halted. There is no external peer for this: the targets are the
comparison. Everything on 127.0.0.1; every wait is bounded.

Run: ``.venv/bin/python bench/rollout.py [--agents 50] [--interval 5] [--no-guard]``.
The last line is JSON. ``--no-guard`` is the control run of phase 3: the guard's minimum
is out of reach, so ``bad_fix_hosts_pct`` must exceed 5 (targets not met).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fleet_procs import ADMIN_TOKEN, AGENT_TOKEN, Reaper, terminate  # noqa: E402
from vigil import policy_bundle  # noqa: E402

CANARY_SHARE = 0.04  # ring 0 of the bad-fix phase: within the issue's <= 5 % of hosts

DETECT = "#!/bin/sh\nexit 1\n"  # the issue is always there: the fix runs at every cooldown
OK = "#!/bin/sh\nexit 0\n"
FAIL = "#!/bin/sh\necho 'bad fix: broke on purpose' >&2\nexit 1\n"


def manifest(rem_id: str, title: str, fix: str) -> str:
    return yaml.safe_dump(
        {
            "id": rem_id,
            "title": title,
            "description": f"{title} (rollout benchmark).",
            "platforms": ["linux"],
            "scripts": {"linux": fix},
            "trigger": {"detection": {"linux": "detect.sh"}, "every": "1s"},
            "verify": {"scripts": {"linux": "ok.sh"}, "delay": "1s"},
            "timeout": "10s",
            "cooldown": "1s",
            "attempts": {"max": 100, "window": "1m"},
        }
    )


def policy_source(folder: Path, *, bad: bool) -> Path:
    """The policy folder: ``noop-fix`` (always succeeds) and, with ``bad``, ``bad-fix``."""
    rems = {"noop-fix": ("Succeed at once", OK)}
    if bad:
        rems["bad-fix"] = ("Fail at once", FAIL)
    for rem_id, (title, fix) in rems.items():
        sub = folder / "remediations" / rem_id
        sub.mkdir(parents=True)
        (sub / "remediation.yaml").write_text(manifest(rem_id, title, "fix.sh"))
        for name, text in (("detect.sh", DETECT), ("ok.sh", OK), ("fix.sh", fix)):
            (sub / name).write_text(text)
            (sub / name).chmod(0o755)
    config = {"checks": [], "remediation": {"enabled": {r: {} for r in rems}}}
    (folder / "policy.yaml").write_text(yaml.safe_dump(config))
    return folder


def bundle(folder: Path, pem: bytes, version: int) -> bytes:
    now = time.time()
    manifest_bytes, files = policy_bundle.build(
        folder,
        policy="bench",
        version=version,
        expires_at=now + 86400,
        min_agent_version="0.1.0",
        target={},
        created_at=now,
    )
    return policy_bundle.pack(manifest_bytes, [policy_bundle.sign(manifest_bytes, pem)], files)


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            headers["Content-Type"] = policy_bundle.MEDIA_TYPE
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


def start_collector(
    tmp: Path, public: str, reaper: Reaper, *, guard: bool = True
) -> tuple[subprocess.Popen[str], Api]:
    config = tmp / "collector.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "port": 0},
                "storage": {"sqlite_path": str(tmp / "collector.db")},
                "auth": {"agent_tokens": [AGENT_TOKEN], "admin_tokens": [ADMIN_TOKEN]},
                "enrollment": {"rate_limit": 10000},
                "policy": {
                    "trusted_keys": [public],
                    "refresh": "0.5s",
                    # --no-guard: a minimum no run count reaches, the guard never trips.
                    "guard": {"failure_rate": 0.5, "min_runs": 2 if guard else 1_000_000},
                },
            }
        )
    )
    proc = reaper.track(
        subprocess.Popen(
            [sys.executable, "-m", "vigil.collector", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=(tmp / "collector.log").open("w"),
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        terminate(proc)
        raise RuntimeError(f"collector did not start: {(tmp / 'collector.log').read_text()}")
    return proc, Api(line.split("listening on ", 1)[1].strip())


def agent_config(folder: Path, url: str, interval_s: float) -> Path:
    config = {
        "agent": {"state_dir": str(folder / "state"), "hostname": folder.name},
        "collector": {"url": url},
        "intervals": {
            "sample": "1s",
            "report": f"{interval_s:g}s",
            # An idle agent exchanges with the collector at its heartbeat: that is the
            # exchange interval the targets speak of.
            "heartbeat": f"{interval_s:g}s",
        },
        "sampler": {"disk_mounts": []},
        "checks": [{"id": "mem", "metric": "memory.used_percent", "critical": 100}],
    }
    path = folder / "agent.yaml"
    folder.mkdir(parents=True)
    path.write_text(yaml.safe_dump(config))
    return path


def enroll(config: Path, url: str, secret_file: Path) -> None:
    cmd = [sys.executable, "-m", "vigil.agent", "--config", str(config), "enroll"]
    cmd += ["--collector", url, "--secret-file", str(secret_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"enroll failed: {done.stderr[-500:]}")


def wait(predicate: Any, timeout_s: float, step_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--interval", type=float, default=5.0, help="report interval, s")
    parser.add_argument(
        "--no-guard", action="store_true", help="control run: the guard cannot trip"
    )
    args = parser.parse_args(argv)
    n, interval = args.agents, args.interval
    # A SIGTERM unwinds through the finally below, which stops every process started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pem, public = policy_bundle.generate_keypair()
    reaper = Reaper()
    with tempfile.TemporaryDirectory(
        prefix="vigil-rollout-", dir=os.environ.get("VIGIL_BENCH_TMP")
    ) as tmp_name:
        tmp = Path(tmp_name)
        collector, api = start_collector(tmp, public, reaper, guard=not args.no_guard)
        agents: list[subprocess.Popen[bytes]] = []
        try:
            secret = api.call("POST", "/api/v1/enroll-secrets", {"labels": {}, "uses": n})
            secret_file = tmp / "secret"
            secret_file.write_text(secret["secret"]["secret"] + "\n")
            configs = [agent_config(tmp / f"ws-{i:02d}", api.url, interval) for i in range(n)]
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(lambda c: enroll(c, api.url, secret_file), configs))
            for config in configs:
                agents.append(
                    reaper.track(
                        subprocess.Popen(
                            [sys.executable, "-m", "vigil.agent", "--config", str(config), "run"],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=(config.parent / "agent.log").open("w"),
                            cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                        )
                    )
                )
            hosts = wait(
                lambda: (h := api.call("GET", "/api/v1/hosts")["hosts"]) and len(h) == n and h,
                90,
                0.5,
            )
            if not hosts:
                raise RuntimeError("not every agent reported within 90 s")
            ids = sorted(h["agent_id"] for h in hosts)
            print(f"{n} agents enrolled and reporting every {interval:g} s", flush=True)

            # 1. publish -> 95 % running
            v1 = bundle(policy_source(tmp / "policy-v1", bad=False), pem, 1)
            started = time.time()
            api.call("POST", "/api/v1/policies?rings=1.0", raw=v1)
            need = -(-n * 95 // 100)
            ok = wait(
                lambda: api.call("GET", "/api/v1/policies/bench")["running"].get("1", 0) >= need,
                6 * interval,
            )
            publish_s = time.time() - started if ok else None
            print(f"publish -> {need}/{n} running v1: {publish_s} s", flush=True)
            wait(
                lambda: api.call("GET", "/api/v1/policies/bench")["running"].get("1", 0) == n,
                6 * interval,
            )
            # Let noop-fix run for a while everywhere.
            time.sleep(2 * interval)

            # 2. kill switch
            halt_at = time.time()
            api.call("POST", "/api/v1/policy-halts", {"remediation": "noop-fix", "reason": "bench"})
            told: dict[str, float] = {}

            def everyone_told() -> bool:
                for h in api.call("GET", "/api/v1/hosts")["hosts"]:
                    if h["agent_id"] not in told and h["last_seen"] > halt_at:
                        told[h["agent_id"]] = h["last_seen"]
                return len(told) == n

            wait(everyone_told, 6 * interval)
            killswitch_s = max(told.values()) - halt_at if len(told) == n else None
            time.sleep(interval + 3)  # runs started before the halt get reported
            runs = api.call("GET", "/api/v1/remediations/runs?remediation=noop-fix&limit=1000")[
                "runs"
            ]
            after = [
                r for r in runs if r["host"] in told and r["started_at"] > told[r["host"]] + 0.05
            ]
            ran_noop = len({r["host"] for r in runs})
            print(
                f"kill switch -> {len(told)}/{n} told: {killswitch_s} s; runs started after:"
                f" {len(after)}; hosts that had run noop-fix: {ran_noop}",
                flush=True,
            )

            # 3. bad fix in the canary ring
            v2 = bundle(policy_source(tmp / "policy-v2", bad=True), pem, 2)
            canaries = max(1, int(n * CANARY_SHARE))
            canary = ",".join(ids[:canaries])
            # Short enough that without the guard ring 1 runs bad-fix inside the window.
            soak_s = 2 * interval
            window_s = soak_s + 4 * interval
            published = time.time()
            api.call(
                "POST",
                f"/api/v1/policies?canary={canary}&rings=0,0.25,1.0&soak={soak_s:g}s",
                raw=v2,
            )
            paused = wait(
                lambda: api.call("GET", "/api/v1/policies/bench")["paused"], window_s, 0.25
            )
            paused_s = round(time.time() - published, 3) if paused else None
            time.sleep(max(0.0, published + window_s - time.time()))
            status = api.call("GET", "/api/v1/policies/bench")
            halts = [h["remediation"] for h in api.call("GET", "/api/v1/policies")["halts"]]
            bad_runs = api.call("GET", "/api/v1/remediations/runs?remediation=bad-fix&limit=1000")[
                "runs"
            ]
            bad_hosts = {r["host"] for r in bad_runs}
            bad_pct = 100.0 * len(bad_hosts) / n
            print(
                f"bad fix ({canaries} canaries, soak {soak_s:g} s): paused={status['paused']}"
                f" ({status['paused_reason']}) after {paused_s} s, halted={halts}, ran on"
                f" {len(bad_hosts)} hosts ({bad_pct:.1f} %) by {window_s:g} s, ring"
                f" {status['ring']}",
                flush=True,
            )
        finally:
            for proc in agents:
                proc.send_signal(signal.SIGTERM)
            for proc in agents:
                terminate(proc)
            terminate(collector)
            reaper.stop()
    result = {
        "agents": n,
        "interval_s": interval,
        "guard": not args.no_guard,
        "publish_to_95pct_s": None if publish_s is None else round(publish_s, 3),
        "killswitch_to_all_s": None if killswitch_s is None else round(killswitch_s, 3),
        "killswitch_runs_after": len(after),
        "bad_fix_canaries": canaries,
        "bad_fix_soak_s": soak_s,
        "bad_fix_window_s": window_s,
        "bad_fix_ring": status["ring"],
        "bad_fix_hosts_pct": round(bad_pct, 2),
        "bad_fix_paused": bool(status["paused"]),
        "bad_fix_paused_after_s": paused_s,
        "bad_fix_halted": "bad-fix" in halts,
        "targets_met": publish_s is not None
        and publish_s <= 2 * interval
        and killswitch_s is not None
        and killswitch_s <= interval
        and not after
        and bad_pct <= 5.0
        and bool(status["paused"])
        and "bad-fix" in halts,
    }
    print(json.dumps(result))
    return 0 if result["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
