"""``clock.offset_s`` measured over real UDP against a tiny SNTP server on 127.0.0.1.

The server answers like an NTP server whose clock is ``skew`` seconds ahead of this
machine's. The agent's SNTP client (``sampling/clock_offset.py``) must report that skew,
with the round trip taken out; a server that never answers must leave the series missing
within the configured timeout. The last test runs ``vigil-agent check --json`` as a
process, so the series reaches a real check (the trigger clock-resync needs).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vigil.agent.config import ClockSpec, SamplerConfig
from vigil.agent.sampling.clock_offset import to_ntp
from vigil.agent.sampling.sampler import Sampler

REPO = Path(__file__).resolve().parents[2]
SKEW_S = 5.0


@dataclass
class SntpServer:
    """Answers SNTP requests with its clock ``skew`` seconds ahead of ``time.time``."""

    skew: float
    sock: socket.socket = field(
        default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    )
    stop: threading.Event = field(default_factory=threading.Event)
    answered: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                request, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            received = time.time() + self.skew
            # LI 0, version 4, mode 4 (server), stratum 2; originate = the client's transmit.
            reply = bytes([0x24, 2, 6, 0xEC]) + bytes(20) + request[40:48]
            reply += to_ntp(received) + to_ntp(time.time() + self.skew)
            # Counted before the reply leaves: the client may read the count as soon as
            # the reply arrives (counting after sendto lost that race once under load).
            self.answered += 1
            self.sock.sendto(reply, peer)


@pytest.fixture
def sntp() -> Iterator[SntpServer]:
    server = SntpServer(SKEW_S)
    server.sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve, name="sntp", daemon=True)
    thread.start()
    yield server
    server.stop.set()
    thread.join(5)
    server.sock.close()


def sample_clock(server: str, timeout_s: float = 2.0) -> tuple[dict[str, float], Sampler]:
    sampler = Sampler(SamplerConfig(clock=ClockSpec(server=server, timeout_s=timeout_s)))
    return sampler.sample(["clock"]), sampler


def test_offset_from_a_real_sntp_exchange(sntp: SntpServer) -> None:
    values, _ = sample_clock(sntp.address)
    assert values["clock.offset_s"] == pytest.approx(SKEW_S, abs=0.05)
    assert values["clock.offset_signed_s"] == pytest.approx(SKEW_S, abs=0.05)
    assert sntp.answered == 1


def test_a_clock_ahead_of_the_server_has_a_negative_signed_offset(sntp: SntpServer) -> None:
    sntp.skew = -2.0
    values, _ = sample_clock(sntp.address)
    assert values["clock.offset_s"] == pytest.approx(2.0, abs=0.05)
    assert values["clock.offset_signed_s"] == pytest.approx(-2.0, abs=0.05)


def test_a_silent_server_is_unknown_within_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        started = time.monotonic()
        values, sampler = sample_clock(f"127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.3)
        elapsed = time.monotonic() - started
    assert "clock.offset_s" not in values
    assert "SNTP query to 127.0.0.1" in sampler.reason_for("clock.offset_s")
    assert elapsed < 2.0


def test_agent_check_cli_sees_the_drifted_clock(tmp_path: Path, sntp: SntpServer) -> None:
    """A real agent process: the check clock-resync is triggered by goes critical."""
    config = tmp_path / "agent.yaml"
    config.write_text(
        "collector: {url: 'http://127.0.0.1:9', token: t}\n"
        f"sampler:\n  clock: {{server: '{sntp.address}', timeout: 2s}}\n"
        "checks:\n"
        "  - {id: clock.offset, metric: clock.offset_s, warning: 0.5, critical: 1}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "vigil.agent", "--config", str(config), "check", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    rows = {r["check"]: r for r in json.loads(done.stdout)["checks"]}
    assert rows["clock.offset"]["state"] == "critical", done.stderr
    assert rows["clock.offset"]["value"] == pytest.approx(SKEW_S, abs=0.1)
