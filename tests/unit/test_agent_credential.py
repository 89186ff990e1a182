"""The agent's enrolled credential: storage in the state folder, use by the shipper,
rotation on the report exchange, and recovery after a refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_shipper import (
    IDENTITY,
    TOKEN,
    FakeClock,
    FakeCollector,
    Reply,
    fill,
    outbox,  # noqa: F401 (fixture)
    run_against,
)
from vigil.agent.delivery.credential import (
    CREDENTIAL_FILE,
    ROTATE_HEADER,
    Credential,
    CredentialSource,
    read_credential,
    write_credential,
)
from vigil.agent.delivery.outbox import Outbox
from vigil.agent.delivery.shipper import Shipper

NOW = 1_000_000.0
ENROLLED = "vga_enrolled-credential"


def enrolled(state: Path, *, issued_at: float = NOW, expires_at: float = NOW + 100.0) -> None:
    write_credential(
        state / CREDENTIAL_FILE, Credential(IDENTITY.agent_id, ENROLLED, issued_at, expires_at)
    )


def source(state: Path, clock: FakeClock) -> CredentialSource:
    return CredentialSource(state, IDENTITY.agent_id, TOKEN, clock=clock)


def test_the_credential_file_is_private_and_read_back(tmp_path: Path) -> None:
    enrolled(tmp_path)
    path = tmp_path / CREDENTIAL_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_credential(path) == Credential(IDENTITY.agent_id, ENROLLED, NOW, NOW + 100.0)


def test_without_a_credential_the_shared_token_is_used(tmp_path: Path) -> None:
    assert source(tmp_path, FakeClock(NOW)).token() == TOKEN


def test_a_credential_written_while_running_is_picked_up(tmp_path: Path) -> None:
    creds = source(tmp_path, FakeClock(NOW))
    assert creds.token() == TOKEN
    enrolled(tmp_path)
    assert creds.token() == ENROLLED


def test_a_credential_issued_to_another_agent_id_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state folder copied from another machine, or an id renewed after enrolling."""
    write_credential(tmp_path / CREDENTIAL_FILE, Credential("b" * 32, ENROLLED, NOW, NOW + 9))
    assert source(tmp_path, FakeClock(NOW)).token() == TOKEN
    assert "issued to agent" in caplog.text


def test_a_corrupt_credential_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / CREDENTIAL_FILE).write_text("{not json")
    assert source(tmp_path, FakeClock(NOW)).token() == TOKEN


@pytest.mark.parametrize(
    ("elapsed", "wanted"),
    [(0.0, False), (74.9, False), (75.0, True), (120.0, True)],
    ids=["fresh", "just before three quarters", "three quarters", "expired"],
)
def test_rotation_is_asked_for_in_the_last_quarter(
    tmp_path: Path, elapsed: float, wanted: bool
) -> None:
    enrolled(tmp_path)
    assert source(tmp_path, FakeClock(NOW + elapsed)).wants_rotation() is wanted


def test_the_shipper_sends_the_enrolled_credential(tmp_path: Path, outbox: Outbox) -> None:  # noqa: F811
    enrolled(tmp_path)
    fill(outbox, 1)
    collector = FakeCollector()
    clock = FakeClock(NOW)
    run_against(collector, outbox, clock, Shipper.ship, credentials=source(tmp_path, clock))
    (request,) = collector.received
    assert request.headers["Authorization"] == f"Bearer {ENROLLED}"
    assert ROTATE_HEADER not in request.headers


def test_near_expiry_the_shipper_asks_for_and_stores_a_new_credential(
    tmp_path: Path,
    outbox: Outbox,  # noqa: F811
) -> None:
    enrolled(tmp_path)
    clock = FakeClock(NOW + 80.0)
    ack = {
        "batch_id": "x",
        "accepted": True,
        "duplicate": False,
        "events": 1,
        "credential": {"token": "vga_rotated", "expires_at": NOW + 500.0},
    }
    collector = FakeCollector(Reply(text=json.dumps(ack)))

    async def steps(shipper: Shipper) -> None:
        fill(outbox, 1)
        await shipper.ship()
        fill(outbox, 1)
        await shipper.ship()

    run_against(collector, outbox, clock, steps, credentials=source(tmp_path, clock))
    first, second = collector.received
    assert first.headers[ROTATE_HEADER] == "1"
    assert first.headers["Authorization"] == f"Bearer {ENROLLED}"
    assert second.headers["Authorization"] == "Bearer vga_rotated"
    assert ROTATE_HEADER not in second.headers  # the new one is fresh
    stored = read_credential(tmp_path / CREDENTIAL_FILE)
    assert stored is not None and stored.expires_at == NOW + 500.0
    assert outbox.depth() == 0


def test_a_refused_agent_keeps_its_batch_and_retries_at_once_after_re_enrolling(
    tmp_path: Path,
    outbox: Outbox,  # noqa: F811
) -> None:
    """A 401 (revoked) keeps the batch and backs off; a new credential ends the backoff."""
    enrolled(tmp_path)
    ids = fill(outbox, 2)
    clock = FakeClock(NOW)
    collector = FakeCollector(Reply(status=401, text='{"error": "revoked"}'))

    async def steps(shipper: Shipper) -> tuple[str | None, str | None]:
        refused = await shipper.ship()
        still_backing_off = await shipper.ship()
        write_credential(
            tmp_path / CREDENTIAL_FILE,
            Credential(IDENTITY.agent_id, "vga_new", NOW, NOW + 100.0),
        )
        delivered = await shipper.ship()
        assert still_backing_off.error == "backing off"
        return refused.error, delivered.error

    refused, delivered = run_against(
        collector, outbox, clock, steps, credentials=source(tmp_path, clock)
    )
    assert refused is not None and "401" in refused
    assert delivered is None
    assert outbox.depth() == 0
    assert [e.event_id for e in collector.received[-1].report.events] == ids
    assert collector.received[-1].headers["Authorization"] == "Bearer vga_new"
