"""The Monit side of ``bench/fleet.py``: the same fixes, where Monit can express them.

Monit (the Debian ``monit`` binary, ``set daemon 1`` like the agents' 1 s service
detection) drives two of the fleet's fixes:

- *service_down*: a pidfile daemon killed with SIGKILL, restarted by ``start program``;
  this is :func:`bench.detect_to_fix.monit` as is (fix time: Monit's log line saying the
  process runs again, its verification).
- *runaway*: a process spinning at 100 % of a core, matched by name, ``if cpu > 20% then
  exec ... repeat every 1 cycles`` the shipped ``kill-runaway`` script (20 % of all
  cores: Monit's process CPU is a share of the whole machine; one spinning core on two is
  50 %). Fix time: from the start
  of the spinner to the moment it is gone (polled every 5 ms), which favours Monit: it has
  no verification step for an ``exec`` action.

The ratio compares the medians of those two kinds together: Monit's over Vigil's in the
same run (``ratio_vs_monit`` >= 1 means Vigil is faster). Skipped, with a message, when
``monit`` is not installed.
"""

from __future__ import annotations

import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.detect_to_fix import (  # noqa: E402
    SETUP_TIMEOUT_S,
    TRIAL_TIMEOUT_S,
    kill_and_reap,
    monit,
    program,
    running_monit,
)

COMPARED = ("service_down", "runaway")


def monit_runaway(tmp: Path, trials: int, rng: random.Random) -> list[float]:
    """Seconds from a spinner's start to its being gone, per trial Monit stopped it."""
    folder = tmp / "runaway"
    folder.mkdir(parents=True)
    spin = folder / "mspin"
    spin.symlink_to(sys.executable)
    kill = program(
        folder / "kill.sh",
        "#!/bin/sh\nexport VIGIL_PARAM_NAMES=mspin VIGIL_PARAM_MIN_CPU_PERCENT=10 "
        f"VIGIL_PARAM_GRACE=1\nexec /bin/sh '{ROOT / 'remediations/kill-runaway/kill.sh'}'\n",
    )
    results: list[float] = []
    # repeat: Monit runs an exec action on a state change only; a new spinner after a
    # killed one is the same failed state without it.
    checks = (
        'check process mspin matching "mspin"\n'
        f'  if cpu > 20% then exec "{kill}" repeat every 1 cycles\n'
    )
    with running_monit(folder, checks) as watcher:
        if watcher.wait_for("", 0.0, SETUP_TIMEOUT_S) is None:  # monit's first log line
            raise RuntimeError("monit: no log output")
        for i in range(trials):
            time.sleep(rng.uniform(0.0, 1.0))  # spread over the 1 s cycle
            started = time.monotonic()
            spinner = subprocess.Popen([str(spin), "-c", "while True: pass"])
            deadline = started + TRIAL_TIMEOUT_S
            while time.monotonic() < deadline and spinner.poll() is None:
                time.sleep(0.005)
            if spinner.poll() is None:
                print(f"  monit runaway trial {i + 1}: not stopped within {TRIAL_TIMEOUT_S:g}s")
                kill_and_reap(spinner.pid)
                continue
            results.append(time.monotonic() - started)
            print(f"  monit runaway trial {i + 1}: gone after {results[-1]:.3f}s")
            time.sleep(1.5)  # monit notices it is gone before the next one
    return results


def compare(tmp: Path, faults: list[Any], trials: int) -> dict[str, Any]:
    """Run Monit on the compared kinds; the JSON fields for ``bench/fleet.py``."""
    vigil = [f.fixed_s for f in faults if f.kind in COMPARED and f.fixed_s is not None]
    if shutil.which("monit") is None:
        print("monit not found (apt-get install monit; .ci/run does): comparison skipped")
        return {"ratio_vs_monit": None, "monit": "absent"}
    tmp.mkdir(parents=True, exist_ok=True)
    rng = random.Random(15)
    print(f"monit: {trials} service kills, {trials} runaways, `set daemon 1`")
    service = [verified for verified, _ in monit(tmp, trials, rng)]
    runaway = monit_runaway(tmp, trials, rng)
    monit_all = service + runaway
    if not vigil or not monit_all:
        return {"ratio_vs_monit": None, "monit": "no results"}
    v, m = statistics.median(vigil), statistics.median(monit_all)
    return {
        "vigil_compared_median_s": round(v, 3),
        "monit_median_s": round(m, 3),
        "monit_service_median_s": round(statistics.median(service), 3) if service else None,
        "monit_runaway_median_s": round(statistics.median(runaway), 3) if runaway else None,
        "monit_trials_ok": len(monit_all),
        "ratio_vs_monit": round(m / v, 3),
    }
