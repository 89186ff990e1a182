"""Hypothesis strategies for agent reports: any JSON value, and a valid report whose
fields can be replaced one at a time (shared by the wire fuzz tests and the fuzz run
against a real collector)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from vigil import wire

# Any character, lone surrogates included (the default strategy leaves them out).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63, 2**64 - 1, -(2**63) - 1, 10**400, 2**32, -(2**31) - 1]),
    # Finite but at or past the edge of a field's range, or of what arithmetic survives.
    st.sampled_from([1e308, -1e308, 1e10, 1e10 + 1, -1.0, 5e-324, 366 * 86400.0 + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
    ANY_TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(ANY_TEXT, inner, max_size=4)
    ),
    max_leaves=12,
)


def valid_report() -> dict[str, Any]:
    events = [
        {"type": "metrics", "event_id": "e1", "seq": 1, "time": 1.0, "values": {"cpu": 1.5}},
        {
            "type": "check", "event_id": "e2", "seq": 2, "time": 2.0, "check": "disk",
            "state": "critical", "previous_state": "ok", "value": 97.0, "message": "full",
            "remediation": "cleanup", "ttl_s": None,
        },
        {
            "type": "remediation", "event_id": "e3", "seq": 3, "time": 3.0,
            "remediation": "cleanup", "check": "disk", "outcome": "fixed", "exit_code": 0,
            "started_at": 2.5, "duration_s": 0.5, "value_before": 97.0, "value_after": 60.0,
            "output": "ok", "output_truncated": False, "script_sha256": "ab" * 32,
            "dry_run": False,
        },
    ]  # fmt: skip
    return {
        "schema_version": wire.SCHEMA_VERSION, "agent_id": "a1", "hostname": "h",
        "labels": {"dept": "it"}, "batch_id": "b1", "sent_at": 1.7e9,
        "agent_version": "0.1.0", "events": events,
    }  # fmt: skip


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indexes)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


REPORT_PATHS = paths(valid_report())


def replaced(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    target = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return data
