"""Vigil wire schema, version 1: every message an agent sends, defined once.

The agent builds these frozen dataclasses and serialises them with :func:`encode_report`;
the collector parses request bodies with :func:`decode_report` and never reads agent JSON
by hand. Validation is strict: unknown fields, missing fields, wrong types, non-finite
numbers and over-long strings are rejected with a :class:`WireError` whose ``path`` names
the offending field (``events[3].state``), so a 400 response can say exactly what is wrong.

A heartbeat is not a separate message kind: it is a :class:`CheckEvent` for the check
named :data:`HEARTBEAT_CHECK` carrying ``ttl_s``, so "agent went silent" reuses the
incident machinery (see ``shared/DESIGN.md``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

SCHEMA_VERSION = 1
HEARTBEAT_CHECK = "agent.heartbeat"

CheckState = Literal["ok", "warning", "critical", "unknown"]
CHECK_STATES: tuple[str, ...] = get_args(CheckState)

Outcome = Literal["fixed", "not_fixed", "error", "timeout", "skipped", "dry_run"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)

# Bounds that keep one report from costing the collector unbounded memory or CPU.
MAX_STR = 1024  # default cap for ids, names and messages (characters)
MAX_OUTPUT = 16384  # remediation output excerpt (characters)
MAX_EVENTS = 5000  # events in one report
MAX_MAP_ITEMS = 4096  # entries in labels / metric values


class WireError(ValueError):
    """A message does not match the schema. ``path`` names the field, ``message`` why."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def _maxlen(n: int) -> dict[str, int]:
    return {"max_len": n}


@dataclass(frozen=True, slots=True)
class MetricsEvent:
    """One sampling cycle's values, keyed by series name.

    Series names are ``source.metric`` with an optional instance in brackets, e.g.
    ``cpu.busy_percent`` or ``disk.used_percent[/home]``. Values are in base units
    (bytes, seconds, percent 0-100).
    """

    event_id: str
    seq: int
    time: float
    values: dict[str, float]
    type: Literal["metrics"] = "metrics"


@dataclass(frozen=True, slots=True)
class CheckEvent:
    """A check result, sent when its state changes (and for the heartbeat, periodically).

    ``remediation`` names a remediation the agent is about to run for this state; the
    collector then waits for its :class:`RemediationEvent` before raising an incident.
    ``ttl_s`` says another result is due within that many seconds (heartbeat liveness).
    """

    event_id: str
    seq: int
    time: float
    check: str
    state: CheckState
    previous_state: CheckState | None
    value: float | None
    message: str
    remediation: str | None = None
    ttl_s: float | None = None
    type: Literal["check"] = "check"


@dataclass(frozen=True, slots=True)
class RemediationEvent:
    """A corrective-action record: one run of a remediation script and what it achieved.

    ``outcome`` is ``fixed`` only when verification showed the trigger cleared.
    ``output`` is an excerpt (head and tail) of stdout+stderr; ``output_truncated`` says
    whether anything was cut. ``script_sha256`` identifies exactly what ran.
    """

    event_id: str
    seq: int
    time: float
    remediation: str
    check: str | None
    outcome: Outcome
    exit_code: int | None
    started_at: float
    duration_s: float
    value_before: float | None
    value_after: float | None
    output: str = field(metadata=_maxlen(MAX_OUTPUT))
    output_truncated: bool
    script_sha256: str
    dry_run: bool
    type: Literal["remediation"] = "remediation"


Event = Union[MetricsEvent, CheckEvent, RemediationEvent]  # noqa: UP007 - used at runtime
EVENT_TYPES: dict[str, type] = {
    "metrics": MetricsEvent,
    "check": CheckEvent,
    "remediation": RemediationEvent,
}


@dataclass(frozen=True, slots=True)
class Report:
    """One batch from one agent. ``batch_id`` makes delivery idempotent at the collector."""

    schema_version: int
    agent_id: str
    hostname: str
    labels: dict[str, str]
    batch_id: str
    sent_at: float
    agent_version: str
    events: tuple[Event, ...]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        report = _parse_dataclass(cls, data, "")
        if report.schema_version != SCHEMA_VERSION:
            raise WireError(
                "schema_version",
                f"unsupported version {report.schema_version}, expected {SCHEMA_VERSION}",
            )
        return report


# --------------------------------------------------------------------------- encoding


def to_dict(obj: Any) -> Any:
    """Plain-JSON form of a wire dataclass (recursively), field order preserved."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return dict(obj)
    return obj


def encode_report(report: Report) -> bytes:
    """Compact UTF-8 JSON for a report (the shipper gzips it)."""
    return json.dumps(report.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def decode_report(body: bytes) -> Report:
    """Parse and validate a JSON request body; raises :class:`WireError` on any problem."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError("body", f"not valid JSON: {exc}") from None
    return Report.from_dict(data)


def parse_event(data: Any, path: str = "event") -> Event:
    """Parse one event dict (discriminated by its ``type`` field)."""
    if not isinstance(data, dict):
        raise WireError(path, f"expected an object, got {_kind(data)}")
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"{path}.type", f"must be one of {sorted(EVENT_TYPES)}, got {kind!r}")
    return _parse_dataclass(cls, data, path)


# --------------------------------------------------------------------------- validation

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _parse_dataclass(cls: Any, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise WireError(path or "body", f"expected an object, got {_kind(data)}")
    hints = _hints(cls)
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    for key in data:
        if key not in known:
            raise WireError(_join(path, str(key)), "unknown field")
    kwargs: dict[str, Any] = {}
    for f in fields:
        fpath = _join(path, f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING:
                raise WireError(fpath, "missing required field")
            continue
        max_len = f.metadata.get("max_len", MAX_STR)
        kwargs[f.name] = _parse_value(hints[f.name], data[f.name], fpath, max_len)
    return cls(**kwargs)


def _parse_value(tp: Any, value: Any, path: str, max_len: int = MAX_STR) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or not isinstance(value, str):
            raise WireError(path, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        if tp == Event or set(args) == set(EVENT_TYPES.values()):
            return parse_event(value, path)
        (inner,) = (a for a in args if a is not type(None))
        return _parse_value(inner, value, path, max_len)
    if origin is tuple:
        (inner, _ellipsis) = get_args(tp)
        if not isinstance(value, list):
            raise WireError(path, f"expected a list, got {_kind(value)}")
        if len(value) > MAX_EVENTS:
            raise WireError(path, f"at most {MAX_EVENTS} items, got {len(value)}")
        return tuple(_parse_value(inner, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _k, vtype = get_args(tp)
        if not isinstance(value, dict):
            raise WireError(path, f"expected an object, got {_kind(value)}")
        if len(value) > MAX_MAP_ITEMS:
            raise WireError(path, f"at most {MAX_MAP_ITEMS} entries, got {len(value)}")
        out = {}
        for k, v in value.items():
            if not k or len(k) > MAX_STR:
                raise WireError(path, f"key {k[:40]!r} must be 1-{MAX_STR} characters")
            out[k] = _parse_value(vtype, v, f"{path}[{k!r}]")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise WireError(path, f"expected a string, got {_kind(value)}")
        if len(value) > max_len:
            raise WireError(path, f"at most {max_len} characters, got {len(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise WireError(path, f"expected a boolean, got {_kind(value)}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise WireError(path, f"expected an integer, got {_kind(value)}")
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise WireError(path, f"expected a number, got {_kind(value)}")
        if not math.isfinite(value):
            raise WireError(path, f"must be finite, got {value!r}")
        return float(value)
    raise TypeError(f"wire schema has an unsupported type {tp!r} at {path}")  # pragma: no cover
