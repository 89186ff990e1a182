"""The pure half of the sd_notify support: which socket, how often to ping, and a send."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from vigil.agent.svc.notify import (
    MIN_PING_S,
    Notifier,
    backoff_sleep,
    notify_address,
    watchdog_ping_s,
)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@abstract/notify", "\0abstract/notify"),
        ("", None),
        ("vsock:2:1234", None),  # not a Unix socket: nothing sent
    ],
    ids=["path", "abstract", "empty", "other-scheme"],
)
def test_notify_address(value: str, address: str | None) -> None:
    assert notify_address({"NOTIFY_SOCKET": value}) == address


def test_no_notify_socket_means_no_address() -> None:
    assert notify_address({}) is None


@pytest.mark.parametrize(
    ("env", "ping_s"),
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "42"}, 30.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "43"}, None),  # another process's
        ({"WATCHDOG_USEC": "100000"}, MIN_PING_S),  # never faster than the floor
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
    ids=["half", "our-pid", "other-pid", "floor", "zero", "garbage", "unset"],
)
def test_watchdog_ping_is_half_the_interval_for_this_process_only(
    env: dict[str, str], ping_s: float | None
) -> None:
    assert watchdog_ping_s(env, pid=42) == ping_s


def test_a_send_to_a_missing_socket_is_reported_not_raised() -> None:
    folder = Path(tempfile.mkdtemp(prefix="vigil-sd-", dir="/tmp"))
    try:
        notifier = Notifier(str(folder / "gone"))
        assert notifier.send("WATCHDOG=1") is False
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(folder / "gone"))
        assert notifier.send("WATCHDOG=1") is True
        assert receiver.recv(64) == b"WATCHDOG=1"
        receiver.close()
        notifier.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_crash_back_off_wait_extends_the_start_timeout_and_keeps_pinging() -> None:
    """Under a notify unit the back-off says why, stretches systemd's start timeout past
    the wait, and keeps the watchdog fed, so systemd never kills an agent for waiting."""
    folder = tempfile.mkdtemp(prefix="vigil-bo-", dir="/tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(f"{folder}/notify")
        env = {"NOTIFY_SOCKET": f"{folder}/notify", "WATCHDOG_USEC": "1000000"}
        started = time.monotonic()
        asyncio.run(backoff_sleep(1.2, "crash-loop back-off", env))
        assert time.monotonic() - started >= 1.2
        sock.settimeout(0.1)
        got = []
        with contextlib.suppress(TimeoutError):
            while True:
                got.append(sock.recv(4096).decode())
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)
    first = got[0].split("\n")
    assert first[0] == "STATUS=crash-loop back-off"
    assert int(first[1].removeprefix("EXTEND_TIMEOUT_USEC=")) >= 1_200_000
    assert got[1:].count("WATCHDOG=1") >= 2  # every 0.5 s during a 1.2 s wait
