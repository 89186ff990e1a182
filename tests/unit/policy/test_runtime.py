"""The in-memory policy state of one collector process: running versions stored only
when they change, kept on a failed flush, and the policy header's parsing."""

from __future__ import annotations

import pytest

from vigil.collector.policy.runtime import PolicyRuntime


def test_only_changed_running_versions_are_handed_out_once() -> None:
    runtime = PolicyRuntime()
    runtime.note("a", ("finance", 1), {"d": "f"}, 10.0)
    runtime.note("a", ("finance", 1), {"d": "f"}, 11.0)
    runtime.note("b", (None, None), {}, 12.0)
    assert runtime.take_changes() == [("a", "finance", 1, 10.0), ("b", None, None, 12.0)]
    runtime.note("a", ("finance", 1), {"d": "f"}, 13.0)
    assert runtime.take_changes() == []
    runtime.note("a", ("finance", 2), {"d": "f"}, 14.0)
    assert runtime.take_changes() == [("a", "finance", 2, 14.0)]
    assert runtime.labels_of("a") == {"d": "f"} and runtime.labels_of("z") is None


def test_a_failed_flush_is_given_back_unless_newer_news_came() -> None:
    runtime = PolicyRuntime()
    runtime.note("a", ("finance", 1), {}, 10.0)
    runtime.note("b", ("finance", 1), {}, 10.0)
    rows = runtime.take_changes()
    runtime.note("b", ("finance", 2), {}, 11.0)
    runtime.give_back(rows)
    assert sorted(runtime.take_changes()) == [("a", "finance", 1, 10.0), ("b", "finance", 2, 11.0)]


def test_what_storage_holds_is_not_written_again() -> None:
    # A restarted process (or one that another process's hosts moved to) learns from
    # storage what each host runs: a report saying the same writes nothing.
    runtime = PolicyRuntime()
    runtime.replace_running({"a": ("finance", 1), "b": (None, None)})
    runtime.note("a", ("finance", 1), {}, 10.0)
    runtime.note("b", (None, None), {}, 10.0)
    assert runtime.take_changes() == []
    runtime.note("a", ("finance", 2), {}, 11.0)
    runtime.note("c", (None, None), {}, 11.0)  # not in storage: written
    assert runtime.take_changes() == [("a", "finance", 2, 11.0), ("c", None, None, 11.0)]


def test_a_change_not_stored_yet_survives_a_resync() -> None:
    runtime = PolicyRuntime()
    runtime.note("a", ("finance", 2), {}, 10.0)  # pending: the next flush stores it
    runtime.replace_running({"a": ("finance", 1)})  # read before that flush
    runtime.note("a", ("finance", 2), {}, 11.0)
    assert runtime.take_changes() == [("a", "finance", 2, 10.0)]
    runtime.replace_running({"a": ("finance", 1)})  # another process stored an older one
    runtime.note("a", ("finance", 2), {}, 12.0)
    assert runtime.take_changes() == [("a", "finance", 2, 12.0)]


@pytest.mark.parametrize(
    ("header", "parsed"),
    [("none", (None, None)), ("finance@7", ("finance", 7)), (' "finance@7" ', ("finance", 7))],
)
def test_the_policy_header_is_parsed(header: str, parsed: tuple) -> None:
    assert PolicyRuntime.parse_header(header) == parsed


@pytest.mark.parametrize("header", ["", "finance", "finance@0", "Finance@1", "f@x"])
def test_a_bad_policy_header_is_refused(header: str) -> None:
    with pytest.raises(ValueError):
        PolicyRuntime.parse_header(header)
