"""The agent's footprint: running it must not import aiohttp.

aiohttp costs the agent ~13 MB of RSS at import (two SSL contexts with the CA store, plus
multidict, yarl and friends); the agent's shipper uses ``http.client`` instead and only
the collector uses aiohttp. The test runs a real ``vigil-agent run`` (``agent.cli.main``,
exactly what ``python -m agent`` runs) until it has delivered to a real collector, stops
it with SIGTERM, and has the process report at exit which modules it ever loaded.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.procs import Collector, collector_config, start_collector, stop, wait_for

AGENT_TOKEN = "imports-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "imports-admin-token-0123456789abcdef0123456789abcdef"
# Runs the agent's CLI as ``python -m agent`` does, then (at exit, after the whole run and
# its final flush) prints the heavy modules it loaded.
PROBE = """\
import atexit, sys
def report():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"aiohttp", "multidict", "yarl"})
    sys.stderr.write("LOADED-MODULES " + repr(loaded) + "\\n")
atexit.register(report)
from vigil.agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_running_agent_never_imports_aiohttp(tmp_path: Path) -> None:
    proc, url = start_collector(
        collector_config(tmp_path, agent_token=AGENT_TOKEN, admin_token=ADMIN_TOKEN),
        tmp_path / "collector.log",
    )
    collector = Collector(url=url, token=ADMIN_TOKEN)
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent: {state_dir: agent-state}\n"
        f'collector: {{url: "{url}", token: {AGENT_TOKEN}}}\n'
        "intervals: {sample: 300ms, report: 500ms, heartbeat: 1s, metrics: 2s}\n"
        "sampler: {disk_mounts: []}\n"
        "shipping: {start_jitter: 0}\n"
    )
    log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        [sys.executable, "-c", PROBE, "--config", str(config), "run"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        cwd=tmp_path,
    )
    try:
        wait_for("the agent to deliver", lambda: collector.get("/api/v1/hosts")["hosts"])
        assert stop(agent) == 0, log.read_text()
    finally:
        stop(agent)
        assert stop(proc) == 0, (tmp_path / "collector.log").read_text()

    lines = [line for line in log.read_text().splitlines() if line.startswith("LOADED-MODULES")]
    assert lines == ["LOADED-MODULES []"], log.read_text()


def test_the_agent_modules_import_without_aiohttp() -> None:
    """The import path alone (cheap, and names the culprit if it regresses)."""
    code = (
        "import sys, vigil.agent.cli, vigil.agent.service, vigil.agent.delivery.shipper\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'aiohttp', 'orjson'})\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
