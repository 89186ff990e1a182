"""The fast report decoder (``vigil/wire_fast.py``) against wire.py, the one schema.

Its fast path may only accept what wire.py accepts, and must then yield an equal report;
everything else goes to wire.py, so errors (and their field paths) are wire.py's own.
The property tests feed both the same bodies: valid reports with fields replaced by any
JSON value, raw JSON text in place of a field, and arbitrary bytes.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.wirefuzz import JSON_VALUES, REPORT_PATHS, replaced, valid_report
from vigil import wire, wire_fast

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(decode: Any, body: bytes) -> wire.Report | tuple[str, str]:
    """The report, or the error's (path, message)."""
    try:
        return decode(body)
    except wire.WireError as exc:
        return (exc.path, exc.message)


def check_same(body: bytes) -> None:
    fast = wire_fast.fast_path(body)
    slow = outcome(wire.decode_report, body)
    if fast is not None:
        # Accepted by the fast path: wire.py accepts it too, as an equal report.
        assert isinstance(slow, wire.Report), slow
        assert fast == slow
        assert [type(e) for e in fast.events] == [type(e) for e in slow.events]
    assert outcome(wire_fast.decode_report, body) == slow


def sequenced_report() -> dict[str, Any]:
    data = valid_report()
    data.update(epoch="0123456789abcdef" * 2, seq_first=1, seq_last=3)
    return data


def with_console_user() -> dict[str, Any]:
    data = sequenced_report()
    data["console_user"] = "0123456789abcdef" * 4
    return data


@pytest.mark.parametrize(
    "make",
    [valid_report, sequenced_report, with_console_user],
    ids=["ids", "sequenced", "console-user"],
)
def test_a_valid_report_takes_the_fast_path_and_equals_wires(make: Any) -> None:
    body = json.dumps(make()).encode()
    fast = wire_fast.fast_path(body)
    assert fast is not None
    assert fast == wire.decode_report(body)
    assert [type(e) for e in fast.events] == [
        wire.MetricsEvent,
        wire.CheckEvent,
        wire.RemediationEvent,
    ]


def test_an_agent_encoded_report_round_trips() -> None:
    report = wire.decode_report(json.dumps(sequenced_report()).encode())
    body = wire.encode_report(report)
    assert wire_fast.fast_path(body) == report


def test_errors_name_the_field_as_wire_does() -> None:
    data = valid_report()
    data["events"][1]["state"] = "on fire"
    with pytest.raises(wire.WireError) as caught:
        wire_fast.decode_report(json.dumps(data).encode())
    assert caught.value.path == "events[1].state"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("events", 0, "values", "cpu"), 10**400),  # an int past a float's range
        (("events", 1, "value"), 2**64),
        (("labels", "dept"), "\ud800"),  # a lone surrogate
        (("events", 0, "values"), {"a": 1e308, "b": 1e308}),  # finite, sum overflows
        (("schema_version",), 2),
        (("events", 1, "flapping"), 1),
        (("events", 0, "seq"), -1),
        (("sent_at",), 1e10 + 1),
        (("hostname",), "x" * (wire.MAX_STR + 1)),
        (("agent_id",), ""),
        (("console_user",), "0123456789ABCDEF" * 4),  # upper case: not what agents send
        (("console_user",), "alice" + "0" * 59),  # a name sent by mistake
        (("console_user",), "0" * 63),
        (("console_user",), None),
    ],
)
def test_edge_values_decode_as_wire_decodes_them(path: tuple[Any, ...], value: Any) -> None:
    body = json.dumps(replaced(valid_report(), path, value)).encode("utf-8", "surrogatepass")
    check_same(body)


def test_structure_bombs_are_refused_as_wire_refuses_them() -> None:
    body = gzip.decompress(gzip.compress(b'{"labels": {' + b'"k":0,' * 300_000 + b'"k":0}}'))
    check_same(body)


@FUZZ
@given(st.sampled_from(REPORT_PATHS), JSON_VALUES)
def test_any_field_replaced_by_any_value(path: tuple[Any, ...], value: Any) -> None:
    data = replaced(valid_report(), path, value)
    check_same(json.dumps(data).encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.sampled_from(REPORT_PATHS), JSON_VALUES)
def test_any_field_of_a_sequenced_report_replaced(path: tuple[Any, ...], value: Any) -> None:
    data = replaced(sequenced_report(), path, value)
    check_same(json.dumps(data).encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.sampled_from(["console_user"]), JSON_VALUES)
def test_the_console_user_replaced_by_any_value(key: str, value: Any) -> None:
    data = replaced(with_console_user(), (key,), value)
    check_same(json.dumps(data).encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.sampled_from(REPORT_PATHS), st.text(max_size=30))
def test_any_raw_json_text_in_place_of_a_field(path: tuple[Any, ...], raw: str) -> None:
    body = json.dumps(replaced(valid_report(), path, "__RAW__")).replace('"__RAW__"', raw)
    check_same(body.encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.sampled_from(REPORT_PATHS), st.sampled_from(["extra", "type", "values"]), JSON_VALUES)
def test_any_member_added(path: tuple[Any, ...], key: str, value: Any) -> None:
    data = valid_report()
    target = data
    for part in path[:-1]:
        target = target[part]
    if isinstance(target, dict):
        target[key] = value
    check_same(json.dumps(data).encode("utf-8", "surrogatepass"))


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(body: bytes) -> None:
    check_same(body)
