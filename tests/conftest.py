"""Shared test fixtures.

Collector fixtures are named ``collector_*``. The ``make_*`` fixtures return builders of
valid wire messages (pass only what a test is about), for agent and collector tests alike.
Helpers are exposed as fixtures rather than imported from here, so test modules do not
depend on how pytest puts this folder on ``sys.path``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from vigil import wire
from vigil.collector.app import create_app
from vigil.collector.config import AuthConfig, CollectorConfig
from vigil.collector.storage.url import sqlite_url

COLLECTOR_AGENT_TOKEN = "test-agent-token-0123456789abcdef0123456789abcdef"
COLLECTOR_ADMIN_TOKEN = "test-admin-token-0123456789abcdef0123456789abcdef"
# A fixed, recognisable epoch time (2024-01-01T00:00:00Z) so expected values read plainly.
T0 = 1_704_067_200.0


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def collector_config(tmp_path: Path) -> CollectorConfig:
    """A collector config with a SQLite file in ``tmp_path``, one agent and one admin token.

    Vary it with ``dataclasses.replace``.
    """
    return CollectorConfig(
        file=str(tmp_path / "collector.yaml"),
        host="127.0.0.1",
        port=0,
        storage_url=sqlite_url(tmp_path / "collector.db"),
        auth=AuthConfig(
            agent_tokens=(COLLECTOR_AGENT_TOKEN,), admin_tokens=(COLLECTOR_ADMIN_TOKEN,)
        ),
    )


@asynccontextmanager
async def collector_running(
    config: CollectorConfig, *, clock: Callable[[], float] | None = None
) -> AsyncIterator[str]:
    """Serve ``create_app(config)`` on 127.0.0.1, ephemeral port; yields the base URL."""
    app = create_app(config) if clock is None else create_app(config, clock=clock)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def collector_server() -> Callable[..., Any]:
    """``async with collector_server(config, clock=...) as url:`` (see collector_running)."""
    return collector_running


@pytest.fixture(name="make_check_event")
def _make_check_event_fixture() -> Callable[..., wire.CheckEvent]:
    return build_check_event


@pytest.fixture(name="make_remediation_event")
def _make_remediation_event_fixture() -> Callable[..., wire.RemediationEvent]:
    return build_remediation_event


@pytest.fixture(name="make_report")
def _make_report_fixture() -> Callable[..., wire.Report]:
    return build_report


def build_check_event(
    check: str = "disk.free",
    state: wire.CheckState = "critical",
    *,
    previous_state: wire.CheckState | None = "ok",
    value: float | None = 95.0,
    remediation: str | None = None,
    ttl_s: float | None = None,
    seq: int = 1,
    time: float = T0,
) -> wire.CheckEvent:
    return wire.CheckEvent(
        event_id=str(uuid.uuid4()),
        seq=seq,
        time=time,
        check=check,
        state=state,
        previous_state=previous_state,
        value=value,
        message=f"{check} is {state}",
        remediation=remediation,
        ttl_s=ttl_s,
    )


def build_remediation_event(
    remediation: str = "clean-temp",
    check: str | None = "disk.free",
    outcome: wire.Outcome = "fixed",
    *,
    seq: int = 2,
    time: float = T0,
) -> wire.RemediationEvent:
    return wire.RemediationEvent(
        event_id=str(uuid.uuid4()),
        seq=seq,
        time=time,
        remediation=remediation,
        check=check,
        outcome=outcome,
        exit_code=0,
        started_at=time,
        duration_s=1.5,
        value_before=95.0,
        value_after=60.0,
        output="removed 3 files\n",
        output_truncated=False,
        script_sha256="0" * 64,
        dry_run=False,
    )


def build_report(
    *events: wire.Event,
    agent_id: str = "agent-0001",
    hostname: str = "ws-0001",
    batch_id: str | None = None,
    sent_at: float = T0,
) -> wire.Report:
    """A schema-v1 report holding ``events`` (a fresh ``batch_id`` unless given)."""
    return wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id=agent_id,
        hostname=hostname,
        labels={"department": "test"},
        batch_id=batch_id or str(uuid.uuid4()),
        sent_at=sent_at,
        agent_version="0.1.0",
        events=tuple(events),
    )


_TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The folder is the kind: everything under ``tests/integration/`` is marked
    ``integration`` (``-m "not integration"`` runs the fast unit suite alone), and a test
    under ``tests/unit/`` may not claim that mark."""
    for item in items:
        folder = Path(item.path).resolve().relative_to(_TESTS).parts[0]
        if folder == "integration":
            item.add_marker(pytest.mark.integration)
        elif item.get_closest_marker("integration") is not None:
            raise pytest.UsageError(f"{item.nodeid}: a unit test marked integration")
