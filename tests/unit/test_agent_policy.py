"""The agent's side of central policy: cache and last-good fallback, the merge over the
local config, the ack (kill switch, run-now, conditional fetch), and applying a policy in
a running agent without a restart. The collector is faked here only as the fetcher; the
real exchange is tested in tests/integration/test_policy_e2e.py."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from vigil import __version__, wire
from vigil import policy_bundle as pb
from vigil.agent.config import CheckSpec, RemediationRef, load_agent_config
from vigil.agent.delivery.outbox import Outbox
from vigil.agent.enroll_cli import store_policy_keys
from vigil.agent.policy.cache import PolicyCache
from vigil.agent.policy.compose import compose, merged_config
from vigil.agent.policy.settings import PolicySettings, enrolled_keys
from vigil.agent.policy.sync import POLICY_CHECK, PolicySync, initial_policy, parse_offer
from vigil.agent.remediation.flow import RemediationFlow
from vigil.agent.service import build_service
from vigil.configio import ConfigError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX sh remediation scripts")


def run_async(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (the suite uses no asyncio plugin)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


NOW = time.time()
DAY = 86400.0

MANIFEST = """\
id: touch-file
title: Write a marker file
description: Writes the run's trigger into the file named by the path parameter.
platforms: [linux, darwin]
scripts: {linux: fix.sh, darwin: fix.sh}
timeout: 10s
cooldown: 1s
params:
  path: {description: where to write, required: true}
"""
SCRIPT = '#!/bin/sh\necho "ran $VIGIL_TRIGGER" >> "$VIGIL_PARAM_PATH"\n'


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, str]:
    return pb.generate_keypair()


def policy_source(root: Path, marker: Path, *, checks: list[dict] | None = None) -> Path:
    folder = root / "remediations" / "touch-file"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "remediation.yaml").write_text(MANIFEST)
    (folder / "fix.sh").write_text(SCRIPT)
    policy = {
        "checks": checks
        if checks is not None
        else [{"id": "mem", "metric": "memory.used_percent", "critical": 50}],
        "remediation": {"enabled": {"touch-file": {"path": str(marker)}}},
    }
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    return root


def signed_bundle(
    source: Path,
    pem: bytes,
    *,
    version: int,
    expires_at: float = NOW + 30 * DAY,
    policy: str = "finance",
) -> bytes:
    manifest, files = pb.build(
        source,
        policy=policy,
        version=version,
        expires_at=expires_at,
        min_agent_version="0.1",
        target={},
        created_at=NOW - 60,
    )
    return pb.pack(manifest, [pb.sign(manifest, pem)], files)


def tamper_script(document: bytes) -> bytes:
    doc = orjson.loads(document)
    path = "remediations/touch-file/fix.sh"
    doc["files"][path] = pb.base64.b64encode(SCRIPT.replace("ran", "rm -rf").encode()).decode()
    return orjson.dumps(doc)


def agent_config(tmp_path: Path, public: str, **extra: Any) -> Any:
    config = {
        "agent": {"state_dir": str(tmp_path / "state")},
        "collector": {"url": "http://127.0.0.1:9", "token": "t"},
        "policy": {"trusted_keys": [public]},
        "checks": [
            {"id": "cpu", "metric": "cpu.busy_percent", "critical": 90},
            {"id": "mem", "metric": "memory.used_percent", "critical": 95},
        ],
        **extra,
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_agent_config(path)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    text: str = ""
    etag: str | None = None


class FakeFetcher:
    """Serves whatever document it holds, honouring If-None-Match like the collector."""

    def __init__(self, document: bytes | None, tag: str) -> None:
        self.document, self.tag = document, tag
        self.requests: list[dict[str, str]] = []

    async def get(self, path: str, headers: dict[str, str], max_body: int) -> Reply:
        self.requests.append(dict(headers))
        if self.document is None:
            return Reply(404, text='{"error": "no policy for this host"}')
        if headers.get("If-None-Match") == f'"{self.tag}"':
            return Reply(304)
        return Reply(200, body=self.document, etag=f'"{self.tag}"')


class Harness:
    """A PolicySync wired to a real outbox, a real flow and a recording apply."""

    def __init__(self, tmp_path: Path, public: str, fetcher: FakeFetcher) -> None:
        self.config = agent_config(tmp_path, public)
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(tmp_path / "outbox.db")
        self.cache = PolicyCache(self.config.state_dir)
        (_, library, _), running, self.problems = initial_policy(
            self.config, self.cache, (public,), now=time.time(), agent_version=__version__
        )
        self.flow = RemediationFlow(self.config.remediation, library, self.outbox)
        self.applied: list[Any] = []
        self.seen: list[Any] = []
        self.sync = PolicySync(
            self.config,
            cache=self.cache,
            trusted=(public,),
            fetcher=fetcher,
            sink=self.outbox,
            flow=lambda: self.flow,
            apply=self.apply,
            agent_version=__version__,
            running=running,
        )
        self.sync.enforce_halts(self.flow)

    def apply(self, config: Any, library: Any, broken: Any) -> None:
        self.applied.append(config)
        self.flow = RemediationFlow(config.remediation, library, self.outbox)
        self.sync.enforce_halts(self.flow)
        self.sync.applied()  # what the service does once it swapped the policy in

    async def ack(self, policy: dict[str, Any]) -> None:
        self.sync.on_ack(orjson.dumps({"accepted": True, "policy": policy}).decode())
        while self.sync.tasks:
            await asyncio.gather(*list(self.sync.tasks))

    def events(self) -> list[Any]:
        """Every event recorded so far (a batch, once formed, keeps its events: take and
        acknowledge each one as the shipper would)."""
        while (batch := self.outbox.next_batch(1000)) is not None:
            self.seen.extend(batch.events)
            self.outbox.ack(batch.batch_id)
        return list(self.seen)

    def policy_checks(self) -> list[wire.CheckEvent]:
        return [e for e in self.events() if getattr(e, "check", None) == POLICY_CHECK]


def offer(version: int | None, policy: str = "finance", **kw: Any) -> dict[str, Any]:
    return {
        "policy": policy if version is not None else None,
        "version": version,
        "url": "/api/v1/agent/policy",
        "halted": kw.get("halted", []),
        "halt_all": kw.get("halt_all", False),
        "run_now": kw.get("run_now", []),
    }


# --------------------------------------------------------------------------- offer


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/api/v1/agent/policy?agent_id=a-1", "/api/v1/agent/policy?agent_id=a-1"),
        ("/api/v1/admin/secrets", "/api/v1/agent/policy"),
        ("http://elsewhere/api/v1/agent/policy", "/api/v1/agent/policy"),
        (None, "/api/v1/agent/policy"),
    ],
    ids=["names-the-agent", "other-path", "other-host", "absent"],
)
def test_the_fetch_url_comes_from_the_ack_but_only_below_the_policy_endpoint(
    url: str | None, expected: str
) -> None:
    parsed = parse_offer(orjson.dumps({"policy": dict(offer(1), url=url)}).decode())
    assert parsed is not None and parsed.url == expected


@pytest.mark.parametrize(
    "ack",
    ["", "not json", '{"accepted": true}', '{"policy": {"policy": "Bad Name", "version": 1}}'],
    ids=["empty", "not-json", "older-collector", "bad-name"],
)
def test_an_ack_without_a_valid_policy_changes_nothing(ack: str) -> None:
    assert parse_offer(ack) is None


# --------------------------------------------------------------------------- fetch


@run_async
async def test_an_offered_policy_is_fetched_verified_and_applied(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    marker = tmp_path / "marker"
    doc = signed_bundle(policy_source(tmp_path / "src", marker), keys[0], version=2)
    fetcher = FakeFetcher(doc, "finance@2")
    h = Harness(tmp_path, keys[1], fetcher)
    assert h.sync.header == "none"
    await h.ack(offer(2))
    assert fetcher.requests == [{"If-None-Match": '"none"'}]
    assert h.sync.header == "finance@2"
    (config,) = h.applied
    mem = next(c for c in config.checks if c.id == "mem")
    assert mem.critical == 50  # the policy's check replaced the local one
    assert [c.id for c in config.checks] == ["cpu", "mem"]
    assert config.remediation.enable == ("touch-file",)
    assert config.remediation.params["touch-file"] == {"path": str(marker)}
    (report,) = h.policy_checks()
    assert (report.state, report.message) == ("ok", "running policy finance version 2")
    # The same offer again costs nothing: no request at all.
    await h.ack(offer(2))
    assert len(fetcher.requests) == 1


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda doc, other: tamper_script(doc), "hash_mismatch"),
        (lambda doc, other: other, "unknown_key"),
    ],
    ids=["tampered-script", "wrong-key"],
)
@run_async
async def test_a_refused_bundle_keeps_the_last_good_policy_and_says_why(
    tmp_path: Path, keys: tuple[bytes, str], make: Any, reason: str
) -> None:
    source = policy_source(tmp_path / "src", tmp_path / "marker")
    fetcher = FakeFetcher(signed_bundle(source, keys[0], version=1), "finance@1")
    h = Harness(tmp_path, keys[1], fetcher)
    await h.ack(offer(1))
    assert h.sync.header == "finance@1"
    other_pem, _ = pb.generate_keypair()
    fetcher.document = make(
        signed_bundle(source, keys[0], version=2), signed_bundle(source, other_pem, version=2)
    )
    fetcher.tag = "finance@2"
    await h.ack(offer(2))
    assert h.sync.header == "finance@1"
    assert len(h.applied) == 1
    last = h.policy_checks()[-1]
    assert last.state == "critical"
    assert last.message.startswith(f"{reason}: ")
    assert "(policy finance version 2); still running finance@1" in last.message
    # The cache still starts the agent on the good version.
    assert PolicyCache(h.config.state_dir).good_tags() == ["finance@1"]
    # The collector goes back to offering what runs: the check recovers.
    await h.ack(offer(1))
    assert (h.policy_checks()[-1].state, h.sync.header) == ("ok", "finance@1")


@run_async
async def test_a_downgrade_is_refused(tmp_path: Path, keys: tuple[bytes, str]) -> None:
    source = policy_source(tmp_path / "src", tmp_path / "marker")
    old = signed_bundle(source, keys[0], version=1)
    fetcher = FakeFetcher(signed_bundle(source, keys[0], version=2), "finance@2")
    h = Harness(tmp_path, keys[1], fetcher)
    await h.ack(offer(2))
    fetcher.document, fetcher.tag = old, "finance@1"
    await h.ack(offer(1))
    assert h.sync.header == "finance@2"
    assert h.policy_checks()[-1].message.startswith("downgrade: ")


@run_async
async def test_an_older_version_is_refused_after_running_another_policy(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    """The highest version accepted per policy name is kept (persisted): finance@1 is
    a downgrade after finance@2, also once the host ran hr in between (finance@2 no
    longer cached) and restarted."""
    source = policy_source(tmp_path / "src", tmp_path / "marker")
    fetcher = FakeFetcher(signed_bundle(source, keys[0], version=2), "finance@2")
    h = Harness(tmp_path, keys[1], fetcher)
    await h.ack(offer(2))
    for version in (1, 2, 3):  # enough to push finance@2 out of the kept bundles
        fetcher.document = signed_bundle(source, keys[0], version=version, policy="hr")
        fetcher.tag = f"hr@{version}"
        await h.ack(offer(version, policy="hr"))
    assert h.cache.good_tags() == ["hr@3", "hr@2", "hr@1"]
    restarted = Harness(tmp_path, keys[1], fetcher)  # the same state dir
    assert restarted.sync.header == "hr@3"
    fetcher.document, fetcher.tag = signed_bundle(source, keys[0], version=1), "finance@1"
    await restarted.ack(offer(1))
    assert restarted.sync.header == "hr@3"
    last = restarted.policy_checks()[-1]
    assert last.state == "critical"
    assert last.message.startswith(
        "downgrade: policy finance version 1 is older than version 2, accepted before"
    )
    # The same version again is no downgrade: switching back to finance@2 works.
    fetcher.document, fetcher.tag = signed_bundle(source, keys[0], version=2), "finance@2"
    await restarted.ack(offer(2))
    assert restarted.sync.header == "finance@2"


@run_async
async def test_a_policy_that_does_not_fit_the_agent_config_is_refused(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    """Signed and intact, but naming a remediation it does not ship: the same preflight
    as at start-up refuses it, and the agent keeps what it runs."""
    bad_check = [{"id": "x", "metric": "cpu.busy_percent", "critical": 1, "remediation": "nope"}]
    source = policy_source(tmp_path / "src", tmp_path / "marker", checks=bad_check)
    h = Harness(tmp_path, keys[1], FakeFetcher(signed_bundle(source, keys[0], version=3), "x"))
    await h.ack(offer(3))
    assert h.applied == []
    assert h.sync.header == "none"
    assert h.policy_checks()[-1].message.startswith("config: ")
    assert h.cache.good_tags() == []


@run_async
async def test_without_trusted_keys_nothing_is_fetched(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    source = policy_source(tmp_path / "src", tmp_path / "marker")
    fetcher = FakeFetcher(signed_bundle(source, keys[0], version=1), "finance@1")
    h = Harness(tmp_path, keys[1], fetcher)
    h.sync.trusted = ()
    h.sync.local = dataclasses.replace(h.config, policy=PolicySettings())
    await h.ack(offer(1))
    assert fetcher.requests == []
    assert h.policy_checks()[-1].message.startswith("unknown_key: no trusted policy key")


@run_async
async def test_keys_stored_by_enrolling_a_running_agent_are_picked_up(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    source = policy_source(tmp_path / "src", tmp_path / "marker")
    fetcher = FakeFetcher(signed_bundle(source, keys[0], version=1), "finance@1")
    h = Harness(tmp_path, keys[1], fetcher)
    h.sync.trusted = ()
    h.sync.local = dataclasses.replace(h.config, policy=PolicySettings())  # none configured
    store_policy_keys(h.config.state_dir, [keys[1]])  # vigil-agent enroll, meanwhile
    await h.ack(offer(1))
    assert h.sync.header == "finance@1"


# --------------------------------------------------------------------------- cache


@run_async
async def test_a_tampered_cache_falls_back_to_the_previous_good_bundle(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    source = policy_source(tmp_path / "src", tmp_path / "marker")
    fetcher = FakeFetcher(signed_bundle(source, keys[0], version=1), "finance@1")
    h = Harness(tmp_path, keys[1], fetcher)
    await h.ack(offer(1))
    fetcher.document, fetcher.tag = signed_bundle(source, keys[0], version=2), "finance@2"
    await h.ack(offer(2))
    assert h.cache.good_tags() == ["finance@2", "finance@1"]
    script = h.cache.version_dir("finance", 2) / "files/remediations/touch-file/fix.sh"
    script.write_text("#!/bin/sh\nrm -rf /\n")  # someone edits the extracted script

    (_config, library, _), running, problems = initial_policy(
        h.config, h.cache, (keys[1],), now=time.time(), agent_version=__version__
    )
    assert running is not None and running.tag == "finance@1"
    assert problems == [
        "cached finance@2: hash_mismatch: extracted remediations/touch-file/fix.sh differs "
        "from the bundle"
    ]
    assert library["touch-file"].folder.is_relative_to(h.cache.version_dir("finance", 1))
    assert h.cache.good_tags() == ["finance@1"]


@run_async
async def test_an_expired_cached_bundle_is_not_run(tmp_path: Path, keys: tuple[bytes, str]) -> None:
    source = policy_source(tmp_path / "src", tmp_path / "marker")
    # Relative to the real clock: the fetch verifies against it.
    doc = signed_bundle(source, keys[0], version=1, expires_at=time.time() + 3600)
    h = Harness(tmp_path, keys[1], FakeFetcher(doc, "finance@1"))
    await h.ack(offer(1))
    assert h.sync.header == "finance@1"
    (_config, library, _), running, problems = initial_policy(
        h.config, h.cache, (keys[1],), now=time.time() + 7200, agent_version=__version__
    )
    assert running is None
    assert "touch-file" not in library
    assert problems[0].startswith("cached finance@1: expired: ")


@run_async
async def test_a_running_bundle_that_expires_falls_back_to_the_previous_good_one(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    """Expiry is checked while running (at every exchange), not only at fetch and
    start: the expired bundle stops and the previous good one runs, said as critical."""
    source = policy_source(tmp_path / "src", tmp_path / "marker")
    fetcher = FakeFetcher(signed_bundle(source, keys[0], version=1), "finance@1")
    h = Harness(tmp_path, keys[1], fetcher)
    await h.ack(offer(1))
    soon = time.time() + 3600
    fetcher.document = signed_bundle(source, keys[0], version=2, expires_at=soon)
    fetcher.tag = "finance@2"
    await h.ack(offer(2))
    assert h.sync.header == "finance@2"
    h.sync.clock = lambda: soon + 1
    await h.ack(offer(2))  # the collector still offers it: refused, not fetched again
    assert h.sync.header == "finance@1"
    assert len(fetcher.requests) == 2
    assert h.flow.library["touch-file"].folder.is_relative_to(h.cache.version_dir("finance", 1))
    last = h.policy_checks()[-1]
    assert last.state == "critical"
    assert last.message == (
        f"expired: policy finance version 2 expired at {soon:.0f}; running finance@1"
    )
    assert h.cache.good_tags() == ["finance@1"]


@run_async
async def test_an_expired_running_bundle_without_a_fallback_runs_none_of_its_remediations(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    source = policy_source(tmp_path / "src", tmp_path / "marker")
    soon = time.time() + 3600
    doc = signed_bundle(source, keys[0], version=1, expires_at=soon)
    h = Harness(tmp_path, keys[1], FakeFetcher(doc, "finance@1"))
    await h.ack(offer(1))
    assert "touch-file" in h.flow.library
    h.sync.clock = lambda: soon + 1
    assert h.sync.check_expiry()  # what the agent's sample cycle calls too
    assert h.sync.header == "none" and h.sync.announced == "none"
    assert "touch-file" not in h.flow.library
    last = h.policy_checks()[-1]
    assert (last.state, last.message.endswith("; running the local config")) == ("critical", True)
    assert not h.sync.check_expiry()  # once


def test_a_signed_local_bundle_is_used_offline(tmp_path: Path, keys: tuple[bytes, str]) -> None:
    """An air-gapped site: policy.local_bundle is verified and run like a fetched one."""
    doc = signed_bundle(policy_source(tmp_path / "src", tmp_path / "m"), keys[0], version=4)
    (tmp_path / "site.vpol").write_bytes(doc)
    config = agent_config(
        tmp_path, keys[1], policy={"trusted_keys": [keys[1]], "local_bundle": "site.vpol"}
    )
    (_merged, library, _), running, problems = initial_policy(
        config, PolicyCache(config.state_dir), (keys[1],), now=NOW, agent_version=__version__
    )
    assert (running.tag if running else None, problems) == ("finance@4", [])
    assert "touch-file" in library


def test_require_signed_local_refuses_unsigned_folders(tmp_path: Path) -> None:
    _, public = pb.generate_keypair()
    with pytest.raises(ConfigError, match=r"remediation\.folders") as info:
        agent_config(
            tmp_path,
            public,
            policy={"trusted_keys": [public], "require_signed_local": True},
            remediation={"folders": [str(tmp_path)]},
        )
    assert "require_signed_local" in str(info.value)


def test_a_bad_trusted_key_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy\.trusted_keys\[0\]"):
        agent_config(tmp_path, "ed25519:short")


# --------------------------------------------------------------------------- merge


def test_merge_precedence(tmp_path: Path, keys: tuple[bytes, str]) -> None:
    source = policy_source(
        tmp_path / "src",
        tmp_path / "marker",
        checks=[
            {"id": "mem", "metric": "memory.used_percent", "critical": 50},
            {"id": "swap", "metric": "swap.used_percent", "critical": 80},
        ],
    )
    doc = signed_bundle(source, keys[0], version=1)
    config = agent_config(tmp_path, keys[1], remediation={"params": {"touch-file": {"x": "1"}}})
    cached = PolicyCache(config.state_dir).store(
        pb.verify(doc, [keys[1]], now=NOW, installed=None, agent_version="1"), doc
    )
    merged = merged_config(config, cached)
    assert [(c.id, c.critical) for c in merged.checks] == [
        ("cpu", 90),
        ("mem", 50),
        ("swap", 80),
    ]
    assert merged.remediation.params["touch-file"] == {"x": "1", "path": str(tmp_path / "marker")}
    assert merged.remediation.folders[0] == cached.folder / "remediations"
    with pytest.raises(ConfigError, match="touch-file"):
        compose(config, cached)  # x is not a parameter the manifest declares


# --------------------------------------------------------------------------- kill switch


@run_async
async def test_the_kill_switch_applies_at_once_and_persists(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    h = Harness(tmp_path, keys[1], FakeFetcher(None, ""))
    await h.ack(offer(None, halted=["touch-file"]))
    assert h.flow.is_halted("touch-file") and not h.flow.is_halted("other")
    again = Harness(tmp_path, keys[1], FakeFetcher(None, ""))  # a restart
    assert again.flow.is_halted("touch-file")
    await again.ack(offer(None, halt_all=True))
    assert again.flow.is_halted("anything")
    await again.ack({"policy": None, "version": None})  # says nothing of halts: kept
    assert again.flow.is_halted("anything")
    await again.ack(offer(None))  # lifted
    assert not again.flow.is_halted("touch-file")
    assert not Harness(tmp_path, keys[1], FakeFetcher(None, "")).flow.is_halted("touch-file")


# --------------------------------------------------------------------------- run-now


@run_async
async def test_run_now_runs_once_with_its_request_id(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    marker = tmp_path / "marker"
    doc = signed_bundle(policy_source(tmp_path / "src", marker), keys[0], version=1)
    h = Harness(tmp_path, keys[1], FakeFetcher(doc, "finance@1"))
    await h.ack(offer(1))
    request = {
        "id": "rn-1",
        "remediation": "touch-file",
        "params": {},
        "requested_by": "alice",
        "requested_at": NOW,
    }
    await h.ack(offer(1, run_now=[request]))
    await h.ack(offer(1, run_now=[request]))  # the collector repeats it until it sees it
    assert marker.read_text() == "ran run-now\n"
    records = [e for e in h.events() if isinstance(e, wire.RemediationEvent)]
    assert [(r.remediation, r.outcome, r.request_id, r.check) for r in records] == [
        ("touch-file", "fixed", "rn-1", None)
    ]
    # Remembered across a restart too.
    again = Harness(tmp_path, keys[1], FakeFetcher(doc, "finance@1"))
    await again.ack(offer(1, run_now=[request]))
    assert marker.read_text() == "ran run-now\n"


@run_async
async def test_run_now_of_a_halted_remediation_is_recorded_as_skipped(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    marker = tmp_path / "marker"
    doc = signed_bundle(policy_source(tmp_path / "src", marker), keys[0], version=1)
    h = Harness(tmp_path, keys[1], FakeFetcher(doc, "finance@1"))
    await h.ack(offer(1))
    request = {"id": "rn-2", "remediation": "touch-file", "params": {}}
    await h.ack(offer(1, halted=["touch-file"], run_now=[request]))
    assert not marker.exists()
    (record,) = [e for e in h.events() if isinstance(e, wire.RemediationEvent)]
    assert (record.outcome, record.request_id) == ("skipped", "rn-2")
    assert "kill switch" in record.output


# --------------------------------------------------------------------------- service


class FakeSampler:
    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def sample(self, sources: Any = None) -> dict[str, float]:
        return dict(self.values)

    def sample_paths(self) -> dict[str, float]:
        return {}

    def reason_for(self, metric: str) -> str:
        return "none"


@run_async
async def test_a_running_agent_applies_a_policy_without_restart(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    """The agent's next cycle runs the policy's checks and remediation: memory at 60 %
    is fine locally (critical 95) but critical under the policy (50), whose check
    triggers the shipped touch-file fix."""
    marker = tmp_path / "marker"
    checks = [
        {
            "id": "mem",
            "metric": "memory.used_percent",
            "critical": 50,
            "remediation": {"id": "touch-file"},
        }
    ]
    doc = signed_bundle(policy_source(tmp_path / "src", marker, checks=checks), keys[0], version=1)
    config = agent_config(tmp_path, keys[1])
    svc = build_service(config, sampler=FakeSampler({"memory.used_percent": 60.0}), policy=True)
    assert svc.policy is not None
    svc.policy.fetcher = FakeFetcher(doc, "finance@1")  # type: ignore[assignment]
    await svc.cycle()
    assert svc.flow.statuses["mem"].state == "ok"
    svc.policy.on_ack(orjson.dumps({"policy": offer(1)}).decode())
    await asyncio.gather(*svc.policy.tasks)
    assert svc.policy.announced == "none"  # swapped between cycles, not mid-cycle
    await svc.cycle()
    assert svc.policy.announced == "finance@1"
    await svc.flow.idle()
    assert marker.read_text() == "ran \n"
    batch = svc.outbox.next_batch(1000)
    reports = [
        e for e in (batch.events if batch else ()) if getattr(e, "check", "") == POLICY_CHECK
    ]
    assert [(r.state, r.message) for r in reports] == [("ok", "running policy finance version 1")]
    svc.outbox.close()
    # A restart starts on the cached policy at once.
    again = build_service(config, sampler=FakeSampler({}), policy=True)
    assert again.policy is not None and again.policy.announced == "finance@1"
    assert next(c for c in again.config.checks if c.id == "mem").critical == 50
    again.outbox.close()


@run_async
async def test_a_halted_remediation_is_not_triggered_by_its_check(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    marker = tmp_path / "marker"
    doc = signed_bundle(policy_source(tmp_path / "src", marker), keys[0], version=1)
    h = Harness(tmp_path, keys[1], FakeFetcher(doc, "finance@1"))
    await h.ack(offer(1, halted=["touch-file"]))
    spec = CheckSpec(
        id="disk", metric="disk.used_percent", critical=90, remediation=RemediationRef("touch-file")
    )
    assert h.flow.evaluate(spec, 99.0, NOW) is True  # urgent: a skip, nothing promised
    await h.flow.idle()
    assert not marker.exists()
    (record,) = [e for e in h.events() if isinstance(e, wire.RemediationEvent)]
    assert (record.outcome, record.check) == ("skipped", "disk")
    assert record.output == "halted by the collector (kill switch)"


def test_enroll_stores_the_offered_policy_keys(tmp_path: Path) -> None:
    _, good = pb.generate_keypair()
    assert store_policy_keys(tmp_path, [good, "ed25519:bad"]) == 1
    assert enrolled_keys(tmp_path) == (good,)
    assert store_policy_keys(tmp_path, None) == 0  # an older collector: file left alone
    assert enrolled_keys(tmp_path) == (good,)


@run_async
async def test_run_now_of_an_unknown_remediation_answers_the_request(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    h = Harness(tmp_path, keys[1], FakeFetcher(None, ""))
    await h.ack(offer(None, run_now=[{"id": "rn-3", "remediation": "nope", "params": {}}]))
    (record,) = [e for e in h.events() if isinstance(e, wire.RemediationEvent)]
    assert (record.remediation, record.outcome, record.request_id) == ("nope", "skipped", "rn-3")
    assert record.output == "run-now: remediation nope is not loaded on this host"


@run_async
async def test_run_now_with_an_undeclared_parameter_runs_nothing_and_says_so(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    marker = tmp_path / "marker"
    doc = signed_bundle(policy_source(tmp_path / "src", marker), keys[0], version=1)
    h = Harness(tmp_path, keys[1], FakeFetcher(doc, "finance@1"))
    await h.ack(offer(1))
    request = {"id": "rn-4", "remediation": "touch-file", "params": {"rm": "-rf"}}
    await h.ack(offer(1, run_now=[request]))
    assert not marker.exists()
    (record,) = [e for e in h.events() if isinstance(e, wire.RemediationEvent)]
    assert (record.outcome, record.request_id) == ("skipped", "rn-4")
    assert "has no parameter 'rm'" in record.output
