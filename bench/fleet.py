"""Fleet benchmark: one real collector, N real agents, a catalogue of injected faults.

One collector (SQLite, an ephemeral loopback port) and N agent processes (default 8), each
with its own state dir, hostname (``fleet-00`` ...) and sandbox folder. The shipped
remediation library is copied to a temporary folder and tuned only for the benchmark: no
cooldown and a large attempt budget (a fault is injected many times in a few minutes), and
``service-restart`` detection every second (its check interval, as for Monit's ``set daemon
1``). Verification delays stay as shipped: they are upper bounds, verification is
event-driven.

The catalogue (:data:`FAULTS`) covers every shipped remediation that can run unprivileged
in a sandbox, one fault with no remediation, and one whose fix cannot succeed:

=============  ==================================================  =====================
fault          injected as                                          expected
=============  ==================================================  =====================
temp_fill      2 MB file in the host's temp folder                  temp-cleanup fixes it
log_growth     a 2 MB log file                                      log-rotate fixes it
spool_fill     2 MB file in a spool folder                          demo-cleanup fixes it
runaway        a process spinning at 100 % of a core                kill-runaway fixes it
memory_leak    an application growing to 200 MB resident            app-memory-restart
service_down   the host's pidfile "service" killed                  service-restart
no_fix         2 MB in an inbox no remediation watches              an incident
cannot_fix     a fresh file temp-cleanup will not delete (too new)  not_fixed, an incident
fleet_fixed    temp_fill on every host at once                      fixed; 1 fleet problem
fleet_unfixed  no_fix on every host at once                         N incidents, 1 problem
=============  ==================================================  =====================

Not in the catalogue, because they need root or a system service: dns-flush,
print-queue-clear, clock-resync.

Single-host faults run in rounds: in round r host i gets fault (i + r) mod 8, so every
round injects each kind on exactly one host and every host gets each kind once; rounds
are at least :data:`ROUND_GAP_S` apart and the collector correlates failures within
:data:`CORRELATION_WINDOW_S`, so unrelated single-host faults never look like a fleet
problem (3 hosts needed). Then the two fleet-wide faults.

Measured per fault, from the collector's API after the run: detected, fixed and verified
automatically (a ``fixed`` corrective-action record), time from injection to the verified
fix (the record's agent time minus the injection time, one machine clock), whether an
incident was raised, false incidents (incidents with no injected fault on that host and
check at that time) and, for the fleet-wide faults, the number of fleet problems. Then the
Monit comparison of :mod:`bench.fleet_peer` (restart a dead service, kill a runaway
process), unless ``--no-monit`` or monit is absent.

Every process this script started is stopped at the end (SIGTERM, then SIGKILL, bounded);
it registers as the child subreaper so detached processes the fixes start (a restarted
service or application) are its children too.

Run: ``.venv/bin/python bench/fleet.py [--agents 8] [--no-monit]``. The last line is JSON.
Targets: auto_fixed_pct >= 99, false_incidents 0, one problem per fleet-wide fault,
median_fault_to_fix_s <= 1.5, p90_fault_to_fix_s <= 4, ratio_vs_monit >= 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.detect_to_fix import become_subreaper, kill_and_reap, p90, program  # noqa: E402
from bench.fleet_procs import (  # noqa: E402
    AGENT_TOKEN,
    Api,
    Reaper,
    kill_named,
    start_collector,
    terminate,
)

FILL_BYTES = 2_000_000
LIMIT_BYTES = 1_000_000
LEAK_BYTES = 200_000_000
RSS_LIMIT = 120_000_000
CORRELATION_WINDOW_S = 6.0
ROUND_GAP_S = 7.0  # > the correlation window: one kind is on 2 hosts in it at most
ROUND_TIMEOUT_S = 20.0
SETTLE_S = 4.0  # after the last fault, for the last records and recoveries to arrive
SINGLE_KINDS = (
    "temp_fill",
    "log_growth",
    "spool_fill",
    "runaway",
    "memory_leak",
    "service_down",
    "no_fix",
    "cannot_fix",
)


@dataclass(frozen=True)
class FaultKind:
    """One kind of fault: the check it trips and what should happen."""

    check: str
    remediation: str | None  # None: nothing may fix it, an incident is expected
    fixable: bool  # a working remediation exists for it


FAULTS: dict[str, FaultKind] = {
    "temp_fill": FaultKind("temp.fill", "temp-cleanup", True),
    "log_growth": FaultKind("logs.size", "log-rotate", True),
    "spool_fill": FaultKind("spool.size", "demo-cleanup", True),
    "runaway": FaultKind("cpu.runaway", "kill-runaway", True),
    "memory_leak": FaultKind("app.memory", "app-memory-restart", True),
    "service_down": FaultKind("detect.service-restart", "service-restart", True),
    "no_fix": FaultKind("inbox.size", None, False),
    "cannot_fix": FaultKind("cache.fill", "temp-cleanup", False),
    "fleet_fixed": FaultKind("fleet.tmp", "temp-cleanup", True),
    "fleet_unfixed": FaultKind("fleet.share", None, False),
}
FLEET_KINDS = ("fleet_fixed", "fleet_unfixed")
# Sandbox folder per path-fault kind, as sampled by the agent.
FOLDERS = {
    "temp_fill": "tmp",
    "log_growth": "logs",
    "spool_fill": "spool",
    "no_fix": "inbox",
    "cannot_fix": "cache",
    "fleet_fixed": "fleet",
    "fleet_unfixed": "share",
}


# --------------------------------------------------------------------------- hosts


def tuned_library(dest: Path) -> Path:
    """The shipped library with no cooldown, a large budget and 1 s service detection."""
    shutil.copytree(ROOT / "remediations", dest)
    for manifest_path in dest.glob("*/remediation.yaml"):
        manifest = yaml.safe_load(manifest_path.read_text())
        manifest["cooldown"] = "0s"
        manifest["attempts"] = {"max": 100, "window": "1h"}
        if manifest["id"] == "service-restart":
            manifest["trigger"]["every"] = "1s"
        manifest_path.write_text(yaml.safe_dump(manifest))
    return dest


@dataclass
class Host:
    """One agent: its folders, its process names and, once it reported, its agent id."""

    index: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    agent_id: str = ""

    @property
    def name(self) -> str:
        return f"fleet-{self.index:02d}"

    @property
    def spin(self) -> str:
        return f"spin{self.index:02d}"

    @property
    def leak(self) -> str:
        return f"leak{self.index:02d}"

    @property
    def pidfile(self) -> Path:
        return self.folder / "svc.pid"

    def box(self, sub: str) -> Path:
        return self.folder / "box" / sub

    def bin(self, name: str) -> Path:
        return self.folder / "bin" / name


def setup_host(host: Host, lib: Path, url: str) -> Path:
    """Sandbox folders, the host's programs and its agent config; the config's path."""
    for sub in set(FOLDERS.values()):
        host.box(sub).mkdir(parents=True)
    (host.folder / "bin").mkdir()
    # A program's name is the name it was started by: a link to Python per process name.
    for name in (host.spin, host.leak):
        host.bin(name).symlink_to(sys.executable)
    daemon = program(host.bin("svcd"), "#!/bin/sh\nexec sleep 100000\n")
    restart = program(
        host.bin("start-leak"),
        f"#!/bin/sh\nexec '{host.bin(host.leak)}' -c 'import time; time.sleep(1e6)'\n",
    )

    def path_check(check: str, sub: str, rem: str | None = None, **params: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "id": check,
            "metric": f"path.size_bytes[{sub}]",
            "critical": LIMIT_BYTES,
        }
        if rem is not None:
            spec["remediation"] = {"id": rem, "params": params}
        return spec

    checks = [
        path_check("temp.fill", "tmp", "temp-cleanup", dirs=str(host.box("tmp"))),
        path_check("logs.size", "logs", "log-rotate", dir=str(host.box("logs")), max_size=100000),
        path_check("spool.size", "spool", "demo-cleanup", dir=str(host.box("spool"))),
        path_check("inbox.size", "inbox"),
        # A fresh file is never old enough (7 days), so this fix cannot succeed.
        path_check("cache.fill", "cache", "temp-cleanup", dirs=str(host.box("cache"))),
        path_check("fleet.tmp", "fleet", "temp-cleanup", dirs=str(host.box("fleet"))),
        path_check("fleet.share", "share"),
        {
            "id": "cpu.runaway",
            "metric": f"process.top_cpu_percent[{host.spin}]",
            "critical": 30,
            "remediation": {
                "id": "kill-runaway",
                "params": {"names": host.spin, "min_cpu_percent": 10, "grace": 1},
            },
        },
        {
            "id": "app.memory",
            "metric": f"process.top_rss_bytes[{host.leak}]",
            "critical": RSS_LIMIT,
            "remediation": {
                "id": "app-memory-restart",
                "params": {
                    "name": host.leak,
                    "max_rss": RSS_LIMIT,
                    "grace": 1,
                    "restart": str(restart),
                },
            },
        },
    ]
    config = {
        "agent": {"state_dir": str(host.folder / "state"), "hostname": host.name},
        "collector": {"url": url, "token": AGENT_TOKEN},
        "intervals": {"sample": "250ms", "report": "1s", "heartbeat": "5s", "metrics": "60s"},
        "shipping": {"start_jitter": "0s"},
        "sampler": {
            "disk_mounts": [],
            "paths": [{"name": s, "path": str(host.box(s))} for s in sorted(set(FOLDERS.values()))],
        },
        "remediation": {
            "folders": [str(lib)],
            "enable": ["service-restart"],
            "verify_delay": "1s",
            "params": {
                "service-restart": {
                    "service": f"svc{host.index:02d}",
                    "manager": "pidfile",
                    "pidfile": str(host.pidfile),
                    "start": str(daemon),
                }
            },
        },
        "checks": checks,
    }
    path = host.folder / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_agent(host: Host, config: Path, reaper: Reaper) -> None:
    host.proc = reaper.track(
        subprocess.Popen(
            [sys.executable, "-m", "vigil.agent", "--config", str(config), "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(host.folder / "agent.log").open("w"),
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    )


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One injected fault and what became of it."""

    kind: str
    host: Host
    injected_at: float = 0.0  # wall time
    removed_at: float = 0.0
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Filled from the collector after the run:
    detected: bool = False
    fixed_s: float | None = None
    incident: bool = False

    @property
    def spec(self) -> FaultKind:
        return FAULTS[self.kind]


def inject(fault: Fault, reaper: Reaper) -> None:
    host, kind = fault.host, fault.kind
    fault.injected_at = time.time()
    if kind in FOLDERS:
        path = host.box(FOLDERS[kind]) / ("app.log" if kind == "log_growth" else "junk.bin")
        path.write_bytes(b"x" * FILL_BYTES)
        if kind in ("temp_fill", "fleet_fixed"):
            # Stale temporary files (temp-cleanup deletes files untouched for 7 days); the
            # cannot_fix one is fresh, which is why its fix cannot succeed.
            stale = fault.injected_at - 8 * 86400
            os.utime(path, (stale, stale))
    elif kind == "runaway":
        fault.procs.append(
            reaper.track(subprocess.Popen([str(host.bin(host.spin)), "-c", "while True: pass"]))
        )
    elif kind == "memory_leak":
        code = (
            f"import time\nb = bytearray({LEAK_BYTES})\n"
            "for i in range(0, len(b), 4096): b[i] = 1\ntime.sleep(1e6)\n"
        )
        fault.procs.append(reaper.track(subprocess.Popen([str(host.bin(host.leak)), "-c", code])))
    elif kind == "service_down":
        pid = int(host.pidfile.read_text().strip())
        kill_and_reap(pid)
    else:
        raise ValueError(kind)


def remove(fault: Fault) -> None:
    """Undo what is left of ``fault`` (what no fix removed), so the check recovers."""
    fault.removed_at = time.time()
    if fault.kind in FOLDERS:
        for f in fault.host.box(FOLDERS[fault.kind]).iterdir():
            f.unlink()
    for proc in fault.procs:
        terminate(proc, 2)
    if fault.kind == "memory_leak":
        kill_named({fault.host.leak})  # the restarted application


def settled(fault: Fault, runs: list[dict[str, Any]], incidents: list[dict[str, Any]]) -> bool:
    """Whether the outcome of ``fault`` is in: a fixed record, or (nothing can fix it) an
    open incident."""
    host, check, t0 = fault.host.agent_id, fault.spec.check, fault.injected_at
    if fault.spec.fixable:
        return any(
            r["host"] == host
            and r["check"] == check
            and r["outcome"] == "fixed"
            and r["time"] >= t0
            for r in runs
        )
    return any(
        i["host"] == host
        and i["check"] == check
        and i["opened_at"] >= t0 - 1
        and i["state"] != "prevented"
        for i in incidents
    )


def run_round(api: Api, faults: list[Fault], reaper: Reaper) -> None:
    """Inject ``faults`` together, wait (bounded) until each has its outcome, remove them."""
    for fault in faults:
        inject(fault, reaper)
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    pending = list(faults)
    while pending and time.monotonic() < deadline:
        time.sleep(0.25)
        runs = api.get("/api/v1/remediations/runs?limit=200")["runs"]
        incidents = api.get("/api/v1/incidents?state=open&limit=200")["incidents"]
        pending = [f for f in pending if not settled(f, runs, incidents)]
    for fault in pending:
        print(f"  {fault.host.name} {fault.kind}: no outcome within {ROUND_TIMEOUT_S:g}s")
    for fault in faults:
        remove(fault)


# --------------------------------------------------------------------------- results


def assess(faults: list[Fault], api: Api) -> dict[str, Any]:
    """Fill in each fault's outcome from the collector; the run's summary figures."""
    runs = api.all("/api/v1/remediations/runs", "runs")
    incidents = api.all("/api/v1/incidents?state=all", "incidents")
    problems = api.all("/api/v1/problems?state=all&kind=all", "problems")
    claimed: set[int] = set()
    for fault in faults:
        host, check = fault.host.agent_id, fault.spec.check
        t0, t1 = fault.injected_at, fault.removed_at + 5.0
        mine = [
            r for r in runs if r["host"] == host and r["check"] == check and t0 <= r["time"] <= t1
        ]
        # Fixed by the agent, not by this script removing what was left of the fault.
        fixed = sorted(
            r["time"] for r in mine if r["outcome"] == "fixed" and r["time"] <= fault.removed_at
        )
        if fixed:
            fault.fixed_s = fixed[0] - t0
        related = [
            i
            for i in incidents
            if i["host"] == host and i["check"] == check and t0 - 1 <= i["opened_at"] <= t1
        ]
        claimed |= {i["id"] for i in related}
        fault.incident = any(i["state"] != "prevented" for i in related)
        fault.detected = bool(mine or related)
    false = [i for i in incidents if i["id"] not in claimed]
    for i in false:
        print(f"  false incident: {i['hostname']} {i['check']} {i['state']} {i['message']}")
    fixable = [f for f in faults if f.spec.fixable]
    times = [f.fixed_s for f in faults if f.fixed_s is not None]
    per_kind = {}
    for kind in FAULTS:
        of_kind = [f for f in faults if f.kind == kind]
        if not of_kind:
            continue
        kt = [f.fixed_s for f in of_kind if f.fixed_s is not None]
        per_kind[kind] = {
            "faults": len(of_kind),
            "detected": sum(f.detected for f in of_kind),
            "fixed": len(kt),
            "incidents": sum(f.incident for f in of_kind),
            "median_fault_to_fix_s": round(statistics.median(kt), 3) if kt else None,
        }
    fleet_problems = {
        # A fault every host fixed is a self-healed problem; one nobody fixed, a fleet one.
        kind: sum(
            1
            for p in problems
            if p["kind"] in ("fleet", "self_healed") and p["check"] == FAULTS[kind].check
        )
        for kind in FLEET_KINDS
    }
    fleet_checks = {FAULTS[k].check for k in FLEET_KINDS}
    return {
        "faults": len(faults),
        "fixable_faults": len(fixable),
        "auto_fixed_pct": round(
            100.0 * sum(f.fixed_s is not None for f in fixable) / len(fixable), 1
        )
        if fixable
        else None,
        "median_fault_to_fix_s": round(statistics.median(times), 3) if times else None,
        "p90_fault_to_fix_s": round(p90(times), 3) if times else None,
        "false_incidents": len(false),
        "incidents_for_fixable_faults": sum(f.incident for f in fixable),
        "incidents_for_unfixable_faults": sum(f.incident for f in faults if not f.spec.fixable),
        "unfixable_faults": sum(not f.spec.fixable for f in faults),
        "fleet_fault_problems": fleet_problems,
        "other_problems": sum(1 for p in problems if p["check"] not in fleet_checks),
        "per_kind": per_kind,
    }


# --------------------------------------------------------------------------- main


@contextlib.contextmanager
def fleet(tmp: Path, n: int, reaper: Reaper) -> Iterator[tuple[Api, list[Host]]]:
    """A collector and ``n`` agents that all reported; everything stopped on exit."""
    collector, api = start_collector(tmp, reaper, CORRELATION_WINDOW_S)
    hosts = [Host(i, tmp / f"host-{i:02d}") for i in range(n)]
    try:
        lib = tuned_library(tmp / "lib")
        for host in hosts:
            config = setup_host(host, lib, api.url)
            # The service runs before the agent starts, as on a booted machine.
            daemon = reaper.track(subprocess.Popen([str(host.bin("svcd"))], start_new_session=True))
            host.pidfile.write_text(f"{daemon.pid}\n")
            start_agent(host, config, reaper)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            seen = {h["hostname"]: h["agent_id"] for h in api.all("/api/v1/hosts", "hosts")}
            if len(seen) == n:  # every agent reported
                break
            time.sleep(0.25)
        else:
            log = (hosts[0].folder / "agent.log").read_text()[-2000:]
            raise RuntimeError(f"only {len(seen)} of {n} agents came up; {hosts[0].name}: {log}")
        for host in hosts:
            host.agent_id = seen[host.name]
        time.sleep(2.0)  # past the start-up transitions (first samples)
        yield api, hosts
    finally:
        for host in hosts:
            if host.proc is not None:
                host.proc.send_signal(signal.SIGTERM)
        for host in hosts:
            if host.proc is not None:
                terminate(host.proc)
        terminate(collector)
        names = {h.spin for h in hosts} | {h.leak for h in hosts}
        kill_named(names)
        for host in hosts:
            with contextlib.suppress(OSError, ValueError):
                kill_and_reap(int(host.pidfile.read_text().strip()))


def run_catalogue(api: Api, hosts: list[Host], reaper: Reaper) -> list[Fault]:
    faults: list[Fault] = []
    n = len(hosts)
    rounds = len(SINGLE_KINDS)
    for r in range(rounds):
        started = time.monotonic()
        batch = [Fault(SINGLE_KINDS[(i + r) % len(SINGLE_KINDS)], h) for i, h in enumerate(hosts)]
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{f.host.name}:{f.kind}" for f in batch))
        run_round(api, batch, reaper)
        faults += batch
        time.sleep(max(0.0, ROUND_GAP_S - (time.monotonic() - started)))
    for kind in FLEET_KINDS:
        time.sleep(CORRELATION_WINDOW_S)  # apart from everything before
        print(f"fleet-wide: {kind} on all {n} hosts")
        batch = [Fault(kind, h) for h in hosts]
        run_round(api, batch, reaper)
        faults += batch
    time.sleep(SETTLE_S)
    return faults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=8, help="agent processes (default 8)")
    parser.add_argument("--no-monit", action="store_true", help="skip the Monit comparison")
    parser.add_argument("--monit-trials", type=int, default=8, help="per fault kind (default 8)")
    parser.add_argument(
        "--keep", type=Path, default=None, help="work in this new folder and keep it (logs)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.agents <= 64:
        parser.error("--agents must be 1-64")
    become_subreaper()
    reaper = Reaper()
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            if args.keep is not None:
                args.keep.mkdir(parents=True)
                tmp = args.keep.resolve()
            else:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vigil-fleet-")))
            with fleet(tmp, args.agents, reaper) as (api, hosts):
                faults = run_catalogue(api, hosts, reaper)
                result = assess(faults, api)
            peer: dict[str, Any] = {}
            if not args.no_monit:
                from bench.fleet_peer import compare

                peer = compare(tmp / "monit", faults, args.monit_trials)
    finally:
        reaper.stop()
    for kind, k in result["per_kind"].items():
        print(
            f"  {kind:14s} faults {k['faults']:2d}  detected {k['detected']:2d}  "
            f"fixed {k['fixed']:2d}  incidents {k['incidents']:2d}  "
            f"median fault->fix {k['median_fault_to_fix_s']}"
        )
    result |= peer
    result = {"bench": "fleet", "agents": args.agents, **result}
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    print(
        f"auto-fixed {result['auto_fixed_pct']}%  median {result['median_fault_to_fix_s']}s  "
        f"p90 {result['p90_fault_to_fix_s']}s  false incidents {result['false_incidents']}  "
        f"fleet problems {result['fleet_fault_problems']}  vs monit {peer.get('ratio_vs_monit')}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
