"""Admin API of identity and access: ``/api/v1/operators`` and ``/api/v1/audit``.

Every route needs an admin token. A new or rotated token is in the reply once and never
again (only its hash is stored). Operator changes take effect at once in this process
(the directory is reloaded before replying) and within
:data:`~collector.app.IDENTITY_REFRESH_S` in other collector processes on the database.
"""

from __future__ import annotations

import functools
from typing import TypeVar

from aiohttp import web

from vigil.collector.api.http import (
    ApiError,
    body_str,
    in_storage_thread,
    json_body,
    json_response,
    peer_of,
    query_params,
    require_admin,
)
from vigil.collector.api.paging import next_link, page
from vigil.collector.identity import operators as ops
from vigil.collector.identity.roles import NAME_PATTERN
from vigil.collector.keys import audit_counts_key, clock_key, config_key, desk_key, directory_key

T = TypeVar("T")

# The path segment of ``/api/v1/operators/{name}``.
OPERATOR_NAME = "{name}"
# Longest action name a query may filter on (ours are far shorter).
_MAX_ACTION = 64


async def list_operators(request: web.Request) -> web.Response:
    """``GET /api/v1/operators``: every operator (name, role, created_at, rotated_at)."""
    require_admin(request)
    query_params(request, ())
    storage = request.app[desk_key].storage
    return json_response(
        {"operators": await in_storage_thread(request, ops.list_operators, storage)}
    )


async def add_operator(request: web.Request) -> web.Response:
    """``POST /api/v1/operators`` with ``{"name": ..., "role": ...}``: 201 with the
    operator and its ``token`` (shown this once); 409 if the name is taken."""
    actor = require_admin(request)
    body = await json_body(request, ("name", "role"))
    name = body_str(body, "name", required=True)
    role = body_str(body, "role", required=True)
    assert name is not None and role is not None
    token = await _change(
        request,
        functools.partial(ops.add_operator, name=name, role=role, actor=actor.name),
    )
    return json_response({"operator": {"name": name, "role": role}, "token": token}, status=201)


async def rotate_operator(request: web.Request) -> web.Response:
    """``POST /api/v1/operators/{name}/rotate``: a new token (the old one stops working)."""
    actor = require_admin(request)
    name = _name(request)
    token = await _change(
        request, functools.partial(ops.rotate_operator, name=name, actor=actor.name)
    )
    return json_response({"operator": {"name": name}, "token": token})


async def remove_operator(request: web.Request) -> web.Response:
    """``DELETE /api/v1/operators/{name}``: 204, or 404."""
    actor = require_admin(request)
    name = _name(request)
    await _change(request, functools.partial(ops.remove_operator, name=name, actor=actor.name))
    return web.Response(status=204)


async def list_audit(request: web.Request) -> web.Response:
    """``GET /api/v1/audit?action=&limit=&cursor=`` (or ``&offset=``, bounded): audit
    records, newest first, and ``next``, the following page's URL or null."""
    require_admin(request)
    q = query_params(request, ("action", "limit", "offset", "cursor"))
    action = q.get("action")
    if action is not None and (not action or len(action) > _MAX_ACTION):
        raise ApiError(400, f"action must be 1-{_MAX_ACTION} characters", "action")
    storage = request.app[desk_key].storage
    paged = page(q)

    def read() -> list[dict[str, object]]:
        with storage.session() as uow:
            return uow.audit.list(action=action, **paged)

    records = await in_storage_thread(request, read)
    return json_response(
        {"records": records, "next": next_link(request, q, records, paged["limit"])}
    )


def _name(request: web.Request) -> str:
    """The ``{name}`` path segment; 404 naming ``name`` if no operator could have it."""
    name = request.match_info["name"]
    if not NAME_PATTERN.fullmatch(name):
        raise ApiError(404, f"no operator named {name[:64]!r}", "name")
    return name


async def _change(request: web.Request, change: functools.partial[T]) -> T:
    """Run an operator change on the storage thread with this request's peer and time,
    map :class:`~identity.operators.OperatorError` to its status, then reload the
    directory so the change holds for the next request."""
    app = request.app
    storage = app[desk_key].storage
    peer = peer_of(request)

    def run() -> T:
        result = change(storage, peer=peer, now=app[clock_key]())
        counts = ops.load_directory(storage, app[directory_key], app[config_key].auth.admin_tokens)
        app[audit_counts_key].set(counts)
        return result

    try:
        return await in_storage_thread(request, run)
    except ops.OperatorError as exc:
        raise ApiError(exc.status, str(exc), exc.field) from None
