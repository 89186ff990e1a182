"""Console sessions and CSRF tokens: HMAC-signed cookies, no server-side state.

A session cookie is ``<payload>.<signature>``: the payload (base64url JSON) holds the
operator's *token hash* (never the token), the expiry (Unix seconds) and a random nonce;
the signature is HMAC-SHA256 under the process's :class:`Signer` key. On every request the
hash is looked up in the operator directory, so rotating or removing an operator's token
ends its sessions at once; the expiry ends them after :data:`SESSION_TTL_S` anyway.

A form's CSRF token is an HMAC of the session's signature (synchronizer token bound to
the session, so a token from another session or a forged one is refused). The login form,
which has no session yet, binds its token to a random pre-login cookie instead.

The key is derived from the collectors' shared secret in the database
(:func:`vigil.collector.desk.surveys.derived_key`), so a restart logs nobody out and
several collector processes behind one address accept each other's sessions.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from dataclasses import dataclass
from hashlib import sha256

SESSION_COOKIE = "vigil_session"
LOGIN_COOKIE = "vigil_login"
SESSION_TTL_S = 8 * 3600.0  # one working day
LOGIN_TTL_S = 1800  # seconds a login form stays usable
_MAX_COOKIE = 1024  # characters: anything longer is not ours


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session: the operator's ``token_hash``, ``expires_at`` (Unix s), and
    the cookie's ``signature`` (what its CSRF token is derived from)."""

    token_hash: str
    expires_at: float
    signature: str


class Signer:
    """Signs and verifies session cookies and CSRF tokens with one secret ``key``."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("key: at least 32 bytes")
        self._key = key

    def _mac(self, purpose: str, data: str) -> str:
        digest = hmac.new(self._key, f"{purpose}|{data}".encode(), sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def issue(self, token_hash: str, now: float) -> str:
        """A session cookie value for the operator with ``token_hash``, valid until
        ``now`` + :data:`SESSION_TTL_S`."""
        payload = json.dumps(
            {"h": token_hash, "e": now + SESSION_TTL_S, "n": secrets.token_urlsafe(12)},
            separators=(",", ":"),
        )
        body = base64.urlsafe_b64encode(payload.encode()).rstrip(b"=").decode("ascii")
        return f"{body}.{self._mac('session', body)}"

    def verify(self, cookie: str | None, now: float) -> Session | None:
        """The session ``cookie`` carries, or None when it is absent, malformed, forged
        or expired."""
        if not cookie or len(cookie) > _MAX_COOKIE or cookie.count(".") != 1:
            return None
        body, signature = cookie.split(".")
        if not hmac.compare_digest(signature, self._mac("session", body)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(data, dict):
            return None
        token_hash, expires = data.get("h"), data.get("e")
        if not isinstance(token_hash, str) or not isinstance(expires, int | float):
            return None
        if now >= expires:
            return None
        return Session(token_hash, float(expires), signature)

    def csrf_for(self, session: Session) -> str:
        """The CSRF token every form of ``session``'s pages carries."""
        return self._mac("csrf", session.signature)

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        """Whether ``given`` is ``session``'s CSRF token (constant-time)."""
        return bool(given) and hmac.compare_digest(str(given), self.csrf_for(session))

    @staticmethod
    def login_nonce() -> str:
        """A fresh value for the pre-login cookie."""
        return secrets.token_urlsafe(16)

    def login_csrf(self, nonce: str) -> str:
        """The login form's CSRF token, bound to the pre-login cookie ``nonce``."""
        return self._mac("login", nonce)

    def login_csrf_ok(self, nonce: str | None, given: str | None) -> bool:
        """Whether ``given`` matches the pre-login cookie ``nonce`` (constant-time)."""
        if not nonce or not given or len(nonce) > 64:
            return False
        return hmac.compare_digest(str(given), self.login_csrf(nonce))
