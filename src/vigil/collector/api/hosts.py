"""Host handlers: ``GET /api/v1/hosts``, every host with its liveness and health."""

from __future__ import annotations

from aiohttp import web

from vigil.collector.api.http import in_storage_thread, json_response, query_params, require_reader
from vigil.collector.api.render import host_json
from vigil.collector.keys import clock_key, config_key, desk_key


async def list_hosts(request: web.Request) -> web.Response:
    """``GET /api/v1/hosts``: every host with last seen, ``liveness``, ``health``, groups
    and open incidents (see :func:`~vigil.collector.api.render.host_json`)."""
    require_reader(request)
    query_params(request, ())
    app = request.app
    config, now = app[config_key], app[clock_key]()
    hosts = await in_storage_thread(request, app[desk_key].list_hosts)
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
            ]
        }
    )
