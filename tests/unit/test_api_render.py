"""Renderers: Markdown CAPA reports and the hosts' JSON, from plain record dicts."""

from __future__ import annotations

from typing import Any

import pytest

from vigil.collector.api.render import host_json, render_incident_report, render_problem_report
from vigil.collector.desk.catalog import Catalog, HostGroup

CATALOG = Catalog(
    groups=(
        HostGroup("servers", {"role": "server"}, "high", silence_expected=False),
        HostGroup("laptops", {"role": "laptop"}, "medium", silence_expected=True),
    ),
)


def host(**changes: Any) -> dict[str, Any]:
    """A host record as ``store.list_hosts`` returns it: seen at t=1000, TTL 60 s."""
    record = {
        "host": "a1",
        "hostname": "pc-1",
        "last_seen": 1000.0,
        "heartbeat_ttl_s": 60.0,
        "labels": {"role": "server"},
        "checks": {"cpu.busy": "ok"},
        "open_incidents": 0,
    }
    return {**record, **changes}


def view(record: dict[str, Any], now: float = 1010.0) -> dict[str, Any]:
    return host_json(record, catalog=CATALOG, heartbeat_grace_s=30.0, now=now)


def test_the_report_escapes_agent_text_that_would_break_the_markdown() -> None:
    incident = {
        "id": 3, "check": "c", "hostname": "h", "host": "a", "state": "open", "priority": "P2",
        "opened_at": 0.0, "message": "bad | pipe\nnew line", "timeline": [],
    }  # fmt: skip
    markdown = render_incident_report(incident)
    assert "bad \\| pipe new line" in markdown


def test_a_problem_report_names_a_fleet_problem_and_its_capa_notes() -> None:
    problem = {
        "id": 4, "kind": "fleet", "check": "dns.resolve", "state": "resolved",
        "priority": "P1", "opened_at": 0.0, "resolved_at": 60.0, "incidents": [1, 2],
        "summary": "3 hosts", "root_cause": "bad resolver", "hostname": None,
        "timeline": [{"at": 0.0, "text": "opened"}],
    }  # fmt: skip
    markdown = render_problem_report(problem)
    assert markdown.startswith("# Problem 4 (fleet): dns.resolve\n")
    assert "| host | fleet-wide |" in markdown
    assert "| incidents | 1, 2 |" in markdown
    assert "- **Root cause:** bad resolver" in markdown
    assert "- **Corrective action:** -" in markdown
    assert "- 1970-01-01 00:00:00 UTC — opened" in markdown


@pytest.mark.parametrize(
    ("changes", "now", "liveness"),
    [
        ({}, 1010.0, "alive"),
        ({}, 1090.0, "alive"),
        ({}, 1091.0, "silent"),
        ({"labels": {"role": "laptop"}}, 1091.0, "asleep"),
        ({"heartbeat_ttl_s": None}, 9999.0, "unknown"),
    ],
    ids=[
        "recently seen",
        "at the end of TTL plus grace",
        "past TTL plus grace",
        "silent where silence is expected",
        "no TTL announced",
    ],
)
def test_host_liveness(changes: dict[str, Any], now: float, liveness: str) -> None:
    assert view(host(**changes), now)["liveness"] == liveness


@pytest.mark.parametrize(
    ("changes", "health"),
    [
        ({}, "ok"),
        ({"checks": {"a": "ok", "b": "warning"}}, "warning"),
        ({"checks": {"a": "warning", "b": "critical"}}, "critical"),
        ({"open_incidents": 1}, "critical"),
    ],
    ids=["all ok", "a warning", "a critical check", "an open incident"],
)
def test_host_health(changes: dict[str, Any], health: str) -> None:
    assert view(host(**changes))["health"] == health


def test_host_json_adds_groups_and_leaves_the_record_alone() -> None:
    record = host()
    shaped = view(record)
    assert shaped["groups"] == ["servers"]
    assert list(shaped)[: len(record)] == list(record)
    assert "liveness" not in record
