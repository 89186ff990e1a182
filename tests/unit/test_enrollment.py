"""Enrollment decisions and credential checks of the collector, on a real SQLite store:
which secrets may be used, one live credential per agent id, rotation, revocation, and
what an authenticated request may write."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vigil import wire, wire_fast
from vigil.collector.identity import enrollment
from vigil.collector.identity.credentials import CredentialCache, routing_labels, token_hash
from vigil.collector.identity.enrollment import EnrollError
from vigil.collector.identity.service import AgentAuth, AgentIdentity, Forbidden
from vigil.collector.storage.sqlite.backend import SqliteStorage

NOW = 1_700_000_000.0
TTL = 1000.0
WHO = {"actor": "cli:tester", "peer": "local"}
SHARED = "shared-token-0123456789abcdef0123456789abcdef"


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[SqliteStorage]:
    store = SqliteStorage(tmp_path / "collector.db")
    yield store
    store.close()


def secret(storage: SqliteStorage, *, uses: int = 3, ttl_s: float = 3600.0) -> str:
    return enrollment.create_secret(
        storage, labels={"role": "server"}, ttl_s=ttl_s, max_uses=uses, comment="", now=NOW, **WHO
    )[1]


def enroll(storage: SqliteStorage, secret: str, agent_id: str, **kwargs: Any) -> enrollment.Issued:
    args: dict[str, Any] = {"hostname": "ws", "replace": False, "now": NOW, "credential_ttl_s": TTL}
    args["peer"] = "127.0.0.1"
    return enrollment.enroll(storage, secret=secret, agent_id=agent_id, **{**args, **kwargs})


def identity(storage: SqliteStorage, legacy: tuple[str, ...] = ()) -> AgentIdentity:
    async def run(fn: Any, *args: Any) -> Any:
        return fn(*args)

    ident = AgentIdentity(storage, run, legacy_tokens=legacy, credential_ttl_s=TTL)
    asyncio.run(ident.refresh())
    return ident


def report(agent_id: str) -> wire.Report:
    return wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id=agent_id,
        hostname="ws",
        labels={"role": "kiosk", "site": "paris"},
        batch_id="b1",
        sent_at=NOW,
        agent_version="t",
        events=(),
    )


SECRET_ROW = {"revoked_at": None, "expires_at": NOW + 10, "uses": 0, "max_uses": 1}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (None, "wrong_secret"),
        ({**SECRET_ROW, "revoked_at": NOW - 1}, "revoked"),
        ({**SECRET_ROW, "expires_at": NOW}, "expired"),
        ({**SECRET_ROW, "uses": 1}, "used_up"),
        (SECRET_ROW, None),
    ],
    ids=["unknown", "revoked", "expired at this second", "used up", "usable"],
)
def test_which_secrets_may_be_used(row: dict[str, Any] | None, reason: str | None) -> None:
    assert enrollment.secret_refusal(row, NOW) == reason


def test_enrollment_stores_only_hashes_and_counts_a_use(storage: SqliteStorage) -> None:
    s = secret(storage)
    issued = enroll(storage, s, "agent-1")
    assert issued.labels == {"role": "server"} and issued.expires_at == NOW + TTL
    assert len(issued.credential) >= 4 + 43  # prefix + 32 random bytes
    with storage.session() as uow:
        (row,) = uow.enrollment.all_credentials()
        (listed,) = uow.enrollment.list_secrets()
    assert row["token_hash"] == token_hash(issued.credential)
    assert listed["uses"] == 1
    db = (storage.path).read_bytes() + Path(f"{storage.path}-wal").read_bytes()
    assert issued.credential.encode() not in db and s.encode() not in db


def test_a_second_enrollment_of_an_id_is_a_conflict_unless_replace(storage: SqliteStorage) -> None:
    s = secret(storage)
    first = enroll(storage, s, "agent-1")
    with pytest.raises(EnrollError) as exc:
        enroll(storage, s, "agent-1", hostname="clone")
    assert (exc.value.status, exc.value.reason, exc.value.field) == (409, "conflict", "agent_id")
    replaced = enroll(storage, s, "agent-1", replace=True)
    assert replaced.replaced
    cache = CredentialCache()
    enrollment.refresh_cache(storage, cache)
    assert cache.lookup(first.credential) is None
    assert cache.lookup(replaced.credential) is not None


def test_an_expired_credential_does_not_block_re_enrollment(storage: SqliteStorage) -> None:
    s = secret(storage)
    enroll(storage, s, "agent-1")
    assert not enroll(storage, s, "agent-1", now=NOW + TTL).replaced


def test_rotation_is_granted_from_half_life_and_the_old_one_works_until_the_new_is_used(
    storage: SqliteStorage,
) -> None:
    issued = enroll(storage, secret(storage), "agent-1")
    ident = identity(storage)
    auth = ident.authenticate(f"Bearer {issued.credential}", NOW)
    assert auth is not None
    assert asyncio.run(ident.rotate(auth, NOW + TTL * 0.4)) is None
    new = asyncio.run(ident.rotate(auth, NOW + TTL * 0.6))
    assert new is not None
    later = NOW + TTL * 0.7
    assert ident.authenticate(f"Bearer {issued.credential}", later) is not None
    new_auth = ident.authenticate(f"Bearer {new.credential}", later)
    assert new_auth is not None and new_auth.credential is not None
    assert new_auth.credential.pending
    asyncio.run(ident.activate_if_pending(new_auth))
    assert ident.authenticate(f"Bearer {issued.credential}", later) is None
    assert ident.authenticate(f"Bearer {new.credential}", NOW + TTL * 1.5) is not None


def test_revoking_a_secret_revokes_its_credentials(storage: SqliteStorage) -> None:
    s = secret(storage)
    issued = enroll(storage, s, "agent-1")
    ident = identity(storage)
    (row,) = enrollment.list_secrets(storage)
    assert enrollment.revoke_secret(storage, row["id"], NOW, **WHO) == 1
    assert enrollment.revoke_secret(storage, "nope", NOW, **WHO) is None
    asyncio.run(ident.refresh())
    assert ident.authenticate(f"Bearer {issued.credential}", NOW) is None
    with pytest.raises(EnrollError) as exc:
        enroll(storage, s, "agent-2")
    assert exc.value.reason == "revoked"


@pytest.mark.parametrize(
    "header",
    ["", "Bearer", "Bearer ", "Basic abc", "Bearer wrong"],
    ids=["none", "no token", "blank token", "other scheme", "unknown"],
)
def test_unauthenticated_requests(storage: SqliteStorage, header: str) -> None:
    assert identity(storage, (SHARED,)).authenticate(header, NOW) is None


def test_a_credential_expires(storage: SqliteStorage) -> None:
    issued = enroll(storage, secret(storage), "agent-1")
    ident = identity(storage)
    assert ident.authenticate(f"bearer {issued.credential}", NOW + TTL - 1) is not None
    assert ident.authenticate(f"Bearer {issued.credential}", NOW + TTL) is None


def test_a_credential_may_only_write_as_its_own_agent(storage: SqliteStorage) -> None:
    issued = enroll(storage, secret(storage), "agent-1")
    ident = identity(storage)
    auth = ident.authenticate(f"Bearer {issued.credential}", NOW)
    assert auth is not None
    with pytest.raises(Forbidden):
        ident.authorize(auth, report("agent-2"))
    stored = ident.authorize(auth, report("agent-1"))
    assert stored.labels == {"role": "server", "agent:role": "kiosk", "agent:site": "paris"}
    assert dataclasses.replace(stored, labels={}) == dataclasses.replace(
        report("agent-1"), labels={}
    )


def test_the_lean_fronts_struct_reports_get_the_granted_labels_too(storage: SqliteStorage) -> None:
    """The plain lane hands over the checked Struct (wire_fast.decode_struct): authorize
    keeps its class and grants the same labels as for the wire dataclass."""
    issued = enroll(storage, secret(storage), "agent-1")
    ident = identity(storage)
    auth = ident.authenticate(f"Bearer {issued.credential}", NOW)
    assert auth is not None
    struct = wire_fast.decode_struct(wire.encode_report(report("agent-1")))
    assert struct is not None
    stored = ident.authorize(auth, struct)
    assert type(stored) is type(struct)
    assert wire_fast.as_wire(stored) == ident.authorize(auth, report("agent-1"))
    other = wire_fast.decode_struct(wire.encode_report(report("agent-2")))
    with pytest.raises(Forbidden):
        ident.authorize(auth, other)


def test_a_shared_token_may_write_only_for_agents_not_enrolled(storage: SqliteStorage) -> None:
    enroll(storage, secret(storage), "agent-1")
    ident = identity(storage, (SHARED,))
    auth = ident.authenticate(f"Bearer {SHARED}", NOW)
    assert auth == AgentAuth(None)
    with pytest.raises(Forbidden):
        ident.authorize(auth, report("agent-1"))
    assert ident.authorize(auth, report("legacy")).labels == report("legacy").labels


def test_granted_labels_win_over_claimed_ones() -> None:
    assert routing_labels({"role": "server"}, {"role": "kiosk"}) == {
        "role": "server",
        "agent:role": "kiosk",
    }


def audit_rows(storage: SqliteStorage) -> list[tuple[str, str, str, str]]:
    with storage.session() as uow:
        rows = uow.audit.list(limit=100, offset=0, action=None)
    return sorted((r["actor"], r["action"], r["target"], r["peer"]) for r in rows)


def test_every_enrollment_write_and_refusal_is_audited(storage: SqliteStorage) -> None:
    s = secret(storage, uses=1)
    row = enrollment.list_secrets(storage)[0]
    enroll(storage, s, "agent-1")
    with pytest.raises(enrollment.EnrollError):
        enroll(storage, s, "agent-2")  # used up: refused, still recorded
    assert enrollment.revoke_agent(storage, "agent-1", now=NOW, **WHO) == 1
    assert enrollment.revoke_agent(storage, "agent-1", now=NOW, **WHO) == 0  # nothing: no record
    assert enrollment.revoke_secret(storage, row["id"], NOW, **WHO) == 0
    assert audit_rows(storage) == sorted(
        [
            ("cli:tester", "enroll_secret.create", f"enroll-secret:{row['id']}", "local"),
            ("agent:agent-1", "agent.enroll", "agent:agent-1", "127.0.0.1"),
            ("agent:agent-2", "agent.enroll_refused", "agent:agent-2", "127.0.0.1"),
            ("cli:tester", "agent.revoke", "agent:agent-1", "local"),
            ("cli:tester", "enroll_secret.revoke", f"enroll-secret:{row['id']}", "local"),
        ]
    )
