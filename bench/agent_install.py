"""Agent-only install vs the collector install: size on disk and start-up time.

Builds the wheel from a clean copy of this checkout (as ``make wheel`` does) unless
``--wheel`` names one, then installs it twice, each time into a new venv without pip of
its own (this interpreter's pip installs with ``--python``, so the venv holds only what
the install brings):

- **agent**: ``vigil-*.whl`` (the same as ``[agent]``), what a laptop gets;
- **collector** (the peer, measured in the same run): ``vigil-*.whl[collector]``.

For each it prints the installed size (the venv's ``site-packages``, and the whole venv,
in MB of file bytes), the number of distributions, and the medians over ``--runs`` fresh
processes of: the wall time of ``vigil-agent --version`` (interpreter start to exit),
and the in-process time of ``import vigil.agent.service`` (the agent's composition root:
everything ``vigil-agent run`` imports before it starts). Ratios are agent / collector.
Last line: one JSON object.

Rerun it after a dependency change (e.g. ``cryptography`` for Ed25519 policy
verification) and compare with docs/benchmarks.md, "Agent install".

Usage: ``.venv/bin/python bench/agent_install.py [--runs 15] [--wheel dist/vigil-*.whl]``.
Needs a package index (or pip's configured mirror/find-links) for the dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "packaging"))

from build_deb import BuildError, build_wheel  # noqa: E402

IMPORT_PROBE = (
    "import time; t = time.perf_counter(); import vigil.agent.service; "
    "print(time.perf_counter() - t)"
)
PIP_TIMEOUT_S = 600.0
RUN_TIMEOUT_S = 60.0


def _env() -> dict[str, str]:
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "VIGIL_AGENT_CONFIG"}
    # No bytecode writes during the timed runs: every run then imports the same way (the
    # install already compiled everything into __pycache__).
    return {
        **{k: v for k, v in os.environ.items() if k not in drop},
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def install(root: Path, requirement: str) -> Path:
    """A new venv at ``root`` holding ``requirement``; its python."""
    venv.create(root, with_pip=False, symlinks=True)
    python = root / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", requirement],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
        env=_env(),
    )
    if done.returncode != 0:
        raise SystemExit(f"pip install {requirement} failed:\n{done.stdout}{done.stderr}")
    return python


def tree_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (symlinks not followed)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def median_s(argv: list[str], runs: int, *, from_stdout: bool = False) -> float:
    """Median seconds over ``runs`` fresh processes: the wall time of each, or the float
    each prints when ``from_stdout``. One untimed run first warms the page cache."""
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False, env=_env()
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed:\n{done.stderr}")
        if i:
            times.append(float(done.stdout.strip()) if from_stdout else wall)
    return statistics.median(times)


def measure(name: str, root: Path, requirement: str, runs: int) -> dict[str, float | int]:
    """Install ``requirement`` into ``root`` and take its figures."""
    python = install(root, requirement)
    site = next((root / "lib").glob("python3*/site-packages"))
    dists = len(list(site.glob("*.dist-info")))
    agent = str(root / "bin" / "vigil-agent")
    figures: dict[str, float | int] = {
        f"{name}_site_packages_mb": round(tree_bytes(site) / 1e6, 2),
        f"{name}_venv_mb": round(tree_bytes(root) / 1e6, 2),
        f"{name}_distributions": dists,
        f"{name}_version_ms": round(median_s([agent, "--version"], runs) * 1000, 1),
        f"{name}_import_service_ms": round(
            median_s([str(python), "-c", IMPORT_PROBE], runs, from_stdout=True) * 1000, 1
        ),
    }
    return figures


def main() -> int:
    """Build or take the wheel, measure both installs, print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per figure (median)")
    parser.add_argument("--wheel", type=Path, help="measure this wheel instead of building one")
    args = parser.parse_args()
    if not 1 <= args.runs <= 200:
        parser.error("--runs: between 1 and 200")
    with tempfile.TemporaryDirectory(prefix="vigil-install-bench-") as tmp:
        work = Path(tmp)
        try:
            wheel = args.wheel.absolute() if args.wheel else build_wheel(work)
        except BuildError as exc:
            raise SystemExit(f"agent_install: {exc}") from exc
        figures = {"runs": args.runs, "python": sys.version.split()[0]}
        figures |= measure("agent", work / "agent", str(wheel), args.runs)
        figures |= measure("collector", work / "collector", f"{wheel}[collector]", args.runs)
    for key in ("site_packages_mb", "venv_mb", "version_ms", "import_service_ms"):
        figures[f"ratio_{key}"] = round(figures[f"agent_{key}"] / figures[f"collector_{key}"], 3)

    print(f"{'figure':<28}{'agent':>12}{'collector':>12}{'ratio':>8}")
    for key, unit in (
        ("site_packages_mb", "MB"),
        ("venv_mb", "MB"),
        ("distributions", ""),
        ("version_ms", "ms"),
        ("import_service_ms", "ms"),
    ):
        ratio = figures.get(f"ratio_{key}", "")
        print(
            f"{key + (' (' + unit + ')' if unit else ''):<28}"
            f"{figures[f'agent_{key}']:>12}{figures[f'collector_{key}']:>12}{ratio!s:>8}"
        )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
