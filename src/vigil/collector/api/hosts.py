"""Host handlers: ``GET /api/v1/hosts``, hosts with their liveness and health, a page at
a time."""

from __future__ import annotations

import functools

from aiohttp import web

from vigil.collector.api.http import in_storage_thread, json_response, query_params, require_reader
from vigil.collector.api.paging import host_page, next_link
from vigil.collector.api.render import host_json
from vigil.collector.keys import clock_key, config_key, desk_key


async def list_hosts(request: web.Request) -> web.Response:
    """``GET /api/v1/hosts?limit=&cursor=``: hosts by agent_id with last seen,
    ``liveness``, ``health``, groups and open incidents (see
    :func:`~vigil.collector.api.render.host_json`), ``limit`` at a time (default 100,
    at most 1000), and ``next``: the following page's URL, or null.

    Paged since issue #17: one response with every host took seconds at 100k hosts."""
    require_reader(request)
    q = query_params(request, ("limit", "cursor"))
    paged = host_page(q)
    app = request.app
    config, now = app[config_key], app[clock_key]()
    hosts = await in_storage_thread(request, functools.partial(app[desk_key].list_hosts, **paged))
    return json_response(
        {
            "hosts": [
                host_json(
                    host,
                    catalog=config.catalog,
                    heartbeat_grace_s=config.heartbeat_grace_s,
                    now=now,
                )
                for host in hosts
            ],
            "next": next_link(request, q, hosts, paged["limit"], key="agent_id"),
        }
    )
