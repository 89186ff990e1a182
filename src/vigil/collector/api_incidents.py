"""The service-desk API: incidents, problems, silences, hosts and remediation statistics.

Reads need an admin token unless ``auth.open_read`` is set; every write (acknowledge,
resolve, silences) needs an admin token always. Errors are the JSON body every handler
uses, ``{"error": ..., "field": ...}``, naming the query parameter or body field at
fault. The whole API is documented in ``docs/api.md``.
"""

from __future__ import annotations

import functools
import json
import math
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from vigil.collector.desk import engine as incidents
from vigil.collector.desk.commands import StateError
from vigil.collector.desk.reads import LIST_STATES
from vigil.collector.handlers import (
    _DIGITS,
    _MAX_ID,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    ApiError,
    BodyTooLarge,
    _in_store_thread,
    _int_param,
    _query,
    _read_body,
    _require_reader,
    require_admin,
)
from vigil.collector.keys import clock_key, config_key, desk_key
from vigil.configio import parse_duration

INCIDENT_LIST_STATES = (*LIST_STATES, "all")
PROBLEM_LIST_STATES = ("open", "acknowledged", "resolved", "all")
MAX_NOTE = 4096  # characters in a note or CAPA field
MAX_BODY = 64 * 1024  # bytes of a write request's JSON body


def setup_incident_routes(app: web.Application) -> None:
    """Register the incident-desk routes (called by ``collector.app.setup_routes``)."""
    r = app.router
    ident = "{item_id:[0-9]+}"
    r.add_get("/api/v1/incidents", list_incidents)
    r.add_get(f"/api/v1/incidents/{ident}", get_incident)
    r.add_get(f"/api/v1/incidents/{ident}/report", get_incident_report)
    r.add_post(f"/api/v1/incidents/{ident}/acknowledge", acknowledge_incident)
    r.add_post(f"/api/v1/incidents/{ident}/resolve", resolve_incident)
    r.add_get("/api/v1/problems", list_problems)
    r.add_get(f"/api/v1/problems/{ident}", get_problem)
    r.add_get(f"/api/v1/problems/{ident}/report", get_problem_report)
    r.add_post(f"/api/v1/problems/{ident}/acknowledge", acknowledge_problem)
    r.add_post(f"/api/v1/problems/{ident}/resolve", resolve_problem)
    r.add_get("/api/v1/silences", list_silences)
    r.add_post("/api/v1/silences", create_silence)
    r.add_get(f"/api/v1/silences/{ident}", get_silence)
    r.add_patch(f"/api/v1/silences/{ident}", update_silence)
    r.add_delete(f"/api/v1/silences/{ident}", delete_silence)
    r.add_get("/api/v1/hosts", list_hosts)
    r.add_get("/api/v1/remediations/stats", remediation_stats)


# --------------------------------------------------------------------------- incidents


async def list_incidents(request: web.Request) -> web.Response:
    """``GET /api/v1/incidents?state=&host=&check=&service=&priority=&limit=&offset=``."""
    _require_reader(request)
    q = _query(request, ("state", "host", "check", "service", "priority", "limit", "offset"))
    state = _choice(q, "state", INCIDENT_LIST_STATES, "all")
    priority = q.get("priority")
    if priority is not None and priority not in ("P1", "P2", "P3", "P4"):
        raise ApiError(400, f"priority must be P1, P2, P3 or P4, got {priority!r}", "priority")
    store = request.app[desk_key]
    rows = await _in_store_thread(
        request,
        functools.partial(
            store.list_incidents,
            state=None if state == "all" else state,
            host=q.get("host"),
            check=q.get("check"),
            service=q.get("service"),
            priority=priority,
            **_page(q),
        ),
    )
    return web.json_response({"incidents": rows})


async def get_incident(request: web.Request) -> web.Response:
    """``GET /api/v1/incidents/{id}``: one incident with its timeline and problems, or 404."""
    _require_reader(request)
    return web.json_response({"incident": await _get(request, "incident")})


async def get_incident_report(request: web.Request) -> web.Response:
    """``GET /api/v1/incidents/{id}/report``: the incident as a Markdown CAPA report."""
    _require_reader(request)
    incident = await _get(request, "incident")
    return web.Response(
        text=render_incident_report(incident), content_type="text/markdown", charset="utf-8"
    )


async def acknowledge_incident(request: web.Request) -> web.Response:
    """``POST /api/v1/incidents/{id}/acknowledge`` with ``{"by": ..., "note": ...}``."""
    return await _acknowledge(request, "incident")


async def resolve_incident(request: web.Request) -> web.Response:
    """``POST /api/v1/incidents/{id}/resolve`` with ``by``, ``note``, ``root_cause``,
    ``corrective_action``, ``preventive_action`` (all but ``by`` optional)."""
    return await _resolve(request, "incident")


# --------------------------------------------------------------------------- problems


async def list_problems(request: web.Request) -> web.Response:
    """``GET /api/v1/problems?state=&kind=&check=&limit=&offset=``."""
    _require_reader(request)
    q = _query(request, ("state", "kind", "check", "limit", "offset"))
    state = _choice(q, "state", PROBLEM_LIST_STATES, "all")
    kind = _choice(q, "kind", ("recurring", "fleet", "all"), "all")
    store = request.app[desk_key]
    rows = await _in_store_thread(
        request,
        functools.partial(
            store.list_problems,
            state=None if state == "all" else state,
            kind=None if kind == "all" else kind,
            check=q.get("check"),
            **_page(q),
        ),
    )
    return web.json_response({"problems": rows})


async def get_problem(request: web.Request) -> web.Response:
    """``GET /api/v1/problems/{id}``: one problem with linked incidents and timeline."""
    _require_reader(request)
    return web.json_response({"problem": await _get(request, "problem")})


async def get_problem_report(request: web.Request) -> web.Response:
    """``GET /api/v1/problems/{id}/report``: the problem as a Markdown CAPA report."""
    _require_reader(request)
    problem = await _get(request, "problem")
    return web.Response(
        text=render_problem_report(problem), content_type="text/markdown", charset="utf-8"
    )


async def acknowledge_problem(request: web.Request) -> web.Response:
    """``POST /api/v1/problems/{id}/acknowledge`` (same body as for incidents)."""
    return await _acknowledge(request, "problem")


async def resolve_problem(request: web.Request) -> web.Response:
    """``POST /api/v1/problems/{id}/resolve`` (same body as for incidents)."""
    return await _resolve(request, "problem")


# --------------------------------------------------------------------------- silences


async def list_silences(request: web.Request) -> web.Response:
    """``GET /api/v1/silences?active=true|false``: every silence, or only active ones."""
    _require_reader(request)
    q = _query(request, ("active",))
    active = _choice(q, "active", ("true", "false"), "false") == "true"
    now = request.app[clock_key]()
    store = request.app[desk_key]
    rows = await _in_store_thread(
        request, functools.partial(store.list_silences, active_at=now if active else None)
    )
    return web.json_response({"silences": rows})


async def get_silence(request: web.Request) -> web.Response:
    """``GET /api/v1/silences/{id}``."""
    _require_reader(request)
    silence_id = _item_id(request, "silence")
    found = await _in_store_thread(request, request.app[desk_key].get_silence, silence_id)
    if found is None:
        raise ApiError(404, f"no silence with id {silence_id}", "id")
    return web.json_response({"silence": found})


async def create_silence(request: web.Request) -> web.Response:
    """``POST /api/v1/silences``: ``matcher`` (host/group/service/check), ``value``,
    ``ends_at`` (Unix seconds) or ``duration`` ("2h"), optional ``starts_at``, ``comment``,
    ``created_by``. 201 with the silence."""
    require_admin(request)
    body = await _json_body(
        request,
        ("matcher", "value", "starts_at", "ends_at", "duration", "comment", "created_by"),
    )
    now = request.app[clock_key]()
    matcher = _body_str(body, "matcher", required=True)
    if matcher not in incidents.SILENCE_MATCHERS:
        raise ApiError(
            400, f"matcher must be one of {list(incidents.SILENCE_MATCHERS)}, got {matcher!r}",
            "matcher",
        )  # fmt: skip
    value = _body_str(body, "value", required=True)
    if not value.strip():
        raise ApiError(400, "value must not be empty", "value")
    starts_at = _body_time(body, "starts_at", now)
    if "ends_at" in body and "duration" in body:
        raise ApiError(400, "give ends_at or duration, not both", "duration")
    if "duration" in body:
        try:
            seconds = parse_duration(body["duration"])
        except ValueError as exc:
            raise ApiError(400, f"duration: {exc}", "duration") from None
        ends_at = starts_at + seconds
    elif "ends_at" in body:
        ends_at = _body_time(body, "ends_at", now)
    else:
        raise ApiError(400, "ends_at or duration is required", "ends_at")
    if ends_at <= max(starts_at, now):
        raise ApiError(400, "ends_at must be after starts_at and in the future", "ends_at")
    comment = _body_str(body, "comment") or ""
    by = _body_str(body, "created_by", required=True)
    store = request.app[desk_key]
    silence = await _in_store_thread(
        request,
        functools.partial(store.create_silence, matcher, value, starts_at, ends_at, comment),
        by,
        now,
    )
    return web.json_response({"silence": silence}, status=201)


async def update_silence(request: web.Request) -> web.Response:
    """``PATCH /api/v1/silences/{id}``: change ``ends_at`` (e.g. end it now) or ``comment``."""
    require_admin(request)
    silence_id = _item_id(request, "silence")
    body = await _json_body(request, ("ends_at", "comment"))
    now = request.app[clock_key]()
    ends_at = _body_time(body, "ends_at", now) if "ends_at" in body else None
    comment = _body_str(body, "comment")
    store = request.app[desk_key]
    found = await _in_store_thread(
        request,
        functools.partial(store.update_silence, silence_id, ends_at=ends_at, comment=comment),
    )
    if found is None:
        raise ApiError(404, f"no silence with id {silence_id}", "id")
    return web.json_response({"silence": found})


async def delete_silence(request: web.Request) -> web.Response:
    """``DELETE /api/v1/silences/{id}``: 204, or 404."""
    require_admin(request)
    silence_id = _item_id(request, "silence")
    if not await _in_store_thread(request, request.app[desk_key].delete_silence, silence_id):
        raise ApiError(404, f"no silence with id {silence_id}", "id")
    return web.Response(status=204)


# --------------------------------------------------------------------------- hosts, stats


async def list_hosts(request: web.Request) -> web.Response:
    """``GET /api/v1/hosts``: every host with last seen, ``liveness``, ``health`` and open
    incidents.

    ``liveness``: ``alive``; ``silent`` (heartbeat TTL plus grace expired); ``asleep``
    (silent, but its catalog group expects silence: a laptop asleep); ``unknown`` (no TTL
    announced yet). ``health``: ``critical`` if any check is critical or an incident is
    open, else ``warning`` if any check warns, else ``ok``.
    """
    _require_reader(request)
    _query(request, ())
    app = request.app
    config, now = app[config_key], app[clock_key]()
    hosts = await _in_store_thread(request, app[desk_key].list_hosts)
    for host in hosts:
        ttl = host["heartbeat_ttl_s"]
        if ttl is None:
            liveness = "unknown"
        elif incidents.is_silent(host["last_seen"], ttl, config.heartbeat_grace_s, now):
            expected = config.catalog.silence_expected(host["labels"])
            liveness = "asleep" if expected else "silent"
        else:
            liveness = "alive"
        states = set(host["checks"].values())
        if "critical" in states or host["open_incidents"]:
            health = "critical"
        elif "warning" in states:
            health = "warning"
        else:
            health = "ok"
        host["liveness"] = liveness
        host["health"] = health
        host["groups"] = list(config.catalog.group_names(host["labels"]))
    return web.json_response({"hosts": hosts})


async def remediation_stats(request: web.Request) -> web.Response:
    """``GET /api/v1/remediations/stats``: per remediation, runs by outcome, success rate
    and incidents prevented."""
    _require_reader(request)
    _query(request, ())
    stats = await _in_store_thread(request, request.app[desk_key].remediation_stats)
    return web.json_response({"remediations": stats})


# --------------------------------------------------------------------------- reports


def render_incident_report(incident: dict[str, Any]) -> str:
    """A Markdown CAPA report of an incident dict (as ``store.get_incident`` returns)."""
    lines = [
        f"# Incident {incident['id']}: {incident['check']} on {incident['hostname']}",
        "",
        "| field | value |",
        "|---|---|",
        f"| state | {incident['state']} |",
        f"| priority | {incident['priority']} (impact {incident.get('impact') or '-'},"
        f" urgency {incident.get('urgency') or '-'}) |",
        f"| service | {incident.get('service') or '-'} |",
        f"| host | {incident['hostname']} (`{incident['host']}`) |",
        f"| opened | {_iso(incident['opened_at'])} |",
        f"| SLA due | {_iso(incident.get('sla_due'))} |",
        f"| acknowledged | {_iso(incident.get('acknowledged_at'))}"
        f" {incident.get('acknowledged_by') or ''} |",
        f"| resolved | {_iso(incident.get('resolved_at'))} |",
        f"| remediation | {incident.get('remediation') or '-'}"
        f" ({incident.get('remediation_outcome') or '-'}) |",
        f"| problems | {', '.join(str(p) for p in incident.get('problems', [])) or '-'} |",
        "",
        "## What happened",
        "",
        _cell(incident.get("message")),
        "",
    ]
    runs = incident.get("remediation_runs", [])
    if runs:
        lines += [
            "## Remediation attempts",
            "",
            "| time | remediation | outcome | exit | duration | value | output |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {_iso(r['received_at'])} | {_cell(r['remediation'])} | {r['outcome']}"
            f" | {'-' if r['exit_code'] is None else r['exit_code']} | {r['duration_s']:.1f} s"
            f" | {_num(r['value_before'])} → {_num(r['value_after'])}"
            f" | {_cell(r['output'][:200])}{' …' if r['output_truncated'] else ''} |"
            for r in runs
        ]
        lines.append("")
    return "\n".join(lines + _capa_and_timeline(incident))


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def render_problem_report(problem: dict[str, Any]) -> str:
    """A Markdown CAPA report of a problem dict (as ``store.get_problem`` returns)."""
    lines = [
        f"# Problem {problem['id']} ({problem['kind']}): {problem['check']}",
        "",
        "| field | value |",
        "|---|---|",
        f"| state | {problem['state']} |",
        f"| priority | {problem['priority']} |",
        f"| service | {problem.get('service') or '-'} |",
        f"| host | {problem.get('hostname') or 'fleet-wide'} |",
        f"| opened | {_iso(problem['opened_at'])} |",
        f"| resolved | {_iso(problem.get('resolved_at'))} |",
        f"| incidents | {', '.join(str(i) for i in problem['incidents']) or '-'} |",
        "",
        "## Summary",
        "",
        _cell(problem.get("summary")),
        "",
    ]
    return "\n".join(lines + _capa_and_timeline(problem))


def _capa_and_timeline(item: dict[str, Any]) -> list[str]:
    lines = [
        "## Resolution",
        "",
        f"- **Resolution:** {_cell(item.get('resolution'))}",
        f"- **Root cause:** {_cell(item.get('root_cause'))}",
        f"- **Corrective action:** {_cell(item.get('corrective_action'))}",
        f"- **Preventive action:** {_cell(item.get('preventive_action'))}",
        "",
        "## Timeline",
        "",
    ]
    lines += [f"- {_iso(e['at'])} — {_cell(e['text'])}" for e in item.get("timeline", [])]
    return [*lines, ""]


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(text: str | None) -> str:
    """Text safe inside a Markdown line or table cell (agent/admin text is data)."""
    if not text:
        return "-"
    return " ".join(text.split()).replace("|", "\\|")


# --------------------------------------------------------------------------- helpers


async def _get(request: web.Request, kind: str) -> dict[str, Any]:
    item_id = _item_id(request, kind)
    store = request.app[desk_key]
    fetch = store.get_incident if kind == "incident" else store.get_problem
    item = await _in_store_thread(request, fetch, item_id)
    if item is None:
        raise ApiError(404, f"no {kind} with id {item_id}", "id")
    return item


async def _acknowledge(request: web.Request, kind: str) -> web.Response:
    require_admin(request)
    item_id = _item_id(request, kind)
    body = await _json_body(request, ("by", "note"))
    by = _body_str(body, "by", required=True)
    note = _body_str(body, "note") or ""
    store = request.app[desk_key]
    try:
        result = await _in_store_thread(
            request,
            functools.partial(store.acknowledge, kind, item_id, by, note),
            request.app[clock_key](),
        )
    except LookupError:
        raise ApiError(404, f"no {kind} with id {item_id}", "id") from None
    except StateError as exc:
        raise ApiError(409, str(exc), "state") from None
    item = await _get(request, kind)
    return web.json_response({kind: item, "changed": result == "acknowledged"})


async def _resolve(request: web.Request, kind: str) -> web.Response:
    require_admin(request)
    item_id = _item_id(request, kind)
    fields = ("by", "note", "root_cause", "corrective_action", "preventive_action")
    body = await _json_body(request, fields)
    by = _body_str(body, "by", required=True)
    notes = {k: _body_str(body, k) or "" for k in fields[1:]}
    store = request.app[desk_key]
    try:
        await _in_store_thread(
            request,
            functools.partial(store.resolve_manually, kind, item_id, by, notes),
            request.app[clock_key](),
        )
    except LookupError:
        raise ApiError(404, f"no {kind} with id {item_id}", "id") from None
    except StateError as exc:
        raise ApiError(409, str(exc), "state") from None
    return web.json_response({kind: await _get(request, kind)})


def _item_id(request: web.Request, kind: str) -> int:
    raw = request.match_info["item_id"]  # the route admits ASCII digits only
    if not _DIGITS.fullmatch(raw) or int(raw) > _MAX_ID:
        raise ApiError(404, f"no {kind} with id {raw[:40]}", "id")
    return int(raw)


def _page(q: dict[str, str]) -> dict[str, int]:
    return {
        "limit": _int_param(q, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        "offset": _int_param(q, "offset", 0, 0, _MAX_ID),
    }


def _choice(q: dict[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = q.get(name, default)
    if value not in allowed:
        raise ApiError(400, f"{name} must be one of {list(allowed)}, got {value!r}", name)
    return value


async def _json_body(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object; unknown fields are 400 naming the field."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"request body over {MAX_BODY} bytes")
    try:
        raw = await _read_body(request, MAX_BODY)  # chunked bodies are bounded too
    except BodyTooLarge:
        raise ApiError(413, f"request body over {MAX_BODY} bytes") from None
    if not raw.strip():
        body: Any = {}
    else:
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    for name in body:
        if name not in allowed:
            raise ApiError(400, f"unknown field (known: {', '.join(allowed)})", str(name)[:64])
    return body


def _body_str(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"{name} is required", name)
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"{name} must be a string", name)
    if len(value) > MAX_NOTE:
        raise ApiError(400, f"{name} must be at most {MAX_NOTE} characters", name)
    if required and not value.strip():
        raise ApiError(400, f"{name} must not be empty", name)
    return value


def _body_time(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be a Unix time in seconds", name)
    return float(value)
