"""Incident handlers: ``/api/v1/incidents`` and one incident's report and commands.

Reads need an admin token unless ``auth.open_read`` is set; acknowledge and resolve
always need one.
"""

from __future__ import annotations

import functools

from aiohttp import web

from vigil.collector.api.desk_items import acknowledge_item, fetch_item, resolve_item
from vigil.collector.api.http import (
    ApiError,
    choice,
    in_storage_thread,
    json_response,
    query_params,
    require_reader,
)
from vigil.collector.api.paging import next_link, page
from vigil.collector.api.render import render_incident_report
from vigil.collector.desk.reads import LIST_STATES
from vigil.collector.keys import desk_key

LIST_FILTER_STATES = (*LIST_STATES, "all")
PRIORITIES = ("P1", "P2", "P3", "P4")


async def list_incidents(request: web.Request) -> web.Response:
    """``GET /api/v1/incidents?state=&host=&check=&service=&priority=&limit=&cursor=``
    (or ``&offset=``, bounded): ``{"incidents": [...], "next": url or null}``."""
    require_reader(request)
    q = query_params(
        request, ("state", "host", "check", "service", "priority", "limit", "offset", "cursor")
    )
    state = choice(q, "state", LIST_FILTER_STATES, "all")
    priority = q.get("priority")
    if priority is not None and priority not in PRIORITIES:
        raise ApiError(400, f"priority must be P1, P2, P3 or P4, got {priority!r}", "priority")
    desk = request.app[desk_key]
    paged = page(q)
    rows = await in_storage_thread(
        request,
        functools.partial(
            desk.list_incidents,
            state=None if state == "all" else state,
            host=q.get("host"),
            check=q.get("check"),
            service=q.get("service"),
            priority=priority,
            **paged,
        ),
    )
    return json_response({"incidents": rows, "next": next_link(request, q, rows, paged["limit"])})


async def get_incident(request: web.Request) -> web.Response:
    """``GET /api/v1/incidents/{id}``: one incident with its timeline and problems, or 404."""
    require_reader(request)
    return json_response({"incident": await fetch_item(request, "incident")})


async def get_incident_report(request: web.Request) -> web.Response:
    """``GET /api/v1/incidents/{id}/report``: the incident as a Markdown CAPA report."""
    require_reader(request)
    incident = await fetch_item(request, "incident")
    return web.Response(
        text=render_incident_report(incident), content_type="text/markdown", charset="utf-8"
    )


async def acknowledge_incident(request: web.Request) -> web.Response:
    """``POST /api/v1/incidents/{id}/acknowledge`` with ``{"by": ..., "note": ...}``."""
    return await acknowledge_item(request, "incident")


async def resolve_incident(request: web.Request) -> web.Response:
    """``POST /api/v1/incidents/{id}/resolve`` with ``by``, ``note``, ``root_cause``,
    ``corrective_action``, ``preventive_action`` (all but ``by`` optional)."""
    return await resolve_item(request, "incident")
