"""Signed, expiring survey links bound to one survey and its incident.

A token is ``{survey_id}.{incident_id}.{expires_at}.{mac}`` where ``mac`` is the
URL-safe base64 of HMAC-SHA256(key, ``"vigil-survey.{survey_id}.{incident_id}.{expires_at}"``).
Whoever holds the token may answer that one survey once before it expires: the token is
the capability (no cookie, so no cross-site request can borrow it). Single use is the
storage's job (the answer is recorded only while none is); this module only proves the
token was made by a collector holding the key and has not expired. Pure: ``now`` is a
parameter.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

_TOKEN = re.compile(r"^(\d{1,18})\.(\d{1,18})\.(\d{1,12})\.([A-Za-z0-9_-]{43})$")
# Key bytes generated when the config gives none (kept in the database).
KEY_BYTES = 32


class LinkError(Exception):
    """A survey token that must be refused; ``status`` is the HTTP status to answer."""

    status = 403


class ForgedLink(LinkError):
    """Malformed, or not signed with this collector's key."""

    status = 403


class ExpiredLink(LinkError):
    """Signed, but past its expiry."""

    status = 410


def _mac(key: bytes, survey_id: int, incident_id: int, expires_at: int) -> str:
    message = f"vigil-survey.{survey_id}.{incident_id}.{expires_at}".encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def make_token(key: bytes, survey_id: int, incident_id: int, expires_at: float) -> str:
    """The token for a survey; ``expires_at`` (Unix seconds) is rounded down to a second."""
    expires = int(expires_at)
    return f"{survey_id}.{incident_id}.{expires}.{_mac(key, survey_id, incident_id, expires)}"


def check_token(key: bytes, token: str, now: float) -> tuple[int, int]:
    """``(survey_id, incident_id)`` of a valid token; raises :class:`ForgedLink` for a
    token this key did not sign (compared in constant time) and :class:`ExpiredLink` for
    one at or past its expiry."""
    match = _TOKEN.match(token)
    if match is None:
        raise ForgedLink("this survey link is not valid")
    survey_id, incident_id, expires = (int(g) for g in match.groups()[:3])
    if not hmac.compare_digest(match.group(4), _mac(key, survey_id, incident_id, expires)):
        raise ForgedLink("this survey link is not valid")
    if now >= expires:
        raise ExpiredLink("this survey link has expired")
    return survey_id, incident_id
