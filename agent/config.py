"""Agent configuration: one loader from YAML to frozen dataclasses.

See ``config/agent.yaml`` for an annotated example and ``docs/configuration.md`` for
every key. Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.configio import ConfigError, Section, load_yaml

Operator = Literal[">", ">=", "<", "<="]
OPERATORS: tuple[str, ...] = (">", ">=", "<", "<=")
_CHECK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class CollectorTarget:
    """Where and how the agent reports. ``token`` is the bearer token for ingest."""

    url: str
    token: str
    timeout_s: float = 10.0


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
    """The durable spool. ``max_bytes`` bounds the database; metric samples go first."""

    path: Path
    max_bytes: int = 64 * 2**20
    batch_max_events: int = 500


@dataclass(frozen=True, slots=True)
class PathSpec:
    """A file or folder to watch, sampled under the short ``name`` (not the full path)."""

    name: str
    path: Path


@dataclass(frozen=True, slots=True)
class SamplerConfig:
    """What the sampler reads besides the always-on CPU, memory, swap, load and uptime.

    ``disk_mounts``: ``None`` means every local, non-pseudo filesystem; otherwise exactly
    these mount points. ``paths``: files or folders whose size, entry count and age are
    sampled as ``path.size_bytes[<name>]``, ``path.count[<name>]``, ``path.age_seconds[<name>]``.
    """

    disk_mounts: tuple[str, ...] | None = None
    paths: tuple[PathSpec, ...] = ()


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
    """A threshold check over one sampled series.

    The check is ``critical`` while ``value <op> critical`` holds, else ``warning`` while
    ``value <op> warning`` holds, else ``ok``; a missing value is ``unknown``. A worse
    state must hold for ``for_s`` seconds before it is reported. ``remediation`` runs when
    the check reaches ``critical``.
    """

    id: str
    metric: str
    op: Operator = ">"
    warning: float | None = None
    critical: float | None = None
    for_s: float = 0.0
    description: str = ""
    remediation: RemediationRef | None = None


@dataclass(frozen=True, slots=True)
class RemediationSettings:
    """Where remediations live and how many may run at once."""

    folders: tuple[Path, ...] = ()
    max_concurrent: int = 2
    dry_run: bool = False
    verify_delay_s: float = 1.0


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
    agent.done()

    col = root.section("collector", required=True)
    url = col.get("url", str)
    if not re.match(r"^https?://[^/\s]+", url):
        raise col.error("url", "must be an http:// or https:// URL", url)
    token = _token(col)
    collector = CollectorTarget(
        url=url.rstrip("/"), token=token, timeout_s=col.duration("timeout", 10.0, minimum=0.1)
    )
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
    )
    ob.done()

    sa = root.section("sampler")
    mounts = sa.str_list("disk_mounts", None)
    paths = tuple(_path_spec(p) for p in sa.sections("paths"))
    names = [p.name for p in paths]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise sa.error(f"paths[{i}].name", "duplicate path name", name)
    sampler = SamplerConfig(disk_mounts=mounts, paths=paths)
    sa.done()

    rs = root.section("remediation")
    folders = tuple(
        (rs.base_dir / Path(p).expanduser()).resolve() for p in rs.str_list("folders", ())
    )
    remediation = RemediationSettings(
        folders=folders,
        max_concurrent=rs.get("max_concurrent", int, 2, minimum=1, maximum=16),
        dry_run=rs.get("dry_run", bool, False),
        verify_delay_s=rs.duration("verify_delay", 1.0),
    )
    rs.done()

    checks = tuple(_check(s) for s in root.sections("checks"))
    seen: set[str] = set()
    for i, c in enumerate(checks):
        if c.id in seen:
            raise ConfigError(str(path), f"checks[{i}].id", c.id, "duplicate check id")
        seen.add(c.id)
    root.done()

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
    )


def _token(col: Section) -> str:
    """The ingest token, given inline (``token``) or in a file (``token_file``)."""
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


def _path_spec(s: Section) -> PathSpec:
    name = s.get("name", str)
    if not _CHECK_ID.match(name):
        raise s.error("name", "must be 1-128 of letters, digits, '_', '.', ':', '-'", name)
    spec = PathSpec(name=name, path=s.path_value("path"))
    s.done()
    return spec


_CHECK_KEYS = ("id", "metric", "op", "warning", "critical", "for", "description", "remediation")


def _check(s: Section) -> CheckSpec:
    s.check_keys(*_CHECK_KEYS)
    check_id = s.get("id", str)
    if not _CHECK_ID.match(check_id):
        raise s.error("id", "must be 1-128 of letters, digits, '_', '.', ':', '-'", check_id)
    op = s.get("op", str, ">", choices=OPERATORS)
    warning = s.get("warning", float, None)
    critical = s.get("critical", float, None)
    if warning is None and critical is None:
        raise s.error("critical", "a check needs a warning or a critical level")
    if warning is not None and critical is not None:
        worse = critical >= warning if op in (">", ">=") else critical <= warning
        if not worse:
            raise s.error("critical", f"must be beyond warning ({warning}) for op {op!r}", critical)
    remediation = None
    if s.has("remediation"):
        raw = s.data["remediation"]
        if isinstance(raw, str):
            s.get("remediation", str)
            remediation = RemediationRef(id=raw)
        else:
            r = s.section("remediation")
            params = {k: _param(r, v) for k, v in r.str_map("params", {}).items()}
            remediation = RemediationRef(id=r.get("id", str), params=params)
            r.done()
    spec = CheckSpec(
        id=check_id,
        metric=s.get("metric", str),
        op=op,  # type: ignore[arg-type]
        warning=warning,
        critical=critical,
        for_s=s.duration("for", 0.0),
        description=s.get("description", str, ""),
        remediation=remediation,
    )
    s.done()
    return spec
