"""Native TLS end to end: a real collector process serving HTTPS with a throwaway CA,
real agent processes shipping to it, and plain ``ssl`` clients probing the handshake.

Good CA: the report arrives. Wrong CA or an expired server certificate: nothing is
accepted and the agent keeps its events in its outbox. Mutual TLS: no client
certificate, no connection. SIGHUP: a new certificate on the same listening socket.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import collector_config, spawn_agent, start_collector, stop, wait_for
from tests.support.tls import Pki, make_pki

AGENT_TOKEN = "tls-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "tls-admin-token-0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextlib.contextmanager
def https_collector(
    folder: Path, cert: Path, key: Path, client_ca: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    mtls = f", client_ca_file: {client_ca}" if client_ca else ""
    config = collector_config(
        folder,
        agent_token=AGENT_TOKEN,
        admin_token=ADMIN_TOKEN,
        extra=f"listen: {{host: 127.0.0.1, tls: {{cert_file: {cert}, key_file: {key}{mtls}}}}}\n",
    )
    # collector_config wrote a listen line of its own; keep only ours (the last one).
    lines = config.read_text().splitlines()
    config.write_text("\n".join(line for line in lines[1:]) + "\n")
    proc, url = start_collector(config, folder / "collector.log")
    try:
        yield proc, url
    finally:
        assert stop(proc) == 0, (folder / "collector.log").read_text()


def get(url: str, context: ssl.SSLContext) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return json.load(response)


def start_agent(folder: Path, url: str, tls: str) -> subprocess.Popen[bytes]:
    config = folder / "agent.yaml"
    config.write_text(
        f"""\
agent: {{state_dir: agent-state}}
collector: {{url: "{url}", token: {AGENT_TOKEN}{tls}}}
intervals: {{sample: 300ms, report: 500ms, heartbeat: 1s, metrics: 5s}}
shipping: {{start_jitter: 0s, backoff_base: 200ms, backoff_cap: 1s}}
sampler: {{disk_mounts: []}}
"""
    )
    # DEBUG: after the outage's one WARNING, each retry's failure is logged at DEBUG only.
    return spawn_agent(config, folder / "agent.log", cwd=folder, unbuffered=True, log_level="DEBUG")


def queued(folder: Path) -> int:
    with contextlib.closing(sqlite3.connect(folder / "agent-state" / "outbox.db")) as db:
        return db.execute("SELECT COUNT(*) FROM events").fetchone()[0]


def test_an_agent_trusting_the_collectors_ca_delivers_over_https(tmp_path: Path, pki: Pki) -> None:
    with https_collector(tmp_path, pki.server_cert, pki.server_key) as (_, url):
        assert url.startswith("https://127.0.0.1:")
        agent = start_agent(tmp_path, url, f", ca_file: {pki.ca}")
        try:
            hosts = wait_for(
                "the agent's report over HTTPS",
                lambda: get(f"{url}/api/v1/hosts", pki.client_context())["hosts"],
            )
            assert len(hosts) == 1
        finally:
            stop(agent)


@pytest.mark.parametrize("case", ["wrong CA", "expired certificate"])
def test_a_collector_the_agent_cannot_verify_gets_nothing_and_the_outbox_keeps_it(
    tmp_path: Path, pki: Pki, case: str
) -> None:
    if case == "wrong CA":
        cert, key, trusted = pki.server_cert, pki.server_key, pki.other_ca
    else:
        cert, key, trusted = pki.expired_cert, pki.expired_key, pki.ca
    with https_collector(tmp_path, cert, key) as (_, url):
        agent = start_agent(tmp_path, url, f", ca_file: {trusted}")
        try:
            log = tmp_path / "agent.log"
            wait_for(
                "the agent to fail certificate verification twice",
                lambda: log.read_text().count("CERTIFICATE_VERIFY_FAILED") >= 2,
            )
            assert queued(tmp_path) > 0
        finally:
            assert stop(agent) == 0
        relaxed = ssl.create_default_context(cafile=pki.ca)
        relaxed.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        relaxed.check_hostname, relaxed.verify_mode = False, ssl.CERT_NONE
        assert get(f"{url}/api/v1/hosts", relaxed)["hosts"] == []
    assert queued(tmp_path) > 0  # still there after a clean stop: nothing was lost


def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path, pki: Pki) -> None:
    with https_collector(tmp_path, pki.server_cert, pki.server_key, client_ca=pki.ca) as (_, url):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            get(f"{url}/api/v1/hosts", pki.client_context())
        assert get(f"{url}/api/v1/hosts", pki.client_context(client=True)) == {
            "hosts": [],
            "next": None,
        }

        agent = start_agent(
            tmp_path,
            url,
            f", ca_file: {pki.ca}, client_cert_file: {pki.client_cert},"
            f" client_key_file: {pki.client_key}",
        )
        try:
            wait_for(
                "the agent's report over mutual TLS",
                lambda: get(f"{url}/api/v1/hosts", pki.client_context(client=True))["hosts"],
            )
        finally:
            stop(agent)


def served_certificate(url: str, pki: Pki) -> bytes:
    host, port = url.removeprefix("https://").split(":")
    context = pki.client_context()
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sighup_reloads_the_certificate_without_closing_the_listener(
    tmp_path: Path, pki: Pki
) -> None:
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    cert.write_bytes(pki.server_cert.read_bytes())
    key.write_bytes(pki.server_key.read_bytes())
    with https_collector(tmp_path, cert, key) as (proc, url):
        before = served_certificate(url, pki)
        new_cert, new_key = pki.server_pair("renewed")
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        proc.send_signal(signal.SIGHUP)
        after = wait_for(
            "the renewed certificate",
            lambda: (der := served_certificate(url, pki)) != before and der,
        )
        assert after == ssl.PEM_cert_to_DER_cert(new_cert.read_text())

        key.write_text("not a key")  # a broken renewal keeps the working certificate
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert served_certificate(url, pki) == after
        assert proc.poll() is None
    assert "TLS reload failed" in (tmp_path / "collector.log").read_text()
