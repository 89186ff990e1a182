"""Endpoints for machines: ``GET /metrics`` (Prometheus) and ``GET /healthz``.

``/metrics`` needs a viewer token like the read API (Prometheus sends one with
``authorization: {credentials_file: ...}``), unless ``auth.open_read`` on a loopback
listener; ``/healthz`` needs none, so load balancers can reach it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from vigil import __version__
from vigil.collector.api.http import json_response, require_reader
from vigil.collector.keys import leader_key, registry_key
from vigil.collector.telemetry.scope import ScopedRegistry


async def get_metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text format, rendered from state at scrape time.
    A process that does not lead serves only its own figures (telemetry/scope.py)."""
    require_reader(request)
    registry = ScopedRegistry(request.app[registry_key], request.app[leader_key])
    # Off the storage thread: the aggregates have their own lock (never held during a
    # database call), so a scrape does not queue behind ingest commits.
    loop = asyncio.get_running_loop()
    payload = await loop.run_in_executor(None, generate_latest, registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: liveness for load balancers and the demo."""
    return json_response({"status": "ok", "version": __version__})
