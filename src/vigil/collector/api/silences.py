"""Silence handlers: ``/api/v1/silences`` and ``/api/v1/silences/{id}``.

A silence mutes notifications for a host, host group, service or check between two
times; incidents still open and are recorded. Reads need a viewer token unless
``auth.open_read`` is set; every write needs a responder (or admin) token, and its
actor is that operator.
"""

from __future__ import annotations

import functools

from aiohttp import web

from vigil.collector.api.http import (
    MAX_TIME,
    ApiError,
    audit_entry,
    body_str,
    body_time,
    choice,
    in_storage_thread,
    item_id,
    json_body,
    json_response,
    query_params,
    refuse_by,
    require_reader,
    require_responder,
)
from vigil.collector.desk import engine as incidents
from vigil.collector.keys import clock_key, desk_key
from vigil.configio import parse_duration


async def list_silences(request: web.Request) -> web.Response:
    """``GET /api/v1/silences?active=true|false``: every silence, or only active ones."""
    require_reader(request)
    q = query_params(request, ("active",))
    active = choice(q, "active", ("true", "false"), "false") == "true"
    now = request.app[clock_key]()
    desk = request.app[desk_key]
    rows = await in_storage_thread(
        request, functools.partial(desk.list_silences, active_at=now if active else None)
    )
    return json_response({"silences": rows})


async def get_silence(request: web.Request) -> web.Response:
    """``GET /api/v1/silences/{id}``."""
    require_reader(request)
    silence_id = item_id(request, "silence")
    found = await in_storage_thread(request, request.app[desk_key].get_silence, silence_id)
    if found is None:
        raise ApiError(404, f"no silence with id {silence_id}", "id")
    return json_response({"silence": found})


async def create_silence(request: web.Request) -> web.Response:
    """``POST /api/v1/silences``: ``matcher`` (host/group/service/check), ``value``,
    ``ends_at`` (Unix seconds) or ``duration`` ("2h"), optional ``starts_at``, ``comment``.
    201 with the silence; ``created_by`` is the authenticated operator (a body field
    of that name is refused)."""
    actor = require_responder(request)
    body = await json_body(
        request,
        ("matcher", "value", "starts_at", "ends_at", "duration", "comment", "created_by"),
    )
    refuse_by(body, "created_by")
    now = request.app[clock_key]()
    matcher = body_str(body, "matcher", required=True)
    if matcher not in incidents.SILENCE_MATCHERS:
        raise ApiError(
            400, f"matcher must be one of {list(incidents.SILENCE_MATCHERS)}, got {matcher!r}",
            "matcher",
        )  # fmt: skip
    value = body_str(body, "value", required=True)
    if not value.strip():
        raise ApiError(400, "value must not be empty", "value")
    starts_at = body_time(body, "starts_at", now)
    if "ends_at" in body and "duration" in body:
        raise ApiError(400, "give ends_at or duration, not both", "duration")
    if "duration" in body:
        try:
            seconds = parse_duration(body["duration"])
        except ValueError as exc:
            raise ApiError(400, f"duration: {exc}", "duration") from None
        ends_at = starts_at + seconds
        if ends_at > MAX_TIME:
            raise ApiError(400, f"duration must end by Unix time {MAX_TIME:.0f}", "duration")
    elif "ends_at" in body:
        ends_at = body_time(body, "ends_at", now)
    else:
        raise ApiError(400, "ends_at or duration is required", "ends_at")
    if ends_at <= max(starts_at, now):
        raise ApiError(400, "ends_at must be after starts_at and in the future", "ends_at")
    comment = body_str(body, "comment") or ""
    desk = request.app[desk_key]
    detail = {"matcher": matcher, "value": value, "ends_at": ends_at}
    audit = audit_entry(request, actor, "silence.create", "silence", detail)
    silence = await in_storage_thread(
        request,
        functools.partial(
            desk.create_silence, matcher, value, starts_at, ends_at, comment, audit=audit
        ),
        actor.name,
        now,
    )
    return json_response({"silence": silence}, status=201)


async def update_silence(request: web.Request) -> web.Response:
    """``PATCH /api/v1/silences/{id}``: change ``ends_at`` (e.g. end it now) or ``comment``."""
    actor = require_responder(request)
    silence_id = item_id(request, "silence")
    body = await json_body(request, ("ends_at", "comment"))
    now = request.app[clock_key]()
    ends_at = body_time(body, "ends_at", now) if "ends_at" in body else None
    comment = body_str(body, "comment")
    desk = request.app[desk_key]
    detail = {"ends_at": ends_at} if ends_at is not None else {}
    audit = audit_entry(request, actor, "silence.update", f"silence:{silence_id}", detail)
    found = await in_storage_thread(
        request,
        functools.partial(
            desk.update_silence, silence_id, ends_at=ends_at, comment=comment, audit=audit
        ),
    )
    if found is None:
        raise ApiError(404, f"no silence with id {silence_id}", "id")
    return json_response({"silence": found})


async def delete_silence(request: web.Request) -> web.Response:
    """``DELETE /api/v1/silences/{id}``: 204, or 404."""
    actor = require_responder(request)
    silence_id = item_id(request, "silence")
    audit = audit_entry(request, actor, "silence.delete", f"silence:{silence_id}")
    delete = functools.partial(request.app[desk_key].delete_silence, silence_id, audit=audit)
    if not await in_storage_thread(request, delete):
        raise ApiError(404, f"no silence with id {silence_id}", "id")
    return web.Response(status=204)
