"""The :class:`~collector.storage.protocols.PolicyRepository` contract, run against every
backend (see ``backends.py``): what publishing, rollouts, the kill switch and run-now
rely on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.storage.backends import BackendFactory
from vigil import wire
from vigil.collector.storage.protocols import Storage

NOW = 1_700_000_000.0


@pytest.fixture
def storage(backend: BackendFactory) -> Iterator[Storage]:
    store = backend.open()
    yield store
    store.close()


def version_row(version: int, **extra: Any) -> dict[str, Any]:
    row = {"policy": "finance", "version": version, "sha256": f"s{version}", "key_id": "k1"}
    row |= {"target": {"labels": {"department": "finance"}}, "created_at": NOW}
    return row | {"expires_at": NOW + 86400, "uploaded_at": NOW, "uploaded_by": "alice"} | extra


def rollout_row(**extra: Any) -> dict[str, Any]:
    row = {"policy": "finance", "version": 2, "previous_version": 1, "target": {}}
    row |= {"rings": [0.05, 0.25, 1.0], "canary": ["ws-1"], "soak_s": 600.0, "ring": 0}
    row |= {"ring_started_at": NOW, "started_at": NOW, "paused": False, "paused_reason": ""}
    return row | {"updated_at": NOW} | extra


def run(
    event_id: str, remediation: str, outcome: str, dry_run: bool = False
) -> wire.RemediationEvent:
    return wire.RemediationEvent(
        event_id=event_id,
        seq=1,
        time=NOW,
        remediation=remediation,
        check=None,
        outcome=outcome,  # type: ignore[arg-type]
        exit_code=1,
        started_at=NOW,
        duration_s=0.5,
        value_before=None,
        value_after=None,
        output="",
        output_truncated=False,
        script_sha256="0" * 64,
        dry_run=dry_run,
    )


def test_a_version_is_stored_once_with_its_document_byte_for_byte(storage: Storage) -> None:
    document = b'{"format": "vigil-policy/1", "x": "\xc3\xa9"}\n'
    with storage.session() as uow, uow.transaction():
        assert uow.policy.add_version(version_row(1), document)
        assert not uow.policy.add_version(version_row(1), b"other")
        assert uow.policy.add_version(version_row(3), b"three")
    with storage.session() as uow:
        assert uow.policy.document("finance", 1) == document
        assert uow.policy.document("finance", 2) is None
        assert uow.policy.latest_version("finance") == 3
        assert uow.policy.latest_version("hr") is None
        listed = uow.policy.versions("finance")
    assert [v["version"] for v in listed] == [3, 1]
    assert listed[1]["target"] == {"labels": {"department": "finance"}}
    assert "document" not in listed[0]


def test_a_rollout_is_replaced_whole(storage: Storage) -> None:
    with storage.session() as uow, uow.transaction():
        uow.policy.put_rollout(rollout_row())
        uow.policy.put_rollout(rollout_row(ring=1, paused=True, paused_reason="guard"))
    with storage.session() as uow:
        (rollout,) = uow.policy.rollouts()
    assert rollout["ring"] == 1 and rollout["paused"] is True
    assert rollout["rings"] == [0.05, 0.25, 1.0] and rollout["canary"] == ["ws-1"]
    assert rollout["previous_version"] == 1


def test_a_rollouts_evidence_time_and_remediations_are_kept(storage: Storage) -> None:
    """Both are optional: a row without them stores NULL."""
    with storage.session() as uow, uow.transaction():
        uow.policy.put_rollout(rollout_row(policy="a", evidence_at=NOW + 5, remediations=["x"]))
        uow.policy.put_rollout(rollout_row(policy="b"))
    with storage.session() as uow:
        a, b = uow.policy.rollouts()
    assert (a["evidence_at"], a["remediations"]) == (NOW + 5, ["x"])
    assert (b["evidence_at"], b["remediations"]) == (None, None)


def test_running_versions_are_upserted_per_host(storage: Storage) -> None:
    with storage.session() as uow, uow.transaction():
        uow.policy.set_running([("a", "finance", 1, NOW), ("b", "finance", 1, NOW)])
        uow.policy.set_running([("a", "finance", 2, NOW + 5), ("b", None, None, NOW + 5)])
    with storage.session() as uow:
        assert uow.policy.running("finance") == {"a": 2}
        assert uow.policy.running_all() == {"a": ("finance", 2), "b": (None, None)}


def test_guard_counts_only_runs_from_hosts_on_the_version_since_the_start(
    storage: Storage,
) -> None:
    with storage.session() as uow, uow.transaction():
        uow.policy.set_running([("a", "finance", 2, NOW), ("b", "finance", 2, NOW)])
        uow.policy.set_running([("c", "finance", 1, NOW)])
        uow.runs.add("a", "ws-a", run("e1", "fix", "error"), NOW + 1)
        uow.runs.add("a", "ws-a", run("e2", "fix", "error"), NOW + 2)
        uow.runs.add("b", "ws-b", run("e3", "fix", "fixed"), NOW + 2)
        uow.runs.add("b", "ws-b", run("e4", "fix", "error", dry_run=True), NOW + 2)
        uow.runs.add("c", "ws-c", run("e5", "fix", "error"), NOW + 2)  # old version
        uow.runs.add("a", "ws-a", run("e6", "fix", "error"), NOW - 10)  # before the start
    with storage.session() as uow:
        counts = uow.policy.guard_counts("finance", 2, NOW)
    assert counts == [("fix", "error", 2, 1), ("fix", "fixed", 1, 1)]


def test_halts_are_set_once_and_lifted(storage: Storage) -> None:
    with storage.session() as uow, uow.transaction():
        assert uow.policy.halt("disk-cleanup", NOW, "alice", "bad fix")
        assert not uow.policy.halt("disk-cleanup", NOW + 1, "bob", "again")
        assert uow.policy.halt("*", NOW, "guard", "all")
    with storage.session() as uow, uow.transaction():
        assert uow.policy.unhalt("*")
        assert not uow.policy.unhalt("nothing")
    with storage.session() as uow:
        assert uow.policy.halts() == [
            {
                "remediation": "disk-cleanup",
                "halted_at": NOW,
                "halted_by": "alice",
                "reason": "bad fix",
            }
        ]


def test_run_now_requests_collect_one_result_per_host(storage: Storage) -> None:
    request = {"id": "rn-1", "remediation": "fix", "params": {"n": 1}, "host": None}
    request |= {"labels": {"department": "finance"}, "requested_by": "alice"}
    request |= {"requested_at": NOW, "expires_at": NOW + 3600}
    with storage.session() as uow, uow.transaction():
        uow.policy.add_run_now(request)
        uow.policy.add_run_now(request | {"id": "rn-old", "expires_at": NOW - 1})
        assert uow.policy.add_run_now_result("rn-1", "a", "e1", "fixed", NOW + 5)
        assert not uow.policy.add_run_now_result("rn-1", "a", "e2", "fixed", NOW + 6)
        assert not uow.policy.add_run_now_result("rn-unknown", "a", "e3", "fixed", NOW)
    with storage.session() as uow:
        (open_,) = uow.policy.run_now_open(NOW)
        got = uow.policy.get_run_now("rn-1")
        assert uow.policy.get_run_now("nope") is None
    assert open_["id"] == "rn-1" and open_["done_hosts"] == ["a"]
    assert open_["params"] == {"n": 1} and open_["labels"] == {"department": "finance"}
    assert got is not None and got["requested_by"] == "alice"
    assert got["results"] == [{"host": "a", "event_id": "e1", "outcome": "fixed", "at": NOW + 5}]
    with storage.session() as uow:
        asked = uow.policy.requests_for(["e1", "e-other"])
    assert asked == {"e1": {"request_id": "rn-1", "requested_by": "alice", "requested_at": NOW}}
