"""exec.process.run_bounded: the shared process-tree lifecycle of scripts and plugins.

Real ``/bin/sh`` children; run_script and run_plugin cover the rest through their tests.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.support.procs import assert_process_gone
from vigil.agent.exec.process import KILL_GRACE_S, BoundedRun, child_env, run_bounded

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX process groups and sh")


def sh(code: str, *, timeout_s: float = 10.0, cap: int = 1024, **kwargs: object) -> BoundedRun:
    return asyncio.run(
        run_bounded(
            ["/bin/sh", "-c", code],
            env=child_env(None),
            cwd="/",
            timeout_s=timeout_s,
            output_cap_bytes=cap,
            **kwargs,  # type: ignore[arg-type]
        )
    )


def test_exit_code_and_merged_output() -> None:
    run = sh('echo out; echo err >&2; echo "$PWD $LANG"; exit 3')

    assert (run.exit_code, run.output) == (3, "out\nerr\n/ C.UTF-8\n")
    assert not run.truncated and not run.timed_out and run.duration_s >= 0


def test_stderr_can_be_discarded_and_output_settles() -> None:
    run = sh("echo out; echo err >&2", merge_stderr=False, settle_s=1.0)

    assert (run.exit_code, run.output) == (0, "out\n")


def test_output_is_capped_head_and_tail() -> None:
    run = sh("i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done", cap=200)

    assert run.truncated and len(run.output) <= 200
    assert run.output.startswith("line0\n") and run.output.endswith("line1999\n")


def test_timeout_kills_the_tree_and_reports_no_exit_code(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    started = time.monotonic()
    run = sh(f"sleep 60 & echo $! > {pidfile}; wait", timeout_s=0.5)

    assert run.timed_out and run.exit_code is None
    assert time.monotonic() - started < 0.5 + KILL_GRACE_S + 2.0
    grandchild = int(pidfile.read_text())
    assert_process_gone(grandchild)


def test_start_failure_raises() -> None:
    with pytest.raises(OSError):
        asyncio.run(
            run_bounded(
                ["/nonexistent/program"], env={}, cwd=None, timeout_s=1, output_cap_bytes=10
            )
        )
    with pytest.raises(ValueError):
        asyncio.run(run_bounded([], env={}, cwd=None, timeout_s=1, output_cap_bytes=10))
