"""The console's pages (GET): queue, incident, problems, hosts, service catalog, service
quality, login. Thin: parse the query, call the desk on the storage thread, render.

Every list is one page (``limit`` rows from ``offset``), never the whole table.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from vigil.collector.api.http import MAX_ID, in_storage_thread
from vigil.collector.api.render import render_incident_report
from vigil.collector.console import bounded, charts
from vigil.collector.console.session import LOGIN_COOKIE, LOGIN_TTL_S
from vigil.collector.console.web import (
    PREFIX,
    error_page,
    now,
    render,
    require_login,
    safe_next,
    secure_cookies,
    session_of,
)
from vigil.collector.desk import console as desk_console
from vigil.collector.desk.reads import INCIDENT_RUNS_LIMIT, PROBLEM_KINDS, PROBLEM_STATES
from vigil.collector.keys import config_key, console_signer_key, desk_key, quality_cache_key

log = logging.getLogger(__name__)

PAGE = 50  # rows per page of every console list
QUALITY_DAYS = (7, 30, 90)
DAY_S = 86400.0


def _page(request: web.Request) -> int:
    raw = request.query.get("offset", "0")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else 0


def _filter(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    return value[:200] or None


async def root(request: web.Request) -> web.StreamResponse:
    """``GET /`` and ``GET /console``: the console."""
    raise web.HTTPFound(f"{PREFIX}/")


async def login_page(request: web.Request) -> web.StreamResponse:
    """``GET /console/login``: the token form, with a pre-login cookie for its CSRF token."""
    if session_of(request) is not None:
        raise web.HTTPFound(safe_next(request.query.get("next")))
    signer = request.app[console_signer_key]
    nonce = signer.login_nonce()
    response = render(
        request,
        "login.html",
        {"login_csrf": signer.login_csrf(nonce), "next": safe_next(request.query.get("next"))},
    )
    response.set_cookie(
        LOGIN_COOKIE, nonce, max_age=LOGIN_TTL_S, httponly=True, samesite="Strict",
        secure=secure_cookies(request), path=PREFIX,
    )  # fmt: skip
    return response


async def queue_page(request: web.Request) -> web.StreamResponse:
    """``GET /console/``: open incidents by priority then SLA deadline, filtered by
    ``department``, ``service``, ``host``, ``state``; ``offset`` pages."""
    require_login(request)
    state = _filter(request, "state")
    if state is not None and state not in desk_console.QUEUE_STATES:
        return error_page(
            request, 400, f"state must be one of {list(desk_console.QUEUE_STATES)}, got {state!r}"
        )
    filters = {k: _filter(request, k) for k in ("department", "service", "host")}
    offset = _page(request)
    rows, total = await in_storage_thread(
        request,
        functools.partial(
            desk_console.queue,
            request.app[desk_key].storage,
            filters=filters,
            state=state,
            limit=PAGE + 1,
            offset=offset,
        ),
    )
    context = {
        "rows": rows[:PAGE],
        "more": len(rows) > PAGE,
        "offset": offset,
        "page": PAGE,
        "total": total,
        "filters": {**filters, "state": state},
        "states": desk_console.QUEUE_STATES,
        "services": [s.name for s in request.app[config_key].catalog.services],
    }
    return render(request, "queue.html", context)


async def _incident(request: web.Request) -> dict[str, Any] | web.Response:
    """The incident the path names (with its whole timeline and attempts), or the 404
    page to answer."""
    wanted = _id(request)
    desk = request.app[desk_key]
    incident = (
        None if wanted is None else await in_storage_thread(request, desk.get_incident, wanted)
    )
    if incident is None:
        return error_page(request, 404, f"no incident with id {request.match_info['item_id']}")
    return incident


IncidentView = Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]


def _incident_view(view: IncidentView) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A console handler for ``/console/incidents/{id}...``: login required, then
    ``view(request, incident)``, or the 404 page when there is no such incident."""

    @functools.wraps(view)
    async def handler(request: web.Request) -> web.StreamResponse:
        require_login(request)
        incident = await _incident(request)
        if isinstance(incident, web.Response):
            return incident
        return await view(request, incident)

    return handler


@_incident_view
async def incident_page(request: web.Request, incident: dict[str, Any]) -> web.StreamResponse:
    """``GET /console/incidents/{id}``: the latest timeline entries and remediation
    attempts (excerpts, linking to the rest: see :mod:`.bounded`), CAPA, host health,
    linked problems, survey answers."""
    desk = request.app[desk_key]
    extras = await in_storage_thread(
        request, desk_console.incident_extras, desk.storage, incident["host"], incident["problems"]
    )
    # The person's survey answers and comments.
    surveys = await in_storage_thread(request, desk.surveys.of_incident, incident["id"])
    context = {
        "i": incident,
        "surveys": surveys,
        "timeline": bounded.latest(incident["timeline"], bounded.TIMELINE_SHOWN),
        "runs": bounded.latest(incident["remediation_runs"], bounded.RUNS_SHOWN),
        "runs_limit": INCIDENT_RUNS_LIMIT,
        **extras,
    }
    return render(request, "incident.html", context)


@_incident_view
async def incident_runs_page(request: web.Request, incident: dict[str, Any]) -> web.StreamResponse:
    """``GET /console/incidents/{id}/runs?offset=``: every remediation attempt of the
    incident, oldest first, a page at a time, output excerpts linking to the whole."""
    runs = bounded.page_of(incident["remediation_runs"], _page(request), bounded.RUNS_SHOWN)
    return render(request, "incident_runs.html", {"i": incident, "runs": runs})


@_incident_view
async def incident_timeline_page(
    request: web.Request, incident: dict[str, Any]
) -> web.StreamResponse:
    """``GET /console/incidents/{id}/timeline?offset=``: the whole timeline, oldest
    first, a page at a time, long entries clipped with a link to their full text."""
    timeline = bounded.page_of(incident["timeline"], _page(request), bounded.TIMELINE_PAGE)
    return render(request, "incident_timeline.html", {"i": incident, "timeline": timeline})


@_incident_view
async def incident_run_output(request: web.Request, incident: dict[str, Any]) -> web.StreamResponse:
    """``GET /console/incidents/{id}/runs/{n}``: attempt ``n`` (1-based, oldest first,
    as numbered on the pages) of the incident: its whole output as plain text."""
    run = _nth(incident["remediation_runs"], request.match_info["n"])
    if run is None:
        return error_page(request, 404, f"incident {incident['id']} has no such attempt")
    cut = "\n[output truncated by the agent]\n" if run.get("output_truncated") else ""
    return web.Response(text=run["output"] + cut, content_type="text/plain", charset="utf-8")


@_incident_view
async def incident_timeline_entry(
    request: web.Request, incident: dict[str, Any]
) -> web.StreamResponse:
    """``GET /console/incidents/{id}/timeline/{n}``: timeline entry ``n`` (1-based, oldest
    first) in full, as plain text."""
    entry = _nth(incident["timeline"], request.match_info["n"])
    if entry is None:
        return error_page(request, 404, f"incident {incident['id']} has no such entry")
    return web.Response(text=entry["text"], content_type="text/plain", charset="utf-8")


@_incident_view
async def incident_report(request: web.Request, incident: dict[str, Any]) -> web.StreamResponse:
    """``GET /console/incidents/{id}/report.md``: the incident as a Markdown CAPA report,
    downloaded as ``incident-{id}.md``. The API's ``/api/v1/incidents/{id}/report``
    takes bearer tokens only, so a logged-in browser following a link there got 401;
    this one takes the console session (any role)."""
    return web.Response(
        text=render_incident_report(incident),
        content_type="text/markdown",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="incident-{incident["id"]}.md"'},
    )


def _nth(items: list[dict[str, Any]], raw: str) -> dict[str, Any] | None:
    """Item number ``raw`` (1-based) of ``items``, or None."""
    n = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else 0
    return items[n - 1] if 1 <= n <= len(items) else None


async def problems_page(request: web.Request) -> web.StreamResponse:
    """``GET /console/problems``: problems newest first, by ``state`` and ``kind``."""
    require_login(request)
    state, kind = _filter(request, "state"), _filter(request, "kind")
    if state is not None and state not in PROBLEM_STATES:
        return error_page(request, 400, f"state must be one of {list(PROBLEM_STATES)}")
    if kind is not None and kind not in PROBLEM_KINDS:
        return error_page(request, 400, f"kind must be one of {list(PROBLEM_KINDS)}")
    offset = _page(request)
    rows = await in_storage_thread(
        request,
        functools.partial(
            request.app[desk_key].list_problems,
            state=state,
            kind=kind,
            check=None,
            limit=PAGE + 1,
            offset=offset,
        ),
    )
    context = {
        "rows": rows[:PAGE],
        "more": len(rows) > PAGE,
        "offset": offset,
        "page": PAGE,
        "filters": {"state": state, "kind": kind},
        "states": PROBLEM_STATES,
        "kinds": PROBLEM_KINDS,
    }
    return render(request, "problems.html", context)


async def problem_page(request: web.Request) -> web.StreamResponse:
    """``GET /console/problems/{id}``: incidents, known error, CAPA record, timeline."""
    require_login(request)
    wanted = _id(request)
    desk = request.app[desk_key]
    problem = None if wanted is None else await in_storage_thread(request, desk.get_problem, wanted)
    if problem is None or wanted is None:
        return error_page(request, 404, f"no problem with id {request.match_info['item_id']}")
    record = await in_storage_thread(request, desk_console.problem_record, desk.storage, wanted)
    return render(request, "problem.html", {"p": problem, "record": record or {}})


async def hosts_page(request: web.Request) -> web.StreamResponse:
    """``GET /console/hosts``: inventory search by hostname prefix, department, OS, agent
    version, last seen (``seen``: ``1h``/``1d``/``7d`` = within; ``stale`` = not for
    7 days) and health."""
    require_login(request)
    q = {k: _filter(request, k) for k in ("hostname", "department", "os", "agent_version")}
    health = _filter(request, "health")
    seen = _filter(request, "seen")
    t = now(request)
    windows = {"1h": 3600.0, "1d": DAY_S, "7d": 7 * DAY_S}
    filters: dict[str, Any] = {**q, "health": health}
    if seen in windows:
        filters["seen_after"] = t - windows[seen]
    elif seen == "stale":
        filters["seen_before"] = t - 7 * DAY_S
    elif seen is not None:
        return error_page(request, 400, "seen must be one of 1h, 1d, 7d, stale")
    offset = _page(request)
    try:
        rows = await in_storage_thread(
            request,
            functools.partial(
                desk_console.search_hosts,
                request.app[desk_key].storage,
                filters=filters,
                limit=PAGE + 1,
                offset=offset,
            ),
        )
    except ValueError as exc:
        return error_page(request, 400, str(exc))
    context = {
        "rows": rows[:PAGE],
        "more": len(rows) > PAGE,
        "offset": offset,
        "page": PAGE,
        "filters": {**q, "health": health, "seen": seen},
    }
    return render(request, "hosts.html", context)


async def host_page(request: web.Request) -> web.StreamResponse:
    """``GET /console/hosts/{agent_id}``: labels, latest health, recent incidents."""
    require_login(request)
    agent_id = request.match_info["agent_id"]
    host = await in_storage_thread(
        request, desk_console.host_page, request.app[desk_key].storage, agent_id
    )
    if host is None:
        return error_page(request, 404, f"no host with agent id {agent_id[:80]!r}")
    return render(request, "host.html", {"h": host})


async def catalog_page(request: web.Request) -> web.StreamResponse:
    """``GET /console/catalog``: services, owners, criticality, SLA targets, groups and
    the priority matrix, from the loaded catalog."""
    require_login(request)
    catalog = request.app[config_key].catalog
    return render(request, "catalog.html", {"c": catalog, "levels": ("high", "medium", "low")})


async def quality_page(request: web.Request) -> web.StreamResponse:
    """``GET /console/quality?days=30``: per service and department, prevented vs raised,
    time to restore median/p90, SLA attainment; remediation success per version; NPS."""
    require_login(request)
    raw = request.query.get("days", "30")
    days = int(raw) if raw.isdigit() and int(raw) in QUALITY_DAYS else None
    if days is None:
        return error_page(request, 400, f"days must be one of {list(QUALITY_DAYS)}")
    storage = request.app[desk_key].storage
    t = now(request)

    async def compute() -> desk_console.Quality:
        return await in_storage_thread(request, desk_console.quality, storage, t - days * DAY_S, t)

    quality = await request.app[quality_cache_key].get(days, compute)
    nps = await _satisfaction(request, quality.since)
    charts_ = {
        "service": charts.stacked_bars(
            "Prevented and raised incidents per service",
            [(r.name, r.prevented, r.raised) for r in quality.by_service],
            ("prevented", "raised"),
        ),
        "department": charts.stacked_bars(
            "Prevented and raised incidents per department",
            [(r.name, r.prevented, r.raised) for r in quality.by_department],
            ("prevented", "raised"),
        ),
    }
    context = {"q": quality, "days": days, "choices": QUALITY_DAYS, "charts": charts_, "nps": nps}
    return render(request, "quality.html", context)


async def _satisfaction(request: web.Request, since: float) -> dict[str, Any] | None:
    """NPS/CSAT of the answers since ``since`` (Unix s) through
    ``Desk.satisfaction_summary``: a dict with ``responses``, ``nps``, ``csat``,
    ``departments`` and ``services``; None while no survey was answered, and the page
    says "no survey answers yet"."""
    summary = request.app[desk_key].satisfaction_summary
    result = await in_storage_thread(request, functools.partial(summary, since=since))
    return result if result.get("responses") else None


def _id(request: web.Request) -> int | None:
    raw = request.match_info["item_id"]
    return int(raw) if len(raw) <= 19 and int(raw) <= MAX_ID else None
