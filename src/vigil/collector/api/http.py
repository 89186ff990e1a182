"""What every handler shares: JSON errors, tokens, query and body parsing, the storage thread.

Every error body is ``{"error": "<message>", "field": "<path or null>"}``. Handlers raise
:class:`ApiError`; the app's middleware renders it with :func:`error_response`. Every
parsing helper here names the query parameter, path segment or body field at fault.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from aiohttp import web

from vigil.collector.identity.audit import AuditEntry
from vigil.collector.identity.roles import ADMIN, RESPONDER, VIEWER, Principal, allows
from vigil.collector.keys import clock_key, config_key, directory_key, executor_key
from vigil.wire import valid_text

T = TypeVar("T")

# SQLite integers are signed 64-bit; a larger id cannot exist and would overflow the driver.
MAX_ID = 2**63 - 1
# The path segment of every ``/{id}`` route; :func:`item_id` reads it.
ITEM_ID = "{item_id:[0-9]+}"
MAX_JSON_BODY = 64 * 1024  # bytes of a write request's JSON body
MAX_TEXT = 4096  # characters in a string field of a write body (a note, a CAPA field)
# The latest time a body may name: 9999-12-31T23:59:59Z, the last second every renderer
# (datetime, ISO 8601, Alertmanager) can still print.
MAX_TIME = 253_402_300_799.0
# The challenge every 401 carries.
AUTH_CHALLENGE: Mapping[str, str] = MappingProxyType({"WWW-Authenticate": 'Bearer realm="vigil"'})

_READ_CHUNK = 64 * 1024
# At most 19 digits: enough for any 64-bit value, and int() of huge strings is refused.
_DIGITS = re.compile(r"[0-9]{1,19}")


class ApiError(Exception):
    """An HTTP error with a JSON body naming the offending ``field`` (or ``None``)."""

    def __init__(
        self,
        status: int,
        message: str,
        field: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


class BodyTooLarge(ValueError):
    """A request body, or what it decompresses to, is over the configured limit."""


# Standard JSON only: a NaN or an infinity that reached a response is a bug to surface
# (ValueError, a logged 500), never a ``NaN`` token a strict client cannot parse.
_dumps = functools.partial(json.dumps, allow_nan=False)


def json_response(
    data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``data`` as a standard-JSON response; every JSON reply of the API goes through here.

    Raises ``ValueError`` (the app's middleware turns it into a 500) rather than emit
    ``NaN`` or ``Infinity``.
    """
    return web.json_response(data, status=status, headers=dict(headers or {}), dumps=_dumps)


def json_bytes(data: Any) -> bytes:
    """``data`` as the bytes of a standard-JSON body (as :func:`json_response` writes)."""
    return _dumps(data).encode()


def error_response(
    status: int,
    message: str,
    field: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """The JSON error body every failure uses."""
    return json_response({"error": message, "field": field}, status=status, headers=headers)


# --------------------------------------------------------------------------- storage thread


async def in_storage_thread(request: web.Request, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the storage's single thread (``executor_key``), awaited.

    Every desk call goes through here so the event loop never waits on an fsync and
    SQLite sees one thread. Keyword arguments go in with :func:`functools.partial`.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(request.app[executor_key], fn, *args)


# --------------------------------------------------------------------------- tokens


def bearer_matches(request: web.Request, tokens: tuple[str, ...]) -> bool:
    """Whether ``Authorization: Bearer <token>`` names one of ``tokens``.

    Compares against every token with ``hmac.compare_digest`` and no early exit, so the
    response time does not reveal how much of a token was right, nor which one.
    """
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    # surrogatepass: header text that is not valid UTF-8 still encodes (and never matches).
    given_bytes = given.strip().encode("utf-8", "surrogatepass")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(token.encode("utf-8"), given_bytes)
    return matched


def has_agent_token(request: web.Request) -> bool:
    """Whether the request carries one of the configured agent tokens.

    A test rather than a check that raises: the ingest handler counts and logs its
    rejections itself before answering 401 (with :data:`AUTH_CHALLENGE`).
    """
    return bearer_matches(request, request.app[config_key].auth.agent_tokens)


def bearer_token(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None when there is none."""
    scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    return given.strip()


def authenticate(request: web.Request) -> Principal | None:
    """The operator the request's bearer token belongs to (stored operators and
    ``auth.admin_tokens``), or None. See :meth:`identity.roles.Directory.find`."""
    token = bearer_token(request)
    return None if token is None else request.app[directory_key].find(token)


def require_role(request: web.Request, needed: str) -> Principal:
    """The authenticated operator, if its role allows ``needed``: else 401 (no or an
    unknown token, with :data:`AUTH_CHALLENGE`) or 403 (a known operator whose role is
    too low)."""
    principal = authenticate(request)
    if principal is None:
        raise ApiError(401, "missing or unknown operator token", headers=AUTH_CHALLENGE)
    if not allows(principal.role, needed):
        raise ApiError(
            403, f"operator {principal.name!r} is a {principal.role}; this needs {needed}"
        )
    return principal


def require_reader(request: web.Request) -> Principal | None:
    """The read API and ``/metrics``: a viewer (or higher) token, unless ``auth.open_read``
    (allowed on a loopback listener only, see ``config.py``) leaves reads open; then the
    operator, if a token was given anyway, else None."""
    if request.app[config_key].auth.open_read:
        return authenticate(request)
    return require_role(request, VIEWER)


def require_responder(request: web.Request) -> Principal:
    """Acknowledge, resolve, silences: a responder or admin token, always."""
    return require_role(request, RESPONDER)


def require_admin(request: web.Request) -> Principal:
    """Operators and the audit log: an admin token, always (also with ``open_read``)."""
    return require_role(request, ADMIN)


def refuse_by(body: Mapping[str, Any], name: str) -> None:
    """400 naming ``name`` if the body has it: the actor of a write is the authenticated
    operator, never a request field (older clients sent ``by``/``created_by``)."""
    if name in body:
        raise ApiError(
            400, f"{name} is not accepted: the actor is the operator whose token was used", name
        )


def peer_of(request: web.Request) -> str:
    """Where a request came from, for the audit log: the socket's address
    (``X-Forwarded-For`` is not trusted), ``"unknown"`` when the transport has none."""
    return request.remote or "unknown"


def audit_entry(
    request: web.Request,
    actor: Principal,
    action: str,
    target: str,
    detail: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """The audit record of a write by ``actor``: the collector's clock, and the client's
    address as the peer (the socket's; ``X-Forwarded-For`` is not trusted)."""
    return AuditEntry(
        actor=actor.name,
        action=action,
        target=target,
        peer=peer_of(request),
        at=request.app[clock_key](),
        detail=dict(detail or {}),
    )


# --------------------------------------------------------------------------- query and path


def query_params(request: web.Request, allowed: tuple[str, ...]) -> dict[str, str]:
    """Query parameters as a plain dict; unknown or repeated ones are 400 (typos show)."""
    out: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            known = ", ".join(allowed) or "none"
            raise ApiError(400, f"unknown query parameter (known: {known})", name)
        if name in out:
            raise ApiError(400, "query parameter given more than once", name)
        out[name] = value
    return out


def int_param(query: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """Query parameter ``name`` as an integer in ``low..high`` (``default`` when absent).

    Only plain ASCII digits are accepted (no sign, no spaces, at most 19 of them);
    anything else, or a value out of range, is 400 naming ``name``.
    """
    raw = query.get(name)
    if raw is None:
        return default
    value = int(raw) if _DIGITS.fullmatch(raw) else None
    if value is None or not low <= value <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}, got {raw!r}", name)
    return value


def choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    """Query parameter ``name``, one of ``allowed`` (``default`` when absent), else 400."""
    value = query.get(name, default)
    if value not in allowed:
        raise ApiError(400, f"{name} must be one of {list(allowed)}, got {value!r}", name)
    return value


def item_id(request: web.Request, kind: str) -> int:
    """The ``{item_id}`` path segment (see :data:`ITEM_ID`) as an int.

    An id no record can have (over 64 bits) is the same 404 as an unknown one, naming
    ``id``; ``kind`` ("incident", "silence", ...) goes into the message.
    """
    raw = request.match_info["item_id"]  # the route admits ASCII digits only
    if not _DIGITS.fullmatch(raw) or int(raw) > MAX_ID:
        raise ApiError(404, f"no {kind} with id {raw[:40]}", "id")
    return int(raw)


# --------------------------------------------------------------------------- bodies


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing to hold more than ``limit`` bytes (chunked bodies too).

    Raises :class:`BodyTooLarge` as soon as more than ``limit`` bytes arrived, and
    ``web.RequestPayloadError`` when the client breaks off the body.
    """
    body = bytearray()
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def require_json(request: web.Request) -> None:
    """415 naming ``Content-Type`` unless the request says its body is JSON in UTF-8:
    ``application/json``, optionally with ``charset=utf-8`` (JSON is UTF-8 by RFC 8259;
    the standard library would otherwise guess UTF-16 or UTF-32 from the first bytes).

    A request without a body (``Content-Length: 0``, or none and not chunked) needs no
    ``Content-Type``.
    """
    if request.content_length == 0 or (request.content_length is None and not request.body_exists):
        return
    mimetype = request.content_type  # lower-cased, parameters stripped
    charset = request.charset
    if mimetype != "application/json" or (charset is not None and charset.lower() != "utf-8"):
        given = request.headers.get("Content-Type", "")
        raise ApiError(
            415,
            f"Content-Type must be application/json (charset utf-8), got {given[:80]!r}",
            "Content-Type",
        )


async def json_body(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}``), at most :data:`MAX_JSON_BODY`
    bytes (413 beyond); a body that is not ``application/json`` is 415 (see
    :func:`require_json`); invalid JSON or UTF-8, a non-object or an unknown field is
    400, the last naming the field."""
    require_json(request)
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise ApiError(413, f"request body over {MAX_JSON_BODY} bytes")
    try:
        raw = await read_body(request, MAX_JSON_BODY)  # chunked bodies are bounded too
    except BodyTooLarge:
        raise ApiError(413, f"request body over {MAX_JSON_BODY} bytes") from None
    if not raw.strip():
        body: Any = {}
    else:
        try:
            # Decoded as UTF-8 first: json.loads of bytes would accept UTF-16 and UTF-32.
            body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
        except RecursionError:  # the C decoder recurses once per nesting level
            raise ApiError(400, "body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    for name in body:
        if name not in allowed:
            raise ApiError(400, f"unknown field (known: {', '.join(allowed)})", str(name)[:64])
    return body


def body_str(body: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    """Body field ``name`` as a string of at most :data:`MAX_TEXT` characters.

    Absent or ``null`` is ``None``, or 400 when ``required`` (a required one must not be
    blank either). Every error names the field.
    """
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"{name} is required", name)
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string", name)
    if len(value) > MAX_TEXT:
        raise ApiError(400, f"{name} must be at most {MAX_TEXT} characters", name)
    if not valid_text(value):  # JSON admits lone surrogates; no store or renderer encodes them
        raise ApiError(400, f"{name} must be valid Unicode (no lone surrogates)", name)
    if required and not value.strip():
        raise ApiError(400, f"{name} must not be empty", name)
    return value


def body_time(body: Mapping[str, Any], name: str, default: float) -> float:
    """Body field ``name`` as Unix time in seconds, from 0 to :data:`MAX_TIME`
    (``default`` when absent or ``null``); anything else (a boolean, a non-number, a
    non-finite or out-of-range number, an integer too large for a float) is 400 naming
    the field."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_TIME:
        # the comparison is exact for integers of any size, and false for NaN
        raise ApiError(400, f"{name} must be a Unix time in seconds from 0 to {MAX_TIME:.0f}", name)
    return float(value)


def _refuse_constant(name: str) -> Any:
    """``json.loads`` hook for ``NaN``/``Infinity``/``-Infinity``: not standard JSON."""
    raise ValueError(f"{name} is not a JSON number")
