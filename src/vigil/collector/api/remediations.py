"""Remediation handlers: the corrective-action records agents sent, and statistics."""

from __future__ import annotations

import functools

from aiohttp import web

from vigil.collector.api.http import (
    in_storage_thread,
    json_response,
    query_params,
    require_reader,
)
from vigil.collector.api.paging import next_link, page
from vigil.collector.keys import desk_key


async def list_remediation_runs(request: web.Request) -> web.Response:
    """``GET /api/v1/remediations/runs?host=&remediation=&limit=&cursor=`` (or
    ``&offset=``, bounded): ``{"runs": [...], "next": url or null}``."""
    require_reader(request)
    q = query_params(request, ("host", "remediation", "limit", "offset", "cursor"))
    desk = request.app[desk_key]
    paged = page(q)
    runs = await in_storage_thread(
        request,
        functools.partial(
            desk.list_remediation_runs,
            host=q.get("host"),
            remediation=q.get("remediation"),
            **paged,
        ),
    )
    return json_response({"runs": runs, "next": next_link(request, q, runs, paged["limit"])})


async def remediation_stats(request: web.Request) -> web.Response:
    """``GET /api/v1/remediations/stats``: per remediation, runs by outcome, success rate
    and incidents prevented."""
    require_reader(request)
    query_params(request, ())
    stats = await in_storage_thread(request, request.app[desk_key].remediation_stats)
    return json_response({"remediations": stats})
