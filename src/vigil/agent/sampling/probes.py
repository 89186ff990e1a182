"""User-experience probes: how long DNS, a TCP connect and an HTTP GET take, bounded.

These are the "is the VPN / proxy / intranet slow?" signals a user feels first. Each
probe returns a :class:`ProbeResult` and never raises: a failure is ``up=False`` with an
``error`` saying why (a failed probe *is* the finding, unlike a sensor we cannot read).

Time bounds: TCP and HTTP use socket timeouts (``http.client`` applies the timeout to
the connect and to every read, and the body read is capped at :data:`MAX_BODY_BYTES`, so
a slow-drip server costs at most a few timeouts). ``getaddrinfo`` has no timeout at all,
so DNS (and the name lookup inside TCP/HTTP) runs on a :class:`BoundedCaller` worker: a
resolver that hangs costs one stuck thread per probe, never a blocked agent.

Runs in the sampler's worker thread (blocking calls), not on the event loop.
:class:`Probes` is the sampler source: ``probe.seconds[<name>]``, ``probe.up[<name>]``
(1/0) and ``probe.http_status[<name>]`` per configured probe, and
``probe.answer_ok[<name>]`` (1/0) for a ``dns`` probe that states ``expect``: 1 when the
answer holds at least one expected address, 0 when it holds none or the name does not
exist; missing (unknown) when no answer came at all. A ``dns`` probe with a ``server``
asks that server directly (:mod:`~vigil.agent.sampling.dns_query`, UDP, bounded by the
socket timeout) instead of the system resolver.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vigil.agent.config import ProbeSpec
from vigil.agent.sampler_config import split_host_port
from vigil.agent.sampling import dns_query
from vigil.agent.sampling.bounded import BoundedCaller, BoundedCallError
from vigil.agent.sampling.series import Item, log

MAX_BODY_BYTES = 64 * 1024
"""An HTTP probe reads at most this much of the body (the time to first bytes is what counts)."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """``seconds``: wall time of the probe (also on failure, up to the failure).
    ``up``: it succeeded (HTTP: a status below 500 was received). ``status``: the HTTP
    status, if any. ``error``: why it failed. ``answer_ok``: for a dns probe with
    ``expect``, whether the answer held an expected address (``None``: no answer)."""

    seconds: float
    up: bool
    status: int | None = None
    error: str | None = None
    answer_ok: bool | None = None


class Prober:
    """Runs probes; ``clock`` is monotonic seconds, ``caller`` bounds name lookups."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        caller: BoundedCaller | None = None,
    ) -> None:
        self._clock = clock
        self._caller = caller or BoundedCaller(name="vigil-dns")

    def run(self, spec: ProbeSpec) -> ProbeResult:
        """Run one probe; never raises."""
        started = self._clock()
        if spec.kind == "dns":
            return self._dns(spec, started)
        try:
            status = self._dispatch(spec)
        except (OSError, BoundedCallError, http.client.HTTPException, ValueError) as exc:
            return ProbeResult(self._clock() - started, False, None, _describe(exc))
        elapsed = self._clock() - started
        up = status is None or status < 500
        error = None if up else f"HTTP {status}"
        return ProbeResult(elapsed, up, status, error)

    def _dns(self, spec: ProbeSpec, started: float) -> ProbeResult:
        """A name lookup, through ``spec.server`` or the system resolver; an answer that
        the name does not exist is still an answer (``answer_ok`` 0 when ``expect``)."""
        expect = set(spec.expect)
        try:
            if spec.server is not None:
                host, port = split_host_port(spec.server, 53)
                kinds = {dns_query.TYPE_AAAA if ":" in a else dns_query.TYPE_A for a in expect}
                types = tuple(sorted(kinds)) or (dns_query.TYPE_A,)
                addresses = dns_query.query(host, port, spec.target, types, spec.timeout_s)
            else:
                infos = self._caller.call(
                    spec.name,
                    lambda: socket.getaddrinfo(spec.target, None, type=socket.SOCK_STREAM),
                    spec.timeout_s,
                )
                addresses = [str(info[4][0]) for info in infos]
        except (dns_query.NoSuchName, socket.gaierror) as exc:
            answered = isinstance(exc, dns_query.NoSuchName) or exc.errno in _NO_SUCH_NAME
            answer_ok = False if expect and answered else None
            return ProbeResult(self._clock() - started, False, None, _describe(exc), answer_ok)
        except (OSError, BoundedCallError, ValueError) as exc:
            return ProbeResult(self._clock() - started, False, None, _describe(exc))
        elapsed = self._clock() - started
        answer_ok = bool(expect & set(addresses)) if expect else None
        if not addresses:
            return ProbeResult(elapsed, False, None, "no addresses", answer_ok)
        error = None if answer_ok is not False else f"unexpected answer {sorted(addresses)}"
        return ProbeResult(elapsed, True, None, error, answer_ok)

    def _dispatch(self, spec: ProbeSpec) -> int | None:
        if spec.kind == "tcp":
            host, _, port = spec.target.rpartition(":")
            host = host.strip("[]")
            self._connect(spec, host, int(port)).close()
            return None
        return self._http(spec)

    def _resolve(self, spec: ProbeSpec, host: str, port: int | None) -> list[tuple]:  # type: ignore[type-arg]
        infos = self._caller.call(
            spec.name,
            lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM),
            spec.timeout_s,
        )
        if not infos:
            raise OSError(f"no addresses for {host}")
        return infos

    def _connect(self, spec: ProbeSpec, host: str, port: int) -> socket.socket:
        """Connect to the first address that answers, within what is left of the timeout."""
        deadline = self._clock() + spec.timeout_s
        last: OSError | None = None
        for family, kind, proto, _, address in self._resolve(spec, host, port):
            left = deadline - self._clock()
            if left <= 0:
                break
            sock = socket.socket(family, kind, proto)
            sock.settimeout(left)
            try:
                sock.connect(address)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            return sock
        raise last or TimeoutError(f"timed out after {spec.timeout_s:g}s")

    def _http(self, spec: ProbeSpec) -> int:
        url = urllib.parse.urlsplit(spec.target)
        https = url.scheme == "https"
        host = url.hostname or ""
        port = url.port or (443 if https else 80)
        sock = self._connect(spec, host, port)
        try:
            if https:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            conn = http.client.HTTPConnection(host, port, timeout=spec.timeout_s)
            conn.sock = sock  # the connect already happened, bounded, above
            path = url.path or "/"
            if url.query:
                path += "?" + url.query
            conn.request("GET", path, headers={"User-Agent": "vigil-agent probe"})
            response = conn.getresponse()
            response.read(MAX_BODY_BYTES)
            return response.status
        finally:
            sock.close()


class Probes:
    """The probe source: runs every configured probe once per read (see the module
    docstring for the series); ``prober`` is replaceable in tests."""

    def __init__(self, specs: Iterable[ProbeSpec], prober: Prober) -> None:
        self._specs = tuple(specs)
        self._prober = prober

    def read(self) -> list[Item]:
        """One run of every probe; a failed probe is ``probe.up`` 0, never an error."""
        items: list[Item] = []
        for spec in self._specs:
            result = self._prober.run(spec)
            items += [
                (f"probe.seconds[{spec.name}]", result.seconds),
                (f"probe.up[{spec.name}]", 1.0 if result.up else 0.0),
            ]
            if result.status is not None:
                items.append((f"probe.http_status[{spec.name}]", result.status))
            if result.answer_ok is not None:
                items.append((f"probe.answer_ok[{spec.name}]", 1.0 if result.answer_ok else 0.0))
            if result.error:
                log.debug("probe %s: %s", spec.name, result.error)
        return items


# getaddrinfo's "the name does not exist" (an answer) as opposed to "could not ask".
_NO_SUCH_NAME = frozenset(
    code for code in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)) if code is not None
)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"name lookup failed: {exc.strerror}"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"timed out: {exc}" if str(exc) else "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text
