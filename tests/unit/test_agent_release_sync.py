"""The running agent's side of the release channel: the ack's ``release`` key, the
conditional fetch, verification through the real bundle code and the real install (a
small fake wheel, smoke-tested in a child interpreter), the ``agent.update`` check, the
confirmation by delivered reports, and the ``update:`` config section."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.support.releases import fake_wheel, release_document
from vigil import policy_bundle, wire
from vigil.agent.config import load_agent_config
from vigil.agent.update import state as st
from vigil.agent.update.guard import UpdateGuard
from vigil.agent.update.settings import UpdateSettings
from vigil.agent.update.sync import RELEASE_PATH, UPDATE_CHECK, ReleaseSync, parse_release
from vigil.configio import ConfigError


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, str]:
    return policy_bundle.generate_keypair()


@dataclass
class Reply:
    status: int
    body: bytes = b""
    text: str = ""


@dataclass
class Fetcher:
    replies: list[Reply]
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def get(self, path: str, headers: dict[str, str], max_body: int) -> Reply:
        self.calls.append((path, dict(headers)))
        return self.replies.pop(0)


@dataclass
class Sink:
    events: list[tuple[wire.CheckEvent, bool]] = field(default_factory=list)

    def put(self, event: Any, urgent: bool = False) -> None:
        self.events.append((event, urgent))

    def update_checks(self) -> list[tuple[str, str]]:
        return [(e.state, e.message) for e, _ in self.events if e.check == UPDATE_CHECK]


def ack(serial: int, version: str = "0.2.0", url: str = RELEASE_PATH) -> str:
    return json.dumps(
        {"accepted": True, "release": {"serial": serial, "version": version, "url": url}}
    )


def make(
    tmp_path: Path, public: str, replies: list[Reply], running_serial: int = 0
) -> tuple[ReleaseSync, Fetcher, Sink, list[str]]:
    fetcher, sink, restarts = Fetcher(replies), Sink(), []
    guard = UpdateGuard(tmp_path, time.time, running_serial=running_serial)
    sync = ReleaseSync(
        tmp_path,
        guard=guard,
        trusted=lambda: (public,),
        fetcher=fetcher,
        sink=sink,
        restart=lambda: restarts.append("restart"),
        agent_version="0.1.0",
    )
    return sync, fetcher, sink, restarts


async def settle(sync: ReleaseSync) -> None:
    if sync._fetching is not None:
        await sync._fetching


def tampered(document: bytes) -> bytes:
    doc = orjson.loads(document)
    (name,) = doc["files"]
    raw = bytearray(base64.b64decode(doc["files"][name]))
    raw[len(raw) // 2] ^= 1
    doc["files"][name] = base64.b64encode(raw).decode()
    return orjson.dumps(doc)


def test_a_tampered_release_is_refused_reported_and_nothing_changes(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    document = tampered(release_document(fake_wheel("0.2.0"), 1, keys[0]))
    sync, fetcher, sink, restarts = make(tmp_path, keys[1], [Reply(200, document)])

    async def go() -> None:
        sync.on_ack(ack(1))
        await settle(sync)
        sync.on_ack(ack(1))  # refused within the hour: not fetched again
        await settle(sync)

    asyncio.run(go())
    assert len(fetcher.calls) == 1 and restarts == []
    [(state, message)] = sink.update_checks()
    assert state == "critical" and "refused release 1" in message and "hash_mismatch" in message
    assert "still running the base install" in message
    assert st.load_state(tmp_path) == st.UpdateState()
    assert not (tmp_path / "releases").exists() or not any((tmp_path / "releases").iterdir())


def test_a_good_release_is_installed_then_the_agent_restarts_and_confirms(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    document = release_document(fake_wheel("0.2.0"), 1, keys[0])
    sync, fetcher, sink, restarts = make(tmp_path, keys[1], [Reply(200, document)])

    async def go() -> None:
        sync.on_ack(ack(1))
        await settle(sync)
        sync.on_ack(ack(1))  # restarting: nothing more is fetched

    asyncio.run(go())
    assert restarts == ["restart"] and len(fetcher.calls) == 1
    assert sink.update_checks() == []  # nothing to report before the new release runs
    assert fetcher.calls[0] == (RELEASE_PATH, {})  # the base install holds no release
    state = st.load_state(tmp_path)
    assert state.current == st.Release(1, "0.2.0", "1-0.2.0") and state.pending is not None

    # The restarted process (running serial 1) confirms after two delivered reports.
    after, _, sink2, _ = make(tmp_path, keys[1], [], running_serial=1)
    after.on_ack(json.dumps({"accepted": True}))
    assert sink2.update_checks() == []
    after.on_ack(json.dumps({"accepted": True}))
    assert sink2.update_checks() == [("ok", "running release 1 (vigil 0.2.0), confirmed")]
    assert st.load_state(tmp_path).pending is None


def test_old_failed_and_malformed_offers_fetch_nothing(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    st.save_state(
        tmp_path,
        st.UpdateState(current=st.Release(3, "0.3.0", "3-0.3.0"), failed=(5,)),
    )
    (tmp_path / "releases" / "3-0.3.0").mkdir(parents=True)
    sync, fetcher, _, _ = make(tmp_path, keys[1], [Reply(304)], running_serial=3)

    async def go() -> None:
        for text in (ack(2), ack(3), ack(5), "{not json", json.dumps({"release": {"serial": "7"}})):
            sync.on_ack(text)
            await settle(sync)
        assert fetcher.calls == []
        sync.on_ack(ack(6, url="https://elsewhere.example/steal"))
        await settle(sync)

    asyncio.run(go())
    # Only the newer serial is fetched, from the release endpoint, conditionally.
    assert fetcher.calls == [(RELEASE_PATH, {"If-None-Match": '"vigil-agent@3"'})]


def test_a_rollback_is_reported_critical_at_start(tmp_path: Path, keys: tuple[bytes, str]) -> None:
    state = st.roll_back(
        st.switch_to(st.UpdateState(), st.Release(2, "0.2.0", "2-0.2.0"), 1.0), "crash loop", 2.0
    )
    st.save_state(tmp_path, state)
    sync, _, sink, _ = make(tmp_path, keys[1], [])
    sync.report_start()
    [(level, message)] = sink.update_checks()
    assert level == "critical"
    assert (
        message
        == "rolled back release 2 (vigil 0.2.0): crash loop; running the base install (vigil 0.1.0)"
    )


def test_parse_release_keeps_the_fetch_on_the_release_endpoint() -> None:
    assert (
        parse_release(ack(4, url=RELEASE_PATH + "?agent_id=a1")).url
        == RELEASE_PATH + "?agent_id=a1"
    )
    assert parse_release(ack(4, url="/api/v1/agent/policy")).url == RELEASE_PATH
    assert parse_release(json.dumps({"release": {"serial": True}})) is None
    assert parse_release(json.dumps({"release": {"serial": 0}})) is None
    assert parse_release(json.dumps({"policy": {}})) is None


MINIMAL = 'collector: {url: "http://127.0.0.1:9750", token: t0ken}\n'


def test_update_settings_default_on_with_a_key_and_bad_values_are_named(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(MINIMAL)
    update = load_agent_config(path).update
    assert update == UpdateSettings(None, 600.0)
    assert update.active(("ed25519:x",)) and not update.active(())
    assert not UpdateSettings(enabled=False).active(("ed25519:x",))
    path.write_text(MINIMAL + "update: {enabled: false, confirm_within: 2m}\n")
    assert load_agent_config(path).update == UpdateSettings(False, 120.0)
    for text, key in (
        ("update: {confirm_within: 1s}\n", "update.confirm_within"),
        ("update: {enable: true}\n", "update.enable"),
    ):
        path.write_text(MINIMAL + text)
        with pytest.raises(ConfigError) as caught:
            load_agent_config(path)
        assert caught.value.key == key and caught.value.file == str(path)


def test_with_update_off_a_pending_release_still_confirms_but_nothing_is_fetched(
    tmp_path: Path, keys: tuple[bytes, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vigil.agent.update.sync import release_sync_for

    path = tmp_path / "agent.yaml"
    path.write_text(
        MINIMAL + f"agent: {{state_dir: st}}\npolicy: {{trusted_keys: ['{keys[1]}']}}\n"
        "update: {enabled: false}\n"
    )
    config = load_agent_config(path)
    fetcher, sink = Fetcher([]), Sink()
    assert release_sync_for(config, fetcher=fetcher, sink=sink, agent_version="0.1.0") is None
    st.save_state(
        config.state_dir, st.switch_to(st.UpdateState(), st.Release(1, "0.2.0", "1-0.2.0"), 1.0)
    )
    monkeypatch.setenv("VIGIL_AGENT_RELEASE", "1")
    sync = release_sync_for(config, fetcher=fetcher, sink=sink, agent_version="0.2.0")
    assert sync is not None and sync.guard.pending

    async def go() -> None:
        sync.on_ack(ack(2))
        sync.on_ack(ack(2))
        await settle(sync)

    asyncio.run(go())
    assert fetcher.calls == [] and st.load_state(config.state_dir).pending is None


def test_a_signed_release_that_is_not_a_wheel_is_refused_before_unpacking(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    document = release_document(("vigil-0.2.0-py3-none-any.whl", b"not a zip"), 1, keys[0])
    sync, _, sink, restarts = make(tmp_path, keys[1], [Reply(200, document)])

    async def go() -> None:
        sync.on_ack(ack(1))
        await settle(sync)

    asyncio.run(go())
    [(state, message)] = sink.update_checks()
    assert state == "critical" and "bad_wheel" in message and "not a readable wheel" in message
    assert restarts == [] and st.load_state(tmp_path) == st.UpdateState()
