"""A fast decoder for :mod:`vigil.wire` reports, built from wire.py's own definitions.

Why: validating a report field by field in Python (``wire._compile``) costs ~30 µs of the
collector's CPU per report, about as much as the rest of parsing and the HTTP ack
together (issue #17, docs/benchmarks.md "Delivery"). msgspec decodes JSON straight
into typed objects and checks types, lengths and ranges in C, in a few microseconds.

wire.py stays the one schema: the msgspec Structs here are generated at import from
wire.py's frozen dataclasses (their fields, type hints and ``metadata`` bounds), and a
decoded report is returned as those same dataclasses (:func:`decode_report`), or, for a
caller that only reads fields, as the checked Struct itself (:func:`decode_struct`: same
field names; :func:`as_wire` converts it). The fast path only ever
*accepts*: input it refuses, or that its few checks in Python (finite unbounded floats,
valid Unicode text, the sequence fields, the console user's hex digits) do not pass, is
decoded again by :func:`vigil.wire.decode_report`, whose :class:`~vigil.wire.WireError`
names the field exactly as before. ``tests/unit/test_wire_fast.py`` shows it accepts exactly what
wire.py accepts and yields equal objects.

Collector only: msgspec is in the ``collector`` extra, never the agent's; without it,
:func:`decode_report` is wire.py's.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from vigil import wire

try:  # the collector extra; absent on an agent-only install
    import msgspec
except ImportError:  # pragma: no cover - the collector's tests install it
    msgspec = None  # type: ignore[assignment]

# What the fast path checks after msgspec, per wire class: the names of its unbounded
# float fields (finite required: ints beyond a float's range decode to inf), of its
# string fields (valid Unicode text), and of its str -> str / str -> float maps.
_Checks = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def _meta_for(tp: Any, metadata: Any) -> Any:
    """``tp`` annotated with msgspec constraints equal to wire.py's for that field."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if set(args) == set(wire.EVENT_TYPES.values()):
            return Union[tuple(_STRUCTS[a] for a in args)]  # noqa: UP007 - built at runtime
        (inner,) = (a for a in args if a is not type(None))
        return _meta_for(inner, metadata) | None
    if origin is Literal:
        return tp
    if origin is tuple:
        (inner, _ellipsis) = get_args(tp)
        item = _meta_for(inner, {})
        return Annotated[tuple[item, ...], msgspec.Meta(max_length=wire.MAX_EVENTS)]
    if origin is dict:
        _k, vtype = get_args(tp)
        key = Annotated[str, msgspec.Meta(min_length=1, max_length=wire.MAX_STR)]
        value = _meta_for(vtype, {})
        return Annotated[dict[key, value], msgspec.Meta(max_length=wire.MAX_MAP_ITEMS)]
    if tp is str:
        return Annotated[
            str,
            msgspec.Meta(
                min_length=metadata.get("min_len", 0),
                max_length=metadata.get("max_len", wire.MAX_STR),
            ),
        ]
    if tp is int:
        low, high = metadata.get("range", (wire.INT_MIN, wire.INT_MAX))
        return Annotated[int, msgspec.Meta(ge=low, le=high)]
    if tp is float:
        bounds = metadata.get("range")
        if bounds is None:
            return float
        return Annotated[float, msgspec.Meta(ge=bounds[0], le=bounds[1])]
    if tp is bool:
        return bool
    raise TypeError(f"wire schema has an unsupported type {tp!r}")  # pragma: no cover


_STRUCTS: dict[type, Any] = {}
_CHECKS: dict[Any, tuple[type, _Checks]] = {}


def _define(cls: type) -> Any:
    """The msgspec Struct mirroring wire class ``cls`` (same fields, order, defaults)."""
    hints = typing.get_type_hints(cls)
    fields: list[Any] = []
    floats, strs, str_maps, float_maps = [], [], [], []
    tag = None
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name == "type" and get_origin(tp) is Literal:
            (tag,) = get_args(tp)  # the event's discriminator: msgspec's tag
            continue
        inner = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) else [tp]
        base = inner[0] if len(inner) == 1 else None
        if base is float and "range" not in f.metadata:
            floats.append(f.name)
        elif base is str:
            strs.append(f.name)
        elif get_origin(tp) is dict:
            (str_maps if get_args(tp)[1] is str else float_maps).append(f.name)
        annotated = _meta_for(tp, f.metadata)
        if f.default is not dataclasses.MISSING:
            fields.append((f.name, annotated, f.default))
        else:
            fields.append((f.name, annotated))
    options: dict[str, Any] = {"forbid_unknown_fields": True}
    if tag is not None:
        options.update(tag_field="type", tag=tag)
    struct = msgspec.defstruct(f"Fast{cls.__name__}", fields, **options)
    _STRUCTS[cls] = struct
    _CHECKS[struct] = (cls, (tuple(floats), tuple(strs), tuple(str_maps), tuple(float_maps)))
    return struct


class _Refused(Exception):
    """The fast path does not vouch for this input: wire.py decides."""


def _text_ok(value: str) -> bool:
    return value.isascii() or wire.valid_text(value)


def _check(obj: Any) -> None:
    """Check what msgspec cannot in a decoded Struct (a report: its events too); raises
    :class:`_Refused` where wire.py must decide."""
    floats, strs, str_maps, float_maps = _CHECKS[type(obj)][1]
    isfinite = math.isfinite
    for name in floats:
        value = getattr(obj, name)
        if value is not None and not isfinite(value):
            raise _Refused
    for name in strs:
        value = getattr(obj, name)
        if value is not None and not _text_ok(value):
            raise _Refused
    for name in str_maps:
        value = getattr(obj, name)
        if not (_text_ok("".join(value)) and _text_ok("".join(value.values()))):
            raise _Refused
    for name in float_maps:
        value = getattr(obj, name)
        # A finite sum means every value is finite; an overflowing sum of finite values
        # is merely refused here (wire.py then accepts it).
        if not (isfinite(sum(value.values())) and _text_ok("".join(value))):
            raise _Refused
    if type(obj) is _REPORT:
        for event in obj.events:
            _check(event)


def _convert(obj: Any) -> Any:
    """The wire dataclass for a decoded (and checked) Struct."""
    cls = _CHECKS[type(obj)][0]
    values = msgspec.structs.astuple(obj)
    if cls is wire.Report:
        events = tuple(_convert(e) for e in obj.events)
        return wire.Report(*values[:7], events, *values[8:])
    return cls(*values)


def _build() -> Callable[[bytes | bytearray], Any]:
    global _REPORT
    for cls in wire.EVENT_TYPES.values():
        _define(cls)
    _REPORT = _define(wire.Report)
    decoder = msgspec.json.Decoder(_REPORT)
    errors = (msgspec.DecodeError, msgspec.ValidationError, _Refused, wire.WireError)

    def struct_path(body: bytes | bytearray) -> Any:
        try:
            # The same pre-parse bounds as wire.py's decoder (a bomb of containers).
            wire.check_structure(body)
            report = decoder.decode(body)
            _check(report)
            if report.schema_version != wire.SCHEMA_VERSION:
                return None
            wire.check_sequence(report)
            wire.check_console_user(report)
        except errors:
            return None
        return report

    return struct_path


def _refuse_all(body: bytes | bytearray) -> None:
    return None


_REPORT: Any = None  # the Struct mirroring wire.Report (set by _build)

# What a report Struct is typed as: msgspec Structs generated at import from wire.py's
# classes, with the same field names (no static type can name them).
ReportStruct = Any

# The fast path alone, as the checked Struct: the report with wire.Report's fields (and
# its events with their classes' fields), or None where it does not vouch for the input
# (then wire.py decides). For a caller that only reads fields: building the wire
# dataclasses costs about half of decoding (frozen dataclass constructors; issue #17).
decode_struct: Callable[[bytes | bytearray], ReportStruct | None] = (
    _refuse_all if msgspec is None else _build()
)


def fast_path(body: bytes | bytearray) -> wire.Report | None:
    """:func:`decode_struct` as the wire dataclasses. Public for the tests that compare
    it with wire.py."""
    report = decode_struct(body)
    return None if report is None else _convert(report)


def as_wire(report: wire.Report | ReportStruct) -> wire.Report:
    """``report`` as the wire dataclass (itself if it already is one)."""
    return report if type(report) is wire.Report else _convert(report)


def replace(report: wire.Report | ReportStruct, **changes: Any) -> wire.Report | ReportStruct:
    """``report`` with ``changes`` to its fields, of the same class (not validated)."""
    if type(report) is wire.Report:
        return dataclasses.replace(report, **changes)
    return msgspec.structs.replace(report, **changes)


def struct_of(cls: type) -> type | None:
    """The Struct class mirroring wire class ``cls`` (None without msgspec)."""
    return _STRUCTS.get(cls)


def decode_report(body: bytes | bytearray) -> wire.Report:
    """Decode and validate a report body exactly as :func:`vigil.wire.decode_report`
    does (the same result, the same :class:`~vigil.wire.WireError`), fast for valid input."""
    report = fast_path(body)
    return wire.decode_report(body) if report is None else report
