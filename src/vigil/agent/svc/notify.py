"""systemd's readiness and watchdog protocol (``sd_notify``), without a dependency.

Under a ``Type=notify`` unit systemd passes ``NOTIFY_SOCKET`` (a Unix datagram socket;
a leading ``@`` names one in the abstract namespace). The agent sends ``READY=1`` once its
jobs are scheduled, and, when the unit sets ``WatchdogSec=`` (systemd then passes
``WATCHDOG_USEC`` and ``WATCHDOG_PID``), ``WATCHDOG=1`` every half of that interval, from
a job on the agent's own :class:`~vigil.agent.timers.Timers`. A ping is a timer callback
on the event loop, so a loop that is blocked (a job that never yields, a hung call on the
loop thread) sends none, and systemd kills and restarts the agent after ``WatchdogSec``.
Outside systemd (no ``NOTIFY_SOCKET``) nothing is sent and nothing is scheduled.

Test-only fault injection: ``VIGIL_AGENT_TEST_BLOCK_LOOP="AFTER:SECONDS"`` makes the
agent block its own event loop with ``time.sleep(SECONDS)`` ``AFTER`` seconds after it is
ready, so a test can show that the pings stop (``tests/integration/test_sd_notify.py``).
Never set it in production.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

from vigil.agent.timers import Timers

log = logging.getLogger("vigil.agent")

WATCHDOG_JOB = "watchdog"
BLOCK_LOOP_ENV = "VIGIL_AGENT_TEST_BLOCK_LOOP"
# The shortest ping period accepted: a WatchdogSec below 1 s would ask for pings faster
# than a laptop's loop can promise under load.
MIN_PING_S = 0.5


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address from ``NOTIFY_SOCKET`` (``@name`` -> abstract ``\\0name``);
    ``None`` when unset or not a Unix socket path."""
    raw = environ.get("NOTIFY_SOCKET", "")
    if raw.startswith("@"):
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None


def watchdog_ping_s(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC`` (systemd's own
    advice), at least :data:`MIN_PING_S`. ``None`` when no watchdog is asked for, the
    value is not a positive integer, or ``WATCHDOG_PID`` names another process (a child
    that inherited the environment must not ping for its parent)."""
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(pid if pid is not None else os.getpid()):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return max(MIN_PING_S, usec / 2 / 1_000_000)


class Notifier:
    """A non-blocking datagram sender to systemd's notify socket. A send that fails
    (systemd gone, socket full) is logged once and otherwise ignored: the watchdog, not
    the agent, decides what a missing ping means."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sent = 0
        self._warned = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    def send(self, state: str) -> bool:
        """Send ``state`` (``"READY=1"``, ``"WATCHDOG=1"``, newline-separated
        assignments); True when the datagram went out."""
        try:
            self._sock.sendto(state.encode("utf-8"), self.address)
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
                self._warned = True
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        self._sock.close()


def start_notify(timers: Timers, environ: Mapping[str, str] | None = None) -> Notifier | None:
    """Tell systemd the agent is ready and schedule the watchdog pings on ``timers``
    (already started, inside the running loop). ``None`` when not under systemd."""
    env = os.environ if environ is None else environ
    address = notify_address(env)
    if address is None:
        return None
    notifier = Notifier(address)
    notifier.send(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=running")
    ping_s = watchdog_ping_s(env)
    if ping_s is not None:

        async def ping() -> None:
            notifier.send("WATCHDOG=1")

        # timeout = period: a ping cannot outlive its slot. The first ping goes at once.
        timers.add(WATCHDOG_JOB, ping, ping_s, timeout_s=ping_s)
        log.info("systemd watchdog: pinging every %.1f s", ping_s)
    _schedule_test_block(env)
    return notifier


def stop_notify(notifier: Notifier | None) -> None:
    """Say ``STOPPING=1`` (systemd then stops expecting pings) and close the socket."""
    if notifier is None:
        return
    notifier.send("STOPPING=1")
    notifier.close()


def _schedule_test_block(environ: Mapping[str, str]) -> None:
    """The test-only loop block of :data:`BLOCK_LOOP_ENV` (see the module docstring)."""
    spec = environ.get(BLOCK_LOOP_ENV)
    if not spec:
        return
    try:
        after_s, block_s = (float(part) for part in spec.split(":", 1))
    except ValueError:
        log.warning("%s=%r is not AFTER:SECONDS; ignored", BLOCK_LOOP_ENV, spec)
        return
    log.warning(
        "%s: blocking the event loop for %.1f s in %.1f s", BLOCK_LOOP_ENV, block_s, after_s
    )
    # Deliberately blocking: this stands for a job that never yields.
    asyncio.get_running_loop().call_later(after_s, time.sleep, min(block_s, 600.0))


async def backoff_sleep(
    delay_s: float, reason: str, environ: Mapping[str, str] | None = None
) -> None:
    """Sleep ``delay_s`` seconds before start-up (the crash-loop back-off of
    :mod:`~vigil.agent.crashguard`) without systemd mistaking the wait for a hang: under a
    notify unit, ``STATUS=`` says why, ``EXTEND_TIMEOUT_USEC=`` stretches the start
    timeout past the wait (systemd >= 236), and ``WATCHDOG=1`` keeps going meanwhile."""
    env = os.environ if environ is None else environ
    address = notify_address(env)
    if address is None:
        await asyncio.sleep(delay_s)
        return
    notifier = Notifier(address)
    try:
        extend_usec = int((delay_s + 30.0) * 1_000_000)
        notifier.send(f"STATUS={reason}\nEXTEND_TIMEOUT_USEC={extend_usec}")
        ping_s = watchdog_ping_s(env) or delay_s
        end = time.monotonic() + delay_s
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(ping_s, left))
            notifier.send("WATCHDOG=1")
    finally:
        notifier.close()
