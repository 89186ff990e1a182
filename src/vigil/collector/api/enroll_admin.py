"""Admin endpoints for enrollment: secrets and per-agent credentials.

The same operations as ``vigil-collector enroll-secret``/``agent`` (see
``docs/security.md``), over HTTP with an admin token. A revocation here reaches this
collector's credential cache before the reply, so the agent's next request is refused.

* ``GET /api/v1/enroll-secrets``; ``POST /api/v1/enroll-secrets`` (``labels``, ``uses``,
  ``expires``, ``comment``; the secret is in the 201 reply, once);
  ``POST /api/v1/enroll-secrets/{secret_id}/revoke``;
* ``GET /api/v1/agent-credentials``; ``POST /api/v1/agents/{agent_id}/revoke``.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from aiohttp import web

from vigil.collector.api.http import (
    ApiError,
    body_str,
    in_storage_thread,
    json_body,
    json_response,
    peer_of,
    refuse_by,
    require_admin,
)
from vigil.collector.identity import enrollment
from vigil.collector.keys import clock_key, identity_key
from vigil.configio import parse_duration
from vigil.wire import valid_text

# Path segments: a secret id is 8 hex digits; an agent id as POST /api/v1/enroll takes it.
SECRET_ID = "{secret_id:[0-9a-f]{8}}"
AGENT_ID = "{agent_id:[A-Za-z0-9][A-Za-z0-9._:-]{0,127}}"
_LABEL_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_LABELS = 32
MAX_USES = 1_000_000


async def list_secrets(request: web.Request) -> web.Response:
    """``GET /api/v1/enroll-secrets``: every secret (never the secret itself)."""
    require_admin(request)
    identity = request.app[identity_key]
    rows = await in_storage_thread(request, enrollment.list_secrets, identity.storage)
    return json_response({"secrets": rows})


async def create_secret(request: web.Request) -> web.Response:
    """``POST /api/v1/enroll-secrets``: ``labels`` (object of strings, the routing labels
    enrolled agents get), ``uses`` (1..1,000,000, default 1), ``expires`` (a duration
    such as ``"7d"``, default 7 days, at most 366 days), ``comment``. 201 with the row
    and ``secret``, shown this once."""
    admin = require_admin(request)
    body = await json_body(request, ("labels", "uses", "expires", "comment", "by"))
    refuse_by(body, "by")
    labels = _labels(body.get("labels", {}))
    uses = body.get("uses", 1)
    if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_USES:
        raise ApiError(400, f"uses must be an integer from 1 to {MAX_USES}", "uses")
    try:
        ttl_s = parse_duration(body.get("expires", "7d"))
    except ValueError as exc:
        raise ApiError(400, f"expires: {exc}", "expires") from None
    if ttl_s <= 0:  # parse_duration already caps it at 366 days
        raise ApiError(400, "expires must be more than 0", "expires")
    comment = body_str(body, "comment") or ""
    identity = request.app[identity_key]
    now = request.app[clock_key]()
    secret_id, secret = await in_storage_thread(
        request,
        functools.partial(
            enrollment.create_secret,
            identity.storage,
            labels=labels,
            ttl_s=ttl_s,
            max_uses=uses,
            comment=comment,
            now=now,
            actor=admin.name,
            peer=peer_of(request),
        ),
    )
    row = {"id": secret_id, "labels": labels, "comment": comment, "created_at": now}
    row |= {"expires_at": now + ttl_s, "max_uses": uses, "uses": 0, "revoked_at": None}
    return json_response({"secret": {**row, "secret": secret}}, status=201)


async def revoke_secret(request: web.Request) -> web.Response:
    """``POST /api/v1/enroll-secrets/{secret_id}/revoke``: the secret and every
    credential issued through it; 404 for an unknown id."""
    admin = require_admin(request)
    await _no_by(request)
    secret_id = request.match_info["secret_id"]
    identity = request.app[identity_key]
    deleted = await identity.revoke_secret(
        secret_id, request.app[clock_key](), actor=admin.name, peer=peer_of(request)
    )
    if deleted is None:
        raise ApiError(404, f"no enrollment secret {secret_id}", "secret_id")
    return json_response({"id": secret_id, "credentials_revoked": deleted})


async def list_credentials(request: web.Request) -> web.Response:
    """``GET /api/v1/agent-credentials``: every credential (never the credential)."""
    require_admin(request)
    identity = request.app[identity_key]
    rows = await in_storage_thread(request, enrollment.list_agents, identity.storage)
    return json_response({"credentials": rows})


async def revoke_agent(request: web.Request) -> web.Response:
    """``POST /api/v1/agents/{agent_id}/revoke``: every credential of the agent; 404 if
    it holds none."""
    admin = require_admin(request)
    await _no_by(request)
    agent_id = request.match_info["agent_id"]
    deleted = await request.app[identity_key].revoke_agent(
        agent_id,
        actor=admin.name,
        peer=peer_of(request),
        now=request.app[clock_key](),
    )
    if not deleted:
        raise ApiError(404, f"agent {agent_id} holds no credential", "agent_id")
    return json_response({"agent_id": agent_id, "credentials_revoked": deleted})


async def _no_by(request: web.Request) -> None:
    """A revoke takes no body (or ``{}``); a ``by`` field is 400: the actor is the
    operator whose token was used (:func:`refuse_by`)."""
    refuse_by(await json_body(request, ("by",)), "by")


def _labels(value: Any) -> dict[str, str]:
    """The ``labels`` body field: at most :data:`MAX_LABELS` names of 1-64 safe
    characters, each a non-blank string of at most 256 characters; 400 naming it."""
    if not isinstance(value, dict):
        raise ApiError(400, "labels must be an object of strings", "labels")
    if len(value) > MAX_LABELS:
        raise ApiError(400, f"labels: at most {MAX_LABELS}", "labels")
    for key, item in value.items():
        if not _LABEL_KEY.fullmatch(key):
            raise ApiError(400, "label names are 1-64 of A-Z a-z 0-9 _ . -", "labels")
        if not isinstance(item, str) or not item.strip() or len(item) > 256:
            raise ApiError(400, "label values are 1-256 characters", f"labels.{key}")
        if not valid_text(item):
            raise ApiError(400, "label values must be valid Unicode", f"labels.{key}")
    return dict(value)
