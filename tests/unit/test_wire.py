"""Wire schema v1: round trips, and every kind of bad input names its field."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from vigil import wire


def report(**overrides: Any) -> wire.Report:
    fields: dict[str, Any] = {
        "schema_version": wire.SCHEMA_VERSION,
        "agent_id": "a1",
        "hostname": "laptop-1",
        "labels": {"department": "finance"},
        "batch_id": "b1",
        "sent_at": 1700000000.0,
        "agent_version": "0.1.0",
        "events": (
            wire.MetricsEvent("e1", 1, 1.0, {"cpu.busy_percent": 12.5, "disk.used_percent[/]": 40}),
            wire.CheckEvent("e2", 2, 2.0, "disk.root", "critical", "ok", 97.0, "full", "cleanup"),
            wire.CheckEvent(
                "e3", 3, 3.0, wire.HEARTBEAT_CHECK, "ok", None, None, "alive", ttl_s=150.0
            ),
            wire.RemediationEvent(
                "e4",
                4,
                4.0,
                "cleanup",
                "disk.root",
                "fixed",
                0,
                3.5,
                0.5,
                97.0,
                60.0,
                "removed 3 files",
                False,
                "ab" * 32,
                False,
            ),
        ),
    }
    fields.update(overrides)
    return wire.Report(**fields)


def as_dict() -> dict[str, Any]:
    return json.loads(wire.encode_report(report()))


def test_a_report_survives_encode_and_decode_unchanged() -> None:
    assert wire.decode_report(wire.encode_report(report())) == report()


def test_integers_are_accepted_where_numbers_are_expected() -> None:
    decoded = wire.decode_report(wire.encode_report(report()))
    assert decoded.events[0].values["disk.used_percent[/]"] == 40.0  # type: ignore[union-attr]


def mutate_state(d: dict[str, Any]) -> None:
    d["events"][1]["state"] = "on-fire"


def mutate_value(d: dict[str, Any]) -> None:
    d["events"][1]["value"] = "97"


def mutate_unknown(d: dict[str, Any]) -> None:
    d["events"][2]["colour"] = "red"


def mutate_missing(d: dict[str, Any]) -> None:
    del d["batch_id"]


def mutate_type(d: dict[str, Any]) -> None:
    d["events"][0]["type"] = "telepathy"


def mutate_metric(d: dict[str, Any]) -> None:
    d["events"][0]["values"]["cpu.busy_percent"] = None


def mutate_bool(d: dict[str, Any]) -> None:
    d["events"][3]["exit_code"] = True


def mutate_labels(d: dict[str, Any]) -> None:
    d["labels"] = ["finance"]


def mutate_version(d: dict[str, Any]) -> None:
    d["schema_version"] = 99


def mutate_output(d: dict[str, Any]) -> None:
    d["events"][3]["output"] = "x" * (wire.MAX_OUTPUT + 1)


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (mutate_state, "events[1].state"),
        (mutate_value, "events[1].value"),
        (mutate_unknown, "events[2].colour"),
        (mutate_missing, "batch_id"),
        (mutate_type, "events[0].type"),
        (mutate_metric, "events[0].values['cpu.busy_percent']"),
        (mutate_bool, "events[3].exit_code"),
        (mutate_labels, "labels"),
        (mutate_version, "schema_version"),
        (mutate_output, "events[3].output"),
    ],
    ids=[
        "unknown check state",
        "number sent as a string",
        "unknown event field",
        "missing batch id",
        "unknown event type",
        "null metric value",
        "boolean where an integer is expected",
        "labels not a mapping",
        "future schema version",
        "output longer than the cap",
    ],
)
def test_bad_input_names_the_field(mutate: Any, path: str) -> None:
    d = as_dict()
    mutate(d)
    with pytest.raises(wire.WireError) as exc:
        wire.Report.from_dict(d)
    assert exc.value.path == path


def test_non_finite_numbers_are_rejected() -> None:
    body = wire.encode_report(report()).replace(b'"sent_at":1700000000.0', b'"sent_at":NaN')
    with pytest.raises(wire.WireError) as exc:
        wire.decode_report(body)
    assert exc.value.path == "sent_at"


@pytest.mark.parametrize(
    "body", [b"{not json", b"\xff\xfe", b"[]", b"null"], ids=["syntax", "binary", "list", "null"]
)
def test_a_body_that_is_not_a_json_object_is_rejected(body: bytes) -> None:
    with pytest.raises(wire.WireError) as exc:
        wire.decode_report(body)
    assert exc.value.path == "body"


def test_too_many_events_are_rejected() -> None:
    d = as_dict()
    d["events"] = [d["events"][0]] * (wire.MAX_EVENTS + 1)
    with pytest.raises(wire.WireError) as exc:
        wire.Report.from_dict(d)
    assert exc.value.path == "events"


@pytest.mark.parametrize("outcome", ["needs_reboot", "needs_user"])
def test_script_declared_outcomes_are_valid_in_schema_version_1(outcome: str) -> None:
    d = as_dict()
    d["events"][3]["outcome"] = outcome
    assert d["schema_version"] == 1
    assert wire.Report.from_dict(d).events[3].outcome == outcome  # type: ignore[union-attr]


def test_a_reported_clock_jump_is_a_plain_v1_check_result() -> None:
    """Clock jumps need no schema change: an ``agent.clock`` check result carries them."""
    jump = wire.CheckEvent(
        "e9", 9, 9.0, wire.CLOCK_CHECK, "ok", None, 3600.0, "resumed after 3600 s asleep"
    )
    sent = report(events=(jump,))

    assert wire.decode_report(wire.encode_report(sent)) == sent
    assert wire.CLOCK_CHECK != wire.HEARTBEAT_CHECK


def test_a_deeply_nested_body_is_rejected_as_the_body() -> None:
    body = b'{"labels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(wire.WireError) as exc:
        wire.decode_report(body)
    assert exc.value.path == "body"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"a": 1.5, "b": 2.5}, {"a": 1.5, "b": 2.5}),
        ({"a": 1.5, "b": 2}, {"a": 1.5, "b": 2.0}),  # an int becomes a float
        ({"a": 1e308, "b": 1e308}, {"a": 1e308, "b": 1e308}),  # the sum overflows, values don't
    ],
    ids=["floats", "int-converted", "sum-overflows"],
)
def test_metric_values_are_accepted(values: dict[str, Any], expected: dict[str, float]) -> None:
    d = as_dict()
    d["events"][0]["values"] = values
    decoded = wire.Report.from_dict(d).events[0]
    assert isinstance(decoded, wire.MetricsEvent)
    assert decoded.values == expected
    assert all(type(v) is float for v in decoded.values.values())


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'"values":{"a":1.5,"b":1e999}', "events[0].values['b']"),  # inf from JSON
        (b'"values":{"a":1.5,"b":NaN}', "events[0].values['b']"),
        (b'"values":{"a":1.5,"":2.0}', "events[0].values"),
        (b'"values":{"a":1.5,"b":"2"}', "events[0].values['b']"),
    ],
    ids=["infinite", "nan", "empty-key", "string"],
)
def test_bad_metric_values_name_their_entry(body: bytes, path: str) -> None:
    good = b'"values":{"cpu.busy_percent":12.5,"disk.used_percent[/]":40}'
    raw = wire.encode_report(report())
    assert good in raw
    with pytest.raises(wire.WireError) as exc:
        wire.decode_report(raw.replace(good, body))
    assert exc.value.path == path


def test_flapping_is_sent_only_when_true() -> None:
    """Added within schema 1: an older collector (which rejects unknown fields) sees it
    only when a check flaps, and a message without it reads as not flapping."""
    calm = report()
    assert b'"flapping"' not in wire.encode_report(calm)
    events = list(calm.events)
    events[1] = dataclasses.replace(events[1], flapping=True)
    flapping = report(events=tuple(events))
    raw = wire.encode_report(flapping)
    assert raw.count(b'"flapping":true') == 1
    assert wire.decode_report(raw) == flapping
    assert wire.decode_report(wire.encode_report(calm)).events[1].flapping is False


def _remediation_index(r: wire.Report) -> int:
    return next(i for i, e in enumerate(r.events) if isinstance(e, wire.RemediationEvent))


def test_request_id_is_sent_only_for_a_run_now() -> None:
    """Added within schema 1 for run-now requests: absent unless set, round-trips when set,
    and an empty id is refused naming the field."""
    plain = report()
    assert b'"request_id"' not in wire.encode_report(plain)
    i = _remediation_index(plain)
    events = list(plain.events)
    events[i] = dataclasses.replace(events[i], request_id="rn-42")
    asked = report(events=tuple(events))
    raw = wire.encode_report(asked)
    assert raw.count(b'"request_id":"rn-42"') == 1
    assert wire.decode_report(raw) == asked
    with pytest.raises(wire.WireError) as exc:
        wire.decode_report(raw.replace(b'"rn-42"', b'""'))
    assert exc.value.path == f"events[{i}].request_id"


# ------------------------------------------------------------------ hostile input: a 400
# naming the field for everything a client controls, never an exception the collector
# would turn into a 500.


def body_with(path: list[Any], raw: str) -> bytes:
    """The valid report's JSON with the value at ``path`` replaced by raw JSON text."""
    d = as_dict()
    target: Any = d
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = "__RAW__"
    return json.dumps(d).replace('"__RAW__"', raw).encode()


@pytest.mark.parametrize(
    ("path", "raw", "where"),
    [
        (["hostname"], '"\\ud800"', "hostname"),
        (["labels"], '{"\\udfff": "x"}', "labels"),
        (["events", 1, "message"], '"ok \\ud800"', "events[1].message"),
        (["events", 0, "values"], '{"cpu\\ud800": 1.0}', "events[0].values"),
        (["events", 1, "seq"], str(2**63), "events[1].seq"),
        (["events", 3, "exit_code"], str(2**64 - 1), "events[3].exit_code"),
        (["events", 1, "seq"], str(-(2**63) - 1), "events[1].seq"),
        (["events", 1, "value"], "1" + "0" * 400, "events[1].value"),
        (["sent_at"], "1" + "0" * 400, "sent_at"),
        (["events", 1, "state"], "[" * 1000 + "]" * 1000, "events[1].state"),
        (["events", 1, "type"], "[" * 1000 + "]" * 1000, "events[1].type"),
        (["agent_id"], "1" * 5000, "body"),
    ],
    ids=[
        "lone surrogate in a string",
        "lone surrogate in a label key",
        "lone surrogate in an event message",
        "lone surrogate in a series name",
        "seq of 2^63",
        "exit code of 2^64-1",
        "seq below -2^63",
        "401-digit integer in a float field",
        "401-digit sent_at",
        "1000-deep list as a state",
        "1000-deep list as a type",
        "5000-digit integer",
    ],
)
def test_hostile_values_are_rejected_naming_their_field(
    path: list[Any], raw: str, where: str
) -> None:
    with pytest.raises(wire.WireError) as exc:
        wire.decode_report(body_with(path, raw))

    assert exc.value.path == where
    assert len(str(exc.value)) < 300


def test_a_rejected_value_is_quoted_short() -> None:
    d = as_dict()
    d["events"][1]["state"] = "x" * 100_000
    with pytest.raises(wire.WireError) as exc:
        wire.Report.from_dict(d)

    assert exc.value.path == "events[1].state"
    assert len(str(exc.value)) < 300


def test_the_largest_64_bit_integers_are_still_accepted() -> None:
    # exit_code has a narrower documented range (a signal number to a Windows status);
    # its edges are accepted like seq's 64-bit edge.
    d = as_dict()
    d["events"][1]["seq"] = 2**63 - 1
    d["events"][3]["exit_code"] = -(2**31)

    parsed = wire.Report.from_dict(d)

    assert parsed.events[1].seq == 2**63 - 1
    assert parsed.events[3].exit_code == -(2**31)
    d["events"][3]["exit_code"] = 2**32 - 1
    assert wire.Report.from_dict(d).events[3].exit_code == 2**32 - 1


# ----------------------------------------------------------------- accepted ranges


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("sent_at",), 1e308),
        (("sent_at",), -1e308),
        (("sent_at",), -1.0),
        (("sent_at",), 1e10 + 1),
        (("events", 0, "time"), 1e11),
        (("events", 3, "started_at"), -5),
        (("events", 3, "duration_s"), -0.5),
        (("events", 3, "duration_s"), 366 * 86400 + 1),
        (("events", 2, "ttl_s"), -1.0),
        (("events", 2, "ttl_s"), 1e308),
        (("events", 1, "seq"), -1),
        (("events", 3, "exit_code"), 2**32),
        (("events", 3, "exit_code"), -(2**31) - 1),
        (("agent_id",), ""),
        (("batch_id",), ""),
        (("events", 0, "event_id"), ""),
        (("events", 1, "check"), ""),
        (("events", 3, "remediation"), ""),
    ],
)
def test_a_number_out_of_its_range_or_an_empty_id_is_rejected_naming_it(
    path: tuple[Any, ...], value: Any
) -> None:
    d = as_dict()
    target = d
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(wire.WireError) as err:
        wire.Report.from_dict(d)
    expected = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    assert err.value.path == expected.lstrip(".")
    assert len(str(err.value)) < 200


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("sent_at",), 0.0),  # a laptop whose clock reset to 1970
        (("sent_at",), 1e10),
        (("events", 3, "duration_s"), 0),
        (("events", 3, "duration_s"), 7 * 86400.0),  # a run across a week of sleep
        (("events", 2, "ttl_s"), 366 * 86400.0),
        (("events", 3, "exit_code"), 3221225477),  # a Windows status (0xC0000005)
        (("events", 3, "exit_code"), -9),  # killed by a signal
        (("events", 0, "values"), {"plugin.value": 1e300}),
        (("events", 1, "value"), -1e300),
    ],
)
def test_every_value_a_correct_agent_can_produce_is_accepted(
    path: tuple[Any, ...], value: Any
) -> None:
    d = as_dict()
    target = d
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    wire.Report.from_dict(d)


# --------------------------------------------------------------------------- sequence fields

EPOCH = "0123456789abcdef" * 2


def sequenced_dict(**overrides: Any) -> dict[str, Any]:
    d = json.loads(wire.encode_report(report(epoch=EPOCH, seq_first=1, seq_last=4)))
    d.update(overrides)
    return d


def test_a_sequenced_report_survives_encode_and_decode() -> None:
    r = report(epoch=EPOCH, seq_first=1, seq_last=4)
    assert wire.decode_report(wire.encode_report(r)) == r


def test_a_report_without_sequence_fields_is_encoded_as_before() -> None:
    """An agent that sends no epoch writes none of the three fields (an older collector
    refuses unknown fields)."""
    assert not {"epoch", "seq_first", "seq_last"} & set(as_dict())


def _drop(d: dict[str, Any], key: str) -> dict[str, Any]:
    d.pop(key)
    return d


@pytest.mark.parametrize(
    ("body", "path"),
    [
        pytest.param(_drop(sequenced_dict(), "epoch"), "epoch", id="no-epoch"),
        pytest.param(_drop(sequenced_dict(), "seq_last"), "seq_last", id="no-seq-last"),
        pytest.param(sequenced_dict(epoch="XYZ"), "epoch", id="epoch-not-hex"),
        pytest.param(sequenced_dict(epoch=EPOCH.upper()), "epoch", id="epoch-upper-case"),
        pytest.param(sequenced_dict(seq_first=2), "seq_first", id="first-not-first-event"),
        pytest.param(sequenced_dict(seq_last=9), "seq_last", id="last-not-last-event"),
        pytest.param(sequenced_dict(seq_first=-1), "seq_first", id="negative"),
        pytest.param(sequenced_dict(seq_last="4"), "seq_last", id="not-an-integer"),
        pytest.param(sequenced_dict(events=[]), "events", id="no-events"),
    ],
)
def test_bad_sequence_fields_are_named(body: dict[str, Any], path: str) -> None:
    with pytest.raises(wire.WireError) as err:
        wire.decode_report(json.dumps(body).encode())
    assert err.value.path == path


def test_sequenced_events_must_be_strictly_increasing() -> None:
    body = sequenced_dict()
    body["events"][2]["seq"] = 2  # same as the event before it
    with pytest.raises(wire.WireError) as err:
        wire.decode_report(json.dumps(body).encode())
    assert err.value.path == "events[2].seq"


# --------------------------------------------------------------------------- console user

USER_ID = "0123456789abcdef" * 4


def test_a_report_with_its_console_user_survives_encode_and_decode() -> None:
    r = report(console_user=USER_ID)
    assert wire.decode_report(wire.encode_report(r)) == r


def test_a_report_without_a_console_user_is_encoded_as_before() -> None:
    """Nobody at the console (or surveys off at the agent): no field for an older
    collector to refuse."""
    assert "console_user" not in as_dict()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("alice", id="a-user-name"),
        pytest.param(USER_ID.upper(), id="upper-case"),
        pytest.param(USER_ID[:-1] + "g", id="not-hex"),
        pytest.param(USER_ID + "0", id="too-long"),
        pytest.param("", id="empty"),
        pytest.param(7, id="not-a-string"),
    ],
)
def test_a_console_user_that_is_not_a_sha256_in_hex_is_refused_naming_it(value: Any) -> None:
    body = json.loads(wire.encode_report(report()))
    body["console_user"] = value
    with pytest.raises(wire.WireError) as err:
        wire.decode_report(json.dumps(body).encode())
    assert err.value.path == "console_user"
