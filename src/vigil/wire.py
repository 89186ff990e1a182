"""Vigil wire schema, version 1: every message an agent sends, defined once.

The agent builds these frozen dataclasses and serialises them with :func:`encode_report`;
the collector parses request bodies with :func:`decode_report` and never reads agent JSON
by hand. Validation is strict: unknown fields, missing fields, wrong types, non-finite
numbers and over-long strings are rejected with a :class:`WireError` whose ``path`` names
the offending field (``events[3].state``), so a 400 response can say exactly what is wrong.

A heartbeat is not a separate message kind: it is a :class:`CheckEvent` for the check
named :data:`HEARTBEAT_CHECK` carrying ``ttl_s``, so "agent went silent" reuses the
incident machinery (see ``docs/architecture.md``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

SCHEMA_VERSION = 1
# ``Report.console_user``: a SHA-256 in lowercase hex.
CONSOLE_USER_LEN = 64
HEARTBEAT_CHECK = "agent.heartbeat"
# A clock jump the agent detected (sleep/resume or a wall-clock step), reported as a check
# result with state "ok", ``value`` the jump in seconds and ``message`` its kind; the
# collector keeps it in the host's history and never opens an incident for it.
CLOCK_CHECK = "agent.clock"

CheckState = Literal["ok", "warning", "critical", "unknown"]
CHECK_STATES: tuple[str, ...] = get_args(CheckState)

# ``needs_reboot`` / ``needs_user``: the script applied what it could and declared that a
# reboot or the person at the machine must finish the fix. Added within schema version 1
# (every older message stays valid); a collector older than them answers 400 naming the
# field, so upgrade collectors before agents. The collector treats them as not fixed.
Outcome = Literal[
    "fixed", "not_fixed", "error", "timeout", "skipped", "dry_run", "needs_reboot", "needs_user"
]
OUTCOMES: tuple[str, ...] = get_args(Outcome)

# Bounds that keep one report from costing the collector unbounded memory or CPU.
MAX_STR = 1024  # default cap for ids, names and messages (characters)
MAX_OUTPUT = 16384  # remediation output excerpt (characters)
MAX_EVENTS = 5000  # events in one report
MAX_MAP_ITEMS = 4096  # entries in labels / metric values
# Integers are stored in signed 64-bit columns (SQLite, PostgreSQL ``bigint``).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# Accepted ranges of numbers, chosen wide enough that no correct agent ever leaves them
# (a laptop whose clock reset to 1970, a resume after weeks offline, a script that ran up
# to its timeout) and narrow enough that the collector's arithmetic on them (offsets,
# deadlines, histogram sums in whole millionths) can never overflow. Generic measured
# values (``values``, ``value``, ``value_before``/``value_after``) are only required to be
# finite: a plugin may legitimately report 1e300. ``docs/api.md`` lists them per field.
TIME_MIN, TIME_MAX = 0.0, 1e10  # Unix seconds: 1970 to the year 2286
DURATION_MAX = 366 * 86400.0  # seconds: a run time or a heartbeat TTL, at most a year
# Process exit codes: negative for a signal on POSIX, unsigned 32-bit on Windows.
EXIT_CODE_MIN, EXIT_CODE_MAX = -(2**31), 2**32 - 1
# Objects and lists a report can hold: the report, its labels, the events list, and per
# event the event and its values. A body with more is refused before it is parsed: a
# few bytes of ``{}`` cost about 80 bytes each once parsed, so 16 MiB of them would take
# half a gigabyte.
MAX_CONTAINERS = 3 + 2 * MAX_EVENTS
# Bytes of JSON per comma (outside strings), at least, in any valid report: every comma
# is followed by an object member (``"k":0`` is the shortest, keys are never empty) or
# by an event object. A denser body (``[0,0,0,...]``) is refused before it is parsed.
MIN_BYTES_PER_COMMA = 6
# Object members and list items in one report, at most (counted as commas outside
# strings): 50 per event on average. The parser builds a document of about 16 bytes per
# key and per value, and Python objects for every value, before any field is checked:
# this bounds that to a few tens of MB whatever ``limits.max_decompressed_bytes`` allows
# (16 MiB of ``"k":0,`` was 2.8 million members and 85 MB, a list of short strings
# 300 MB). An agent's batch (``outbox.batch_max_bytes``, 2 MiB) holds about 100,000 of
# realistic series; only a batch of nothing but 2-character names could reach this.
MAX_ITEMS = 50 * MAX_EVENTS
# Longest excerpt of a bad value quoted in an error (a 400 body and a log line must never
# be as large as the input behind them).
MAX_QUOTED = 80


class WireError(ValueError):
    """A message does not match the schema. ``path`` names the field, ``message`` why."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def _maxlen(n: int) -> dict[str, int]:
    return {"max_len": n}


# Field metadata: the range a number must lie in (inclusive), and the bounds of a string.
_TIME: dict[str, Any] = {"range": (TIME_MIN, TIME_MAX)}
_DURATION: dict[str, Any] = {"range": (0.0, DURATION_MAX)}
_SEQ: dict[str, Any] = {"range": (0, INT_MAX)}
_EXIT_CODE: dict[str, Any] = {"range": (EXIT_CODE_MIN, EXIT_CODE_MAX)}
_ID: dict[str, Any] = {"min_len": 1}


# Field metadata: leave the field out of the JSON while it has its default value. For
# fields added within a schema version, so that older collectors (which reject unknown
# fields) see them only when they carry news.
_OMIT_DEFAULT = {"omit_default": True}
_OMIT_DEFAULT_ID = {**_ID, **_OMIT_DEFAULT}


@dataclass(frozen=True, slots=True)
class MetricsEvent:
    """One sampling cycle's values, keyed by series name.

    Series names are ``source.metric`` with an optional instance in brackets, e.g.
    ``cpu.busy_percent`` or ``disk.used_percent[/home]``. Values are in base units
    (bytes, seconds, percent 0-100).
    """

    event_id: str = field(metadata=_ID)
    seq: int = field(metadata=_SEQ)
    time: float = field(metadata=_TIME)
    values: dict[str, float]
    type: Literal["metrics"] = "metrics"


@dataclass(frozen=True, slots=True)
class CheckEvent:
    """A check result, sent when its state changes (and for the heartbeat, periodically).

    ``remediation`` names a remediation the agent is about to run for this state; the
    collector then waits for its :class:`RemediationEvent` before raising an incident.
    ``ttl_s`` says another result is due within that many seconds (heartbeat liveness).
    ``flapping`` says the agent's check is flapping: it holds the worse state and sends
    no more changes until it settles, so the collector cannot count the changes itself.
    Added within schema version 1 and sent only when true (see :func:`to_dict`), so an
    agent talks to an older collector as before unless a check flaps.
    """

    event_id: str = field(metadata=_ID)
    seq: int = field(metadata=_SEQ)
    time: float = field(metadata=_TIME)
    check: str = field(metadata=_ID)
    state: CheckState
    previous_state: CheckState | None
    value: float | None
    message: str
    remediation: str | None = field(default=None, metadata=_ID)
    ttl_s: float | None = field(default=None, metadata=_DURATION)
    flapping: bool = field(default=False, metadata=_OMIT_DEFAULT)
    type: Literal["check"] = "check"


@dataclass(frozen=True, slots=True)
class RemediationEvent:
    """A corrective-action record: one run of a remediation script and what it achieved.

    ``outcome`` is ``fixed`` only when verification showed the trigger cleared.
    ``output`` is an excerpt (head and tail) of stdout+stderr; ``output_truncated`` says
    whether anything was cut. ``script_sha256`` identifies exactly what ran.
    ``request_id`` is the id of the admin's run-now request this run answers (the
    collector links the record to the request and who asked); added within schema version
    1 and sent only when set, so an agent talks to an older collector as before.
    ``run_as_user``: the user the script ran as when its manifest asked for another user
    than the agent's (``run_as``: a name or ``logged_on_user``); added within schema
    version 1 and sent only when set, so older collectors see it only from such runs.
    """

    event_id: str = field(metadata=_ID)
    seq: int = field(metadata=_SEQ)
    time: float = field(metadata=_TIME)
    remediation: str = field(metadata=_ID)
    check: str | None = field(metadata=_ID)
    outcome: Outcome
    exit_code: int | None = field(metadata=_EXIT_CODE)
    started_at: float = field(metadata=_TIME)
    duration_s: float = field(metadata=_DURATION)
    value_before: float | None
    value_after: float | None
    output: str = field(metadata=_maxlen(MAX_OUTPUT))
    output_truncated: bool
    script_sha256: str
    dry_run: bool
    request_id: str | None = field(default=None, metadata={**_ID, **_OMIT_DEFAULT})
    run_as_user: str | None = field(default=None, metadata=_OMIT_DEFAULT_ID)
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
    agent_id: str = field(metadata=_ID)
    hostname: str
    labels: dict[str, str]
    batch_id: str = field(metadata=_ID)
    sent_at: float = field(metadata=_TIME)
    agent_version: str
    events: tuple[Event, ...]
    # Sequence dedup (added within schema version 1, all three or none; see
    # check_sequence): the outbox's epoch and the seq range of ``events``.
    epoch: str | None = field(default=None, metadata=_OMIT_DEFAULT)
    seq_first: int | None = field(default=None, metadata={**_SEQ, **_OMIT_DEFAULT})
    seq_last: int | None = field(default=None, metadata={**_SEQ, **_OMIT_DEFAULT})
    # Who is at the machine's console as the batch is sent, as an opaque id (added
    # within schema version 1; see check_console_user and docs/satisfaction.md): what
    # the collector rate-limits satisfaction surveys by. None: nobody, or not said.
    console_user: str | None = field(
        default=None,
        metadata={"min_len": CONSOLE_USER_LEN, "max_len": CONSOLE_USER_LEN, **_OMIT_DEFAULT},
    )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        if not isinstance(data, dict):
            raise WireError("body", f"expected an object, got {_kind(data)}")
        report = _parse_dataclass(cls, data, "")
        if report.schema_version != SCHEMA_VERSION:
            raise WireError(
                "schema_version",
                f"unsupported version {report.schema_version}, expected {SCHEMA_VERSION}",
            )
        check_sequence(report)
        check_console_user(report)
        return report


def check_console_user(report: Report) -> None:
    """Validate ``console_user``: :data:`CONSOLE_USER_LEN` lowercase hex digits (a
    SHA-256), so that a user name sent by mistake is refused rather than stored."""
    user = report.console_user
    if user is not None and not _HEX.issuperset(user):
        raise WireError("console_user", f"must be {CONSOLE_USER_LEN} lowercase hex digits")


EPOCH_LEN = 32  # an epoch is 32 lowercase hex digits (128 random bits, ``uuid4().hex``)
_HEX = frozenset("0123456789abcdef")


def check_sequence(report: Report) -> None:
    """Validate a report's sequence fields; raises :class:`WireError` naming the field.

    ``epoch``, ``seq_first`` and ``seq_last`` come together or not at all (a report
    without them is an older agent's, deduplicated by ids). With them, the events' ``seq``
    must be strictly increasing, the first equal to ``seq_first`` and the last to
    ``seq_last``: the collector applies the events above its mark for the epoch and
    keeps ``seq_last`` as the new mark, so the range must describe the events exactly.
    """
    given = [report.epoch is not None, report.seq_first is not None, report.seq_last is not None]
    if not any(given):
        return
    if not all(given):
        missing = ("epoch", "seq_first", "seq_last")[given.index(False)]
        raise WireError(missing, "required with epoch, seq_first and seq_last (all or none)")
    epoch = report.epoch
    assert epoch is not None
    if len(epoch) != EPOCH_LEN or not _HEX.issuperset(epoch):
        raise WireError("epoch", f"must be {EPOCH_LEN} lowercase hex digits, got {_quote(epoch)}")
    events = report.events
    if not events:
        raise WireError("events", "must not be empty when seq_first/seq_last are given")
    if events[0].seq != report.seq_first:
        raise WireError("seq_first", f"must equal events[0].seq ({events[0].seq})")
    if events[-1].seq != report.seq_last:
        raise WireError("seq_last", f"must equal the last event's seq ({events[-1].seq})")
    for i in range(1, len(events)):
        if events[i].seq <= events[i - 1].seq:
            raise WireError(f"events[{i}].seq", "must be above the previous event's seq")


# --------------------------------------------------------------------------- encoding


def to_dict(obj: Any) -> Any:
    """Plain-JSON form of a wire dataclass (recursively), field order preserved; a field
    marked ``omit_default`` is left out while it has its default value."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.metadata.get("omit_default") and value == f.default:
                continue  # see _OMIT_DEFAULT
            out[f.name] = to_dict(value)
        return out
    if isinstance(obj, tuple | list):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return dict(obj)
    return obj


def encode_report(report: Report) -> bytes:
    """Compact UTF-8 JSON for a report (the shipper gzips it)."""
    return json.dumps(report.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def decode_report(body: bytes | bytearray) -> Report:
    """Parse and validate a JSON request body; raises :class:`WireError` on any problem.

    Parsed with orjson (about 4x faster than the standard library on a report, and the
    collector parses every report it ingests); a body orjson refuses is parsed again with
    the standard library, which also reads ``NaN``/``Infinity`` and huge integers, so
    those are refused by validation naming their field, and other errors keep its wording.
    """
    # Imported here, not at the top: the agent imports this module but never decodes.
    import orjson

    check_structure(body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            # Decoded as UTF-8 first: json.loads of bytes would guess UTF-16 or UTF-32.
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise WireError("body", "not valid JSON: not UTF-8") from None
        except json.JSONDecodeError as exc:
            raise WireError("body", f"not valid JSON: {_cut(str(exc))}") from None
        except RecursionError:
            raise WireError("body", "not valid JSON: nested too deeply") from None
        except ValueError as exc:  # e.g. an integer past Python's 4,300-digit limit
            raise WireError("body", f"not valid JSON: {_cut(str(exc))}") from None
    return Report.from_dict(data)


# Bytes of the body examined at a time when strings must be told apart (see
# _inside_strings): the transient memory of that scan is a small multiple of this.
_SCAN_WINDOW = 64 * 1024
_BACKSLASH = 0x5C


def check_structure(body: bytes | bytearray) -> None:
    """Refuse a body whose shape no valid report has, before parsing builds it: more
    than :data:`MAX_CONTAINERS` objects and lists, more than :data:`MAX_ITEMS` members
    and items, or commas denser than :data:`MIN_BYTES_PER_COMMA` allows. Parsing costs
    many times the bytes for such input (a 16 KiB gzip body of ``{},`` is 16 MiB of JSON
    and 5.6 million objects).

    The counts include brackets and commas inside strings, so they can only over-count:
    a typical report passes on one C-speed scan (its commas; a body of at most
    :data:`MAX_CONTAINERS` bytes cannot hold more brackets than that, so they are only
    counted in a longer one). Only when a count is over its bound is what the strings
    hold subtracted (:func:`_inside_strings`).
    """
    size = len(body)
    commas = body.count(b",")
    # The brackets, or for a short body its length: a bound on them that cannot be over.
    containers = size if size <= MAX_CONTAINERS else body.count(b"{") + body.count(b"[")
    if (
        containers <= MAX_CONTAINERS
        and commas <= MAX_ITEMS
        and commas * MIN_BYTES_PER_COMMA <= size
    ):
        return
    inside_containers, inside_commas = _inside_strings(body)
    if containers - inside_containers > MAX_CONTAINERS:
        raise WireError("body", f"more than {MAX_CONTAINERS} objects and lists: not a report")
    if (commas - inside_commas) * MIN_BYTES_PER_COMMA > size:
        raise WireError("body", "too many values for its size: not a report")
    if commas - inside_commas > MAX_ITEMS:
        raise WireError("body", f"more than {MAX_ITEMS} members and items: not a report")


def _inside_strings(body: bytes | bytearray) -> tuple[int, int]:
    """How many ``{``/``[`` and how many ``,`` of ``body`` lie inside JSON strings.

    Window by window (:data:`_SCAN_WINDOW` bytes, never cutting a run of backslashes):
    escape pairs are dropped (``\\\\`` first, then ``\\"``), so every quote left
    opens or closes a string, and splitting at quotes alternates outside and inside.
    Every step is a C-speed bytes method, and memory stays a few windows' worth however
    many strings there are. Meant for valid JSON; for anything else the counts are
    merely a guess, and the parser refuses the body anyway.
    """
    containers = commas = 0
    inside = False
    start, size = 0, len(body)
    while start < size:
        end = min(start + _SCAN_WINDOW, size)
        while end < size and body[end - 1] == _BACKSLASH:
            end += 1  # keep a backslash with the byte it escapes
        # As bytes, also when the body is a bytearray: splitting a bytearray makes pieces
        # about twice the size.
        window = bytes(body[start:end]).replace(b"\\\\", b"").replace(b'\\"', b"")
        pieces = window.split(b'"')
        strings = b"".join(pieces[0 if inside else 1 :: 2])
        containers += strings.count(b"{") + strings.count(b"[")
        commas += strings.count(b",")
        if len(pieces) % 2 == 0:  # an odd number of quotes: the window ends in the other state
            inside = not inside
        start = end
    return containers, commas


def parse_event(data: Any, path: str = "event") -> Event:
    """Parse one event dict (discriminated by its ``type`` field)."""
    if not isinstance(data, dict):
        raise WireError(path, f"expected an object, got {_kind(data)}")
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(
            _join(path, "type"), f"must be one of {sorted(EVENT_TYPES)}, got {_quote(kind)}"
        )
    return _parse_dataclass(cls, data, path)


# --------------------------------------------------------------------------- validation
#
# Each wire class gets a parser compiled once from its type hints: a closure per field,
# so validating a report costs a few type checks per value instead of re-inspecting type
# hints (the collector validates every report it ingests). Parsers raise WireError with
# a path *relative* to the value they parse; each enclosing level prefixes its own part
# only on the error path, so the happy path builds no path strings at all.

_Parser = Callable[[Any], Any]
_COMPILED: dict[type, _Parser] = {}


def _join(path: str, name: str) -> str:
    if not name:
        return path
    if not path:
        return name
    return f"{path}{name}" if name.startswith("[") else f"{path}.{name}"


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _cut(text: str) -> str:
    return text if len(text) <= MAX_QUOTED else f"{text[:MAX_QUOTED]}… ({len(text)} characters)"


def _quote(value: Any) -> str:
    """A short quote of a rejected value: strings cut, containers and numbers by kind.

    Never walks the value, so a 1,000-deep list or a huge integer costs nothing to name.
    """
    if isinstance(value, str):
        return _cut(repr(value[: MAX_QUOTED + 1]))
    if (
        value is None
        or isinstance(value, bool | float)
        or (isinstance(value, int) and INT_MIN <= value <= INT_MAX)
    ):
        return repr(value)
    return f"a {_kind(value)}" if not isinstance(value, int) else "an out-of-range integer"


def valid_text(value: str) -> bool:
    """True when ``value`` is encodable as UTF-8 (no lone surrogates such as ``\\ud800``,
    which the standard library's JSON parser lets through and every store refuses)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _prefixed(exc: WireError, prefix: str) -> WireError:
    return WireError(_join(prefix, exc.path), exc.message)


def _parse_dataclass(cls: Any, data: Any, path: str) -> Any:
    """Parse ``data`` as wire class ``cls``; errors carry ``path`` as their prefix."""
    parser = _COMPILED.get(cls) or _compile_dataclass(cls)
    try:
        return parser(data)
    except WireError as exc:
        raise _prefixed(exc, path) from None


def _compile_dataclass(cls: Any) -> _Parser:
    hints = typing.get_type_hints(cls)
    fields = [
        (
            f.name,
            f.default is dataclasses.MISSING,
            _compile(
                hints[f.name],
                f.metadata.get("max_len", MAX_STR),
                min_len=f.metadata.get("min_len", 0),
                bounds=f.metadata.get("range"),
            ),
        )
        for f in dataclasses.fields(cls)
    ]
    known = frozenset(name for name, _, _ in fields)

    def parse(data: Any) -> Any:
        if type(data) is not dict:
            raise WireError("", f"expected an object, got {_kind(data)}")
        if not known.issuperset(data):
            unknown = next(k for k in data if k not in known)
            raise WireError(str(unknown), "unknown field")
        kwargs = {}
        for name, required, parser in fields:
            if name in data:
                try:
                    kwargs[name] = parser(data[name])
                except WireError as exc:
                    raise _prefixed(exc, name) from None
            elif required:
                raise WireError(name, "missing required field")
        return cls(**kwargs)

    _COMPILED[cls] = parse
    return parse


def _compile(
    tp: Any,
    max_len: int = MAX_STR,
    *,
    min_len: int = 0,
    bounds: tuple[float, float] | None = None,
) -> _Parser:
    """The parser of one value of type ``tp``: strings of ``min_len``..``max_len``
    characters, numbers within ``bounds`` (inclusive) when given."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        allowed_set = frozenset(allowed)

        def parse_literal(value: Any) -> Any:
            if type(value) is not str or value not in allowed_set:
                raise WireError("", f"must be one of {list(allowed)}, got {_quote(value)}")
            return value

        return parse_literal
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if set(args) == set(EVENT_TYPES.values()):
            return lambda value: parse_event(value, "")
        (inner,) = (a for a in args if a is not type(None))
        inner_parser = _compile(inner, max_len, min_len=min_len, bounds=bounds)
        return lambda value: None if value is None else inner_parser(value)
    if origin is tuple:
        (inner, _ellipsis) = get_args(tp)
        item = _compile(inner, max_len)

        def parse_list(value: Any) -> tuple[Any, ...]:
            if type(value) is not list:
                raise WireError("", f"expected a list, got {_kind(value)}")
            if len(value) > MAX_EVENTS:
                raise WireError("", f"at most {MAX_EVENTS} items, got {len(value)}")
            out = []
            for i, v in enumerate(value):
                try:
                    out.append(item(v))
                except WireError as exc:
                    raise _prefixed(exc, f"[{i}]") from None
            return tuple(out)

        return parse_list
    if origin is dict:
        _k, vtype = get_args(tp)
        item = _compile(vtype)

        isfinite = math.isfinite
        floats = vtype is float

        def parse_map(value: Any) -> dict[str, Any]:
            if type(value) is not dict:
                raise WireError("", f"expected an object, got {_kind(value)}")
            if len(value) > MAX_MAP_ITEMS:
                raise WireError("", f"at most {MAX_MAP_ITEMS} entries, got {len(value)}")
            # Fast path for the common case (a metrics summary: only floats, all finite,
            # keys of legal length), checked with C-speed builtins instead of a call per
            # entry. Anything else, including a sum that overflows, takes the full walk,
            # which converts ints and names the offending entry.
            if (
                floats
                and value
                and min(map(len, value)) > 0
                and max(map(len, value)) <= MAX_STR
                and all(type(v) is float for v in value.values())
                and isfinite(sum(value.values()))
                and "".join(value).isascii()
            ):
                return value
            out = {}
            for k, v in value.items():
                if not k or len(k) > MAX_STR:
                    raise WireError("", f"key {k[:40]!r} must be 1-{MAX_STR} characters")
                if not valid_text(k):
                    raise WireError("", f"key {_quote(k[:40])} is not valid Unicode text")
                try:
                    out[k] = item(v)
                except WireError as exc:
                    raise _prefixed(exc, f"[{_quote(k[:40])}]") from None
            return out

        return parse_map
    if tp is str:

        def parse_str(value: Any) -> str:
            if type(value) is not str:
                raise WireError("", f"expected a string, got {_kind(value)}")
            if not min_len <= len(value) <= max_len:
                if not value:
                    raise WireError("", "must not be empty")
                raise WireError("", f"at most {max_len} characters, got {len(value)}")
            if not valid_text(value):
                raise WireError("", "not valid Unicode text (a lone surrogate)")
            return value

        return parse_str
    if tp is bool:

        def parse_bool(value: Any) -> bool:
            if type(value) is not bool:
                raise WireError("", f"expected a boolean, got {_kind(value)}")
            return value

        return parse_bool
    if tp is int:

        def parse_int(value: Any) -> int:
            if type(value) is not int:
                raise WireError("", f"expected an integer, got {_kind(value)}")
            if not low <= value <= high:
                if bounds is None:
                    raise WireError("", "out of range for a signed 64-bit integer")
                raise WireError("", f"must be from {low} to {high}, got {_quote(value)}")
            return value

        low, high = (INT_MIN, INT_MAX) if bounds is None else bounds
        return parse_int
    if tp is float:
        isfinite = math.isfinite

        def parse_float(value: Any) -> float:
            kind = type(value)
            if kind is float:
                if not isfinite(value):
                    raise WireError("", f"must be finite, got {value!r}")
                return value
            if kind is int:
                try:
                    return float(value)
                except OverflowError:
                    raise WireError("", "must be finite, got an out-of-range integer") from None
            raise WireError("", f"expected a number, got {_kind(value)}")

        if bounds is None:
            return parse_float
        low_f, high_f = bounds

        def parse_bounded(value: Any) -> float:
            number = parse_float(value)
            if not low_f <= number <= high_f:
                raise WireError("", f"must be from {low_f:g} to {high_f:g}, got {_quote(value)}")
            return number

        return parse_bounded
    raise TypeError(f"wire schema has an unsupported type {tp!r}")  # pragma: no cover
