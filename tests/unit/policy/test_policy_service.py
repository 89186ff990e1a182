"""Policy operations on a real SQLite storage with real signed bundles: upload
verification, versions, rollout control with audit, the guard pass (pause, halt,
incident) and auto-advance, run-now linked to the reported run."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.conftest import build_remediation_event, build_report
from tests.support.policy import signed_bundle, write_source
from vigil import policy_bundle, wire
from vigil.collector.desk.collector_checks import COLLECTOR_HOST
from vigil.collector.desk.service import Desk
from vigil.collector.policy import service
from vigil.collector.policy.config import PolicyConfig
from vigil.collector.policy.rollout import GuardRules
from vigil.collector.policy.service import PolicyError, Who
from vigil.collector.storage.factory import create_storage
from vigil.collector.storage.url import sqlite_url

NOW = 1_800_000_000.0
ALICE = Who("alice", "127.0.0.1")


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, str]:
    return policy_bundle.generate_keypair()


@pytest.fixture
def config(keys: tuple[bytes, str]) -> PolicyConfig:
    return PolicyConfig(trusted_keys=(keys[1],), guard=GuardRules(failure_rate=0.5, min_runs=2))


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    d = Desk(create_storage(sqlite_url(tmp_path / "c.db")))
    yield d
    d.close()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_source(tmp_path / "src")


def bundle(source: Path, keys: tuple[bytes, str], version: int = 1, **kw: object) -> bytes:
    return signed_bundle(source, keys[0], version=version, now=NOW, **kw)  # type: ignore[arg-type]


def flip(document: bytes, where: str) -> bytes:
    """The document with one byte changed in the script, the manifest or the signature."""
    doc = orjson.loads(document)
    if where == "script":
        raw = bytearray(base64.b64decode(doc["files"]["remediations/disk-cleanup/fix.sh"]))
        raw[-2] ^= 1
        doc["files"]["remediations/disk-cleanup/fix.sh"] = base64.b64encode(raw).decode()
    elif where == "manifest":
        doc["manifest"] = doc["manifest"].replace('"finance"', '"financf"', 1)
    else:
        sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
        sig[0] ^= 1
        doc["signatures"][0]["sig"] = base64.b64encode(sig).decode()
    return orjson.dumps(doc)


def test_a_signed_bundle_is_stored_byte_for_byte_and_starts_in_ring_zero(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    document = bundle(source, keys)
    row = service.publish(desk.storage, document, config, ALICE, NOW)
    assert (row["policy"], row["version"], row["ring"], row["paused"]) == ("finance", 1, 0, False)
    assert service.document(desk.storage, "finance", 1) == document
    with desk.storage.session() as uow:
        (record,) = uow.audit.list(limit=5, offset=0, action="policy.publish")
    assert record["actor"] == "alice" and record["target"] == "policy:finance@1"


@pytest.mark.parametrize(
    ("where", "reason"),
    [("script", "hash_mismatch"), ("manifest", "bad_signature"), ("signature", "bad_signature")],
)
def test_a_tampered_upload_is_refused_naming_the_reason(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig, where: str, reason: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        service.publish(desk.storage, flip(bundle(source, keys), where), config, ALICE, NOW)
    assert caught.value.status == 400 and caught.value.message.startswith(reason)
    assert caught.value.field == "document"
    assert service.list_policies(desk.storage)["versions"] == []


def test_a_bundle_signed_by_an_untrusted_key_or_unsigned_is_refused(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    other = policy_bundle.generate_keypair()
    with pytest.raises(PolicyError, match=r"^unknown_key"):
        service.publish(desk.storage, bundle(source, other), config, ALICE, NOW)
    doc = orjson.loads(bundle(source, keys))
    doc["signatures"] = []
    with pytest.raises(PolicyError, match=r"^unsigned"):
        service.publish(desk.storage, orjson.dumps(doc), config, ALICE, NOW)
    with pytest.raises(PolicyError, match=r"^unknown_key"):  # no trusted keys configured
        service.publish(desk.storage, bundle(source, keys), PolicyConfig(), ALICE, NOW)


def test_an_expired_bundle_is_refused(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    document = bundle(source, keys, expires_in_s=60.0)
    with pytest.raises(PolicyError, match=r"^expired"):
        service.publish(desk.storage, document, config, ALICE, NOW + 120)


def test_versions_only_go_up_and_the_previous_complete_version_stays_offered(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    service.publish(desk.storage, bundle(source, keys, 1), config, ALICE, NOW, rings=[1.0])
    with pytest.raises(PolicyError) as caught:
        service.publish(desk.storage, bundle(source, keys, 1), config, ALICE, NOW)
    assert caught.value.status == 409
    row = service.publish(desk.storage, bundle(source, keys, 2), config, ALICE, NOW)
    assert (row["version"], row["previous_version"]) == (2, 1)
    # v3 while v2 is still in its first ring: hosts outside keep v1, the last complete one.
    row = service.publish(desk.storage, bundle(source, keys, 3), config, ALICE, NOW)
    assert row["previous_version"] == 1


def test_advance_pause_and_resume_are_audited(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    service.publish(desk.storage, bundle(source, keys), config, ALICE, NOW)
    assert service.set_paused(desk.storage, "finance", True, ALICE, NOW + 1)["paused"]
    row = service.set_paused(desk.storage, "finance", False, ALICE, NOW + 2)
    assert not row["paused"] and row["ring_started_at"] == NOW + 2
    assert service.advance(desk.storage, "finance", ALICE, NOW + 3)["ring"] == 1
    with pytest.raises(PolicyError) as caught:
        service.advance(desk.storage, "nope", ALICE, NOW)
    assert caught.value.status == 404
    with desk.storage.session() as uow:
        actions = [r["action"] for r in uow.audit.list(limit=10, offset=0, action=None)]
    assert actions == ["policy.advance", "policy.resume", "policy.pause", "policy.publish"]


def report_runs(
    desk: Desk,
    agent_id: str,
    outcome: wire.Outcome,
    n: int,
    at: float,
    remediation: str = "disk-cleanup",
) -> None:
    events = [build_remediation_event(remediation, None, outcome, seq=i + 1) for i in range(n)]
    desk.ingest(build_report(*events, agent_id=agent_id), at)


def seen(desk: Desk, agent_id: str, at: float) -> None:
    """A report without events: ``agent_id`` is known and exchanged at ``at``."""
    desk.ingest(build_report(agent_id=agent_id), at)


def raise_on(desk: Desk) -> service.GuardHook:
    return lambda check, message, now, also: desk.collector_check(
        check, "critical", message, now, also
    )


def test_failing_runs_on_the_new_version_pause_halt_and_raise_an_incident(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    service.publish(desk.storage, bundle(source, keys, 1), config, ALICE, NOW, soak_s=600)
    service.record_running(desk.storage, [("ws-1", "finance", 1, NOW), ("ws-2", "finance", 1, NOW)])
    report_runs(desk, "ws-1", "error", 1, NOW + 5)
    assert service.guard_pass(desk.storage, config.guard, NOW + 6, raise_on(desk)) == []
    report_runs(desk, "ws-2", "timeout", 1, NOW + 7)
    (line,) = service.guard_pass(desk.storage, config.guard, NOW + 8, raise_on(desk))
    assert "disk-cleanup failed 2 of 2 runs" in line
    listed = service.list_policies(desk.storage)
    (rollout,) = listed["rollouts"]
    assert rollout["paused"] and rollout["paused_reason"] == "guard: disk-cleanup"
    assert [h["remediation"] for h in listed["halts"]] == ["disk-cleanup"]
    (incident,) = desk.list_incidents(state="open")
    assert incident["host"] == COLLECTOR_HOST and incident["check"] == "policy.guard.disk-cleanup"
    # Paused: a later pass neither trips again nor advances, even after the soak.
    assert service.guard_pass(desk.storage, config.guard, NOW + 6000, raise_on(desk)) == []
    # Lifting the halt resolves the guard's incident.
    resolve = lambda check, now: desk.collector_check(check, "ok", "lifted", now)  # noqa: E731
    assert service.unhalt(desk.storage, "disk-cleanup", ALICE, NOW + 9, resolve)
    assert desk.list_incidents(state="open") == []


def test_runs_from_hosts_on_another_version_do_not_trip_the_guard(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    service.publish(desk.storage, bundle(source, keys, 2), config, ALICE, NOW)
    service.record_running(desk.storage, [("ws-1", "finance", 1, NOW)])
    report_runs(desk, "ws-1", "error", 5, NOW + 5)
    assert service.guard_pass(desk.storage, config.guard, NOW + 6, raise_on(desk)) == []


def test_a_healthy_ring_advances_a_soak_after_its_hosts_run_the_new_version(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    def guard(at: float) -> list[str]:
        return service.guard_pass(desk.storage, config.guard, at, raise_on(desk))

    service.publish(
        desk.storage,
        bundle(source, keys),
        config,
        ALICE,
        NOW,
        rings=[0.0, 0.25, 1.0],
        canary=["ws-1"],
        soak_s=60,
    )
    report_runs(desk, "ws-1", "fixed", 3, NOW + 5)
    # ws-1 exchanged but has not picked the version up: no evidence, however long.
    assert guard(NOW + 5) == [] and guard(NOW + 600) == []
    service.record_running(desk.storage, [("ws-1", "finance", 1, NOW + 601)])
    assert guard(NOW + 601) == []  # the evidence: the soak starts now
    assert guard(NOW + 660) == []
    (line,) = guard(NOW + 661)
    assert line.endswith("advanced to ring 1")
    # Ring 1 holds no host the collector knows: nothing to wait for but its soak.
    assert guard(NOW + 662) == []
    (line,) = guard(NOW + 722)
    assert line.endswith("advanced to ring 2")
    assert guard(NOW + 9999) == []


def test_a_ring_whose_hosts_never_ran_the_new_version_waits_for_an_admin(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    """Time alone never advances a ring: one canary of two on the new version is under
    the 80 % needed, the status says so, and only an admin's advance moves it."""
    service.publish(
        desk.storage,
        bundle(source, keys),
        config,
        ALICE,
        NOW,
        rings=[0.0, 1.0],
        canary=["ws-1", "ws-2"],
        soak_s=60,
    )
    seen(desk, "ws-1", NOW + 5)
    seen(desk, "ws-2", NOW + 5)
    service.record_running(desk.storage, [("ws-1", "finance", 1, NOW + 5)])
    for at in (NOW + 5, NOW + 100, NOW + 6000):
        assert service.guard_pass(desk.storage, config.guard, at, raise_on(desk)) == []
    got = service.status(desk.storage, "finance", NOW + 6000)
    assert got["ring"] == 0
    assert got["waiting"] == "waiting: 1 of 2 canary hosts on version 1 (2 needed)"
    assert service.advance(desk.storage, "finance", ALICE, NOW + 6001)["ring"] == 1
    assert service.status(desk.storage, "finance", NOW + 6002)["waiting"] is None


def test_the_status_says_when_a_ring_with_its_evidence_advances(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    service.publish(
        desk.storage, bundle(source, keys), config, ALICE, NOW, rings=[0.0, 1.0], canary=["ws-1"]
    )
    seen(desk, "ws-1", NOW + 5)
    service.record_running(desk.storage, [("ws-1", "finance", 1, NOW + 5)])
    assert service.guard_pass(desk.storage, config.guard, NOW + 10, raise_on(desk)) == []
    got = service.status(desk.storage, "finance", NOW + 100)
    assert got["evidence_at"] == NOW + 10
    assert got["waiting"] == "soaking: ring 1 in 510 s"


def test_each_remediation_the_guard_halts_gets_its_own_incident(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    (source / "policy.yaml").write_text(
        "checks: []\nremediation:\n  enabled:\n    disk-cleanup: {}\n    spool-reset: {}\n"
    )
    service.publish(desk.storage, bundle(source, keys), config, ALICE, NOW)
    service.record_running(desk.storage, [("ws-1", "finance", 1, NOW)])
    report_runs(desk, "ws-1", "error", 2, NOW + 5)
    report_runs(desk, "ws-1", "timeout", 2, NOW + 5, remediation="spool-reset")
    lines = service.guard_pass(desk.storage, config.guard, NOW + 6, raise_on(desk))
    assert len(lines) == 2
    incidents = desk.list_incidents(state="open")
    assert sorted(i["check"] for i in incidents) == [
        "policy.guard.disk-cleanup",
        "policy.guard.spool-reset",
    ]
    listed = service.list_policies(desk.storage)
    assert [h["remediation"] for h in listed["halts"]] == ["disk-cleanup", "spool-reset"]
    (rollout,) = listed["rollouts"]
    assert rollout["paused_reason"] == "guard: disk-cleanup, spool-reset"


def test_failing_runs_of_remediations_outside_the_new_version_do_not_trip_the_guard(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    """The version enables disk-cleanup only: a host's own local fix (or a run-now of
    another remediation) failing says nothing about it."""
    service.publish(desk.storage, bundle(source, keys), config, ALICE, NOW)
    service.record_running(desk.storage, [("ws-1", "finance", 1, NOW)])
    report_runs(desk, "ws-1", "error", 5, NOW + 5, remediation="local-fix")
    assert service.guard_pass(desk.storage, config.guard, NOW + 6, raise_on(desk)) == []
    assert service.list_policies(desk.storage)["halts"] == []


def test_a_run_now_request_records_who_asked_and_is_audited(desk: Desk) -> None:
    row = service.request_run_now(
        desk.storage,
        "disk-cleanup",
        ALICE,
        NOW,
        host="ws-1",
        labels={},
        params={"n": "1"},
        ttl_s=3600,
    )
    got = service.get_run_now(desk.storage, row["id"])
    assert got is not None and got["requested_by"] == "alice" and got["results"] == []
    with desk.storage.session() as uow:
        (record,) = uow.audit.list(limit=5, offset=0, action="policy.run_now")
    assert record["actor"] == "alice" and record["target"] == "host:ws-1"
    with pytest.raises(PolicyError, match="exactly one"):
        service.request_run_now(
            desk.storage, "x", ALICE, NOW, host="a", labels={"d": "f"}, params={}, ttl_s=60
        )


@pytest.mark.skipif(
    "request_id" not in {f.name for f in dataclasses.fields(wire.RemediationEvent)},
    reason="RemediationEvent.request_id is added to wire.py by the policy-agent branch",
)
def test_a_reported_run_with_a_request_id_is_linked_to_the_request(desk: Desk) -> None:
    row = service.request_run_now(
        desk.storage, "disk-cleanup", ALICE, NOW, host="ws-1", labels={}, params={}, ttl_s=3600
    )
    event = dataclasses.replace(
        build_remediation_event("disk-cleanup", None, "fixed"),
        request_id=row["id"],  # type: ignore[call-arg]
    )
    desk.ingest(build_report(event, agent_id="ws-1"), NOW + 5)
    got = service.get_run_now(desk.storage, row["id"])
    assert got is not None
    assert got["results"] == [
        {"host": "ws-1", "event_id": event.event_id, "outcome": "fixed", "at": NOW + 5}
    ]
    # The corrective-action record itself says who asked; other runs say nothing of it.
    desk.ingest(
        build_report(build_remediation_event("disk-cleanup", None), agent_id="ws-1"), NOW + 6
    )
    other, linked = desk.list_remediation_runs(host="ws-1")
    assert (linked["request_id"], linked["requested_by"]) == (row["id"], "alice")
    assert "request_id" not in other and "requested_by" not in other


def test_a_complete_soaked_rollout_is_no_longer_guarded(
    desk: Desk, source: Path, keys: tuple[bytes, str], config: PolicyConfig
) -> None:
    service.publish(desk.storage, bundle(source, keys), config, ALICE, NOW, rings=[1.0], soak_s=60)
    service.record_running(desk.storage, [("ws-1", "finance", 1, NOW)])
    report_runs(desk, "ws-1", "error", 3, NOW + 5)
    assert service.guard_pass(desk.storage, config.guard, NOW + 61, raise_on(desk)) == []
    assert service.guard_pass(desk.storage, config.guard, NOW + 59, raise_on(desk)) != []
