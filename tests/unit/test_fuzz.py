"""Property-based fuzzing of the two parsers every outside byte goes through.

The wire decoder (every agent report) and the config reader (every YAML file) must
answer any input with a result or their own error naming the field: never another
exception, which the collector would turn into a 500 and a CLI into a traceback. Bounded
in examples and time so the suite stays fast; run with ``--hypothesis-seed`` to replay.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import orjson
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.desk import open_desk
from tests.support.wirefuzz import JSON_VALUES, REPORT_PATHS, paths, replaced, valid_report
from vigil import wire
from vigil.configio import ConfigError, load_yaml

REPO = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_or_wire_error(body: bytes) -> wire.Report | wire.WireError:
    try:
        return wire.decode_report(body)
    except wire.WireError as exc:
        return exc


def check_outcome(result: wire.Report | wire.WireError) -> None:
    if isinstance(result, wire.WireError):
        head = result.path.split(".")[0].split("[")[0]
        assert head in {*valid_report(), "body"}, result.path
        assert len(str(result)) < 400
    else:
        # Whatever is accepted can be stored and sent on: valid UTF-8, finite numbers.
        orjson.dumps(result.to_dict())
        assert wire.decode_report(wire.encode_report(result)) == result


@FUZZ
@given(st.sampled_from(REPORT_PATHS), JSON_VALUES)
def test_any_field_replaced_by_any_value(path: tuple[Any, ...], value: Any) -> None:
    data = replaced(valid_report(), path, value)
    try:
        body = json.dumps(data).encode()
    except ValueError:  # pragma: no cover - json.dumps takes any of these values
        return
    check_outcome(decode_or_wire_error(body))


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(body: bytes) -> None:
    check_outcome(decode_or_wire_error(body))


@FUZZ
@given(st.sampled_from(REPORT_PATHS), st.text(max_size=30))
def test_any_raw_json_text_in_place_of_a_field(path: tuple[Any, ...], raw: str) -> None:
    body = json.dumps(replaced(valid_report(), path, "__RAW__")).replace('"__RAW__"', raw)
    check_outcome(decode_or_wire_error(body.encode("utf-8", "surrogatepass")))


# A fragment of JSON repeated many times, between a head and a tail: the shapes that cost
# a parser far more memory than their bytes (empty containers, repeated keys, tiny
# values), and some that are fine. Whatever the decoder makes of them, it holds a
# bounded amount of memory doing so, whatever the body's size.
FRAGMENTS = st.sampled_from(
    [b"{},", b"[],", b"0,", b"0.5,", b'"",', b'"k":0,', b'"abcdef",', b'"k":[],', b"null,",
     b'{"a":1},', b'"\\u0000",', b"[[[[", b" ", b'"x":"y",', b"1e308,"]
)  # fmt: skip
HEADS = st.sampled_from([b"[", b"{", b'{"events":[', b'{"labels":{', b""])
TAILS = st.sampled_from([b"0]", b'"z":0}', b"]}", b"}}", b""])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FRAGMENTS, st.integers(min_value=1, max_value=2_000_000), HEADS, TAILS)
def test_any_repeated_fragment_decodes_in_bounded_memory(
    piece: bytes, repeat: int, head: bytes, tail: bytes
) -> None:
    """Up to 16 MiB of one fragment repeated: accepted or refused as the body or a field,
    and the decoder's peak memory beyond the body itself stays under a fixed bound (the
    structural limits: at most 10,003 containers and 250,000 members and items)."""
    body = head + piece * min(repeat, (16 * 2**20) // len(piece)) + tail
    tracemalloc.start()
    try:
        result = decode_or_wire_error(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    if isinstance(result, wire.WireError):  # the body, a field, or an unknown key it names
        assert result.path and len(str(result)) < 400
    else:
        check_outcome(result)
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB for {len(body)} bytes"


def reference_structure_error(body: bytes) -> str | None:
    """check_structure's verdict by its definition: the brackets and commas outside
    strings, counted in one plain pass (the error it raises, or None)."""
    containers = commas = 0
    inside = escaped = False
    for byte in body:
        if inside:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                inside = False
        elif byte == 0x22:
            inside = True
        elif byte in b"{[":
            containers += 1
        elif byte == 0x2C:
            commas += 1
    if containers > wire.MAX_CONTAINERS:
        return f"more than {wire.MAX_CONTAINERS} objects and lists: not a report"
    if commas * wire.MIN_BYTES_PER_COMMA > len(body):
        return "too many values for its size: not a report"
    if commas > wire.MAX_ITEMS:
        return f"more than {wire.MAX_ITEMS} members and items: not a report"
    return None


# JSON strings holding brackets, commas and escapes (quotes and backslashes outside
# strings are not JSON, for which the check's counts are a guess: see _inside_strings).
_STRINGS = st.lists(st.sampled_from([b"{", b"[", b",", b'\\"', b"\\\\", b"x"]), max_size=8).map(
    lambda parts: b'"' + b"".join(parts) + b'"'
)


@FUZZ
@given(
    st.lists(
        st.one_of(st.sampled_from([b"{", b"[", b",", b"a", b"k" * 97]), _STRINGS), max_size=50
    ),
    st.integers(min_value=1, max_value=wire.MAX_CONTAINERS + 200),
    st.integers(min_value=0, max_value=3),
)
@example([b"{"], wire.MAX_CONTAINERS + 1, 0)  # just past the length that skips the bracket count
@example([b"["], wire.MAX_CONTAINERS, 0)
@example([b"[", b","], wire.MAX_CONTAINERS // 2 + 1, 0)
def test_the_structure_check_counts_as_its_definition_says(
    pieces: list[bytes], repeat: int, spaces: int
) -> None:
    """The pre-parse bounds give the same verdict as counting brackets and commas outside
    strings byte by byte, on bodies either side of the length under which brackets need
    no count (the check's shortcut), with escapes and brackets inside strings."""
    unit = b"".join(pieces) or b"a"
    body = unit * min(repeat, 40_000 // len(unit)) + b" " * spaces
    expected = reference_structure_error(body)
    try:
        wire.check_structure(body)
    except wire.WireError as exc:
        assert exc.path == "body" and exc.message == expected
    else:
        assert expected is None


# ------------------------------------------------------------------ config files

# Durations and sizes as people write them, at any magnitude (a typo'd "9999999d").
UNIT_STRINGS = st.from_regex(
    r"-?[0-9]{1,400}(\.[0-9]{1,3})?\s?(ms|s|m|h|d|B|KB|KiB|MiB|GB|GiB|TiB)?", fullmatch=True
)
YAML_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        UNIT_STRINGS,
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def loaders() -> list[tuple[str, Any]]:
    from vigil.agent.config import load_agent_config
    from vigil.collector.config import load_collector_config

    return [("agent.yaml", load_agent_config), ("collector.yaml", load_collector_config)]


LOADERS = loaders()
EXAMPLES = {
    name: yaml.safe_load((REPO / "config" / name).read_text(encoding="utf-8"))
    for name, _ in LOADERS
}


@FUZZ
@given(st.sampled_from(range(len(LOADERS))), st.data())
def test_any_config_key_replaced_by_any_value(which: int, data: st.DataObject) -> None:
    name, load = LOADERS[which]
    config = EXAMPLES[name]
    path = data.draw(st.sampled_from(paths(config)))
    mutated = replaced(json.loads(json.dumps(config)), path, data.draw(YAML_VALUES))
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / name
        file.write_text(yaml.safe_dump(mutated), encoding="utf-8")
        shutil.copy(REPO / "config" / "catalog.yaml", tmp)  # the collector's example names it
        try:
            load(file)
        except ConfigError as exc:
            assert str(exc).startswith(tmp)  # names the file (or the catalog it names)
            assert len(str(exc)) < 2000


@FUZZ
@given(st.text(max_size=200))
def test_any_yaml_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "c.yaml"
        file.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            load_yaml(file)
        except ConfigError as exc:
            assert str(file) in str(exc)


def test_every_accepted_report_applies_and_a_reopened_desk_starts(tmp_path: Path) -> None:
    """What the decoder accepts, the desk applies without an error (the collector would
    answer 500 for the whole group commit), and a desk reopened on the store starts."""
    desk = open_desk(tmp_path / "fuzz.db")
    applied = 0

    @FUZZ
    @given(st.sampled_from(REPORT_PATHS), JSON_VALUES)
    # The inputs that once stored a report and then broke the aggregates, always tried.
    @example(("sent_at",), 1e308)
    @example(("sent_at",), -1e308)
    @example(("events", 2, "duration_s"), 1e308)
    def apply_one(path: tuple[Any, ...], value: Any) -> None:
        nonlocal applied
        data = valid_report()
        data["batch_id"] = uuid.uuid4().hex
        for event in data["events"]:
            event["event_id"] = f"{data['batch_id']}-{event['event_id']}"
        result = decode_or_wire_error(json.dumps(replaced(data, path, value)).encode())
        if isinstance(result, wire.Report):
            desk.ingest(result, 1.7e9)
            applied += 1

    try:
        apply_one()
        snapshot = desk.metrics_snapshot()
    finally:
        desk.close()
    assert applied > 0
    reopened = open_desk(tmp_path / "fuzz.db")
    try:
        assert reopened.metrics_snapshot().events_total == snapshot.events_total
    finally:
        reopened.close()
