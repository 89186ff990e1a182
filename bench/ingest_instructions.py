"""Ingest cost in instructions: what one report costs a whole collector process, counted
by valgrind's callgrind instead of timed.

Why: on these shared 2-core machines the CPU a report costs (``bench/delivery.py``) moves
by +-20 % from one hour to the next, and Pushgateway's with it, so a 3 % change in the
collector cannot be seen in seconds without many alternated runs. Instructions executed
do not depend on what else the machine is doing: the same build, inputs and request
count give the same total within about 1 %.

How: a real collector (``python -m vigil.collector``, SQLite, durable commits, the lean
front) runs under ``valgrind --tool=callgrind`` on a copy of a store pre-filled with
``--hosts`` known agents (``bench/delivery.py``'s pre-fill), and the load generator
(``bench/loadgen.py``, outside valgrind) posts ``N1`` and, in a second process, ``N2``
realistic reports (a heartbeat plus a metrics summary, gzip JSON, each a distinct agent's
next batch) on ``--concurrency`` keep-alive connections. ``(Ir(N2) - Ir(N1)) / (N2 - N1)``
is the instructions one report costs, with start-up and shutdown cancelled out.

Compared in the same run:
* the store-less floor (``bench/delivery.py --floor``'s collector: HTTP, gunzip, decode,
  checks and the reply; no store), unless ``--no-floor``;
* ``--against DIR``: the same measurements of another checkout's ``src`` folder (e.g.
  ``git worktree add /tmp/base main`` and ``--against /tmp/base/src``): the change of a
  commit in instructions.

What it does not count: the kernel's work (system calls, fsync, the socket stack; the
delivery benchmark prints that share), and time spent waiting. Under valgrind a process
runs ~50x slower, which changes how many reports a group commit takes (fewer, larger
groups than at full speed), so a figure here is comparable with another figure here,
not with microseconds in ``bench/delivery.py``.

Run: ``.venv/bin/python bench/ingest_instructions.py [--hosts 20000] [--requests
300,1500] [--concurrency 32] [--against DIR] [--no-floor]``; needs Debian's ``valgrind``
(4-5 minutes a source tree at the defaults, its floor included). Talks only to
127.0.0.1; every load is bounded by its request count. The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from random import Random

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.delivery import (  # noqa: E402
    prefill,
    real_sample,
    report_request,
    start_collector,
    vigil_payloads,
)
from bench.loadgen import run_load  # noqa: E402
from vigil.collector.storage.url import sqlite_url  # noqa: E402

_TOTALS = re.compile(r"^(?:summary|totals):\s*(\d+)", re.M)


def collector_instructions(
    folder: Path,
    requests: list[bytes],
    concurrency: int,
    *,
    floor: bool,
    store: Path | None,
    source: Path | None,
) -> int:
    """Instructions a collector executed from start to exit, having served ``requests``
    (all answered 200, else SystemExit); ``store``: the SQLite file it starts on."""
    folder.mkdir(parents=True)
    if store is not None:
        shutil.copy(store, folder / "collector.db")
    out = folder / "callgrind.out"
    wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-line=no")
    proc, url = start_collector(folder, pin=False, floor=floor, wrapper=wrapper, source=source)
    try:
        if requests:
            result = asyncio.run(
                run_load(
                    "127.0.0.1",
                    int(url.rsplit(":", 1)[1]),
                    requests.__getitem__,
                    concurrency=concurrency,
                    duration_s=3600.0,
                    max_requests=len(requests),
                )
            )
            if result.statuses != {200: len(requests)}:
                raise SystemExit(f"collector in {folder} answered {result.statuses}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=600)
    found = _TOTALS.search(out.read_text(errors="replace"))
    if found is None:
        raise SystemExit(f"no instruction total in {out}")
    return int(found.group(1))


def per_report(
    folder: Path,
    pool: list[bytes],
    counts: tuple[int, int],
    concurrency: int,
    *,
    floor: bool,
    store: Path | None,
    source: Path | None,
) -> float:
    """Instructions one report costs: two runs of ``counts`` requests, differenced."""
    n1, n2 = counts
    totals = [
        collector_instructions(
            folder / f"{n}", pool[:n], concurrency, floor=floor, store=store, source=source
        )
        for n in (n1, n2)
    ]
    return (totals[1] - totals[0]) / (n2 - n1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=20_000, help="agents in the store")
    parser.add_argument("--requests", default="300,1500", help="the two request counts")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--against", type=Path, help="another checkout's src folder")
    parser.add_argument("--no-floor", action="store_true", help="skip the store-less floor")
    args = parser.parse_args()
    try:
        n1, n2 = (int(n) for n in args.requests.split(","))
    except ValueError:
        parser.error(f"--requests: expected two counts N1,N2, got {args.requests!r}")
    if not 0 <= n1 < n2 or args.hosts < 1 or args.concurrency < 1:
        parser.error("--requests N1,N2 with 0 <= N1 < N2; --hosts and --concurrency >= 1")
    if args.against is not None and not (args.against / "vigil" / "collector").is_dir():
        parser.error(
            f"--against: {args.against} is not a checkout's src folder (no vigil/collector)"
        )
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed: apt-get install valgrind")
    rng = Random(5)
    agents = [uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(args.hosts)]
    values = real_sample()
    now = time.time()
    pool = [report_request(body) for body in vigil_payloads(agents, values, now, n2)]
    trees: dict[str, Path | None] = {"this": None}
    if args.against is not None:
        trees["against"] = args.against.resolve()
    print(
        f"ingest instructions, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}:"
        f" {args.hosts} hosts stored, {n1} and {n2} reports on {args.concurrency}"
        f" connections, callgrind"
    )
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-instr-") as tmp:
        base = Path(tmp)
        store = base / "store.db"
        took = prefill(sqlite_url(store), agents, values, now)
        print(f"pre-filled {args.hosts} hosts in {took:.1f} s")
        # (figure's key suffix, floor, the store it starts on): the durable collector,
        # then (unless --no-floor) the store-less one.
        modes = [("", False, store)] + ([] if args.no_floor else [("_floor", True, None)])
        for name, source in trees.items():
            label = "this checkout" if source is None else str(source)
            for suffix, floor, start_store in modes:
                figures[name + suffix] = per_report(
                    base / f"{name}{suffix or '_durable'}",
                    pool,
                    (n1, n2),
                    args.concurrency,
                    floor=floor,
                    store=start_store,
                    source=source,
                )
            cost = figures[name]
            print(f"{label}: {cost:,.0f} instructions a report (durable SQLite store)")
            if not args.no_floor:
                floor_cost = figures[f"{name}_floor"]
                print(
                    f"{label}: {floor_cost:,.0f} instructions a report with the store"
                    f" skipped; the store path {cost - floor_cost:,.0f}"
                )
    change = None
    if "against" in figures:
        change = figures["this"] / figures["against"] - 1
        print(f"this checkout against {args.against}: {change:+.1%} instructions a report")
    print(
        json.dumps(
            {
                "bench": "ingest_instructions",
                "hosts": args.hosts,
                "requests": [n1, n2],
                "concurrency": args.concurrency,
                "instr_per_report": round(figures["this"]),
                "floor_instr_per_report": _rounded(figures.get("this_floor")),
                "against_instr_per_report": _rounded(figures.get("against")),
                "against_floor_instr_per_report": _rounded(figures.get("against_floor")),
                "change": None if change is None else round(change, 4),
            }
        )
    )


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)


if __name__ == "__main__":
    main()
