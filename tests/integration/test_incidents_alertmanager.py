"""End to end: real agents, a real collector and the real Debian Alertmanager.

An outage of a business-critical service on three servers at once must become exactly
one fleet problem and exactly one alert (not three), reach Alertmanager's webhook
receiver grouped as configured, and resolve there when the hosts recover. The collector's
own signed webhook gets the same two events. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.support.peers import free_port, require_binary
from tests.support.procs import (
    Collector,
    collector_config,
    spawn_agent,
    start_collector,
    stop,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
AGENT_TOKEN = "am-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "am-admin-token-0123456789abcdef0123456789abcdef"
SECRET = "hook-secret-0123456789abcdef0123456789abcdef"
HOSTS = 3


# --------------------------------------------------------------------------- helpers


@dataclass
class Receiver:
    """An aiohttp server in a thread recording every POST body by path."""

    port: int = field(default_factory=free_port)
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def handle(request: web.Request) -> web.Response:
            self.received.append((request.path, dict(request.headers), await request.read()))
            return web.Response(text="ok")

        async def serve() -> None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            ready.set()

        def run() -> None:
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "webhook receiver did not start"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def bodies(self, path: str) -> list[tuple[dict[str, str], Any]]:
        return [(h, json.loads(b)) for p, h, b in list(self.received) if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def alertmanager(tmp_path: Path, receiver: Receiver) -> Iterator[str]:
    binary = require_binary("prometheus-alertmanager")
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        f"""\
route:
  receiver: test
  group_by: [alertname, service]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: http://127.0.0.1:{receiver.port}/am
        send_resolved: true
"""
    )
    (tmp_path / "am-data").mkdir()
    log = (tmp_path / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # no clustering: no gossip port, no peers
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            "alertmanager to be ready",
            lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200,
        )
        yield url
    finally:
        stop(proc)


@pytest.fixture
def collector(tmp_path: Path, alertmanager: str, receiver: Receiver) -> Iterator[Collector]:
    (tmp_path / "catalog.yaml").write_text(
        """\
groups:
  - {name: servers, match: {role: server}, urgency: high}
services:
  - {name: email, owner: messaging-team, criticality: high, checks: ["mail.*"]}
"""
    )
    config = collector_config(
        tmp_path,
        agent_token=AGENT_TOKEN,
        admin_token=ADMIN_TOKEN,
        extra=f"""\
catalog: catalog.yaml
incidents:
  correlation: {{window: 5m, min_hosts: {HOSTS}}}
notifications:
  delay: 4s
  interval: 500ms
  resend_interval: 5s
  alertmanager: [{{url: "{alertmanager}"}}]
  webhooks: [{{url: "http://127.0.0.1:{receiver.port}/vigil", secret: {SECRET}}}]
public_url: http://vigil.test
""",
    )
    proc, url = start_collector(config, tmp_path / "collector.log")
    try:
        yield Collector(url=url, token=ADMIN_TOKEN)
    finally:
        stop(proc)


def start_agent(folder: Path, url: str) -> subprocess.Popen[bytes]:
    folder.mkdir()
    (folder / "inbox").mkdir()
    (folder / "agent.yaml").write_text(
        f"""\
agent:
  state_dir: state
  labels: {{role: server}}
collector: {{url: "{url}", token: {AGENT_TOKEN}}}
intervals: {{sample: 300ms, report: 500ms, heartbeat: 2s, metrics: 5s}}
sampler:
  disk_mounts: []
  paths: [{{name: inbox, path: inbox}}]
remediation: {{folders: ["{REPO / "remediations"}"]}}
checks:
  - {{id: mail.queue, metric: 'path.size_bytes[inbox]', critical: 1000}}
"""
    )
    return spawn_agent(folder / "agent.yaml", folder / "agent.log", unbuffered=True)


def alerts_seen(receiver: Receiver) -> list[tuple[str, dict[str, str]]]:
    """(status, labels) of every alert in every Alertmanager webhook notification."""
    return [
        (alert["status"], alert["labels"])
        for _, body in receiver.bodies("/am")
        for alert in body["alerts"]
    ]


# --------------------------------------------------------------------------- the outage


def test_an_outage_of_a_critical_service_on_several_hosts_is_one_problem_and_one_alert(
    tmp_path: Path, collector: Collector, receiver: Receiver
) -> None:
    agents = [start_agent(tmp_path / f"agent{n}", collector.url) for n in range(HOSTS)]
    try:
        wait_for(
            "every agent to report", lambda: len(collector.get("/api/v1/hosts")["hosts"]) == HOSTS
        )
        for n in range(HOSTS):
            (tmp_path / f"agent{n}" / "inbox" / "junk.bin").write_bytes(b"\0" * 5000)

        problem = wait_for(
            "the fleet problem",
            lambda: collector.get("/api/v1/problems?kind=fleet")["problems"],
        )[0]
        firing = wait_for(
            "the alert at Alertmanager's receiver",
            lambda: [a for a in alerts_seen(receiver) if a[0] == "firing"],
        )
        incidents = collector.get("/api/v1/incidents?state=open")["incidents"]
        assert len(incidents) == HOSTS
        assert {i["priority"] for i in incidents} == {"P1"}
        assert {i["service"] for i in incidents} == {"email"}

        for n in range(HOSTS):
            (tmp_path / f"agent{n}" / "inbox" / "junk.bin").unlink()
        wait_for(
            "the resolution at Alertmanager's receiver",
            lambda: [a for a in alerts_seen(receiver) if a[0] == "resolved"],
        )
    finally:
        for agent in agents:
            stop(agent)

    # Exactly one fleet problem, linking every host incident, resolved with them.
    (final,) = collector.get("/api/v1/problems")["problems"]
    assert final["id"] == problem["id"]
    assert final["state"] == "resolved"
    assert sorted(final["incidents"]) == sorted(i["id"] for i in incidents)

    # Alertmanager saw one alert (the problem), grouped by alertname and service.
    refs = {labels["vigil_ref"] for _, labels in alerts_seen(receiver)}
    assert refs == {f"problem:{problem['id']}"}
    ((_, labels),) = firing
    assert labels["alertname"] == "mail.queue"
    assert (labels["service"], labels["priority"], labels["severity"]) == (
        "email",
        "P1",
        "critical",
    )
    groups = {json.dumps(b["groupLabels"], sort_keys=True) for _, b in receiver.bodies("/am")}
    assert groups == {json.dumps({"alertname": "mail.queue", "service": "email"})}

    # The collector's signed webhook: one firing and one resolved event, for the problem.
    hooks = receiver.bodies("/vigil")
    events = [(e["event"], e["ref"]) for _, body in hooks for e in body["events"]]
    ref = f"problem:{problem['id']}"
    assert events == [("firing", ref), ("resolved", ref)]
    for path, headers, raw in list(receiver.received):
        if path == "/vigil":
            signed = headers["X-Vigil-Timestamp"].encode() + b"." + raw
            mac = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
            assert headers["X-Vigil-Signature"] == f"sha256={mac}"
