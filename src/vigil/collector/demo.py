"""``make demo``: the real collector and a real agent on this machine, with two faults.

Starts ``vigil-collector`` (SQLite under ``var/demo/``) and ``vigil-agent`` with the
configs in ``config/demo/``. The agent holds no shared token: the demo creates a one-time
enrollment secret (``vigil-collector enroll-secret create``), the agent exchanges it for
its own credential (``vigil-agent enroll``), and reports with that. It then injects two
harmless, self-contained faults and narrates what Vigil does through its own HTTP API:

(a) the demo spool folder fills past 1 MB; the agent's ``demo-cleanup`` remediation
    empties it and verifies the fix, so the collector records a *prevented* incident;
(b) the demo inbox fills past 1 MB with no remediation, so an incident opens; the demo
    responder (an operator created with ``vigil-collector operator add``, whose token is
    printed with curl examples) acknowledges it; the inbox then drains on its own and the
    incident resolves.

The read API and ``/metrics`` are open because the demo collector listens on 127.0.0.1
with ``auth.open_read: true``; every write needs the responder's token.

Everything stays running afterwards so you can explore; Ctrl-C stops both processes.
Only the standard library is used here: the demo talks to Vigil the way a user would.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
# src/vigil/collector/demo.py -> the checkout, which holds config/demo/ and remediations/.
REPO_ROOT = Path(__file__).resolve().parents[3]
# The same two folders as package data of an installed wheel (vigil/config, vigil/remediations).
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
FAULT_BYTES = 2 * 1024 * 1024
# The /metrics series the demo quotes (non-zero samples only, to keep the excerpt short).
DEMO_SERIES = (
    "vigil_agents{",
    "vigil_incidents_opened_total",
    "vigil_incidents_resolved_total",
    "vigil_incidents_prevented_total",
    "vigil_remediation_runs_total",
    "vigil_incident_time_to_restore_seconds_count",
)


class DemoError(RuntimeError):
    """The demo could not show what it promised (a step timed out, a process died)."""


def say(text: str = "") -> None:
    print(text, flush=True)


# The operator the demo creates; its token is printed so acknowledge/resolve can be tried.
RESPONDER = "demo-responder"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def post_json(url: str, token: str, body: dict[str, Any]) -> Any:
    """POST ``body`` as JSON with ``Authorization: Bearer token``; the decoded reply."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.load(resp)


def create_responder(root: Path) -> str:
    """``vigil-collector operator add demo-responder --role responder`` on the demo's
    database; the token it printed (once, on its last line)."""
    done = subprocess.run(
        [sys.executable, "-m", "vigil.collector", "operator", "--config",
         str(root / "config/demo/collector.yaml"), "add", RESPONDER, "--role", "responder"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise DemoError(f"cannot create the demo responder: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def enroll_agent(root: Path, var: Path, url: str) -> str:
    """Create a one-use enrollment secret (``vigil-collector enroll-secret create``,
    written to a 0600 file) and run ``vigil-agent enroll`` with it: the agent's own
    credential lands in its state folder. The enroll command's report line."""
    secret_file = var / "enroll-secret.txt"
    create = subprocess.run(
        [sys.executable, "-m", "vigil.collector", "--config",
         str(root / "config/demo/collector.yaml"), "enroll-secret", "create",
         "--label", "department=demo", "--uses", "1", "--expires", "1h",
         "--comment", "make demo", "--out", str(secret_file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if create.returncode != 0:
        raise DemoError(f"cannot create the enrollment secret: {create.stderr.strip()}")
    say(f"Enrollment:       {create.stdout.strip()} (one use, 1 h)")
    enroll = subprocess.run(
        [sys.executable, "-m", "vigil.agent", "--config", str(root / "config/demo/agent.yaml"),
         "enroll", "--collector", url, "--secret-file", str(secret_file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    secret_file.unlink()  # used up anyway; no secret left lying around
    if enroll.returncode != 0:
        raise DemoError(f"vigil-agent enroll failed: {enroll.stderr.strip()}")
    return enroll.stdout.strip()


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float) -> T:
    """Poll ``probe`` every 0.25 s until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = probe()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.25)
    raise DemoError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def fill(folder: Path, nbytes: int) -> None:
    """Write ``nbytes`` of junk into two files in ``folder`` (the injected fault)."""
    folder.mkdir(parents=True, exist_ok=True)
    half = nbytes // 2
    for name in ("junk-1.bin", "junk-2.bin"):
        (folder / name).write_bytes(b"\0" * half)


def start_collector(root: Path, port: int, log: Path) -> tuple[subprocess.Popen[str], str]:
    """Start the collector; return it and its base URL (from its 'listening on' line)."""
    cmd = [
        sys.executable,
        "-m",
        "vigil.collector",
        "--config",
        str(root / "config/demo/collector.yaml"),
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("a"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on " not in line:
        proc.wait(timeout=5)
        raise DemoError(f"collector did not start (exit {proc.returncode}); see {log}")
    return proc, line.split("listening on ", 1)[1].strip()


def stop(proc: subprocess.Popen[Any], name: str, *, interrupted: bool = False) -> None:
    """Stop one demo process cleanly: SIGTERM, then SIGKILL after 10 s.

    After Ctrl-C the terminal has already sent SIGINT to every process of the group, and
    each one is shutting down on its own: give it a few seconds first, so a second
    signal never lands in the last instants of its exit (where the default handler
    would turn a clean stop into "killed by SIGTERM").
    """
    if interrupted and proc.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            say(f"  {name} did not stop within 10 s and was killed")
            return
    say(f"  {name} stopped (exit {proc.returncode})")


def run(root: Path, port: int, stay: bool) -> int:
    var = root / "var" / "demo"
    if var.exists():
        shutil.rmtree(var)  # a fresh demo every time: new agent id, empty database
    var.mkdir(parents=True)
    for sub in ("spool", "inbox"):
        (var / sub).mkdir()

    say("Vigil demo — the real collector and agent on this machine")
    say("=" * 60)
    token = create_responder(root)
    try:
        collector, url = start_collector(root, port, var / "collector.log")
    except DemoError:
        if port == 0:
            raise
        say(f"  port {port} is busy; using a free port instead")
        collector, url = start_collector(root, 0, var / "collector.log")
    procs = [(collector, "collector")]
    try:
        say(f"                  {enroll_agent(root, var, url)}")
    except DemoError:
        stop(collector, "collector")
        raise
    agent_cmd = [
        sys.executable,
        "-m",
        "vigil.agent",
        "--config",
        str(root / "config/demo/agent.yaml"),
        "run",
        "--collector-url",
        url,
    ]
    agent = subprocess.Popen(
        agent_cmd, stdout=subprocess.DEVNULL, stderr=(var / "agent.log").open("a")
    )
    procs.insert(0, (agent, "agent"))
    interrupted = False
    try:
        say(f"Collector:        {url}")
        say(f"Incidents (API):  curl {url}/api/v1/incidents")
        say(f"Hosts (API):      curl {url}/api/v1/hosts")
        say(f"Fixes (API):      curl {url}/api/v1/remediations/runs")
        say(f"Prometheus:       curl {url}/metrics")
        say(f"Responder token:  {token}  (operator {RESPONDER}, shown once)")
        say(
            f"Acknowledge:      curl -X POST -H 'Authorization: Bearer {token}'"
            " -H 'Content-Type: application/json' -d '{\"note\": \"on it\"}'"
            f" {url}/api/v1/incidents/ID/acknowledge"
        )
        say(
            f"Resolve:          curl -X POST -H 'Authorization: Bearer {token}'"
            " -H 'Content-Type: application/json' -d '{\"root_cause\": \"...\"}'"
            f" {url}/api/v1/incidents/ID/resolve"
        )
        say(f"Logs:             {var}/collector.log, {var}/agent.log")
        say()
        host = wait_for(
            "the agent's first report", lambda: get_json(f"{url}/api/v1/hosts")["hosts"], 30
        )[0]
        say(
            f"Agent {host['hostname']} ({host['agent_id'][:8]}…) is reporting with its own"
            f" credential (labels granted by the secret: {host['labels']})."
        )
        scenario(url, var, token)
        say()
        if stay:
            say("Done. Vigil keeps running: explore the API above, Ctrl-C to stop.")
        if stay:
            while all(p.poll() is None for p, _ in procs):
                time.sleep(0.5)
            for p, name in procs:
                if p.returncode is not None:
                    raise DemoError(f"the {name} exited unexpectedly ({p.returncode})")
    except KeyboardInterrupt:
        interrupted = True
        say()
        say("Stopping…")
    finally:
        for p, name in procs:
            stop(p, name, interrupted=interrupted)
    return 0


def scenario(url: str, var: Path, token: str) -> None:
    """Inject faults (a) and (b) and narrate what Vigil does about them."""
    api = f"{url}/api/v1"

    say()
    say("(a) Fault with a fix: var/demo/spool grows past 1 MB (check demo.spool_size)")
    t0 = time.monotonic()
    fill(var / "spool", FAULT_BYTES)
    run_ = wait_for(
        "the demo-cleanup remediation record",
        lambda: [
            r
            for r in get_json(f"{api}/remediations/runs")["runs"]
            if r["remediation"] == "demo-cleanup"
        ],
        30,
    )[0]
    say(
        f"    remediation demo-cleanup ran: outcome={run_['outcome']}, "
        f"size {run_['value_before']:.0f} → {run_['value_after']:.0f} bytes, "
        f"{run_['duration_s']:.2f} s"
    )
    prevented = wait_for(
        "the prevented incident",
        lambda: get_json(f"{api}/incidents?state=prevented")["incidents"],
        15,
    )[0]
    opened = get_json(f"{api}/incidents?state=open")["incidents"]
    say(
        f"    ✓ fixed and verified {time.monotonic() - t0:.1f} s after the fault: "
        f"prevented incident #{prevented['id']} recorded, {len(opened)} incidents raised"
    )

    say()
    say("(b) Fault without a fix: var/demo/inbox grows past 1 MB (check demo.inbox_size)")
    t0 = time.monotonic()
    fill(var / "inbox", FAULT_BYTES)
    incident = wait_for(
        "the incident to open",
        lambda: get_json(f"{api}/incidents?state=open&check=demo.inbox_size")["incidents"],
        30,
    )[0]
    say(
        f"    ! incident #{incident['id']} opened after {time.monotonic() - t0:.1f} s: "
        f"{incident['priority']} (service {incident.get('service') or '-'}, SLA due in "
        f"{(incident['sla_due'] - incident['opened_at']) / 86400:.0f} days)"
    )
    say(f"      {incident['message']}")
    acked = post_json(
        f"{api}/incidents/{incident['id']}/acknowledge", token, {"note": "looking at it"}
    )["incident"]
    say(f"    incident #{incident['id']} acknowledged by {acked['acknowledged_by']} (its token)")
    say("    … the inbox drains on its own in 10 s")
    time.sleep(10)
    for f in (var / "inbox").iterdir():
        f.unlink()
    t1 = time.monotonic()
    wait_for(
        "the incident to resolve",
        lambda: get_json(f"{api}/incidents/{incident['id']}")["incident"]["state"] == "resolved",
        30,
    )
    say(f"    ✓ incident #{incident['id']} resolved {time.monotonic() - t1:.1f} s after recovery")

    say()
    say("Incidents now (GET /api/v1/incidents):")
    for inc in get_json(f"{api}/incidents")["incidents"]:
        say(
            f"    #{inc['id']:<3} {inc['state']:<9} {inc['priority'] or '-':<3} {inc['check']:<16}"
            f" service={inc.get('service') or '-'} host={inc['hostname']}"
        )
    say("Metrics (GET /metrics, excerpt):")
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(DEMO_SERIES) and not line.endswith(" 0.0"):
                say(f"    {line}")


def default_root() -> Path:
    """The checkout when running from one; otherwise ``./vigil-demo``, filled once with the
    demo configs and the remediation library shipped in the installed package."""
    if (REPO_ROOT / "config" / "demo").is_dir():
        return REPO_ROOT
    root = Path.cwd() / "vigil-demo"
    if not (root / "config" / "demo").is_dir():
        shutil.copytree(PACKAGE_ROOT / "config" / "demo", root / "config" / "demo")
        shutil.copytree(PACKAGE_ROOT / "remediations", root / "remediations")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vigil-demo", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="folder holding config/demo/, remediations/ and var/ (default: the checkout, "
        "or ./vigil-demo made from the installed package)",
    )
    parser.add_argument("--port", type=int, default=9750, help="collector port (0 = any free)")
    parser.add_argument(
        "--exit",
        action="store_true",
        help="stop after the scenario instead of running until Ctrl-C",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    root = (args.root or default_root()).resolve()
    if not (root / "config" / "demo").is_dir():
        say(f"vigil-demo: {root} has no config/demo/ folder (see --root)")
        return 2
    try:
        return run(root, args.port, stay=not args.exit)
    except DemoError as exc:
        say(f"demo failed: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
