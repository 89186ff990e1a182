"""Collector configuration: one loader from YAML to frozen dataclasses.

See ``config/collector.yaml`` for an annotated example. Relative paths resolve against
the config file's folder.
"""

from __future__ import annotations

import ipaddress
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from vigil.collector.desk.catalog import EMPTY_CATALOG, Catalog, load_catalog
from vigil.collector.desk.engine import IncidentRules
from vigil.collector.desk.satisfaction import DISABLED, SatisfactionPolicy
from vigil.collector.eventloop import EVENT_LOOPS
from vigil.collector.notify.config import NotifyConfig, parse_notifications
from vigil.collector.policy.config import PolicyConfig, parse_policy
from vigil.collector.storage.url import (
    SCHEMES,
    is_postgres_url,
    redact,
    sqlite_path,
    sqlite_url,
)
from vigil.collector.tls import TlsConfig, create_server_context
from vigil.configio import (
    MIN_SECRET_LENGTH,
    PLACEHOLDER_PREFIX,  # noqa: F401 - re-exported for callers that quote it
    SECRET_ADVICE,
    Section,
    load_yaml,
    secret_problem,
)
from vigil.quiet_hours import parse_quiet_hours

DEFAULT_HOST = "127.0.0.1"
# Who serves POST /api/v1/reports (``listen.ingest_front``; collector/front.py).
INGEST_FRONTS = ("aiohttp", "lean")
# lean by default since 2026-12-06 21:15 UTC: with uvloop it took 28-33 % less CPU per
# durable report at 128 connections and 8-31 % at 32 than aiohttp on asyncio, in two
# alternated pairs on a quiet machine at 100k pre-filled hosts (docs/benchmarks.md,
# delivery); every ingest and hardening test runs on it.
DEFAULT_INGEST_FRONT = "lean"
# auto: uvloop where it imports (Linux, macOS), asyncio's loop otherwise (Windows).
DEFAULT_EVENT_LOOP = "auto"
DEFAULT_PORT = 9750
DEFAULT_MAX_BODY = 1 * 2**20
DEFAULT_MAX_DECOMPRESSED = 16 * 2**20
DEFAULT_MAX_HOST_SERIES = 1000
# Open client connections at most (``listen.max_connections``), and seconds an idle
# connection, or one that has not finished sending its request headers, is kept
# (``listen.idle_timeout``): above the agent's own 15 s keep-alive, so an agent's reused
# connection is normally closed by the agent first.
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_IDLE_TIMEOUT_S = 30.0
DEFAULT_CREDENTIAL_TTL_S = 90 * 86400.0
DEFAULT_ENROLL_RATE_PER_MINUTE = 10


# Tokens are bearer secrets, held to the shared config reader's rule for every secret
# (see Section.secret); the names (and PLACEHOLDER_PREFIX) stay for callers that quote them.
MIN_TOKEN_LENGTH = MIN_SECRET_LENGTH
TOKEN_ADVICE = SECRET_ADVICE


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Bearer tokens. Agents ingest with ``agent_tokens``; the API takes ``admin_tokens``.

    ``admin_tokens`` act as admin operators named ``config:admin_tokens.N`` (the shared
    tokens of older configs; prefer named operators, ``vigil-collector operator add``).
    ``open_read`` leaves the read-only API (GET) and ``/metrics`` open without a token:
    refused unless the collector listens on a loopback address (the demo). Ingest always
    needs an agent token; every write needs an operator token.
    """

    agent_tokens: tuple[str, ...]
    admin_tokens: tuple[str, ...] = ()
    open_read: bool = False


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Request bounds: compressed body size and decompressed size, in bytes."""

    max_body_bytes: int = DEFAULT_MAX_BODY
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``/metrics`` options. Per-host series (``vigil_host_*``) are off by default: one
    series per laptop is what makes Prometheus slow; when on, at most ``max_host_series``
    hosts get their own series and the rest share one ``host="_overflow"`` series."""

    per_host_series: bool = False
    max_host_series: int = DEFAULT_MAX_HOST_SERIES
    # Seconds between rebuilds of the leader's fleet figures from a shared (PostgreSQL)
    # database, so they include what other collector processes applied
    # (``metrics.fleet_refresh``; collector/telemetry/scope.py). At most once per tick.
    fleet_refresh_s: float = 60.0


@dataclass(frozen=True, slots=True)
class IngestConfig:
    """The ingest queue (see ``collector/ingest.py``): reports waiting for a commit before
    new ones get ``429``, reports per group commit, and the base of ``Retry-After``."""

    max_pending: int = 2000
    max_group: int = 256
    retry_after_s: float = 2.0


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    """Everything one collector process needs, validated."""

    file: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    # Bind the port with SO_REUSEPORT (``listen.reuse_port``), so several collector
    # processes on this machine share it and the kernel spreads connections over them.
    reuse_port: bool = False
    # ``listen.event_loop``: auto (the default: uvloop when installed), asyncio or
    # uvloop; see collector/eventloop.py.
    event_loop: str = DEFAULT_EVENT_LOOP
    # ``listen.ingest_front``: "lean" serves POST /api/v1/reports with collector/front.py
    # (httptools) and hands every other request to aiohttp; "aiohttp" serves all of them
    # through aiohttp.
    ingest_front: str = DEFAULT_INGEST_FRONT
    # Native TLS (``listen.tls``); None serves plain HTTP (behind a TLS proxy, or a demo).
    tls: TlsConfig | None = None
    # Where the collector keeps its state (``storage.url``); a relative SQLite path was
    # already resolved against the config file.
    storage_url: str = sqlite_url("var/collector.db")
    # Seconds batch and event ids are kept for deduplication (``storage.dedup_retention``).
    dedup_retention_s: float = 14 * 86400.0
    # Also record the event ids of sequenced reports in ``seen`` (an audit trail; never
    # used to decide, costs ~190 B per id until dedup_retention; ``storage.record_event_ids``).
    record_event_ids: bool = False
    auth: AuthConfig = field(default_factory=lambda: AuthConfig(agent_tokens=()))
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # Seconds a host may stay silent past its heartbeat TTL before it counts as silent.
    heartbeat_grace_s: float = 30.0
    # Seconds to wait for a promised remediation result before raising an incident anyway.
    remediation_wait_s: float = 600.0
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    public_url: str | None = None
    # Service catalog (``catalog:``, a path); EMPTY_CATALOG ranks every incident P3.
    catalog: Catalog = EMPTY_CATALOG
    # Flapping, recurrence and correlation knobs (``incidents:``); see IncidentRules.
    rules: IncidentRules = field(default_factory=IncidentRules)
    notifications: NotifyConfig = field(default_factory=NotifyConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    # One INFO line per HTTP request (``logging.access_log``): off by default, since
    # every agent POST would be one.
    access_log: bool = False
    # Seconds an issued per-agent credential is valid (``enrollment.credential_ttl``);
    # agents rotate theirs automatically in the last quarter of that.
    credential_ttl_s: float = DEFAULT_CREDENTIAL_TTL_S
    # ``POST /api/v1/enroll`` tries per client address per minute, also the burst
    # (``enrollment.rate_limit``); beyond it 429 with Retry-After.
    enroll_rate_per_minute: int = DEFAULT_ENROLL_RATE_PER_MINUTE
    # Satisfaction surveys after incidents (``satisfaction:``; docs/satisfaction.md).
    satisfaction: SatisfactionPolicy = DISABLED
    # Central policy (``policy:``): trusted keys, rollout defaults, the guard.
    policy: PolicyConfig = field(default_factory=PolicyConfig)


def load_collector_config(path: str | Path) -> CollectorConfig:
    """Load and validate a collector config file; raises ``ConfigError``."""
    root = Section(load_yaml(path), str(path))

    listen = root.section("listen")
    host = listen.get("host", str, DEFAULT_HOST)
    port = listen.get("port", int, DEFAULT_PORT, minimum=0, maximum=65535)
    max_connections = listen.get(
        "max_connections", int, DEFAULT_MAX_CONNECTIONS, minimum=1, maximum=1_000_000
    )
    idle_timeout_s = listen.duration("idle_timeout", DEFAULT_IDLE_TIMEOUT_S, minimum=1.0)
    event_loop = listen.get("event_loop", str, DEFAULT_EVENT_LOOP, choices=EVENT_LOOPS)
    ingest_front = listen.get("ingest_front", str, DEFAULT_INGEST_FRONT, choices=INGEST_FRONTS)
    tls = _tls(listen.section("tls")) if listen.has("tls") else None
    reuse_port = listen.get("reuse_port", bool, False)
    if reuse_port and not sys.platform.startswith("linux"):
        # Elsewhere SO_REUSEPORT either does not exist (Windows) or does not balance
        # connections over the processes (macOS, the BSDs without SO_REUSEPORT_LB).
        raise listen.error(
            "reuse_port", f"needs Linux (SO_REUSEPORT), not {sys.platform}", reuse_port
        )
    listen.done()

    storage = root.section("storage")
    storage_url = _storage_url(storage)
    if reuse_port and not is_postgres_url(storage_url):
        # Several processes on one SQLite file would each keep their own in-memory view
        # and fight over the write lock; the multi-process design needs PostgreSQL.
        raise listen.error(
            "reuse_port",
            "several collector processes need a PostgreSQL storage.url; SQLite ("
            f"{redact(storage_url)}) serves one process: set storage.url to postgresql://..."
            " or reuse_port to false",
            reuse_port,
        )
    # Longer than an agent may stay offline with a full outbox (7 days by default), or a
    # very late retry would be applied twice.
    dedup_retention_s = storage.duration("dedup_retention", 14 * 86400.0, minimum=3600.0)
    record_event_ids = storage.get("record_event_ids", bool, False)
    storage.done()

    a = root.section("auth", required=True)
    # Optional since enrollment (docs/security.md): shared tokens serve agents not
    # enrolled yet, so a fleet can migrate without losing a queued report.
    agent_tokens = a.str_list("agent_tokens", ())
    admin_tokens = a.str_list("admin_tokens", ())
    for name, tokens in (("agent_tokens", agent_tokens), ("admin_tokens", admin_tokens)):
        for i, t in enumerate(tokens):
            _check_token(a, f"{name}[{i}]", t)
    auth = AuthConfig(
        agent_tokens=agent_tokens,
        admin_tokens=admin_tokens,
        open_read=a.get("open_read", bool, False),
    )
    if auth.open_read and not is_loopback(host):
        raise a.error(
            "open_read",
            f"is allowed only when listen.host is a loopback address, not {host!r}",
            True,
        )
    a.done()

    lim = root.section("limits")
    limits = LimitsConfig(
        max_body_bytes=lim.size("max_body_bytes", DEFAULT_MAX_BODY),
        max_decompressed_bytes=lim.size("max_decompressed_bytes", DEFAULT_MAX_DECOMPRESSED),
    )
    lim.done()

    inc = root.section("incidents")
    heartbeat_grace_s = inc.duration("heartbeat_grace", 30.0)
    remediation_wait_s = inc.duration("remediation_wait", 600.0)
    flap = inc.section("flapping")
    rec = inc.section("recurrence")
    fleet = inc.section("correlation")
    rules = IncidentRules(
        remediation_wait_s=remediation_wait_s,
        heartbeat_grace_s=heartbeat_grace_s,
        flap_window_s=flap.duration("window", 3600.0),
        flap_changes=flap.get("changes", int, 6, minimum=0),
        recurrence_window_s=rec.duration("window", 7 * 86400.0),
        recurrence_count=rec.get("count", int, 3, minimum=0),
        fleet_window_s=fleet.duration("window", 300.0),
        fleet_min_hosts=fleet.get("min_hosts", int, 3, minimum=0),
        fleet_min_share=fleet.get("min_share", float, 0.5, minimum=0.0, maximum=1.0),
    )
    for sub in (flap, rec, fleet):
        sub.done()
    inc.done()
    catalog_path = root.path_value("catalog", None)
    catalog = EMPTY_CATALOG if catalog_path is None else load_catalog(catalog_path)
    notifications = parse_notifications(root.section("notifications"))

    met = root.section("metrics")
    metrics = MetricsConfig(
        per_host_series=met.get("per_host_series", bool, False),
        max_host_series=met.get(
            "max_host_series", int, DEFAULT_MAX_HOST_SERIES, minimum=1, maximum=100_000
        ),
        fleet_refresh_s=met.duration("fleet_refresh", 60.0, minimum=1.0),
    )
    met.done()

    ing = root.section("ingest")
    ingest = IngestConfig(
        max_pending=ing.get("max_pending", int, 2000, minimum=1, maximum=1_000_000),
        max_group=ing.get("max_group", int, 256, minimum=1, maximum=10_000),
        retry_after_s=ing.duration("retry_after", 2.0, minimum=1.0),
    )
    ing.done()

    logs = root.section("logging")
    access_log = logs.get("access_log", bool, False)
    logs.done()

    enr = root.section("enrollment")
    credential_ttl_s = enr.duration("credential_ttl", DEFAULT_CREDENTIAL_TTL_S, minimum=1.0)
    enroll_rate = enr.get(
        "rate_limit", int, DEFAULT_ENROLL_RATE_PER_MINUTE, minimum=1, maximum=100_000
    )
    enr.done()

    policy = parse_policy(root.section("policy"))
    public_url = root.get("public_url", str, None)
    satisfaction = _satisfaction(root.section("satisfaction"), public_url)
    root.done()
    return CollectorConfig(
        file=str(path),
        host=host,
        port=port,
        max_connections=max_connections,
        idle_timeout_s=idle_timeout_s,
        reuse_port=reuse_port,
        event_loop=event_loop,
        ingest_front=ingest_front,
        tls=tls,
        storage_url=storage_url,
        dedup_retention_s=dedup_retention_s,
        record_event_ids=record_event_ids,
        auth=auth,
        limits=limits,
        heartbeat_grace_s=heartbeat_grace_s,
        remediation_wait_s=remediation_wait_s,
        metrics=metrics,
        public_url=public_url,
        catalog=catalog,
        rules=rules,
        notifications=notifications,
        ingest=ingest,
        access_log=access_log,
        credential_ttl_s=credential_ttl_s,
        enroll_rate_per_minute=enroll_rate,
        satisfaction=satisfaction,
        policy=policy,
    )


def _satisfaction(section: Section, public_url: str | None) -> SatisfactionPolicy:
    """``satisfaction:``; ``public_url`` defaults to the top-level one. Links must reach
    people's browsers, so the URL must be ``http(s)://host...``."""
    d = DISABLED
    quiet_raw = section.get("quiet_hours", str, None)
    try:
        quiet = parse_quiet_hours(quiet_raw)
    except ValueError as exc:
        raise section.error("quiet_hours", str(exc), quiet_raw) from None
    url = section.get("public_url", str, public_url)
    if url is not None:
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise section.error("public_url", "must be an http:// or https:// URL", url)
    policy = SatisfactionPolicy(
        enabled=section.get("enabled", bool, d.enabled),
        rate_limit_s=section.duration("rate_limit", d.rate_limit_s),
        link_lifetime_s=section.duration("link_lifetime", d.link_lifetime_s, minimum=60.0),
        quiet_hours=quiet,
        public_url=url,
        secret=section.secret("secret", None),
        department_label=section.get("department_label", str, d.department_label),
        retention_s=section.duration("retention", d.retention_s, minimum=86400.0),
    )
    if policy.retention_s < max(policy.rate_limit_s, policy.link_lifetime_s):
        # Deleting surveys sooner would forget who was asked (the rate limit) or break
        # links still out.
        raise section.error(
            "retention", "must be at least rate_limit and link_lifetime", section.data["retention"]
        )
    section.done()
    return policy


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) only accepts connections from this machine:
    ``localhost`` or a loopback IP (``127.0.0.0/8``, ``::1``). ``0.0.0.0`` and ``""`` are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_token(section: Section, key: str, token: str) -> None:
    """Refuse a token anyone could guess (see :meth:`~vigil.configio.Section.secret`);
    the token itself is never echoed, and the error says how to make a good one."""
    problem = secret_problem(token)
    if problem:
        raise section.error(key, f"{problem}; generate a token with: {TOKEN_ADVICE}")


def _tls(section: Section) -> TlsConfig:
    """``listen.tls``: the files must exist and load (a certificate whose key does not
    match is refused here, not at the first handshake)."""
    client_ca = section.path_value("client_ca_file", None)
    tls = TlsConfig(
        cert_file=section.path_value("cert_file"),
        key_file=section.path_value("key_file"),
        client_ca_file=client_ca,
    )
    section.done()
    for name in ("cert_file", "key_file", "client_ca_file"):
        path = getattr(tls, name)
        if path is not None and not path.is_file():
            raise section.error(name, "no such file", str(path))
    try:
        create_server_context(tls)
    except (OSError, ssl.SSLError) as exc:
        raise section.error(
            "cert_file", f"cannot load certificate, key or CA: {exc}", str(tls.cert_file)
        ) from None
    return tls


def _storage_url(storage: Section) -> str:
    """``storage.url`` (``sqlite:///path`` or ``postgresql://...``), or the older
    ``storage.sqlite_path`` as its equivalent (not both); a relative SQLite path
    resolves against the config file. A PostgreSQL URL is kept as written: libpq checks
    it when the collector connects."""
    if storage.has("url") and storage.has("sqlite_path"):
        raise storage.error(
            "url", "set either url or sqlite_path, not both", storage.get("url", str)
        )
    if not storage.has("url"):
        db = storage.path_value("sqlite_path", "var/collector.db")
        _check_sqlite_file(storage, "sqlite_path", db)
        return sqlite_url(db)
    url = storage.get("url", str)
    if is_postgres_url(url):
        try:
            urlsplit(url).port  # noqa: B018 - parsing it raises for a port that is not one
        except ValueError as exc:
            raise storage.error("url", f"not a PostgreSQL URL: {exc}", redact(url)) from None
        return url
    path = sqlite_path(url)
    if path is None:
        scheme = url.partition(":")[0]
        if "://" not in url:
            why = "expected a URL such as sqlite:///var/lib/vigil/collector.db"
        elif scheme == "sqlite":
            why = "an sqlite URL needs a file path after sqlite:///"
        else:
            why = f"storage scheme {scheme!r} is not supported by this collector"
        raise storage.error("url", f"{why} (supported: {', '.join(SCHEMES)})", url)
    db = (storage.base_dir / Path(path).expanduser()).resolve()
    _check_sqlite_file(storage, "url", db)
    return sqlite_url(db)


def _check_sqlite_file(storage: Section, key: str, db: Path) -> None:
    """Refuse a database path that can never be opened: a folder, or one under a regular
    file (the collector creates missing folders, but not through a file)."""
    if db.is_dir():
        raise storage.error(key, "is a folder, not a database file", str(db))
    for parent in db.parents:
        if parent.exists():
            if not parent.is_dir():
                raise storage.error(key, f"{parent} is a file, not a folder", str(db))
            return
