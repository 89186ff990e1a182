"""Console session cookies and CSRF tokens (pure: a fixed key, times as parameters)."""

from __future__ import annotations

import pytest

from vigil.collector.console.session import SESSION_TTL_S, Signer

T0 = 1_700_000_000.0
HASH = "ab" * 32


@pytest.fixture
def signer() -> Signer:
    return Signer(b"k" * 32)


def test_an_issued_cookie_verifies_until_it_expires(signer: Signer) -> None:
    cookie = signer.issue(HASH, T0)
    session = signer.verify(cookie, T0 + SESSION_TTL_S - 1)
    assert session is not None and session.token_hash == HASH
    assert signer.verify(cookie, T0 + SESSION_TTL_S) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: c[:-1] + ("A" if c[-1] != "A" else "B"),  # signature changed
        lambda c: ("f" if c[0] == "e" else "e") + c[1:],  # payload changed
        lambda c: c.replace(".", ""),  # no signature
        lambda c: c + ".x",  # two dots
        lambda c: "",
        lambda c: c * 3,  # too long
    ],
    ids=["signature", "payload", "unsigned", "extra-part", "empty", "oversized"],
)
def test_a_tampered_cookie_is_no_session(signer: Signer, mangle) -> None:
    assert signer.verify(mangle(signer.issue(HASH, T0)), T0) is None


def test_another_key_does_not_accept_the_cookie(signer: Signer) -> None:
    assert Signer(b"x" * 32).verify(signer.issue(HASH, T0), T0) is None


def test_the_csrf_token_belongs_to_its_session(signer: Signer) -> None:
    one = signer.verify(signer.issue(HASH, T0), T0)
    two = signer.verify(signer.issue(HASH, T0), T0)
    assert one is not None and two is not None
    assert signer.csrf_ok(one, signer.csrf_for(one))
    assert not signer.csrf_ok(one, signer.csrf_for(two)), "each login has its own token"
    assert not signer.csrf_ok(one, None) and not signer.csrf_ok(one, "")


def test_the_login_csrf_is_bound_to_the_pre_login_cookie(signer: Signer) -> None:
    nonce = signer.login_nonce()
    assert signer.login_csrf_ok(nonce, signer.login_csrf(nonce))
    assert not signer.login_csrf_ok(signer.login_nonce(), signer.login_csrf(nonce))
    assert not signer.login_csrf_ok(None, signer.login_csrf(nonce))


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="key"):
        Signer(b"short")
