"""exec.process.run_bounded: the shared process-tree lifecycle of scripts and plugins.

Real ``/bin/sh`` children; run_script and run_plugin cover the rest through their tests.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

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


def test_a_cancel_while_asyncio_still_wires_the_pipes_kills_the_whole_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child runs from the fork on, while create_subprocess_exec still connects its
    # pipes; on a loaded machine a cancel can land in that window (CI saw it). asyncio's
    # own clean-up then kills only the direct child: the group must still be killed.
    pidfile = tmp_path / "child.pid"
    real_spawn = asyncio.create_subprocess_exec

    async def pid_written() -> None:
        for _ in range(1000):  # at most ~10 s
            if pidfile.exists() and pidfile.read_text().strip():
                return
            await asyncio.sleep(0.01)

    async def slow_spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await real_spawn(*args, **kwargs)
        await pid_written()
        await asyncio.sleep(0.2)  # the window, widened: the cancel lands in here
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", slow_spawn)

    async def main() -> None:
        task = asyncio.create_task(
            run_bounded(
                ["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"],
                env=child_env(None),
                cwd="/",
                timeout_s=30,
                output_cap_bytes=1024,
            )
        )
        await pid_written()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())

    assert_process_gone(int(pidfile.read_text()))


def test_start_failure_raises() -> None:
    with pytest.raises(OSError):
        asyncio.run(
            run_bounded(
                ["/nonexistent/program"], env={}, cwd=None, timeout_s=1, output_cap_bytes=10
            )
        )
    with pytest.raises(ValueError):
        asyncio.run(run_bounded([], env={}, cwd=None, timeout_s=1, output_cap_bytes=10))
