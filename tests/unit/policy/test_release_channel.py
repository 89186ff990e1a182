"""The collector's agent release channel: a rollout of the reserved policy ``vigil-agent``
on real storage (SQLite and PostgreSQL) with real signed release bundles; the ack's
``release`` key per ring; the release guard; the fleet's agent versions (bounded metric
labels, counts kept in step)."""

from __future__ import annotations

import dataclasses
import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import build_report
from tests.support.policy import signed_bundle, write_source
from tests.support.postgres import require_postgres
from tests.support.releases import fake_wheel, release_document
from tests.unit.storage.backends import BACKENDS
from vigil import policy_bundle
from vigil.collector.desk.service import Desk
from vigil.collector.policy import release, service
from vigil.collector.policy import rollout as core
from vigil.collector.policy.config import PolicyConfig
from vigil.collector.policy.runtime import PolicyRuntime
from vigil.collector.policy.service import PolicyError, Who
from vigil.release_bundle import RELEASE_POLICY, UPDATE_CHECK, NotARelease, release_wheel

NOW = time.time()  # release_document signs with the real clock
ALICE = Who("alice", "127.0.0.1")


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, str]:
    return policy_bundle.generate_keypair()


@pytest.fixture
def config(keys: tuple[bytes, str]) -> PolicyConfig:
    return PolicyConfig(trusted_keys=(keys[1],))


@pytest.fixture(params=sorted(BACKENDS))
def desk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Desk]:
    """A desk on each storage backend (PostgreSQL: a fresh schema, skipped without a
    server locally, failing under CI=true)."""
    if request.param == "postgresql":
        require_postgres()
    factory = BACKENDS[request.param](tmp_path)
    d = factory.desk()
    yield d
    d.close()
    factory.cleanup()


def publish_release(
    desk: Desk, config: PolicyConfig, keys: tuple[bytes, str], serial: int, version: str, **kw
) -> dict:
    document = release_document(fake_wheel(version), serial, keys[0])
    return service.publish(desk.storage, document, config, ALICE, NOW, **kw)


def ids_in_ring(rollout: core.Rollout, ring: int, n: int) -> list[str]:
    """``n`` agent ids whose stable ring in ``rollout`` is ``ring``."""
    found = [f"host-{i}" for i in range(5000) if core.ring_of(f"host-{i}", rollout) == ring]
    assert len(found) >= n
    return found[:n]


def test_a_release_is_offered_per_ring_and_never_as_a_config_policy(
    desk: Desk, config: PolicyConfig, keys: tuple[bytes, str], tmp_path: Path
) -> None:
    publish_release(desk, config, keys, 1, "0.2.0", rings=[0.2, 1.0], soak_s=3600)
    alone = service.load_snapshot(desk.storage, NOW)
    # With only a release published, no host is offered a config policy.
    (first,) = ids_in_ring(alone.rollouts[0], 0, 1)
    assert core.offer(alone.rollouts, (), (), first, {}, "/p")["policy"] is None
    finance = signed_bundle(write_source(tmp_path / "src"), keys[0], version=1, now=NOW)
    service.publish(desk.storage, finance, config, ALICE, NOW, rings=[1.0])
    snap = service.load_snapshot(desk.storage, NOW)
    assert snap.releases == {1: "0.2.0"}
    (rollout,) = [r for r in snap.rollouts if r.policy == RELEASE_POLICY]
    inside, outside = ids_in_ring(rollout, 0, 1)[0], ids_in_ring(rollout, 1, 1)[0]
    offered = release.release_offer(snap.rollouts, snap.releases, inside, {})
    assert offered == {"serial": 1, "version": "0.2.0", "url": "/api/v1/agent/release"}
    # The ring boundary: a host outside ring 0 is offered nothing (a first release).
    assert release.release_offer(snap.rollouts, snap.releases, outside, {}) is None
    # The release never takes the place of a host's config policy.
    for host in (inside, outside):
        assert core.offer(snap.rollouts, (), (), host, {}, "/p")["policy"] == "finance"
    # After the advance every host is offered it.
    service.advance(desk.storage, RELEASE_POLICY, ALICE, NOW + 1)
    snap = service.load_snapshot(desk.storage, NOW + 1)
    assert release.release_offer(snap.rollouts, snap.releases, outside, {})["serial"] == 1


def test_outside_the_reached_rings_a_host_keeps_the_previous_release(
    desk: Desk, config: PolicyConfig, keys: tuple[bytes, str]
) -> None:
    publish_release(desk, config, keys, 1, "0.2.0", rings=[1.0])
    publish_release(desk, config, keys, 2, "0.3.0", rings=[0.2, 1.0], soak_s=3600)
    snap = service.load_snapshot(desk.storage, NOW)
    assert snap.releases == {1: "0.2.0", 2: "0.3.0"}
    (rollout,) = [r for r in snap.rollouts if r.policy == RELEASE_POLICY]
    (outside,) = ids_in_ring(rollout, 1, 1)
    assert release.release_offer(snap.rollouts, snap.releases, outside, {}) == {
        "serial": 1,
        "version": "0.2.0",
        "url": "/api/v1/agent/release",
    }


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"notes.txt": b"x"}, "exactly one"),
        ({"vigil-0.2.0-py3-none-any.whl": b"not a zip"}, "not a readable wheel"),
        (dict([fake_wheel("0.2.0", init_version="0.1.9")]), "says '0.1.9'"),
        (
            dict([("vigil-0.2.0-py3-none-any.whl", fake_wheel("0.2.0")[1])]) | {"x": b""},
            "exactly one",
        ),
    ],
)
def test_not_a_release_is_named(files: dict[str, bytes], why: str) -> None:
    with pytest.raises(NotARelease, match=why):
        release_wheel(files)


def test_an_upload_under_the_reserved_name_must_be_a_vigil_wheel(
    desk: Desk, config: PolicyConfig, keys: tuple[bytes, str], tmp_path: Path
) -> None:
    # A well-signed policy folder bundle published under the release name is refused.
    source = write_source(tmp_path / "src")
    bundle = signed_bundle(source, keys[0], version=1, now=NOW, policy=RELEASE_POLICY)
    with pytest.raises(PolicyError, match="not an agent release") as caught:
        service.publish(desk.storage, bundle, config, ALICE, NOW)
    assert caught.value.status == 400 and caught.value.field == "document"
    # So is a wheel that is not the agent (no vigil/agent/cli.py).
    name, data = fake_wheel("0.2.0")
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            if info.filename != "vigil/agent/cli.py":
                out.writestr(info, src.read(info))
    document = release_document((name, buf.getvalue()), 1, keys[0])
    with pytest.raises(PolicyError, match="not a vigil wheel"):
        service.publish(desk.storage, document, config, ALICE, NOW)
    with desk.storage.session() as uow:
        assert uow.policy.latest_version(RELEASE_POLICY) is None


def test_release_status_counts_hosts_by_their_reported_agent_version(
    desk: Desk, config: PolicyConfig, keys: tuple[bytes, str]
) -> None:
    publish_release(desk, config, keys, 1, "0.2.0", rings=[1.0])
    for agent_id, version in (("h1", "0.2.0"), ("h2", "0.1.0")):
        report = build_report(agent_id=agent_id)
        desk.ingest(dataclasses.replace(report, agent_version=version), NOW)
    status = service.status(desk.storage, RELEASE_POLICY)
    assert status["rings_status"] == [{"ring": 0, "share": 1.0, "hosts": 2, "on_version": 1}]
    assert status["running"] == {"1": 1}


def test_fleet_versions_move_with_reports_and_the_metric_stays_bounded() -> None:
    runtime = PolicyRuntime()
    runtime.replace_versions({"a": "0.1.0", "b": "0.1.0"})
    runtime.note("a", (None, None), {}, 1.0, "0.2.0")
    assert runtime.agents_by_version() == {"0.1.0": 1, "0.2.0": 1}
    runtime.note("b", (None, None), {}, 2.0, "0.2.0")
    runtime.note("b", (None, None), {}, 3.0, "0.2.0")  # the same version: counted once
    assert runtime.agents_by_version() == {"0.2.0": 2}
    # Storage's view (another process heard c, and b's newest report) replaces it.
    runtime.replace_versions({"a": "0.2.0", "b": "0.3.0", "c": "0.1.0"})
    assert runtime.agents_by_version() == {"0.1.0": 1, "0.2.0": 1, "0.3.0": 1}
    runtime.note("c", (None, None), {}, 4.0, "0.3.0")
    assert runtime.agents_by_version() == {"0.2.0": 1, "0.3.0": 2}
    many = {f"1.{i}.0": 100 - i for i in range(30)}
    top = release.top_versions(many)
    assert len(top) == 21 and top[0] == ("1.0.0", 100)
    assert top[-1] == ("other", sum(100 - i for i in range(20, 30)))
    assert release.top_versions({"0.1.0": 3}) == [("0.1.0", 3)]


def test_the_fleet_view_reports_compliance_with_the_newest_release(
    desk: Desk, config: PolicyConfig, keys: tuple[bytes, str]
) -> None:
    publish_release(desk, config, keys, 1, "0.2.0", rings=[1.0])
    snap = service.load_snapshot(desk.storage, NOW)
    view = release.release_fleet({"0.2.0": 3, "0.1.0": 1}, snap)
    assert view["hosts"] == 4
    assert view["versions"] == [{"version": "0.2.0", "hosts": 3}, {"version": "0.1.0", "hosts": 1}]
    assert view["release"]["serial"] == 1 and view["release"]["compliance"] == 0.75
    assert release.release_fleet({}, service.Snapshot())["release"] is None


def test_release_sign_refuses_a_wheel_that_is_not_the_agent(
    tmp_path: Path, keys: tuple[bytes, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from vigil.collector.policy import release_cli

    key = tmp_path / "policy-key.pem"
    policy_bundle.write_private_key(key, keys[0])
    name, data = fake_wheel("0.2.0", init_version="0.2.1")
    wheel = tmp_path / name
    wheel.write_bytes(data)
    out = tmp_path / "r.vpol"
    argv = ["sign", "--wheel", str(wheel), "--serial", "3", "--key", str(key)]
    argv += ["--expires", "90d", "--out", str(out)]
    assert release_cli.main(argv) == 2 and not out.exists()
    assert "says '0.2.1', not '0.2.0'" in capsys.readouterr().err
    wheel.write_bytes(fake_wheel("0.2.0")[1])
    assert release_cli.main(argv) == 0
    verified = policy_bundle.verify(
        out.read_bytes(), [keys[1]], now=time.time(), installed=None, agent_version="0.1.0"
    )
    assert (verified.policy, verified.version, list(verified.files)) == (
        RELEASE_POLICY,
        3,
        [name],
    )


def test_the_release_guard_pauses_on_a_refusal_or_rollback_inside_the_reached_rings(
    desk: Desk, config: PolicyConfig, keys: tuple[bytes, str]
) -> None:
    from tests.conftest import build_check_event

    publish_release(desk, config, keys, 1, "0.2.0", rings=[0.3, 1.0], soak_s=0)
    snap = service.load_snapshot(desk.storage, NOW)
    (rollout,) = snap.rollouts
    (inside,), (outside,) = ids_in_ring(rollout, 0, 1), ids_in_ring(rollout, 1, 1)

    def update_critical(agent_id: str, at: float) -> None:
        event = build_check_event(UPDATE_CHECK, "critical", previous_state=None, value=None)
        desk.ingest(build_report(event, agent_id=agent_id, hostname=agent_id), at)

    def no_hook(*args: object) -> None:
        raise AssertionError("the release guard raises no collector incident")

    # A host outside the reached ring: not the release's doing yet; nothing stops it.
    update_critical(outside, NOW + 1)
    with desk.storage.session() as uow:
        assert release.troubled_hosts(uow, rollout) == []
    # A ring-0 host refused or rolled it back: paused before the next ring, audited.
    update_critical(inside, NOW + 2)
    (line,) = service.guard_pass(desk.storage, config.guard, NOW + 3, no_hook)
    assert "paused" in line and inside in line
    row = service.status(desk.storage, RELEASE_POLICY)
    assert row["paused"] and row["ring"] == 0 and inside in row["paused_reason"]
    assert service.guard_pass(desk.storage, config.guard, NOW + 4, no_hook) == []
    with desk.storage.session() as uow:
        actions = [a["action"] for a in uow.audit.list(limit=10, offset=0, action="policy.pause")]
    assert "policy.pause" in actions
