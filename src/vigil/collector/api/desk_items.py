"""What incidents and problems share: fetch one by id, acknowledge it, resolve it.

The desk takes the kind (``"incident"`` or ``"problem"``) as a parameter for both
commands, so the handlers in ``incidents`` and ``problems`` differ only by that word.
Domain errors map to HTTP here: an unknown id is 404 naming ``id``, a command that does
not apply to the record's state is 409 naming ``state``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from aiohttp import web

from vigil.collector.api.http import (
    ApiError,
    audit_entry,
    body_str,
    in_storage_thread,
    item_id,
    json_body,
    json_response,
    refuse_by,
    require_responder,
)
from vigil.collector.desk.commands import StateError
from vigil.collector.keys import clock_key, desk_key

Kind = Literal["incident", "problem"]

# Fields of a resolve body, all optional: stored as CAPA notes.
_RESOLVE_NOTES = ("note", "root_cause", "corrective_action", "preventive_action")


async def fetch_item(request: web.Request, kind: Kind) -> dict[str, Any]:
    """The record the ``{item_id}`` path segment names, with its timeline; 404 if none."""
    wanted = item_id(request, kind)
    desk = request.app[desk_key]
    fetch = desk.get_incident if kind == "incident" else desk.get_problem
    item = await in_storage_thread(request, fetch, wanted)
    if item is None:
        raise ApiError(404, f"no {kind} with id {wanted}", "id")
    return item


async def acknowledge_item(request: web.Request, kind: Kind) -> web.Response:
    """Acknowledge with ``{"note": ...}`` (responder or admin); replies with the record
    and ``changed`` (false when it was acknowledged before). The actor is the
    authenticated operator; a ``by`` field is refused (:func:`refuse_by`)."""
    actor = require_responder(request)
    wanted = item_id(request, kind)
    body = await json_body(request, ("by", "note"))
    refuse_by(body, "by")
    note = body_str(body, "note") or ""
    desk = request.app[desk_key]
    audit = audit_entry(request, actor, f"{kind}.acknowledge", f"{kind}:{wanted}")
    try:
        result = await in_storage_thread(
            request,
            functools.partial(desk.acknowledge, kind, wanted, actor.name, note, audit=audit),
            request.app[clock_key](),
        )
    except LookupError:
        raise ApiError(404, f"no {kind} with id {wanted}", "id") from None
    except StateError as exc:
        raise ApiError(409, str(exc), "state") from None
    item = await fetch_item(request, kind)
    return json_response({kind: item, "changed": result == "acknowledged"})


async def resolve_item(request: web.Request, kind: Kind) -> web.Response:
    """Resolve with optional notes (responder or admin), or add CAPA notes to a
    resolved record; replies with the record. The actor is the authenticated operator."""
    actor = require_responder(request)
    wanted = item_id(request, kind)
    body = await json_body(request, ("by", *_RESOLVE_NOTES))
    refuse_by(body, "by")
    notes = {k: body_str(body, k) or "" for k in _RESOLVE_NOTES}
    desk = request.app[desk_key]
    audit = audit_entry(request, actor, f"{kind}.resolve", f"{kind}:{wanted}")
    try:
        await in_storage_thread(
            request,
            functools.partial(desk.resolve_manually, kind, wanted, actor.name, notes, audit=audit),
            request.app[clock_key](),
        )
    except LookupError:
        raise ApiError(404, f"no {kind} with id {wanted}", "id") from None
    except StateError as exc:
        raise ApiError(409, str(exc), "state") from None
    return json_response({kind: await fetch_item(request, kind)})
