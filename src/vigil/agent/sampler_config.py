"""Config of the sampler sources that watch what a shipped remediation fixes.

``sampler.clock`` (clock offset, for clock-resync), ``sampler.print`` (CUPS queues, for
print-queue-clear) and the per-service fallbacks of ``sampler.services`` (for
service-restart on a machine without systemd). Kept apart from ``config.py`` so that
module stays one reader of the whole file; :func:`vigil.agent.config.load_agent_config`
calls the parsers here. Every error names the file, the key and the value.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vigil.configio import Section

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9_@][A-Za-z0-9_.@:\-]{0,127}$")
# host, host:port, [v6]:port; no scheme, no path, no whitespace.
_SERVER = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]{1,253})(?::\d{1,5})?$")
_CUPS_SERVER = re.compile(
    r"^(?:/[^\s]+|(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]{1,253})(?::\d{1,5})?)$"
)


@dataclass(frozen=True, slots=True)
class PathSpec:
    """A file or folder to watch, sampled under the short ``name`` (not the full path).

    ``interval_s``: walk it at most this often (``None``: every sample); a big folder
    costs CPU in proportion to its entries, and sizes change slowly. ``missing`` says what
    a path that does not exist reads as: ``"unknown"`` (the default: no series, so a check
    on it is ``unknown`` with the reason, never a silent ok) or ``"empty"`` (size 0, count
    0, no age: for a folder created on demand, or one a remediation removes).
    """

    name: str
    path: Path
    interval_s: float | None = None
    missing: Literal["unknown", "empty"] = "unknown"


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """A named-process presence check, sampled as ``process.count[<name>]``.

    A process matches when every given criterion holds: ``exe_name`` equals its name
    (case-insensitive), ``cmdline`` (a regular expression) is found in its command line
    joined by spaces, ``user`` equals its owner.
    """

    name: str
    exe_name: str | None = None
    cmdline: str | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """A user-experience probe, bounded by ``timeout_s``.

    ``kind`` ``dns`` resolves ``target`` (a host name); ``tcp`` connects to ``target``
    (``host:port``); ``http`` GETs ``target`` (a URL). Sampled as
    ``probe.seconds[<name>]`` and ``probe.up[<name>]`` (1/0), plus
    ``probe.http_status[<name>]`` for ``http``. A ``dns`` probe may ask ``server``
    (``host[:port]``, an address) directly instead of the system resolver, and may
    ``expect`` addresses: then ``probe.answer_ok[<name>]`` is 1 when the answer holds at
    least one of them, 0 when it holds none (a "no such name" answer included).
    """

    name: str
    kind: Literal["dns", "tcp", "http"]
    target: str
    timeout_s: float = 5.0
    server: str | None = None
    expect: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClockSpec:
    """How ``clock.offset_s`` is measured, every ``interval_s`` seconds.

    ``server`` (``host`` or ``host:port``, port 123 by default): one SNTP query to it,
    bounded by ``timeout_s`` (name lookup included). ``None``: ask the time service the
    machine already runs (``chronyc tracking``, else ``timedatectl timesync-status``);
    with neither, the series is missing (a check on it reads ``unknown``, never ok).
    """

    server: str | None = None
    timeout_s: float = 2.0
    interval_s: float = 300.0


@dataclass(frozen=True, slots=True)
class PrintSpec:
    """How the CUPS queues are read (``lpstat``), every ``interval_s`` seconds.

    ``server``: the scheduler to ask (exported as ``CUPS_SERVER``: host, host:port or
    an absolute socket path); ``None`` for the system default. Each ``lpstat`` run is
    bounded by ``timeout_s``.
    """

    server: str | None = None
    timeout_s: float = 5.0
    interval_s: float = 60.0


@dataclass(frozen=True, slots=True)
class ServiceFallback:
    """How to tell whether service ``name`` runs when the service manager cannot say
    (no systemd, no such unit): the first given of ``pidfile`` (the pid in it is a live,
    non-zombie process), ``process`` (a process with exactly this name runs) or
    ``sysv`` (``service <name> status`` exits 0: running, 3: stopped)."""

    name: str
    pidfile: Path | None = None
    process: str | None = None
    sysv: bool = False


def clock_spec(sa: Section) -> ClockSpec | None:
    """``sampler.clock`` (absent: no clock source)."""
    if not sa.has("clock"):
        return None
    s = sa.section("clock")
    server = s.get("server", str, None)
    if server is not None and not _SERVER.match(server):
        raise s.error("server", "expected host or host:port", server)
    spec = ClockSpec(
        server=server,
        timeout_s=s.duration("timeout", 2.0, minimum=0.01),
        interval_s=s.duration("interval", 300.0, minimum=1.0),
    )
    if spec.timeout_s > 30.0:
        raise s.error("timeout", "must be at most 30s (it runs inside a sample)", s.data["timeout"])
    s.done()
    return spec


def print_spec(sa: Section) -> PrintSpec | None:
    """``sampler.print`` (absent: no print source)."""
    if not sa.has("print"):
        return None
    s = sa.section("print")
    server = s.get("server", str, None)
    if server is not None and not _CUPS_SERVER.match(server):
        raise s.error("server", "expected host, host:port or an absolute socket path", server)
    spec = PrintSpec(
        server=server,
        timeout_s=s.duration("timeout", 5.0, minimum=0.01),
        interval_s=s.duration("interval", 60.0, minimum=1.0),
    )
    if spec.timeout_s > 30.0:
        raise s.error("timeout", "must be at most 30s (it runs inside a sample)", s.data["timeout"])
    s.done()
    return spec


def services(sa: Section) -> tuple[tuple[str, ...], tuple[ServiceFallback, ...]]:
    """``sampler.services``: names, or ``{name, pidfile | process | sysv}`` mappings.

    Returns the names (in order) and the fallbacks of those that have one.
    """
    raw = sa.get("services", list, [])
    names: list[str] = []
    fallbacks: list[ServiceFallback] = []
    for i, item in enumerate(raw):
        key = f"services[{i}]"
        if isinstance(item, str):
            name = item
        elif isinstance(item, dict):
            fallback = _fallback(Section(item, sa.file, sa.key(key)))
            name = fallback.name
            fallbacks.append(fallback)
        else:
            raise sa.error(key, "expected a service name or a mapping", item)
        if not _SERVICE_NAME.match(name):
            raise sa.error(key, "not a service name", name)
        if name in names:
            raise sa.error(key, "duplicate service name", name)
        names.append(name)
    return tuple(names), tuple(fallbacks)


def _fallback(s: Section) -> ServiceFallback:
    name = s.get("name", str)
    if not _SERVICE_NAME.match(name):
        raise s.error("name", "not a service name", name)
    given = [k for k in ("pidfile", "process", "sysv") if s.has(k)]
    if len(given) != 1:
        raise s.error(
            "pidfile",
            "a service mapping needs exactly one of pidfile, process, sysv",
            given or None,
        )
    pidfile = s.path_value("pidfile", None)
    process = s.get("process", str, None)
    if process is not None and (not process or "/" in process):
        raise s.error("process", "expected a process name (no '/')", process)
    sysv = s.get("sysv", bool, False)
    if s.has("sysv") and not sysv:
        raise s.error("sysv", "give sysv: true, or leave the key out", False)
    s.done()
    return ServiceFallback(name=name, pidfile=pidfile, process=process, sysv=sysv)


def _series_name(s: Section) -> str:
    """The entry's ``name``: the ``[name]`` of its series, so a safe, short label."""
    name = s.get("name", str)
    if not _NAME.match(name):
        raise s.error("name", "must be 1-128 of letters, digits, '_', '.', ':', '-'", name)
    return name


def path_spec(s: Section) -> PathSpec:
    """One ``sampler.paths`` entry."""
    name = _series_name(s)
    spec = PathSpec(
        name=name,
        path=s.path_value("path"),
        interval_s=s.duration("interval", None, minimum=0.1),
        missing=s.get("missing", str, "unknown", choices=("unknown", "empty")),  # type: ignore[arg-type]
    )
    s.done()
    return spec


def process_spec(s: Section) -> ProcessSpec:
    """One ``sampler.processes`` entry (a bad ``cmdline`` pattern names the key)."""
    name = _series_name(s)
    pattern = s.get("cmdline", str, None)
    if pattern is not None:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise s.error("cmdline", f"not a regular expression: {exc}", pattern) from None
    spec = ProcessSpec(
        name=name, exe_name=s.get("exe", str, None), cmdline=pattern, user=s.get("user", str, None)
    )
    if spec.exe_name is None and spec.cmdline is None and spec.user is None:
        raise s.error("exe", "a process needs at least one of exe, cmdline, user")
    s.done()
    return spec


_PROBE_KINDS = ("dns", "tcp", "http")


def probe_spec(s: Section) -> ProbeSpec:
    """One entry of ``sampler.probes``: exactly one of ``dns``, ``tcp``, ``http``."""
    name = _series_name(s)
    given = [k for k in _PROBE_KINDS if s.has(k)]
    if len(given) != 1:
        raise s.error("dns", "a probe needs exactly one of dns, tcp, http", given or None)
    kind = given[0]
    target = s.get(kind, str)
    if kind == "tcp" and not re.match(r"^\[?[^\s\]]+\]?:\d{1,5}$", target):
        raise s.error("tcp", "expected host:port", target)
    if kind == "http" and not re.match(r"^https?://[^/\s]+", target):
        raise s.error("http", "must be an http:// or https:// URL", target)
    server, expect = _dns_answer(s, kind)
    spec = ProbeSpec(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        target=target,
        timeout_s=s.duration("timeout", 5.0, minimum=0.01),
        server=server,
        expect=expect,
    )
    s.done()
    return spec


def _dns_answer(s: Section, kind: str) -> tuple[str | None, tuple[str, ...]]:
    """A dns probe's ``server`` (an IP address, optional port) and ``expect`` (addresses)."""
    for key in ("server", "expect"):
        if kind != "dns" and s.has(key):
            raise s.error(key, "only dns probes take server and expect", s.data[key])
    server = s.get("server", str, None)
    if server is not None:
        host, port = split_host_port(server, 53)
        if not _is_address(host) or not 0 < port < 65536:
            raise s.error("server", "expected an IP address with an optional :port", server)
    raw = s.get("expect", (str, list), ())
    expect = (raw,) if isinstance(raw, str) else tuple(raw)
    for i, address in enumerate(expect):
        if not isinstance(address, str) or not _is_address(address):
            raise s.error(
                f"expect[{i}]" if isinstance(raw, list) else "expect",
                "expected an IP address",
                address,
            )
    return server, tuple(str(ipaddress.ip_address(a)) for a in expect)


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``("::1", 53)`` from ``[::1]:53``, ``("10.0.0.1", 5353)`` from ``10.0.0.1:5353``;
    a bare host (an IPv6 address included) gets ``default_port``. ``ValueError``-free:
    a malformed port reads as 0, which callers reject."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not port:
        return host, default_port
    return host, int(port) if port.isdigit() and len(port) <= 5 else 0


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
