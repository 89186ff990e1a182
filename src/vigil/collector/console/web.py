"""What every console handler shares: who is logged in, rendering a page, CSRF checks,
form fields, and the secure headers of every console response.

Console errors are HTML pages (``error.html``) with the status, never the API's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from vigil.collector.api.http import MAX_TEXT
from vigil.collector.console.session import SESSION_COOKIE, Session
from vigil.collector.identity.roles import RESPONDER, Principal, allows
from vigil.collector.keys import clock_key, config_key, console_signer_key, directory_key
from vigil.wire import valid_text

PREFIX = "/console"
# No inline script or style anywhere: htmx's indicator styles are turned off by the
# htmx-config meta tag, charts use SVG presentation attributes.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURE_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}
# The request's session, looked up once per request (a typed key on aiohttp >= 3.12,
# where plain string keys warn; a string before).
_SESSION_ATTR: Any = (
    web.RequestKey("vigil_console_session", object)
    if hasattr(web, "RequestKey")
    else "vigil_console_session"
)


async def add_secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: the secure headers on every console response (and
    the root's redirect); static files may be cached."""
    if request.path == "/" or request.path.startswith(PREFIX):
        for name, value in SECURE_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.path.startswith(f"{PREFIX}/static/"):
            response.headers["Cache-Control"] = "public, max-age=3600"


def now(request: web.Request) -> float:
    """The collector's clock (Unix seconds)."""
    return request.app[clock_key]()


def secure_cookies(request: web.Request) -> bool:
    """Whether the console's cookies get ``Secure``: when this request came over HTTPS,
    and also when the collector's ``public_url`` is ``https://`` (behind a proxy that
    terminates TLS and talks plain HTTP to us, ``request.secure`` is False, yet every
    browser reaches the console over HTTPS and the cookie must never go out in clear)."""
    public_url = request.app[config_key].public_url or ""
    return request.secure or public_url.lower().startswith("https://")


def session_of(request: web.Request) -> tuple[Session, Principal] | None:
    """The request's valid session and its operator, or None (no cookie, a forged or
    expired one, or an operator whose token was rotated or removed since)."""
    if _SESSION_ATTR in request:
        return request[_SESSION_ATTR]  # type: ignore[no-any-return]
    signer = request.app[console_signer_key]
    session = signer.verify(request.cookies.get(SESSION_COOKIE), now(request))
    found = None
    if session is not None:
        principal = request.app[directory_key].find_hash(session.token_hash)
        found = (session, principal) if principal is not None else None
    request[_SESSION_ATTR] = found
    return found


def require_login(request: web.Request) -> tuple[Session, Principal]:
    """The session, or a redirect to the login page that comes back here after."""
    found = session_of(request)
    if found is None:
        target = request.path_qs if request.method == "GET" else f"{PREFIX}/"
        raise web.HTTPFound(f"{PREFIX}/login?next={_quote(target)}")
    return found


def _quote(path: str) -> str:
    return quote(path, safe="/")


def safe_next(value: str | None) -> str:
    """A post-login target: a console path only (never another site: ``//x``, ``/\\x``)."""
    if not value or not value.startswith(f"{PREFIX}/") or "\\" in value or "//" in value:
        return f"{PREFIX}/"
    return value


def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """``template`` with the page context every page shares: the operator, whether they
    may respond, the CSRF token, and the time of rendering."""
    found = session_of(request)
    base: dict[str, Any] = {"operator": None, "can_respond": False, "csrf": "", "now": now(request)}
    if found is not None:
        session, principal = found
        base.update(
            operator=principal,
            can_respond=allows(principal.role, RESPONDER),
            csrf=request.app[console_signer_key].csrf_for(session),
        )
    base["path"] = request.path
    response = aiohttp_jinja2.render_template(template, request, {**base, **context})
    response.set_status(status)
    return response


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    """An HTML error page with ``status`` saying ``message``."""
    return render(request, "error.html", {"status": status, "message": message}, status=status)


async def form_of(request: web.Request) -> MultiDictProxy[Any]:
    """The posted form (bounded by the app's ``client_max_size``)."""
    return await request.post()


async def checked_form(
    request: web.Request, *, need: str | None = RESPONDER
) -> tuple[Principal, MultiDictProxy[Any]] | web.Response:
    """The operator and form of a console POST, or the error page to answer: 303 to the
    login without a session, 403 with a missing or wrong CSRF token, 403 when the role
    does not allow ``need``."""
    found = session_of(request)
    if found is None:
        raise web.HTTPSeeOther(f"{PREFIX}/login")
    session, principal = found
    form = await form_of(request)
    if not request.app[console_signer_key].csrf_ok(session, _one(form, "csrf")):
        return error_page(
            request, 403, "the form's CSRF token is missing or wrong: reload the page"
        )
    if need is not None and not allows(principal.role, need):
        return error_page(
            request, 403, f"operator {principal.name} is a {principal.role}; this needs {need}"
        )
    return principal, form


def _one(form: MultiDictProxy[Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


class FormError(ValueError):
    """A bad form field: ``field`` names it; the page answers 400 saying so."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def text_field(form: MultiDictProxy[Any], name: str, *, required: bool = False) -> str:
    """Form field ``name`` stripped, at most ``MAX_TEXT`` characters; :class:`FormError`
    when it is too long, not text, or required and empty."""
    raw = form.get(name, "")
    if not isinstance(raw, str) or not valid_text(raw):
        raise FormError(name, "must be text")
    value = raw.strip()
    if len(value) > MAX_TEXT:
        raise FormError(name, f"must be at most {MAX_TEXT} characters")
    if required and not value:
        raise FormError(name, "is required")
    return value


def int_field(form: MultiDictProxy[Any], name: str, low: int, high: int) -> int:
    """Form field ``name`` as an integer in ``low..high``, else :class:`FormError`."""
    raw = text_field(form, name, required=True)
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        raise FormError(name, f"must be a whole number from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


def date_field(form: MultiDictProxy[Any], name: str) -> float | None:
    """Form field ``name`` as a ``YYYY-MM-DD`` date (midnight UTC, Unix seconds), or
    None when empty; :class:`FormError` otherwise."""
    raw = text_field(form, name)
    if not raw:
        return None
    try:
        return datetime.strptime(raw, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise FormError(name, f"must be a date YYYY-MM-DD, got {raw[:40]!r}") from None
