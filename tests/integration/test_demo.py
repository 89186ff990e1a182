"""`make demo` as a newcomer runs it: real processes, output that says what happened."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_shows_a_prevented_fault_and_an_incident_that_resolves(tmp_path: Path) -> None:
    # A copy of what the demo reads, so the test never touches the checkout's var/.
    shutil.copytree(REPO / "config" / "demo", tmp_path / "config" / "demo")
    shutil.copytree(REPO / "remediations", tmp_path / "remediations")

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vigil.collector.demo",
            "--root",
            str(tmp_path),
            "--port",
            "0",
            "--exit",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=REPO,
    )

    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Collector:        http://127.0.0.1:" in out
    assert "outcome=fixed" in out
    assert "prevented incident #1 recorded, 0 incidents raised" in out
    assert "! incident #2 opened" in out
    assert "Responder token:  vigil_op_" in out
    # No shared token: the agent enrolled with a one-time secret and reports as itself.
    assert "Enrollment:       secret " in out and "enrolled agent " in out
    assert "reporting with its own credential" in out
    assert "agent_tokens" not in (tmp_path / "config" / "demo" / "collector.yaml").read_text()
    assert not (tmp_path / "var" / "demo" / "enroll-secret.txt").exists()
    assert "incident #2 acknowledged by demo-responder (its token)" in out
    assert "✓ incident #2 resolved" in out
    assert "agent stopped (exit 0)" in out
    assert "collector stopped (exit 0)" in out
    assert (tmp_path / "var" / "demo" / "collector.db").exists()
