"""A real agent process speaks systemd's notify protocol to a socket the test binds:
READY=1 once, WATCHDOG=1 at half of WATCHDOG_USEC, and no pings while its loop is blocked."""

from __future__ import annotations

import itertools
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import spawn_agent, stop

TOKEN = "agent-secret-token-0123456789"


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound Unix datagram socket under a short /tmp path (sun_path is ~108 bytes)."""
    folder = tempfile.mkdtemp(prefix="vigil-sd-", dir="/tmp")
    path = f"{folder}/notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    try:
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "agent.yaml"
    config.write_text(
        "agent: {state_dir: state}\n"
        # Nothing listens there: the notify protocol does not depend on delivery.
        f"collector: {{url: 'http://127.0.0.1:9', token: {TOKEN}}}\n"
        "sampler: {disk_mounts: [/]}\n"
        "intervals: {sample: 1s}\n"
    )
    return config


def _receive(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    """Every datagram for ``seconds``, with its monotonic arrival time."""
    got: list[tuple[float, str]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        got.append((time.monotonic(), data.decode()))
    return got


def _pings(got: list[tuple[float, str]]) -> list[float]:
    return [t for t, msg in got if msg == "WATCHDOG=1"]


def test_agent_says_ready_then_pings_the_watchdog_at_half_its_interval(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}  # 1 s -> a ping every 0.5 s
    proc = spawn_agent(_config(tmp_path), tmp_path / "agent.log", cwd=tmp_path, env=env)
    try:
        got = _receive(sock, 6.0)
    finally:
        stop(proc)
    log = (tmp_path / "agent.log").read_text()
    messages = [msg for _, msg in got]
    assert messages, log
    assert messages[0].split("\n")[0] == "READY=1", messages[:3]
    assert f"MAINPID={proc.pid}" in messages[0]
    pings = _pings(got)
    # ~10 pings expected in the ~5 s after start-up; allow for a slow, shared CI machine.
    assert len(pings) >= 6, (messages, log)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 1.0, gaps  # never a gap as long as the watchdog interval itself
    assert "STOPPING=1" not in messages  # only at shutdown, after we stopped listening


def test_pings_stop_while_the_event_loop_is_blocked(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """The test-only block holds the loop for 4 s: no WATCHDOG=1 arrives for that long,
    so systemd (WatchdogSec=1) would have killed and restarted the agent."""
    sock, path = notify_socket
    env = {
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "1000000",
        "VIGIL_AGENT_TEST_BLOCK_LOOP": "1.5:4",
    }
    proc = spawn_agent(_config(tmp_path), tmp_path / "agent.log", cwd=tmp_path, env=env)
    try:
        got = _receive(sock, 9.0)
    finally:
        stop(proc)
    log = (tmp_path / "agent.log").read_text()
    pings = _pings(got)
    assert len(pings) >= 3, (got, log)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) >= 3.5, gaps  # the blocked loop sent nothing
    # and the pings came back once the loop ran again (this agent was not killed)
    assert pings[-1] > pings[0] + 4.5, gaps


def test_no_watchdog_pings_without_watchdog_usec(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    """A unit without WatchdogSec gets READY=1 only."""
    sock, path = notify_socket
    proc = spawn_agent(
        _config(tmp_path), tmp_path / "agent.log", cwd=tmp_path, env={"NOTIFY_SOCKET": path}
    )
    try:
        got = _receive(sock, 3.0)
    finally:
        stop(proc)
    messages = [msg for _, msg in got]
    assert messages and messages[0].startswith("READY=1"), messages
    assert _pings(got) == []
