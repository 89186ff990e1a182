"""The :class:`~collector.storage.protocols.EnrollmentRepository` contract, run against
every backend (see ``backends.py``): what enrollment and the credential cache rely on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.storage.backends import BackendFactory
from vigil.collector.storage.protocols import Storage

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
NOW = 1_700_000_000.0


@pytest.fixture
def storage(backend: BackendFactory) -> Iterator[Storage]:
    store = backend.open()
    yield store
    store.close()


def secret_row(secret_id: str = "0123abcd", **extra: Any) -> dict[str, Any]:
    row = {"id": secret_id, "secret_hash": "h-" + secret_id, "labels": {"role": "laptop"}}
    return row | {"comment": "", "created_at": NOW, "expires_at": NOW + 60, "max_uses": 2} | extra


def credential_row(token_hash: str, agent_id: str, **extra: Any) -> dict[str, Any]:
    row = {"token_hash": token_hash, "agent_id": agent_id, "secret_id": "0123abcd"}
    row |= {"labels": {"role": "laptop"}, "hostname": "ws", "issued_at": NOW}
    return row | {"expires_at": NOW + 60, "pending": False} | extra


def test_a_secret_is_found_by_its_hash_and_counts_its_uses(storage: Storage) -> None:
    with storage.session() as uow, uow.transaction():
        uow.enrollment.add_secret(secret_row())
        uow.enrollment.use_secret("0123abcd")
    with storage.session() as uow:
        found = uow.enrollment.secret_by_hash("h-0123abcd")
        assert uow.enrollment.secret_by_hash("nope") is None
        (listed,) = uow.enrollment.list_secrets()
    assert found is not None and found["uses"] == 1 and found["labels"] == {"role": "laptop"}
    assert found["revoked_at"] is None and "secret_hash" not in listed


def test_revoking_a_secret_deletes_only_its_credentials(storage: Storage) -> None:
    with storage.session() as uow, uow.transaction():
        uow.enrollment.add_secret(secret_row())
        uow.enrollment.add_secret(secret_row("89abcdef", secret_hash="other"))
        uow.enrollment.put_credential(credential_row("t1", "a1"))
        uow.enrollment.put_credential(credential_row("t2", "a2", secret_id="89abcdef"))
    with storage.session() as uow, uow.transaction():
        assert uow.enrollment.revoke_secret("0123abcd", NOW) == 1
        assert uow.enrollment.revoke_secret("ffffffff", NOW) is None
    with storage.session() as uow:
        assert [c["agent_id"] for c in uow.enrollment.all_credentials()] == ["a2"]
        assert uow.enrollment.secret_by_hash("h-0123abcd")["revoked_at"] == NOW  # type: ignore[index]


def test_credentials_of_an_agent_keep_delete_and_activate(storage: Storage) -> None:
    with storage.session() as uow, uow.transaction():
        uow.enrollment.put_credential(credential_row("old", "a1"))
        uow.enrollment.put_credential(credential_row("new", "a1", issued_at=NOW + 1, pending=True))
        uow.enrollment.put_credential(credential_row("b", "b1"))
    with storage.session() as uow, uow.transaction():
        assert [c["pending"] for c in uow.enrollment.credentials_of("a1")] == [False, True]
        uow.enrollment.activate("new")
        assert uow.enrollment.delete_credentials("a1", keep="new") == 1
    with storage.session() as uow, uow.transaction():
        (only,) = uow.enrollment.credentials_of("a1")
        assert (only["token_hash"], only["pending"]) == ("new", False)
        assert uow.enrollment.delete_credentials("b1") == 1
        assert uow.enrollment.delete_credentials("b1") == 0


def test_every_change_moves_the_generation(storage: Storage) -> None:
    with storage.session() as uow:
        start = uow.enrollment.generation()
    seen = [start]
    for change in (
        lambda e: e.add_secret(secret_row()),
        lambda e: e.use_secret("0123abcd"),
        lambda e: e.put_credential(credential_row("t", "a")),
        lambda e: e.activate("t"),
        lambda e: e.delete_credentials("a"),
        lambda e: e.revoke_secret("0123abcd", NOW),
    ):
        with storage.session() as uow, uow.transaction():
            change(uow.enrollment)
        with storage.session() as uow:
            seen.append(uow.enrollment.generation())
    assert seen == sorted(set(seen)), seen


def test_a_schema2_database_gains_empty_enrollment_tables(backend: BackendFactory) -> None:
    """An upgraded collector: its agents' shared tokens keep working (no credentials)."""
    backend.restore_schema2((FIXTURES / "schema2.sql").read_text())
    with contextlib.closing(backend.open()) as store, store.session() as uow:
        assert uow.enrollment.all_credentials() == []
        assert uow.enrollment.list_secrets() == []
