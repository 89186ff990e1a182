"""Clock source: how far this machine's wall clock is from a time server.

``clock.offset_s`` is the *absolute* offset in seconds (a check compares it with ``>``;
the sign is in ``clock.offset_signed_s``: positive when the local clock is behind). It
comes from one SNTP query (RFC 4330) to ``sampler.clock.server`` when one is configured,
else from the time service the machine already runs: ``chronyc -c tracking``, then
``timedatectl timesync-status``. Without any of them the series is missing with a reason,
so a check on it reads ``unknown``, never ok.

Every read is bounded by ``sampler.clock.timeout`` (the SNTP name lookup and exchange run
on a :class:`BoundedCaller` worker; the programs run with a subprocess timeout) and runs at
most once per ``sampler.clock.interval`` through the sampler's :class:`SlowReads`.
The parsing is pure (:func:`sntp_offset`, :func:`parse_chrony`, :func:`parse_timedatectl`).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable

from vigil.agent.sampler_config import ClockSpec, split_host_port
from vigil.agent.sampling.bounded import BoundedCaller
from vigil.agent.sampling.series import Item
from vigil.agent.sampling.slow import SlowReads

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
SNTP_PORT = 123
MAX_OUTPUT = 64 * 1024


class ClockError(Exception):
    """No offset could be measured; the message says why (it becomes the reason)."""


def to_ntp(seconds: float) -> bytes:
    """Epoch ``seconds`` as a 64-bit NTP timestamp (era 0)."""
    ntp = seconds + NTP_EPOCH_OFFSET
    whole = int(ntp)
    return struct.pack("!II", whole & 0xFFFFFFFF, int((ntp - whole) * 2**32) & 0xFFFFFFFF)


def from_ntp(raw: bytes) -> float:
    """An 8-byte NTP timestamp as epoch seconds (era 0, good until 2036)."""
    whole, fraction = struct.unpack("!II", raw)
    return whole - NTP_EPOCH_OFFSET + fraction / 2**32


def sntp_request(sent: float) -> bytes:
    """A client request (LI 0, version 4, mode 3) carrying ``sent`` as transmit time,
    which the server echoes as the originate time (how a reply is matched)."""
    return bytes([0x23]) + bytes(39) + to_ntp(sent)


def sntp_offset(request: bytes, reply: bytes, received: float) -> float:
    """The clock offset (server minus local, seconds) from an SNTP exchange.

    ``request`` is what was sent (its transmit stamp is T1), ``reply`` what came back,
    ``received`` the local epoch time it arrived (T4). Offset = ((T2 - T1) + (T3 - T4)) / 2.
    Raises :class:`ClockError` for a short reply, a reply that is not from a server,
    that does not echo our request, a kiss-o'-death (stratum 0) or an unsynchronised
    server (leap indicator 3).
    """
    if len(reply) < 48:
        raise ClockError(f"short SNTP reply ({len(reply)} bytes)")
    leap, mode, stratum = reply[0] >> 6, reply[0] & 0x7, reply[1]
    if mode not in (4, 5):
        raise ClockError(f"SNTP reply has mode {mode}, not a server's")
    if reply[24:32] != request[40:48]:
        raise ClockError("SNTP reply does not answer our request")
    if stratum == 0:
        code = reply[12:16].decode("ascii", "replace")
        raise ClockError(f"SNTP server refused (kiss code {code})")
    if leap == 3:
        raise ClockError("SNTP server is not synchronised")
    t1 = from_ntp(request[40:48])
    t2, t3 = from_ntp(reply[32:40]), from_ntp(reply[40:48])
    return ((t2 - t1) + (t3 - received)) / 2


def parse_chrony(text: str) -> float:
    """Offset (server minus local) from ``chronyc -c tracking``: its fifth field is the
    "System time" correction, positive when the clock is slow of NTP time (behind)."""
    fields = text.strip().split(",")
    try:
        return float(fields[4])
    except (IndexError, ValueError):
        raise ClockError(f"unexpected chronyc output: {text.strip()[:80]!r}") from None


_TIMEDATECTL = re.compile(r"^\s*Offset:\s*([+-]?[\d.]+)(us|ms|s|min)\s*$", re.MULTILINE)
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}


def parse_timedatectl(text: str) -> float:
    """Offset from ``timedatectl timesync-status`` (``Offset: +1.234ms``): the last
    sample's offset of the server from the local clock."""
    match = _TIMEDATECTL.search(text)
    if match is None:
        raise ClockError("timedatectl reports no offset (not synchronised yet?)")
    return float(match.group(1)) * _UNITS[match.group(2)]


class ClockOffset:
    """The ``clock`` source; ``wall_clock`` (epoch seconds) and ``run`` (a
    ``subprocess.run`` look-alike) are seams for tests."""

    def __init__(
        self,
        spec: ClockSpec | None,
        *,
        slow: SlowReads,
        reasons: dict[str, str],
        wall_clock: Callable[[], float] = time.time,
        caller: BoundedCaller | None = None,
        which: Callable[[str], str | None] = shutil.which,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> None:
        self._spec = spec
        self._slow = slow
        self._reasons = reasons
        self._wall_clock = wall_clock
        self._caller = caller or BoundedCaller(max_workers=1, name="vigil-sntp")
        self._which = which
        self._run = run

    def read(self) -> list[Item]:
        """``clock.offset_s`` and ``clock.offset_signed_s``, at most once per interval."""
        if self._spec is None:
            return []
        return self._slow.every("clock", self._read, self._spec.interval_s)

    def due(self, now: float) -> bool:
        """Whether the next :meth:`read` would measure (and may block up to the timeout)."""
        return self._spec is not None and self._slow.due("clock", now, self._spec.interval_s)

    def _read(self) -> list[Item]:
        assert self._spec is not None
        try:
            offset = self.measure()
        except (ClockError, OSError) as exc:
            self._reasons["clock"] = str(exc) or type(exc).__name__
            return []
        self._reasons.pop("clock", None)
        return [("clock.offset_s", abs(offset)), ("clock.offset_signed_s", offset)]

    def measure(self) -> float:
        """The offset in seconds (server minus local); :class:`ClockError` when unknown."""
        assert self._spec is not None
        if self._spec.server is not None:
            server, timeout = self._spec.server, self._spec.timeout_s
            try:
                return self._caller.call("sntp", lambda: self._sntp(server, timeout), timeout)
            except ClockError:
                raise
            except Exception as exc:  # BoundedCallError, socket errors, a hung lookup
                raise ClockError(f"SNTP query to {server} failed: {exc}") from None
        chronyc = self._which("chronyc")
        if chronyc is not None:
            return parse_chrony(self._output([chronyc, "-c", "tracking"]))
        timedatectl = self._which("timedatectl")
        if timedatectl is not None:
            return parse_timedatectl(self._output([timedatectl, "timesync-status"]))
        raise ClockError("no time source: set sampler.clock.server, or run chrony or timesyncd")

    def _sntp(self, server: str, timeout_s: float) -> float:
        host, port = split_host_port(server, SNTP_PORT)
        deadline = time.monotonic() + timeout_s
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise ClockError(f"no addresses for {host}")
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            request = sntp_request(self._wall_clock())
            sock.sendto(request, address)
            while True:  # skip stray datagrams until ours arrives or the timeout fires
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                reply, sender = sock.recvfrom(512)
                received = self._wall_clock()
                if sender[:2] == address[:2] and reply[24:32] == request[40:48]:
                    return sntp_offset(request, reply, received)
                if time.monotonic() >= deadline:
                    raise ClockError(f"no SNTP answer from {server}")

    def _output(self, argv: list[str]) -> str:
        assert self._spec is not None
        try:
            done = self._run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self._spec.timeout_s,
                check=False,
                env={**os.environ, "LC_ALL": "C"},
            )
        except subprocess.TimeoutExpired:
            raise ClockError(f"{argv[0]} timed out after {self._spec.timeout_s:g}s") from None
        if done.returncode != 0:
            why = " ".join((done.stderr or done.stdout or "").split())[:200]
            raise ClockError(f"{os.path.basename(argv[0])} exited {done.returncode}: {why}")
        return done.stdout[:MAX_OUTPUT]
