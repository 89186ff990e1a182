"""Central policy over HTTP (``docs/policy.md``, ``docs/api.md``).

Agents: ``GET /api/v1/agent/policy`` with their normal credential and ``If-None-Match``
answers the bundle document this host should run, exactly as uploaded, with ``ETag:
"<policy>@<version>"``; ``304`` when the agent holds it; ``404`` when none is assigned.
An agent on a shared ``auth.agent_tokens`` token names itself with ``?agent_id=``
(the same trust as its reports, which may write for any agent id not enrolled).

``GET /api/v1/agent/release`` serves the signed agent release the host's ring has
reached the same way (``docs/install.md``, "Self-update").

Admins (every route needs an admin token; every write is audited): ``POST
/api/v1/policies`` (body: the signed ``.vpol`` document; rollout options in the query:
``rings=0.05,0.25,1.0``, ``canary=ID,ID``, ``canary_share=0.05``, ``soak=10m``),
``GET /api/v1/policies``, ``GET /api/v1/policies/{name}``, ``POST
/api/v1/policies/{name}/advance|pause|resume``, ``POST /api/v1/policy-halts``
(``{"remediation": ID or "*", "reason"}``), ``DELETE /api/v1/policy-halts/{remediation}``,
``POST /api/v1/run-now`` (``{"remediation", "host" or "labels", "params"}``) and ``GET
/api/v1/run-now/{id}``, ``GET /api/v1/agent-versions``. An agent release is published
and steered with the same routes under the reserved name ``vigil-agent``.
"""

from __future__ import annotations

import asyncio
import functools
import re
from typing import Any

from aiohttp import web

from vigil.collector.api.http import (
    AUTH_CHALLENGE,
    ApiError,
    BodyTooLarge,
    body_str,
    in_storage_thread,
    json_body,
    json_response,
    peer_of,
    query_params,
    read_body,
    require_admin,
)
from vigil.collector.keys import (
    clock_key,
    config_key,
    desk_key,
    executor_key,
    identity_key,
    policy_key,
)
from vigil.collector.policy import rollout as core
from vigil.collector.policy import service
from vigil.collector.policy.release import release_fleet
from vigil.collector.policy.runtime import PolicyRuntime
from vigil.collector.policy.service import PolicyError, Who
from vigil.configio import ConfigError, parse_duration
from vigil.policy_bundle import MAX_DOCUMENT, MEDIA_TYPE, policy_tag
from vigil.release_bundle import RELEASE_POLICY

POLICY_NAME = "{name}"
REMEDIATION = "{remediation}"
REQUEST_ID = "{request_id}"
_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_MAX_CANARY = 1000


async def get_agent_policy(request: web.Request) -> web.Response:
    """``GET /api/v1/agent/policy``; see the module docstring."""
    agent_id, labels = await _agent_of(request)
    offered = request.app[policy_key].offer(agent_id, labels)
    name, version = offered["policy"], offered["version"]
    if name is None or version is None:
        raise ApiError(404, "no policy for this host")
    return await _serve_document(request, name, version, "no policy for this host")


async def get_agent_release(request: web.Request) -> web.Response:
    """``GET /api/v1/agent/release``: the signed agent release this host's ring has
    reached, like ``GET /api/v1/agent/policy`` (``ETag: "vigil-agent@<serial>"``, 304,
    404 when no release is offered to it)."""
    agent_id, labels = await _agent_of(request)
    offered = request.app[policy_key].release_offer(agent_id, labels)
    if offered is None:
        raise ApiError(404, "no agent release for this host")
    return await _serve_document(
        request, RELEASE_POLICY, offered["serial"], "no agent release for this host"
    )


async def _agent_of(request: web.Request) -> tuple[str, dict[str, str]]:
    """The authenticated agent's id and its last known labels (401/400/403 otherwise)."""
    app = request.app
    auth = app[identity_key].authenticate(
        request.headers.get("Authorization", ""), app[clock_key]()
    )
    if auth is None:
        raise ApiError(401, "missing or unknown agent token", headers=AUTH_CHALLENGE)
    query = query_params(request, ("agent_id",))
    if auth.credential is not None:
        agent_id = auth.credential.agent_id
    else:
        agent_id = query.get("agent_id", "")
        if not _AGENT_ID.fullmatch(agent_id):
            raise ApiError(
                400, "a shared agent token must name the agent: ?agent_id=ID", "agent_id"
            )
        if app[identity_key].cache.is_enrolled(agent_id):
            raise ApiError(403, f"agent {agent_id} is enrolled: use its own credential", "agent_id")
    labels = app[policy_key].labels_of(agent_id)
    if labels is None:
        desk = app[desk_key]
        info = await in_storage_thread(request, _host_labels, desk.storage, agent_id)
        labels = {} if info is None else info
    return agent_id, labels


async def _serve_document(
    request: web.Request, name: str, version: int, missing: str
) -> web.Response:
    """The stored bundle ``name@version`` with its ETag, or 304 when the agent has it."""
    runtime = request.app[policy_key]
    etag = f'"{policy_tag(name, version)}"'
    if etag in _etags(request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers={"ETag": etag})
    document = runtime.document((name, version))
    if document is None:
        document = await in_storage_thread(
            request, service.document, request.app[desk_key].storage, name, version
        )
        if document is None:
            raise ApiError(404, missing)
        runtime.keep_document((name, version), document)
    return web.Response(body=document, headers={"ETag": etag, "Content-Type": MEDIA_TYPE})


async def get_agent_versions(request: web.Request) -> web.Response:
    """``GET /api/v1/agent-versions`` (admin): hosts per reported agent version, and the
    compliance with the newest published release (share of hosts on its version)."""
    require_admin(request)
    query_params(request, ())
    runtime = request.app[policy_key]
    return json_response(release_fleet(runtime.agents_by_version(), runtime.snapshot))


def _host_labels(storage: Any, agent_id: str) -> dict[str, str] | None:
    with storage.session() as uow:
        info = uow.hosts.info(agent_id)
    return None if info is None else info[1]


def _etags(header: str) -> set[str]:
    return {part.strip().removeprefix("W/") for part in header.split(",") if part.strip()}


async def publish_policy(request: web.Request) -> web.Response:
    """``POST /api/v1/policies``: verify and store a signed bundle, start its rollout."""
    actor = require_admin(request)
    query = query_params(request, ("rings", "canary", "canary_share", "soak"))
    config = request.app[config_key].policy
    canary = _canary(query.get("canary", ""))
    share = _floats(query["canary_share"], "canary_share") if "canary_share" in query else None
    if share is not None and len(share) != 1:
        raise ApiError(400, "one share, e.g. 0.05", "canary_share")
    try:
        rings = core.rings_for(
            config.rings,
            _floats(query["rings"], "rings") if "rings" in query else None,
            canary,
            None if share is None else share[0],
        )
    except ValueError as exc:
        raise ApiError(400, str(exc), "rings") from None
    soak = None
    if "soak" in query:
        try:
            soak = parse_duration(query["soak"])
        except (ConfigError, ValueError) as exc:
            raise ApiError(400, f"soak: {exc}", "soak") from None
    if request.content_length is not None and request.content_length > MAX_DOCUMENT:
        raise ApiError(413, f"bundle over {MAX_DOCUMENT} bytes", "document")
    try:
        document = await read_body(request, MAX_DOCUMENT)
    except BodyTooLarge:
        raise ApiError(413, f"bundle over {MAX_DOCUMENT} bytes", "document") from None
    call = functools.partial(
        service.publish,
        request.app[desk_key].storage,
        document,
        config,
        Who(actor.name, peer_of(request)),
        request.app[clock_key](),
        rings=rings,
        canary=canary,
        soak_s=soak,
    )
    return json_response(await _write(request, call), status=201)


async def list_policies(request: web.Request) -> web.Response:
    """``GET /api/v1/policies``: rollouts, stored versions, halts."""
    require_admin(request)
    query_params(request, ())
    return json_response(
        await in_storage_thread(request, service.list_policies, request.app[desk_key].storage)
    )


async def get_policy(request: web.Request) -> web.Response:
    """``GET /api/v1/policies/{name}``: the rollout with per-ring progress."""
    require_admin(request)
    query_params(request, ())
    call = functools.partial(
        service.status,
        request.app[desk_key].storage,
        request.match_info["name"],
        request.app[clock_key](),
        request.app[config_key].policy.advance_share,
    )
    return json_response(await _write(request, call, refresh=False))


async def advance_policy(request: web.Request) -> web.Response:
    return await _rollout_action(request, "advance")


async def pause_policy(request: web.Request) -> web.Response:
    return await _rollout_action(request, "pause")


async def resume_policy(request: web.Request) -> web.Response:
    return await _rollout_action(request, "resume")


async def _rollout_action(request: web.Request, action: str) -> web.Response:
    """``POST /api/v1/policies/{name}/advance|pause|resume``."""
    actor = require_admin(request)
    query_params(request, ())
    storage, name = request.app[desk_key].storage, request.match_info["name"]
    who, now = Who(actor.name, peer_of(request)), request.app[clock_key]()
    if action == "advance":
        call = functools.partial(service.advance, storage, name, who, now)
    else:
        call = functools.partial(service.set_paused, storage, name, action == "pause", who, now)
    return json_response(await _write(request, call))


async def create_halt(request: web.Request) -> web.Response:
    """``POST /api/v1/policy-halts``: the kill switch (``"*"`` halts every remediation)."""
    actor = require_admin(request)
    body = await json_body(request, ("remediation", "reason"))
    remediation = body_str(body, "remediation", required=True) or ""
    reason = body_str(body, "reason") or ""
    call = functools.partial(
        service.halt,
        request.app[desk_key].storage,
        remediation,
        Who(actor.name, peer_of(request)),
        request.app[clock_key](),
        reason,
    )
    created = await _write(request, call)
    return json_response(
        {"remediation": remediation, "halted": True, "new": created}, status=201 if created else 200
    )


async def delete_halt(request: web.Request) -> web.Response:
    """``DELETE /api/v1/policy-halts/{remediation}``: lift a halt (and resolve the
    guard's incident for it)."""
    actor = require_admin(request)
    query_params(request, ())
    desk = request.app[desk_key]
    remediation = request.match_info["remediation"]
    call = functools.partial(
        service.unhalt,
        desk.storage,
        remediation,
        Who(actor.name, peer_of(request)),
        request.app[clock_key](),
        lambda check, now: desk.collector_check(check, "ok", "halt lifted", now),
    )
    if not await _write(request, call):
        raise ApiError(404, f"{remediation!r} is not halted", "remediation")
    return json_response({"remediation": remediation, "halted": False})


async def create_run_now(request: web.Request) -> web.Response:
    """``POST /api/v1/run-now``: ask hosts to run a remediation now."""
    actor = require_admin(request)
    body = await json_body(request, ("remediation", "host", "labels", "params"))
    remediation = body_str(body, "remediation", required=True) or ""
    host = body_str(body, "host")
    labels = body.get("labels") or {}
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise ApiError(400, "labels must be an object of strings", "labels")
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "params must be an object", "params")
    config = request.app[config_key].policy
    call = functools.partial(
        service.request_run_now,
        request.app[desk_key].storage,
        remediation,
        Who(actor.name, peer_of(request)),
        request.app[clock_key](),
        host=host,
        labels=labels,
        params=params,
        ttl_s=config.run_now_ttl_s,
    )
    return json_response(await _write(request, call), status=201)


async def get_run_now(request: web.Request) -> web.Response:
    """``GET /api/v1/run-now/{request_id}``: who asked, and each host's outcome."""
    require_admin(request)
    query_params(request, ())
    found = await in_storage_thread(
        request,
        service.get_run_now,
        request.app[desk_key].storage,
        request.match_info["request_id"],
    )
    if found is None:
        raise ApiError(404, "no such run-now request", "request_id")
    return json_response(found)


async def _write(request: web.Request, call: Any, *, refresh: bool = True) -> Any:
    """Run a service call on the storage thread, mapping PolicyError to its HTTP error;
    then reload this process's snapshot so the next acks carry the change at once."""
    try:
        result = await in_storage_thread(request, call)
    except PolicyError as exc:
        raise ApiError(exc.status, exc.message, exc.field) from None
    if refresh:
        await reload_snapshot(request.app)
    return result


async def reload_snapshot(app: web.Application) -> None:
    """Re-read the rollouts, halts and run-now requests into this process's runtime."""
    runtime: PolicyRuntime = app[policy_key]
    loop = asyncio.get_running_loop()
    runtime.snapshot = await loop.run_in_executor(
        app[executor_key], service.load_snapshot, app[desk_key].storage, app[clock_key]()
    )


def _floats(text: str, field: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ApiError(400, f"expected comma-separated numbers, got {text[:80]!r}", field) from None
    if not all(0.0 <= v <= 1.0 for v in values):
        raise ApiError(400, f"shares must be between 0 and 1, got {text[:80]!r}", field)
    return values


def _canary(text: str) -> list[str]:
    hosts = [h for h in text.split(",") if h]
    if len(hosts) > _MAX_CANARY:
        raise ApiError(400, f"at most {_MAX_CANARY} canary hosts", "canary")
    for h in hosts:
        if not _AGENT_ID.fullmatch(h):
            raise ApiError(400, f"not an agent id: {h[:80]!r}", "canary")
    return hosts
