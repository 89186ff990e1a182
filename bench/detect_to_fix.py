"""Detect-to-fix benchmark: a killed daemon restarted by Vigil and by Debian's monit.

The fault: a dummy daemon (a foreground ``sleep``, started detached and tracked by a
pidfile) is killed with SIGKILL. Each tool must notice, restart it, and confirm that it
runs again. Measured, per trial, from the kill to:

- *verified*: the tool reports the fix verified. Vigil: the agent's log line for the
  corrective-action record ``remediation service-restart ...: fixed``, written after it
  re-ran detection. monit: its log line ``'dummyd' process is running with pid N``, written
  when the cycle after the restart finds the process up again.
- *restored*: the new daemon process exists (polled by this script every 5 ms).

Vigil runs as a real agent process (``python -m vigil.agent run``) with the shipped
``service-restart`` remediation copied to a temporary library and tuned only for the
benchmark: detection every 1 s (its check interval), no cooldown, a large attempt budget,
and a 100 ms verification delay. Its pidfile service manager is the one the shipped
script uses where no service manager runs. There is no collector: delivery fails quietly
and does not affect the measurement. monit runs in the foreground with its own control
file (``set daemon 1``, ``check process ... with pidfile ... start program ...``).

Both watch the same kind of daemon, one tool at a time. Kills are spread over the
detection cycle by a random pause before each one. This process registers as the child
subreaper so killed daemons are reaped at once, as systemd or init would, instead of
lingering as zombies of a container's PID 1.

Run: ``.venv/bin/python bench/detect_to_fix.py [--quick] [--trials N]``. The last line is
JSON. Targets: Vigil median <= 2 s and ratio (Vigil median / monit median) <= 1.0.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import queue
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TRIAL_TIMEOUT_S = 15.0
SETUP_TIMEOUT_S = 30.0
VIGIL_FIXED = "remediation service-restart for detect.service-restart: fixed"
MONIT_RUNNING = "'dummyd' process is running with pid"


# --------------------------------------------------------------------------- helpers


def become_subreaper() -> None:
    """Orphaned daemons become our children, so we can reap the ones we kill."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def read_pid(pidfile: Path) -> int | None:
    try:
        text = pidfile.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def program(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


class LineWatcher:
    """Timestamps (monotonic) each new line of a stream or a growing file."""

    def __init__(self) -> None:
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()

    def follow_stream(self, stream: object) -> None:
        def pump() -> None:
            for line in stream:  # type: ignore[attr-defined]
                self.lines.put((time.monotonic(), line))

        threading.Thread(target=pump, daemon=True).start()

    def follow_file(self, path: Path, stop: threading.Event) -> None:
        def pump() -> None:
            while not path.exists() and not stop.is_set():
                time.sleep(0.005)
            with path.open() as f:
                buf = ""
                while not stop.is_set():
                    chunk = f.readline()
                    if not chunk:
                        time.sleep(0.005)
                        continue
                    buf += chunk
                    if buf.endswith("\n"):
                        self.lines.put((time.monotonic(), buf))
                        buf = ""

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, needle: str, after: float, timeout_s: float) -> float | None:
        """Monotonic time of the first line containing ``needle`` seen after ``after``."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                stamp, line = self.lines.get(timeout=min(left, 0.05))
            except queue.Empty:
                continue
            if stamp >= after and needle in line:
                return stamp
        return None


def trial(
    watcher: LineWatcher, pidfile: Path, needle: str, rng: random.Random
) -> tuple[float, float] | None:
    """Kill the daemon; (verified_s, restored_s) from the kill, or None on timeout."""
    time.sleep(rng.uniform(0.0, 1.0))  # spread kills over the 1 s detection cycle
    old = read_pid(pidfile)
    if not alive(old):
        return None
    assert old is not None
    killed_at = time.monotonic()
    kill_and_reap(old)
    restored: float | None = None
    deadline = killed_at + TRIAL_TIMEOUT_S
    verified: float | None = None
    while time.monotonic() < deadline and (restored is None or verified is None):
        if restored is None:
            pid = read_pid(pidfile)
            if pid != old and alive(pid):
                restored = time.monotonic()
        if verified is None:
            verified = watcher.wait_for(needle, killed_at, 0.005)
    if restored is None or verified is None:
        return None
    return verified - killed_at, restored - killed_at


def run_trials(
    name: str,
    watcher: LineWatcher,
    pidfile: Path,
    needle: str,
    trials: int,
    rng: random.Random,
) -> list[tuple[float, float]]:
    results = []
    for i in range(trials):
        got = trial(watcher, pidfile, needle, rng)
        if got is None:
            print(f"  {name} trial {i + 1}: no verified fix within {TRIAL_TIMEOUT_S:g}s")
            continue
        results.append(got)
        print(f"  {name} trial {i + 1}: verified {got[0]:.3f}s, restored {got[1]:.3f}s")
        # The tool must be back in its steady state before the next kill.
        time.sleep(0.3)
    return results


def daemon_kind(folder: Path) -> Path:
    """The dummy daemon: a foreground process, named so it is easy to find."""
    return program(folder / "vigil-dummyd", "#!/bin/sh\nexec sleep 100000\n")


# --------------------------------------------------------------------------- Vigil


def vigil(tmp: Path, trials: int, rng: random.Random) -> list[tuple[float, float]]:
    folder = tmp / "vigil"
    lib = folder / "lib"
    lib.mkdir(parents=True)
    shutil.copytree(ROOT / "remediations" / "service-restart", lib / "service-restart")
    manifest_path = lib / "service-restart" / "remediation.yaml"
    manifest = yaml.safe_load(manifest_path.read_text())
    manifest["trigger"]["every"] = "1s"
    manifest["cooldown"] = "0s"
    manifest["attempts"] = {"max": 100, "window": "1h"}
    manifest["verify"] = {"delay": "100ms"}
    manifest_path.write_text(yaml.safe_dump(manifest))
    pidfile = folder / "dummyd.pid"
    config = {
        "agent": {"state_dir": str(folder / "state"), "hostname": "bench"},
        "collector": {"url": f"http://127.0.0.1:{free_port()}", "token": "bench"},
        "intervals": {"sample": "60s", "report": "60s", "heartbeat": "60s"},
        "remediation": {
            "folders": [str(lib)],
            "enable": ["service-restart"],
            "params": {
                "service-restart": {
                    "service": "dummyd",
                    "manager": "pidfile",
                    "pidfile": str(pidfile),
                    "start": str(daemon_kind(folder)),
                }
            },
        },
    }
    config_path = folder / "agent.yaml"
    config_path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "vigil.agent", "--config", str(config_path), "run"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watcher = LineWatcher()
    watcher.follow_stream(proc.stderr)
    try:
        # The daemon is not running at first: the agent's first detection starts it.
        if watcher.wait_for(VIGIL_FIXED, 0.0, SETUP_TIMEOUT_S) is None:
            raise RuntimeError("vigil: the agent never started the daemon")
        time.sleep(0.3)
        return run_trials("vigil", watcher, pidfile, VIGIL_FIXED, trials, rng)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if (pid := read_pid(pidfile)) is not None:
            kill_and_reap(pid)


# --------------------------------------------------------------------------- monit


@contextlib.contextmanager
def running_monit(folder: Path, checks: str) -> Iterator[LineWatcher]:
    """Run the Debian ``monit`` binary on a control file of its own in ``folder`` (a 1 s
    cycle, then ``checks``), in the foreground; yields a watcher of its log and stops it
    (SIGTERM, then SIGKILL after 10 s) on the way out."""
    binary = shutil.which("monit")
    if binary is None:
        raise RuntimeError("monit not found: apt-get install monit (.ci/run does)")
    log = folder / "monit.log"
    rc = folder / "monitrc"
    rc.write_text(
        "set daemon 1\n"
        f"set logfile {log}\n"
        f"set idfile {folder / 'monit.id'}\n"
        f"set statefile {folder / 'monit.state'}\n"
        f"set pidfile {folder / 'monit.pid'}\n" + checks
    )
    rc.chmod(0o600)  # monit refuses a control file others can read
    proc = subprocess.Popen(
        [binary, "-c", str(rc), "-I"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stop = threading.Event()
    watcher = LineWatcher()
    watcher.follow_file(log, stop)
    try:
        yield watcher
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def monit(tmp: Path, trials: int, rng: random.Random) -> list[tuple[float, float]]:
    folder = tmp / "monit"
    folder.mkdir()
    pidfile = folder / "dummyd.pid"
    daemon = daemon_kind(folder)
    start = program(
        folder / "start.sh",
        f"#!/bin/sh\nsetsid '{daemon}' </dev/null >/dev/null 2>&1 &\necho $! > '{pidfile}'\n",
    )
    try:
        with running_monit(
            folder, f'check process dummyd with pidfile {pidfile}\n  start program = "{start}"\n'
        ) as watcher:
            if watcher.wait_for(MONIT_RUNNING, 0.0, SETUP_TIMEOUT_S) is None:
                raise RuntimeError("monit: never saw the daemon running")
            time.sleep(0.3)
            return run_trials("monit", watcher, pidfile, MONIT_RUNNING, trials, rng)
    finally:
        if (pid := read_pid(pidfile)) is not None:
            kill_and_reap(pid)


# --------------------------------------------------------------------------- main


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def summarise(name: str, results: list[tuple[float, float]]) -> dict[str, float]:
    verified = [v for v, _ in results]
    restored = [r for _, r in results]
    out = {
        "median_s": round(statistics.median(verified), 3),
        "p90_s": round(p90(verified), 3),
        "restored_median_s": round(statistics.median(restored), 3),
        "restored_p90_s": round(p90(restored), 3),
    }
    print(
        f"{name:6s} verified: median {out['median_s']:.3f}s  p90 {out['p90_s']:.3f}s   "
        f"restored: median {out['restored_median_s']:.3f}s  p90 {out['restored_p90_s']:.3f}s"
        f"   ({len(results)} trials)"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 trials per tool")
    parser.add_argument("--trials", type=int, default=None, help="trials per tool (default 20)")
    parser.add_argument("--seed", type=int, default=4, help="seed of the kill timing")
    args = parser.parse_args(argv)
    trials = args.trials or (5 if args.quick else 20)
    become_subreaper()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print(f"detect-to-fix: {trials} kills per tool, 1 s detection cycle for both")
        runs: dict[str, Callable[[Path, int, random.Random], list[tuple[float, float]]]] = {
            "vigil": vigil,
            "monit": monit,
        }
        results = {name: run(tmp, trials, rng) for name, run in runs.items()}
    if any(len(r) < max(1, trials // 2) for r in results.values()):
        print(json.dumps({"error": "too many trials timed out", "trials": trials}))
        return 1
    v = summarise("vigil", results["vigil"])
    m = summarise("monit", results["monit"])
    ratio = round(v["median_s"] / m["median_s"], 3)
    print(f"ratio (vigil median / monit median): {ratio:.3f}   targets: vigil <= 2 s, ratio <= 1")
    print(
        json.dumps(
            {
                "bench": "detect_to_fix",
                "trials": trials,
                "vigil_trials_ok": len(results["vigil"]),
                "monit_trials_ok": len(results["monit"]),
                "vigil_median_s": v["median_s"],
                "vigil_p90_s": v["p90_s"],
                "monit_median_s": m["median_s"],
                "monit_p90_s": m["p90_s"],
                "ratio": ratio,
                "vigil_restored_median_s": v["restored_median_s"],
                "monit_restored_median_s": m["restored_median_s"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
