"""The pure rollout core: rings, the version offered per host, auto-advance, the
blast-radius guard's threshold and the ack's ``"policy"`` key."""

from __future__ import annotations

from typing import Any

import pytest

from vigil.collector.policy import rollout as core
from vigil.collector.policy.rollout import GuardRules, Rollout

NOW = 1_700_000_000.0


def make(**extra: Any) -> Rollout:
    base: dict[str, Any] = {
        "policy": "finance",
        "version": 2,
        "previous_version": 1,
        "target": {},
        "rings": (0.05, 0.25, 1.0),
        "canary": frozenset(),
        "soak_s": 600.0,
        "ring": 0,
        "ring_started_at": NOW,
        "started_at": NOW,
    }
    return Rollout(**(base | extra))


def test_a_hosts_place_is_stable_and_differs_per_policy() -> None:
    assert core.position("ws-1", "finance") == core.position("ws-1", "finance")
    assert core.position("ws-1", "finance") != core.position("ws-1", "hr")
    assert 0.0 <= core.position("ws-1", "finance") < 1.0


def test_ring_shares_split_a_fleet_close_to_the_asked_shares() -> None:
    rollout = make()
    rings = [core.ring_of(f"agent-{i:05d}", rollout) for i in range(10_000)]
    assert 0.04 < rings.count(0) / 10_000 < 0.06
    assert 0.18 < rings.count(1) / 10_000 < 0.22
    assert 0.73 < rings.count(2) / 10_000 < 0.77


def test_named_canary_hosts_are_in_ring_zero() -> None:
    rollout = make(rings=(0.0, 0.5, 1.0), canary=frozenset({"ws-canary"}))
    assert core.ring_of("ws-canary", rollout) == 0
    assert all(core.ring_of(f"a{i}", rollout) > 0 for i in range(200))


def test_hosts_beyond_the_reached_ring_keep_the_previous_version() -> None:
    rollout = make(rings=(0.0, 1.0), canary=frozenset({"ws-canary"}))
    assert core.version_for(rollout, "ws-canary") == 2
    assert core.version_for(rollout, "ws-other") == 1
    assert core.version_for(core.advanced(rollout, NOW + 1), "ws-other") == 2


def test_a_new_policy_is_offered_to_nobody_outside_the_reached_rings() -> None:
    rollout = make(rings=(0.0, 1.0), previous_version=None)
    assert core.version_for(rollout, "ws-other") is None


def test_the_most_specific_matching_policy_wins() -> None:
    everyone = make(policy="base", target={})
    finance = make(policy="finance", target={"labels": {"department": "finance"}})
    assert core.policy_for([everyone, finance], {"department": "finance"}) is finance
    assert core.policy_for([everyone, finance], {"department": "hr"}) is everyone
    assert core.policy_for([finance], {}) is None


@pytest.mark.parametrize(
    ("changes", "now", "due"),
    [
        ({"evidence_at": NOW}, NOW + 599, False),
        ({"evidence_at": NOW}, NOW + 600, True),
        ({"evidence_at": NOW + 300}, NOW + 600, False),
        ({}, NOW + 6000, False),
        ({"evidence_at": NOW, "paused": True}, NOW + 6000, False),
        ({"evidence_at": NOW, "ring": 2}, NOW + 6000, False),
    ],
    ids=[
        "still soaking",
        "soaked",
        "the soak counts from the evidence",
        "no evidence never advances",
        "paused never advances",
        "complete never advances",
    ],
)
def test_auto_advance_waits_for_evidence_and_the_soak(
    changes: dict[str, Any], now: float, due: bool
) -> None:
    assert core.due_to_advance(make(**changes), now) is due


def host(agent_id: str, last_seen: float = NOW + 5, **labels: str) -> dict[str, Any]:
    return {"agent_id": agent_id, "labels": labels, "last_seen": last_seen}


CANARIES = frozenset({"c1", "c2", "c3", "c4", "c5"})


@pytest.mark.parametrize(
    ("hosts", "running", "met", "needed"),
    [
        ([host(c) for c in sorted(CANARIES)], {}, False, 4),
        ([host(c) for c in sorted(CANARIES)], {"c1": 2, "c2": 2, "c3": 2}, False, 4),
        ([host(c) for c in sorted(CANARIES)], {"c1": 2, "c2": 2, "c3": 2, "c4": 2}, True, 4),
        ([host(c) for c in sorted(CANARIES)], {c: 1 for c in CANARIES}, False, 4),
        ([host("c1"), *(host(c, NOW - 1) for c in ("c2", "c3", "c4", "c5"))], {}, False, 1),
        ([host("c1"), *(host(c, NOW - 1) for c in ("c2", "c3", "c4", "c5"))], {"c1": 2}, True, 1),
        ([host(c, NOW - 1) for c in sorted(CANARIES)], {c: 2 for c in CANARIES}, False, 1),
        ([], {}, True, 1),
    ],
    ids=[
        "nobody picked the version up",
        "three of five is under 80 %",
        "four of five is 80 %",
        "the previous version is no evidence",
        "hosts offline during the soak are not waited for",
        "one online host on it is enough when the rest were offline",
        "nobody seen since the ring started: no evidence",
        "a ring without hosts has nothing to wait for",
    ],
)
def test_a_ring_advances_on_evidence_of_its_hosts_running_the_version(
    hosts: list[dict[str, Any]], running: dict[str, int], met: bool, needed: int
) -> None:
    rollout = make(rings=(0.0, 1.0), canary=CANARIES)
    found = core.evidence(rollout, [rollout], hosts, running, 0.8)
    assert (found.met, found.needed) == (met, needed)


def test_hosts_of_another_ring_or_a_more_specific_policy_are_no_evidence() -> None:
    rollout = make(rings=(0.0, 1.0), canary=frozenset({"c1", "c2"}))
    finance = make(policy="finance-laptops", target={"labels": {"kind": "laptop"}})
    hosts = [host("c1"), host("c2", kind="laptop"), host("other")]
    found = core.evidence(rollout, [rollout, finance], hosts, {"c1": 2, "other": 2}, 0.8)
    assert (found.hosts, found.online, found.on_version, found.met) == (1, 1, 1, True)


def test_a_waiting_ring_says_how_many_of_its_hosts_run_the_version() -> None:
    rollout = make(version=3, rings=(0.0, 1.0), canary=frozenset({"c1", "c2"}))
    found = core.evidence(rollout, [rollout], [host("c1"), host("c2")], {"c1": 3}, 0.8)
    assert found.describe() == "waiting: 1 of 2 canary hosts on version 3 (2 needed)"


def test_advancing_restarts_the_soak_and_stops_at_the_last_ring() -> None:
    rollout = core.advanced(make(evidence_at=NOW), NOW + 700)
    assert (rollout.ring, rollout.ring_started_at, rollout.evidence_at) == (1, NOW + 700, None)
    last = core.advanced(core.advanced(rollout, NOW + 800), NOW + 900)
    assert last.ring == 2 and last.complete


@pytest.mark.parametrize(
    ("counts", "rules", "tripped"),
    [
        ([("fix", "error", 3, 3)], GuardRules(), ["fix"]),
        ([("fix", "error", 2, 2)], GuardRules(), []),
        ([("fix", "error", 3, 3), ("fix", "fixed", 4, 4)], GuardRules(), []),
        ([("fix", "timeout", 2, 2), ("fix", "not_fixed", 1, 1)], GuardRules(), ["fix"]),
        ([("fix", "needs_reboot", 5, 5)], GuardRules(), []),
        ([("fix", "needs_reboot", 5, 5)], GuardRules(include=frozenset({"needs_reboot"})), ["fix"]),
        ([("a", "error", 3, 3), ("b", "fixed", 9, 9)], GuardRules(), ["a"]),
    ],
    ids=[
        "all failed over the minimum",
        "under the minimum count",
        "under the failure rate",
        "timeouts and not_fixed count",
        "needs_reboot not counted by default",
        "needs_reboot counted when included",
        "only the failing remediation",
    ],
)
def test_the_guard_trips_on_rate_and_minimum(
    counts: list[tuple[str, str, int, int]], rules: GuardRules, tripped: list[str]
) -> None:
    assert [t.remediation for t in core.guard_trips(counts, rules)] == tripped


@pytest.mark.parametrize(
    ("rings", "canary", "share", "expected"),
    [
        (None, [], None, (0.05, 0.25, 1.0)),
        (None, ["ws-1"], None, (0.0, 0.25, 1.0)),
        (None, [], 0.1, (0.1, 0.25, 1.0)),
        ([1.0], [], None, (1.0,)),
        (None, [], 0.5, (0.5, 1.0)),
    ],
    ids=["defaults", "named canaries only", "canary share", "all at once", "share past ring 1"],
)
def test_publish_rings(
    rings: list[float] | None, canary: list[str], share: float | None, expected: tuple
) -> None:
    assert core.rings_for((0.05, 0.25, 1.0), rings, canary, share) == expected


@pytest.mark.parametrize(
    "bad", [[], [0.5], [0.5, 0.2, 1.0], [-0.1, 1.0], [float("nan"), 1.0]], ids=str
)
def test_bad_rings_are_refused_naming_the_share(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="rings"):
        core.check_rings(bad)


def test_the_offer_carries_version_halts_and_the_hosts_open_run_now_requests() -> None:
    requests = [
        {"id": "rn-1", "remediation": "fix", "params": {}, "host": "ws-1", "labels": {}},
        {"id": "rn-2", "remediation": "fix", "params": {}, "host": None, "labels": {"d": "f"}},
        {"id": "rn-3", "remediation": "fix", "params": {}, "host": "ws-2", "labels": {}},
        {"id": "rn-4", "remediation": "fix", "params": {}, "host": None, "labels": {"d": "f"}},
    ]
    for r in requests:
        r |= {"requested_by": "alice", "requested_at": NOW, "done_hosts": frozenset()}
    requests[3]["done_hosts"] = frozenset({"ws-1"})
    offer = core.offer([make(ring=2)], {"disk-cleanup", "*"}, requests, "ws-1", {"d": "f"}, "/u")
    assert (offer["policy"], offer["version"], offer["url"]) == ("finance", 2, "/u")
    assert offer["halted"] == ["disk-cleanup"] and offer["halt_all"] is True
    assert [r["id"] for r in offer["run_now"]] == ["rn-1", "rn-2"]
    assert offer["run_now"][0]["requested_by"] == "alice"


def test_no_policy_offers_nulls_but_still_the_kill_switch() -> None:
    offer = core.offer([], {"x"}, [], "ws-1", {}, "/u")
    assert offer == {
        "policy": None,
        "version": None,
        "url": "/u",
        "halted": ["x"],
        "halt_all": False,
        "run_now": [],
    }
