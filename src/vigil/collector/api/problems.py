"""Problem handlers: ``/api/v1/problems`` (recurring and fleet-wide) and one problem's
report and commands.

Reads need an admin token unless ``auth.open_read`` is set; acknowledge and resolve
always need one.
"""

from __future__ import annotations

import functools

from aiohttp import web

from vigil.collector.api.desk_items import acknowledge_item, fetch_item, resolve_item
from vigil.collector.api.http import (
    choice,
    in_storage_thread,
    json_response,
    query_params,
    require_reader,
)
from vigil.collector.api.paging import next_link, page
from vigil.collector.api.render import render_problem_report
from vigil.collector.keys import desk_key

LIST_FILTER_STATES = ("open", "acknowledged", "resolved", "all")
LIST_FILTER_KINDS = ("recurring", "fleet", "self_healed", "all")


async def list_problems(request: web.Request) -> web.Response:
    """``GET /api/v1/problems?state=&kind=&check=&limit=&cursor=`` (or ``&offset=``,
    bounded): ``{"problems": [...], "next": url or null}``."""
    require_reader(request)
    q = query_params(request, ("state", "kind", "check", "limit", "offset", "cursor"))
    state = choice(q, "state", LIST_FILTER_STATES, "all")
    kind = choice(q, "kind", LIST_FILTER_KINDS, "all")
    desk = request.app[desk_key]
    paged = page(q)
    rows = await in_storage_thread(
        request,
        functools.partial(
            desk.list_problems,
            state=None if state == "all" else state,
            kind=None if kind == "all" else kind,
            check=q.get("check"),
            **paged,
        ),
    )
    return json_response({"problems": rows, "next": next_link(request, q, rows, paged["limit"])})


async def get_problem(request: web.Request) -> web.Response:
    """``GET /api/v1/problems/{id}``: one problem with linked incidents and timeline."""
    require_reader(request)
    return json_response({"problem": await fetch_item(request, "problem")})


async def get_problem_report(request: web.Request) -> web.Response:
    """``GET /api/v1/problems/{id}/report``: the problem as a Markdown CAPA report."""
    require_reader(request)
    problem = await fetch_item(request, "problem")
    return web.Response(
        text=render_problem_report(problem), content_type="text/markdown", charset="utf-8"
    )


async def acknowledge_problem(request: web.Request) -> web.Response:
    """``POST /api/v1/problems/{id}/acknowledge`` (same body as for incidents)."""
    return await acknowledge_item(request, "problem")


async def resolve_problem(request: web.Request) -> web.Response:
    """``POST /api/v1/problems/{id}/resolve`` (same body as for incidents)."""
    return await resolve_item(request, "problem")
