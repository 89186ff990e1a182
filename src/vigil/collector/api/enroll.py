"""``POST /api/v1/enroll``: exchange an enrollment secret for a per-agent credential.

Body: ``{"secret": str, "agent_id": str, "hostname": str, "replace": bool}``. Answers
``201 {"agent_id", "credential", "expires_at", "labels", "policy_keys"}`` (the keys policy
bundles must be signed by: ``policy.trusted_keys``); a wrong secret is 401, an
expired, used-up or revoked one 403, an agent id that is already enrolled 409 (unless
``replace``), more than ``enrollment.rate_limit`` tries a minute from one client
address 429 with ``Retry-After``; every refusal is counted
(``vigil_enrollments_total{outcome}``) and logged. See ``docs/security.md``.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from vigil.collector.api.http import ApiError, body_str, json_body, json_response, peer_of
from vigil.collector.identity.enrollment import EnrollError, record
from vigil.collector.keys import clock_key, config_key, identity_key

log = logging.getLogger(__name__)

_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_FIELDS = ("secret", "agent_id", "hostname", "replace")
MAX_HOSTNAME = 255


async def post_enroll(request: web.Request) -> web.Response:
    """``POST /api/v1/enroll``; see the module docstring."""
    identity = request.app[identity_key]
    peer = peer_of(request)
    # Before the body is read: a client guessing secrets costs one dict lookup per try.
    wait_s = identity.enroll_limit.take(peer)
    if wait_s:
        record(identity.counters, "rate_limited", remote=peer)
        raise ApiError(
            429,
            "too many enrollment attempts from this address; retry later",
            headers={"Retry-After": str(int(wait_s))},
        )
    try:
        body = await json_body(request, _FIELDS)
        secret = body_str(body, "secret", required=True)
        agent_id = body_str(body, "agent_id", required=True)
        hostname = body_str(body, "hostname", required=True)
        replace = body.get("replace", False)
        if not isinstance(replace, bool):
            raise ApiError(400, "replace must be true or false", "replace")
        if not _AGENT_ID.fullmatch(agent_id or ""):
            raise ApiError(
                400, "agent_id must be 1-128 letters, digits or . _ : - characters", "agent_id"
            )
        if len(hostname or "") > MAX_HOSTNAME:
            raise ApiError(400, f"hostname must be at most {MAX_HOSTNAME} characters", "hostname")
    except ApiError as exc:
        record(identity.counters, "invalid", remote=request.remote, error=exc.message)
        raise
    assert secret is not None and agent_id is not None and hostname is not None
    try:
        issued = await identity.enroll(
            secret=secret,
            agent_id=agent_id,
            hostname=hostname,
            replace=replace,
            now=request.app[clock_key](),
            peer=peer,
        )
    except EnrollError as exc:
        log.info("refused enrollment of %s from %s: %s", agent_id, request.remote, exc.message)
        raise ApiError(exc.status, exc.message, exc.field) from None
    return json_response(
        {
            "agent_id": issued.agent_id,
            "credential": issued.credential,
            "expires_at": issued.expires_at,
            "labels": issued.labels,
            # The keys policy bundles must be signed by (docs/policy.md); the agent
            # stores them with its credential.
            "policy_keys": list(request.app[config_key].policy.trusted_keys),
        },
        status=201,
    )
