"""dns-flush against a real dnsmasq cache, with a real stale answer injected.

A tiny upstream DNS server written here answers one name with an address the test can
change. A real dnsmasq (Debian package ``dnsmasq``) on a free port of 127.0.0.1 forwards
to it and caches the answer for an hour (``--min-cache-ttl``). Changing the upstream
answer makes dnsmasq serve a stale address: the fault. The shipped Linux script then runs
through the real runner with the manifest's environment, pointed at this dnsmasq's
pidfile, and the next lookup must return the new address.

PATH is a folder of the real utilities the script uses and nothing else, so that a
``resolvectl`` or ``nscd`` on the developer's machine does not take the flush elsewhere.
Everything listens on 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.peers import require_binary
from vigil.agent.config import ProbeSpec
from vigil.agent.exec.script import ScriptResult, run_script
from vigil.agent.remediation.manifest import load_manifest
from vigil.agent.sampling.probes import Prober, ProbeResult, Probes

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "remediations"
NAME = "intranet.vigil.test"
OLD, NEW = "192.0.2.10", "192.0.2.20"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux dnsmasq")

TYPE_A, CLASS_IN = 1, 1
QUERY_TIMEOUT_S = 2.0
START_TIMEOUT_S = 10.0


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def skip_name(packet: bytes, offset: int) -> int:
    """Offset just past the (possibly compressed) name starting at ``offset``."""
    while True:
        length = packet[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length


def read_name(packet: bytes, offset: int) -> str:
    """The uncompressed name at ``offset`` (queries carry no compression)."""
    labels = []
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    return ".".join(labels)


@dataclass
class Upstream:
    """A one-name authoritative-ish DNS server on UDP 127.0.0.1, in a thread."""

    address: str = OLD
    queries: int = 0
    sock: socket.socket = field(
        default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                packet, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(IndexError, struct.error, OSError):
                self.sock.sendto(self.answer(packet), peer)

    def answer(self, query: bytes) -> bytes:
        qid, _flags, qdcount = struct.unpack("!HHH", query[:6])
        end = skip_name(query, 12) + 4
        qtype, _qclass = struct.unpack("!HH", query[end - 4 : end])
        question = query[12:end]
        if qdcount != 1 or read_name(query, 12).lower() != NAME:
            return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
        self.queries += 1
        if qtype != TYPE_A:
            return struct.pack("!HHHHHH", qid, 0x8180, 1, 0, 0, 0) + question  # no data
        record = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, 300, 4)
        record += socket.inet_aton(self.address)
        return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + record


def lookup(port: int, name: str = NAME) -> str | None:
    """The first A address for ``name`` from the DNS server on 127.0.0.1:``port``."""
    qid = secrets.randbelow(0x10000)
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    query += encode_name(name) + struct.pack("!HH", TYPE_A, CLASS_IN)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(QUERY_TIMEOUT_S)
        s.sendto(query, ("127.0.0.1", port))
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        while True:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            reply = s.recv(4096)
            if struct.unpack("!H", reply[:2])[0] == qid:
                break
    _, flags, qdcount, ancount = struct.unpack("!HHHH", reply[:8])
    assert flags & 0x000F == 0, f"rcode {flags & 0xF}"
    offset = 12
    for _ in range(qdcount):
        offset = skip_name(reply, offset) + 4
    for _ in range(ancount):
        offset = skip_name(reply, offset)
        rtype, _rclass, _ttl, rdlength = struct.unpack("!HHIH", reply[offset : offset + 10])
        offset += 10
        if rtype == TYPE_A and rdlength == 4:
            return socket.inet_ntoa(reply[offset : offset + 4])
        offset += rdlength
    return None


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no free port on 127.0.0.1")


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve, name="upstream-dns", daemon=True)
    thread.start()
    yield server
    server.stop.set()
    thread.join(5)
    server.sock.close()


@dataclass
class Dnsmasq:
    port: int
    pidfile: Path
    process: subprocess.Popen[bytes]


@pytest.fixture
def dnsmasq(tmp_path: Path, upstream: Upstream) -> Iterator[Dnsmasq]:
    """A real dnsmasq caching ``upstream``'s answers for an hour; stopped in teardown."""
    binary = require_binary("dnsmasq")
    port = free_udp_tcp_port()
    pidfile = tmp_path / "dnsmasq.pid"
    log = tmp_path / "dnsmasq.log"
    argv = [
        binary,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--bind-interfaces",
        f"--server=127.0.0.1#{upstream.port}",
        f"--pid-file={pidfile}",
        "--cache-size=100",
        "--min-cache-ttl=3600",
        f"--log-facility={log}",
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"dnsmasq did not start: {log.read_text()}"
            time.sleep(0.05)
        assert int(pidfile.read_text()) == process.pid
        yield Dnsmasq(port, pidfile, process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


@pytest.fixture
def stale(dnsmasq: Dnsmasq, upstream: Upstream) -> Dnsmasq:
    """The fault: dnsmasq has cached OLD, and the upstream now answers NEW."""
    assert lookup(dnsmasq.port) == OLD
    upstream.address = NEW
    return dnsmasq


def flush(tmp_path: Path, pidfile: Path, *, dry_run: bool = False) -> ScriptResult:
    """Run the shipped dns-flush Linux script as the agent would, for ``pidfile``."""
    rem = load_manifest(SHIPPED / "dns-flush")
    script = rem.script_for("linux")
    assert script is not None
    env = rem.script_env({"dnsmasq_pidfile": str(pidfile)}, dry_run=dry_run)
    env["VIGIL_PHASE"] = "remediate"
    env["PATH"] = utilities(tmp_path)
    return asyncio.run(
        run_script(
            script,
            allowed_roots=[SHIPPED],
            env=env,
            timeout_s=rem.timeout_s,
            output_cap_bytes=rem.output_cap_bytes,
            cwd=rem.folder,
        )
    )


def utilities(tmp_path: Path) -> str:
    """A PATH holding the real utilities dns-flush uses, and no DNS cache tool."""
    box = tmp_path / "bin"
    if not box.exists():
        box.mkdir()
        for tool in ("uname", "head", "tr", "kill"):
            real = shutil.which(tool)
            assert real, tool
            (box / tool).symlink_to(real)
    return str(box)


def test_dnsmasq_keeps_serving_the_stale_answer_from_its_cache(
    stale: Dnsmasq, upstream: Upstream
) -> None:
    """The injected fault is real: dnsmasq answers from its cache, not from the upstream."""
    asked = upstream.queries

    assert lookup(stale.port) == OLD
    assert upstream.queries == asked


def test_dns_flush_makes_dnsmasq_fetch_the_new_answer(tmp_path: Path, stale: Dnsmasq) -> None:
    """SIGHUP through the pidfile empties dnsmasq's cache; the next lookup goes upstream."""
    result = flush(tmp_path, stale.pidfile)

    assert result.exit_code == 0, result.output
    assert "flushed dnsmasq" in result.output
    assert lookup(stale.port) == NEW
    assert stale.process.poll() is None


def test_dns_flush_dry_run_leaves_the_stale_answer_cached(tmp_path: Path, stale: Dnsmasq) -> None:
    """A dry run only says what it would signal; dnsmasq keeps its cache."""
    result = flush(tmp_path, stale.pidfile, dry_run=True)

    assert result.exit_code == 0, result.output
    assert f"would flush dnsmasq with: kill -HUP {stale.process.pid}" in result.output
    assert lookup(stale.port) == OLD


def test_dns_flush_never_signals_a_pidfile_pid_that_is_not_dnsmasq(tmp_path: Path) -> None:
    """A stale pidfile naming another process fails the run and leaves that process alone."""
    bystander = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        pidfile = tmp_path / "dnsmasq.pid"
        pidfile.write_text(f"{bystander.pid}\n")

        result = flush(tmp_path, pidfile)

        assert result.exit_code == 1
        assert "not a running dnsmasq" in result.output
        with pytest.raises(subprocess.TimeoutExpired):
            bystander.wait(0.3)  # still alive: a SIGHUP would have ended it
    finally:
        bystander.kill()
        bystander.wait(5)


# --- probe.answer_ok: the series that triggers dns-flush, asked of the same real dnsmasq ----


def answer_probe(port: int, *expect: str, name: str = NAME) -> ProbeResult:
    """A dns probe asking dnsmasq on 127.0.0.1:``port`` directly, expecting ``expect``."""
    spec = ProbeSpec("intranet", "dns", name, QUERY_TIMEOUT_S, f"127.0.0.1:{port}", expect)
    return Prober().run(spec)


def test_answer_ok_is_0_for_the_stale_answer_and_1_after_dns_flush(
    tmp_path: Path, stale: Dnsmasq
) -> None:
    """The stale cache is seen as a wrong answer (the trigger), and dns-flush repairs it."""
    before = answer_probe(stale.port, NEW)
    assert (before.up, before.answer_ok) == (True, False)
    assert OLD in (before.error or "")

    assert flush(tmp_path, stale.pidfile).exit_code == 0

    after = answer_probe(stale.port, NEW)
    assert (after.up, after.answer_ok, after.error) == (True, True, None)


def test_a_name_that_does_not_exist_is_a_wrong_answer(dnsmasq: Dnsmasq) -> None:
    """NXDOMAIN for a name that should exist is an answer (0), not an unknown."""
    result = answer_probe(dnsmasq.port, NEW, name="gone.vigil.test")
    assert (result.up, result.answer_ok) == (False, False)


def test_a_server_that_does_not_answer_leaves_answer_ok_unknown() -> None:
    """No reply within the timeout: probe.up 0 and no probe.answer_ok series."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never replies
        spec = ProbeSpec(
            "intranet", "dns", NAME, 0.3, f"127.0.0.1:{silent.getsockname()[1]}", (NEW,)
        )
        started = time.monotonic()
        items = dict(Probes([spec], Prober()).read())
    assert time.monotonic() - started < 2.0
    assert items["probe.up[intranet]"] == 0.0
    assert "probe.answer_ok[intranet]" not in items
