"""The console's writes (POST forms): login, logout, acknowledge, resolve, silence, link
an incident to a problem, edit a problem's CAPA record, close a problem.

Every write checks the session, the form's CSRF token and the role (responder or admin)
before anything else, goes through the desk (the same commands as the API) with the
operator as the actor, and appends its audit record in the write's transaction. After a
write the browser is sent back to the page (303, post/redirect/get).
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from vigil.collector.api.http import MAX_ID, audit_entry, in_storage_thread
from vigil.collector.console.session import LOGIN_COOKIE, SESSION_COOKIE
from vigil.collector.console.web import (
    PREFIX,
    FormError,
    checked_form,
    date_field,
    error_page,
    form_of,
    int_field,
    now,
    safe_next,
    secure_cookies,
    text_field,
)
from vigil.collector.desk import console as desk_console
from vigil.collector.desk.commands import StateError
from vigil.collector.identity.roles import hash_token
from vigil.collector.keys import console_signer_key, desk_key, directory_key, quality_cache_key

SILENCE_MATCHERS = ("host", "check", "service")
MAX_SILENCE_S = 30 * 86400  # a console silence lasts at most 30 days


async def login(request: web.Request) -> web.StreamResponse:
    """``POST /console/login`` with ``token``, ``csrf``, ``next``: sets the session
    cookie (HttpOnly, SameSite=Strict, Secure over TLS) for a known operator token."""
    form = await form_of(request)
    signer = request.app[console_signer_key]
    csrf = form.get("csrf")
    if not signer.login_csrf_ok(
        request.cookies.get(LOGIN_COOKIE), csrf if isinstance(csrf, str) else None
    ):
        return error_page(request, 403, "the login form expired or was not ours: reload it")
    token = form.get("token")
    token = token.strip() if isinstance(token, str) else ""
    principal = request.app[directory_key].find(token) if token else None
    if principal is None:
        return error_page(request, 401, "unknown operator token")
    next_ = form.get("next")
    response = web.HTTPSeeOther(safe_next(next_ if isinstance(next_, str) else None))
    response.set_cookie(
        SESSION_COOKIE, signer.issue(hash_token(token), now(request)), httponly=True,
        samesite="Strict", secure=secure_cookies(request), path=PREFIX,
    )  # fmt: skip
    response.del_cookie(LOGIN_COOKIE, path=PREFIX)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    """``POST /console/logout``: forgets the session cookie (any role)."""
    checked = await checked_form(request, need=None)
    if isinstance(checked, web.Response):
        return checked
    response = web.HTTPSeeOther(f"{PREFIX}/login")
    response.del_cookie(SESSION_COOKIE, path=PREFIX)
    raise response


def _item(request: web.Request) -> int:
    raw = request.match_info["item_id"]
    if len(raw) > 19 or int(raw) > MAX_ID:
        raise FormError("id", "no such record")
    return int(raw)


async def _run_write(request: web.Request, kind: str, write: Any) -> web.StreamResponse:
    """Run ``write(principal, form, item_id)``; map bad fields (400), unknown ids (404)
    and states the command does not apply to (409) to error pages; 303 back on success."""
    checked = await checked_form(request)
    if isinstance(checked, web.Response):
        return checked
    principal, form = checked
    try:
        item = _item(request)
        back = await write(principal, form, item)
    except FormError as exc:
        return error_page(request, 400, str(exc))
    except LookupError as exc:
        return error_page(request, 404, str(exc))
    except StateError as exc:
        return error_page(request, 409, str(exc))
    request.app[quality_cache_key].clear()
    raise web.HTTPSeeOther(back or f"{PREFIX}/{kind}s/{item}")


async def acknowledge(request: web.Request) -> web.StreamResponse:
    """``POST /console/{incidents|problems}/{id}/acknowledge`` with an optional ``note``."""
    kind = _kind(request)

    async def write(principal: Any, form: Any, item: int) -> str | None:
        note = text_field(form, "note")
        audit = audit_entry(request, principal, f"{kind}.acknowledge", f"{kind}:{item}")
        desk = request.app[desk_key]
        await in_storage_thread(
            request,
            functools.partial(desk.acknowledge, kind, item, principal.name, note, audit=audit),
            now(request),
        )
        return _back(form)

    return await _run_write(request, kind, write)


async def resolve(request: web.Request) -> web.StreamResponse:
    """``POST /console/incidents/{id}/resolve`` with ``note``, ``root_cause``,
    ``corrective_action``, ``preventive_action`` (all optional)."""

    async def write(principal: Any, form: Any, item: int) -> str | None:
        notes = {
            k: text_field(form, k)
            for k in ("note", "root_cause", "corrective_action", "preventive_action")
        }
        audit = audit_entry(request, principal, "incident.resolve", f"incident:{item}")
        desk = request.app[desk_key]
        await in_storage_thread(
            request,
            functools.partial(
                desk.resolve_manually, "incident", item, principal.name, notes, audit=audit
            ),
            now(request),
        )
        return _back(form)

    return await _run_write(request, "incident", write)


async def link_problem(request: web.Request) -> web.StreamResponse:
    """``POST /console/incidents/{id}/link`` with ``problem`` (its id)."""

    async def write(principal: Any, form: Any, item: int) -> str | None:
        problem = int_field(form, "problem", 1, MAX_ID)
        audit = audit_entry(
            request, principal, "incident.link", f"incident:{item}", {"problem": problem}
        )
        await in_storage_thread(
            request,
            desk_console.link_incident,
            request.app[desk_key].storage,
            item,
            problem,
            principal.name,
            now(request),
            audit,
        )
        return None

    return await _run_write(request, "incident", write)


async def save_capa(request: web.Request) -> web.StreamResponse:
    """``POST /console/problems/{id}/capa``: the CAPA record (root cause, corrective and
    preventive action, verification, known error/workaround, owner, due date)."""

    async def write(principal: Any, form: Any, item: int) -> str | None:
        fields: dict[str, Any] = {k: text_field(form, k) for k in desk_console.CAPA_TEXT}
        fields["capa_due"] = date_field(form, "capa_due")
        audit = audit_entry(request, principal, "problem.capa", f"problem:{item}")
        await in_storage_thread(
            request,
            desk_console.save_problem_record,
            request.app[desk_key].storage,
            item,
            fields,
            principal.name,
            now(request),
            audit,
        )
        return None

    return await _run_write(request, "problem", write)


async def close_problem(request: web.Request) -> web.StreamResponse:
    """``POST /console/problems/{id}/close`` with an optional ``note``: resolves the
    problem, only once its CAPA record has a verification (409 otherwise)."""

    async def write(principal: Any, form: Any, item: int) -> str | None:
        note = text_field(form, "note")
        desk = request.app[desk_key]
        await in_storage_thread(request, desk_console.check_closable, desk.storage, item)
        audit = audit_entry(request, principal, "problem.resolve", f"problem:{item}")
        await in_storage_thread(
            request,
            functools.partial(
                desk.resolve_manually, "problem", item, principal.name, {"note": note}, audit=audit
            ),
            now(request),
        )
        return None

    return await _run_write(request, "problem", write)


async def silence(request: web.Request) -> web.StreamResponse:
    """``POST /console/silences`` with ``matcher`` (host/check/service) and ``value``, or
    ``target`` (``matcher:value``), ``hours`` (1..720) and ``comment``: holds
    notifications back from now on."""
    checked = await checked_form(request)
    if isinstance(checked, web.Response):
        return checked
    principal, form = checked
    try:
        # The incident page sends one "target" (matcher:value) from a choice; the queue's
        # buttons send matcher and value apart.
        target = text_field(form, "target")
        if target:
            matcher, _, value = target.partition(":")
            if matcher not in SILENCE_MATCHERS or not value:
                raise FormError("target", f"must be one of {list(SILENCE_MATCHERS)}:<value>")
        else:
            matcher = text_field(form, "matcher", required=True)
            if matcher not in SILENCE_MATCHERS:
                raise FormError("matcher", f"must be one of {list(SILENCE_MATCHERS)}")
            value = text_field(form, "value", required=True)
        hours = int_field(form, "hours", 1, MAX_SILENCE_S // 3600)
        comment = text_field(form, "comment")
    except FormError as exc:
        return error_page(request, 400, str(exc))
    t = now(request)
    audit = audit_entry(request, principal, "silence.create", "silence:new")
    await in_storage_thread(
        request,
        functools.partial(
            request.app[desk_key].create_silence,
            matcher,
            value,
            t,
            t + hours * 3600.0,
            comment,
            principal.name,
            t,
            audit=audit,
        ),
    )
    raise web.HTTPSeeOther(_back(form) or f"{PREFIX}/")


def _kind(request: web.Request) -> str:
    return "problem" if request.path.startswith(f"{PREFIX}/problems/") else "incident"


def _back(form: Any) -> str | None:
    value = form.get("back")
    return safe_next(value) if isinstance(value, str) and value else None
