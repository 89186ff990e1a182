"""Agent configuration: one loader from YAML to frozen dataclasses.

See ``config/agent.yaml`` for an annotated example and ``docs/configuration.md`` for
every key. Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from vigil.agent.crashguard import CrashBackoffConfig, crash_backoff_config
from vigil.agent.delivery.tls import tls_problem
from vigil.agent.policy.settings import PolicySettings, policy_settings
from vigil.agent.remediation.schedule import TimedSchedule, parse_schedules
from vigil.agent.sampler_config import (
    ClockSpec,
    PathSpec,
    PrintSpec,
    ProbeSpec,
    ProcessSpec,
    ServiceFallback,
    clock_spec,
    path_spec,
    print_spec,
    probe_spec,
    process_spec,
    services,
)
from vigil.agent.selfhealth import SelfHealthConfig, self_health_config
from vigil.agent.surveys import SurveySettings
from vigil.agent.update.settings import UpdateSettings, update_settings
from vigil.configio import ConfigError, Section, load_yaml
from vigil.quiet_hours import parse_quiet_hours

Operator = Literal[">", ">=", "<", "<="]
OPERATORS: tuple[str, ...] = (">", ">=", "<", "<=")
_CHECK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class CollectorTarget:
    """Where and how the agent reports. ``token`` is the shared bearer token for ingest;
    empty when the agent relies on its enrolled credential (``<state_dir>/credential.json``,
    which takes precedence whenever it exists).

    ``ca_file``: PEM CA(s) trusted for an ``https://`` collector instead of the system's;
    ``client_cert_file`` / ``client_key_file``: a client certificate for mutual TLS.
    """

    url: str
    token: str
    timeout_s: float = 10.0
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Intervals:
    """Job periods in seconds."""

    sample_s: float = 15.0
    report_s: float = 30.0
    heartbeat_s: float = 60.0
    # Metric values are shipped as one summary event this often (check state changes and
    # remediation records are shipped as they happen), which keeps bytes per day small.
    metrics_s: float = 300.0


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    """The durable spool. ``max_bytes`` bounds the stored payload; metric samples go first.

    ``max_age_s``: metric samples and heartbeats older than this are dropped (check state
    changes and remediation records are kept; only the byte bound can drop them).
    ``batch_max_bytes``: uncompressed JSON bytes of events per request (at least one event).
    """

    path: Path
    max_bytes: int = 64 * 2**20
    batch_max_events: int = 500
    max_age_s: float = 7 * 86400.0
    batch_max_bytes: int = 2 * 2**20


@dataclass(frozen=True, slots=True)
class ShippingConfig:
    """How the shipper paces delivery (see ``docs/delivery.md``).

    ``backoff_base_s``/``backoff_cap_s``: the n-th consecutive failure waits
    ``uniform(0, min(cap, base * 2**n))`` seconds. ``drain_batches_per_s``: at most this
    many batches per second while a backlog drains, so a fleet coming back from an outage
    cannot knock the collector over. ``start_jitter_s``: the first delivery after start
    waits ``uniform(0, start_jitter_s)`` so a fleet that boots together does not flush in step.
    """

    backoff_base_s: float = 1.0
    backoff_cap_s: float = 300.0
    drain_batches_per_s: float = 2.0
    start_jitter_s: float = 10.0


@dataclass(frozen=True, slots=True)
class SamplerConfig:
    """What the sampler reads besides the always-on CPU, memory, swap, load and uptime.

    ``disk_mounts``: ``None`` means every local, non-pseudo filesystem; otherwise exactly
    these mount points. ``disk_timeout_s`` bounds each mount's read (a hung network mount
    reads as ``unknown``). ``paths``: files or folders whose size, entry count and age are
    sampled as ``path.size_bytes[<name>]``, ``path.count[<name>]``, ``path.age_seconds[<name>]``.
    ``per_core``: also sample ``cpu.core_busy_percent[<n>]``. ``processes``, ``services``
    (unit or service names) and ``probes`` are described on their specs.
    ``process_scan_s`` is how often the process table is rescanned; ``slow_s`` how often
    the slow-changing sources (sensors, battery) are read. ``watched_names``: process names
    whose ``process.top_cpu_percent[<name>]`` and ``process.top_rss_bytes[<name>]`` are
    sampled whether or not they rank in the top ``top_n``, reading 0 when no such process
    runs; :func:`load_agent_config` fills it with the names the checks read.
    ``clock``, ``printing`` and ``service_fallbacks`` (see ``sampler_config``): the
    ``clock.offset_s``, ``print.*`` sources and how a service is told without systemd.
    """

    disk_mounts: tuple[str, ...] | None = None
    paths: tuple[PathSpec, ...] = ()
    disk_timeout_s: float = 2.0
    per_core: bool = False
    processes: tuple[ProcessSpec, ...] = ()
    services: tuple[str, ...] = ()
    probes: tuple[ProbeSpec, ...] = ()
    process_scan_s: float = 60.0
    top_n: int = 5
    slow_s: float = 60.0
    watched_names: tuple[str, ...] = ()
    clock: ClockSpec | None = None
    printing: PrintSpec | None = None
    service_fallbacks: tuple[ServiceFallback, ...] = ()


@dataclass(frozen=True, slots=True)
class RemediationRef:
    """A check's request to run remediation ``id`` with ``params``.

    Params reach the script as environment variables ``VIGIL_PARAM_<NAME>`` (never
    interpolated into a command line). Values starting ``./`` or ``../`` are paths and
    resolve against the config file's folder.
    """

    id: str
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """A threshold check over one sampled series, or a Nagios-plugin command check.

    Threshold (``command`` empty): the check is ``critical`` while ``value <op> critical``
    holds, else ``warning`` while ``value <op> warning`` holds, else ``ok``; a missing
    value is ``unknown``. Command: the plugin's exit status gives the level (0-3 = ok,
    warning, critical, unknown) and ``metric`` is empty. A worse state must hold for
    ``for_s`` seconds before it is reported. ``recovery`` (optional) is the hysteresis
    level: once warning or critical, the check stays bad while ``value <op> recovery``.
    ``flap_changes`` state changes within ``flap_window_s`` seconds mark it flapping (0:
    off). ``interval_s`` is how often it runs (``None``: every ``intervals.sample``).
    ``remediation`` runs when the check reaches ``critical``.
    """

    id: str
    metric: str
    op: Operator = ">"
    warning: float | None = None
    critical: float | None = None
    for_s: float = 0.0
    description: str = ""
    remediation: RemediationRef | None = None
    recovery: float | None = None
    flap_changes: int = 0
    flap_window_s: float = 600.0
    interval_s: float | None = None
    command: tuple[str, ...] = ()
    timeout_s: float = 10.0

    @property
    def is_command(self) -> bool:
        """True for a Nagios-plugin command check."""
        return bool(self.command)


@dataclass(frozen=True, slots=True)
class RemediationSettings:
    """Where remediations live, how many may run at once, and this host's parameters.

    ``enable`` lists the remediations whose manifest triggers (``trigger.checks``,
    ``trigger.detection``) this agent honours: shipping a manifest activates nothing by
    itself. A check that names a remediation needs no entry here. ``params`` maps a
    remediation id to parameter values for runs that no check's ``remediation.params``
    covers; a check's own params win over these. Values starting ``./`` or ``../`` are
    paths. ``schedule`` maps a remediation id to the seconds between its detection runs,
    replacing the manifest's ``trigger.every``; ``splay`` maps one of those to the width
    (seconds) of the per-host offset of its first detection run; ``timed`` maps one to a
    daily or once schedule (:class:`~vigil.agent.remediation.schedule.TimedSchedule`).
    """

    folders: tuple[Path, ...] = ()
    max_concurrent: int = 2
    dry_run: bool = False
    verify_delay_s: float = 1.0
    params: dict[str, dict[str, str]] = field(default_factory=dict)
    enable: tuple[str, ...] = ()
    schedule: dict[str, float] = field(default_factory=dict)
    timed: dict[str, TimedSchedule] = field(default_factory=dict)
    splay: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything one agent process needs, validated."""

    file: str
    state_dir: Path
    hostname: str | None
    labels: dict[str, str]
    collector: CollectorTarget
    intervals: Intervals
    outbox: OutboxConfig
    sampler: SamplerConfig
    remediation: RemediationSettings
    checks: tuple[CheckSpec, ...]
    shipping: ShippingConfig = field(default_factory=ShippingConfig)
    # Satisfaction surveys from the collector (``surveys:``; docs/satisfaction.md).
    surveys: SurveySettings = field(default_factory=SurveySettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    self_health: SelfHealthConfig = field(default_factory=SelfHealthConfig)
    crash_backoff: CrashBackoffConfig = field(default_factory=CrashBackoffConfig)
    # Self-update from the collector's release channel (``update:``; docs/install.md).
    update: UpdateSettings = field(default_factory=UpdateSettings)


def default_state_dir() -> Path:
    """Per-platform default for agent state (identity, outbox)."""
    if sys.platform == "win32":
        return Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "Vigil"
    if os.geteuid() == 0:
        return Path("/var/lib/vigil")
    return Path.home() / ".local" / "state" / "vigil"


def load_agent_config(path: str | Path) -> AgentConfig:
    """Load and validate an agent config file; raises :class:`ConfigError`."""
    root = Section(load_yaml(path), str(path))

    agent = root.section("agent")
    state_dir = agent.path_value("state_dir", None) or default_state_dir()
    hostname = agent.get("hostname", str, None)
    labels = agent.str_map("labels", {})
    crash_backoff = crash_backoff_config(agent)
    agent.done()

    col = root.section("collector", required=True)
    url = col.get("url", str)
    if not re.match(r"^https?://[^/\s]+", url):
        raise col.error("url", "must be an http:// or https:// URL", url)
    token = _token(col)
    collector = CollectorTarget(
        url=url.rstrip("/"),
        token=token,
        timeout_s=col.duration("timeout", 10.0, minimum=0.1),
        ca_file=col.path_value("ca_file", None),
        client_cert_file=col.path_value("client_cert_file", None),
        client_key_file=col.path_value("client_key_file", None),
    )
    problem = tls_problem(
        collector.url,
        {
            "ca_file": collector.ca_file,
            "client_cert_file": collector.client_cert_file,
            "client_key_file": collector.client_key_file,
        },
    )
    if problem is not None:
        key, message = problem
        raise col.error(key, message, str(getattr(collector, key)))
    col.done()

    iv = root.section("intervals")
    intervals = Intervals(
        sample_s=iv.duration("sample", 15.0, minimum=0.1),
        report_s=iv.duration("report", 30.0, minimum=0.1),
        heartbeat_s=iv.duration("heartbeat", 60.0, minimum=1.0),
        metrics_s=iv.duration("metrics", 300.0, minimum=1.0),
    )
    iv.done()

    ob = root.section("outbox")
    outbox = OutboxConfig(
        path=ob.path_value("path", None) or state_dir / "outbox.db",
        max_bytes=ob.size("max_bytes", 64 * 2**20),
        batch_max_events=ob.get("batch_max_events", int, 500, minimum=1, maximum=5000),
        max_age_s=ob.duration("max_age", 7 * 86400.0, minimum=60.0),
        batch_max_bytes=ob.size("batch_max_bytes", 2 * 2**20),
    )
    if outbox.max_bytes <= 0:
        raise ob.error("max_bytes", "must be positive", outbox.max_bytes)
    if outbox.batch_max_bytes < 1024:
        raise ob.error("batch_max_bytes", "must be at least 1KiB", outbox.batch_max_bytes)
    ob.done()

    sh = root.section("shipping")
    shipping = ShippingConfig(
        backoff_base_s=sh.duration("backoff_base", 1.0, minimum=0.01),
        backoff_cap_s=sh.duration("backoff_cap", 300.0, minimum=0.01),
        drain_batches_per_s=sh.get("drain_rate", float, 2.0, minimum=0.01),
        start_jitter_s=sh.duration("start_jitter", 10.0),
    )
    if shipping.backoff_cap_s < shipping.backoff_base_s:
        raise sh.error("backoff_cap", "must be at least backoff_base", shipping.backoff_cap_s)
    sh.done()

    sa = root.section("sampler")
    mounts = sa.str_list("disk_mounts", None)
    paths = tuple(path_spec(p) for p in sa.sections("paths"))
    processes = tuple(process_spec(p) for p in sa.sections("processes"))
    probes = tuple(probe_spec(p) for p in sa.sections("probes"))
    for key, named in (("paths", paths), ("processes", processes), ("probes", probes)):
        names = [p.name for p in named]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise sa.error(f"{key}[{i}].name", f"duplicate {key} name", name)
    service_names, service_fallbacks = services(sa)
    sampler = SamplerConfig(
        disk_mounts=mounts,
        paths=paths,
        disk_timeout_s=sa.duration("disk_timeout", 2.0, minimum=0.01),
        per_core=sa.get("per_core", bool, False),
        processes=processes,
        services=service_names,
        probes=probes,
        process_scan_s=sa.duration("process_scan", 60.0, minimum=1.0),
        top_n=sa.get("top_n", int, 5, minimum=0, maximum=50),
        slow_s=sa.duration("slow_interval", 60.0, minimum=1.0),
        clock=clock_spec(sa),
        printing=print_spec(sa),
        service_fallbacks=service_fallbacks,
    )
    sa.done()

    rs = root.section("remediation")
    schedules = parse_schedules(rs.section("schedule"))
    folders = tuple(
        (rs.base_dir / Path(p).expanduser()).resolve() for p in rs.str_list("folders", ())
    )
    remediation = RemediationSettings(
        folders=folders,
        max_concurrent=rs.get("max_concurrent", int, 2, minimum=1, maximum=16),
        dry_run=rs.get("dry_run", bool, False),
        verify_delay_s=rs.duration("verify_delay", 1.0),
        params=_remediation_params(rs.section("params")),
        enable=rs.str_list("enable", ()),
        schedule=schedules.every,
        timed=schedules.timed,
        splay=schedules.splay,
    )
    rs.done()

    self_health = self_health_config(root)
    surveys = _surveys(root.section("surveys"))
    policy = policy_settings(root.section("policy"))
    update = update_settings(root.section("update"))
    if policy.require_signed_local and remediation.folders:
        raise ConfigError(
            str(path),
            "remediation.folders",
            [str(f) for f in remediation.folders],
            "unsigned local remediations are refused under policy.require_signed_local; "
            "ship them in a signed bundle (policy.local_bundle)",
        )

    checks = tuple(_check(s) for s in root.sections("checks"))
    seen: set[str] = set()
    for i, c in enumerate(checks):
        if c.id in seen:
            raise ConfigError(str(path), f"checks[{i}].id", c.id, "duplicate check id")
        seen.add(c.id)
    root.done()
    sampler = replace(sampler, watched_names=watched_process_names(checks))

    return AgentConfig(
        file=str(path),
        state_dir=state_dir,
        hostname=hostname,
        labels=labels,
        collector=collector,
        intervals=intervals,
        outbox=outbox,
        sampler=sampler,
        remediation=remediation,
        checks=checks,
        shipping=shipping,
        surveys=surveys,
        policy=policy,
        self_health=self_health,
        crash_backoff=crash_backoff,
        update=update,
    )


def _surveys(s: Section) -> SurveySettings:
    """``surveys:``: whether to show them, quiet hours (local time), the notifier."""
    raw = s.get("quiet_hours", str, None)
    try:
        quiet = parse_quiet_hours(raw)
    except ValueError as exc:
        raise s.error("quiet_hours", str(exc), raw) from None
    notifier = s.str_list("notifier", ())
    if notifier and not notifier[0].strip():
        raise s.error("notifier", "the first item must name a program", list(notifier))
    settings = SurveySettings(
        enabled=s.get("enabled", bool, True), quiet_hours=quiet, notifier=notifier
    )
    s.done()
    return settings


_TOP_SERIES = re.compile(r"^process\.top_(?:cpu_percent|rss_bytes)\[(.+)\]$")


def watched_process_names(checks: Iterable[CheckSpec]) -> tuple[str, ...]:
    """The process names whose top-N series (``process.top_cpu_percent[<name>]``,
    ``process.top_rss_bytes[<name>]``) some check reads, in order of first use.

    A check on a named process must see it whether or not it ranks in the top N, and see
    0 once it stopped (the usual result of a fix that stops it), not a missing series.
    """
    names: dict[str, None] = {}
    for check in checks:
        match = _TOP_SERIES.match(check.metric)
        if match:
            names[match.group(1)] = None
    return tuple(names)


def _token(col: Section) -> str:
    """The shared ingest token, given inline (``token``) or in a file (``token_file``);
    ``""`` when neither is set (an enrolled agent needs none)."""
    if not col.has("token") and not col.has("token_file"):
        return ""
    if col.has("token") and col.has("token_file"):
        raise col.error(
            "token_file", "give either token or token_file, not both", col.data["token_file"]
        )
    if col.has("token_file"):
        tf = col.path_value("token_file")
        try:
            token = tf.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise col.error("token_file", f"cannot read: {exc.strerror}", str(tf)) from None
    else:
        token = col.get("token", str)
    if not token or any(ch.isspace() for ch in token):
        raise col.error("token", "must be non-empty with no whitespace", token)
    return token


def _param(s: Section, value: str) -> str:
    """Parameter values that look like relative paths (``./x``, ``../x``) resolve against
    the config file's folder, like every other path in the config; others pass as-is."""
    if value.startswith(("./", "../")):
        return str((s.base_dir / value).resolve())
    return value


def _remediation_params(s: Section) -> dict[str, dict[str, str]]:
    """``remediation.params``: remediation id -> {name: value}."""
    out = {
        str(rem_id): {k: _param(s, v) for k, v in s.str_map(str(rem_id)).items()}
        for rem_id in s.data
    }
    s.done()
    return out


_CHECK_KEYS = (
    "id",
    "metric",
    "op",
    "warning",
    "critical",
    "for",
    "description",
    "remediation",
    "recovery",
    "flapping",
    "interval",
    "command",
    "timeout",
)


def _check(s: Section) -> CheckSpec:
    s.check_keys(*_CHECK_KEYS)
    check_id = s.get("id", str)
    if not _CHECK_ID.match(check_id):
        raise s.error("id", "must be 1-128 of letters, digits, '_', '.', ':', '-'", check_id)
    if s.has("command"):
        return _command_check(s, check_id)
    op = s.get("op", str, ">", choices=OPERATORS)
    warning = s.get("warning", float, None)
    critical = s.get("critical", float, None)
    if warning is None and critical is None:
        raise s.error("critical", "a check needs a warning or a critical level")
    if warning is not None and critical is not None:
        worse = critical >= warning if op in (">", ">=") else critical <= warning
        if not worse:
            raise s.error("critical", f"must be beyond warning ({warning}) for op {op!r}", critical)
    recovery = s.get("recovery", float, None)
    lowest = warning if warning is not None else critical
    if recovery is not None and lowest is not None:
        # Hysteresis only makes sense on the healthy side of the lowest bad level.
        healthy_side = recovery <= lowest if op in (">", ">=") else recovery >= lowest
        if not healthy_side:
            raise s.error("recovery", f"must be on the ok side of {lowest} for op {op!r}", recovery)
    if s.has("timeout"):
        raise s.error("timeout", "only command checks take a timeout", s.data["timeout"])
    remediation = _remediation_ref(s)
    spec = CheckSpec(
        id=check_id,
        metric=s.get("metric", str),
        op=op,  # type: ignore[arg-type]
        warning=warning,
        critical=critical,
        for_s=s.duration("for", 0.0),
        description=s.get("description", str, ""),
        remediation=remediation,
        recovery=recovery,
        interval_s=s.duration("interval", None, minimum=0.1),
        **_flapping(s),
    )
    s.done()
    return spec


def _remediation_ref(s: Section) -> RemediationRef | None:
    if not s.has("remediation"):
        return None
    raw = s.data["remediation"]
    if isinstance(raw, str):
        s.get("remediation", str)
        return RemediationRef(id=raw)
    r = s.section("remediation")
    params = {k: _param(r, v) for k, v in r.str_map("params", {}).items()}
    ref = RemediationRef(id=r.get("id", str), params=params)
    r.done()
    return ref


def _flapping(s: Section) -> dict[str, int | float]:
    """``flapping: {changes: 6, window: 10m}`` -> CheckSpec keyword arguments."""
    if not s.has("flapping"):
        return {}
    f = s.section("flapping")
    out: dict[str, int | float] = {
        "flap_changes": f.get("changes", int, minimum=2, maximum=1000),
        "flap_window_s": f.duration("window", 600.0, minimum=1.0),
    }
    f.done()
    return out


def _command_check(s: Section, check_id: str) -> CheckSpec:
    """A Nagios-plugin check: ``command`` is an argv list, never a shell string."""
    command = s.str_list("command")
    if not command or not command[0]:
        raise s.error("command", "expected a non-empty list: [program, arg, ...]", command)
    program = Path(command[0]).expanduser()
    if not program.is_absolute():
        # Relative to the config file, like every other path, so the meaning never
        # depends on the agent's working directory or PATH.
        program = (s.base_dir / program).resolve()
    for key in ("metric", "op", "warning", "critical", "recovery"):
        if s.has(key):
            raise s.error(key, "a command check takes its state from the plugin", s.data[key])
    spec = CheckSpec(
        id=check_id,
        metric="",
        for_s=s.duration("for", 0.0),
        description=s.get("description", str, ""),
        remediation=_remediation_ref(s),
        interval_s=s.duration("interval", None, minimum=0.1),
        command=(str(program), *command[1:]),
        timeout_s=s.duration("timeout", 10.0, minimum=0.1),
        **_flapping(s),
    )
    s.done()
    return spec


# The same readers serve a policy bundle's config fragment (agent/policy/compose.py, with
# remediation.schedule's parse_schedules), so a policy's checks and remediation settings
# follow exactly the agent.yaml schema.
parse_check = _check
