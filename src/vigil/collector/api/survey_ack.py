"""The survey part of the report exchange (``POST /api/v1/reports``).

The agent says, in request headers, its clock's offset from UTC
(``Vigil-UTC-Offset: <seconds east>``, for quiet hours on its local time) and what it did
with surveys it was handed (``Vigil-Surveys: <id>=shown,<id>=unavailable:<note>``). The
ack then carries ``"surveys": [{"id", "url", "incident", "title"}]`` for the host, while
any are waiting and the agent's local time is outside quiet hours. A malformed header is
ignored (and logged): the report it came with is already committed and must be acked.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web

from vigil.collector.api.http import in_storage_thread
from vigil.collector.keys import desk_key

log = logging.getLogger(__name__)

OFFSET_HEADER = "Vigil-UTC-Offset"
SURVEYS_HEADER = "Vigil-Surveys"
# Real UTC offsets run from -12:00 to +14:00.
MAX_OFFSET_S = 14 * 3600
MAX_REPORTED = 20
_ENTRY = re.compile(r"^(\d{1,18})=(shown|unavailable)(?::([A-Za-z0-9_.-]{0,60}))?$")


def utc_offset(request: web.Request) -> float | None:
    """The agent's UTC offset (seconds east) from its header, or None if absent/bad."""
    raw = request.headers.get(OFFSET_HEADER)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        log.info("ignoring %s %r from %s", OFFSET_HEADER, raw[:40], request.remote)
        return None
    return float(value) if abs(value) <= MAX_OFFSET_S else None


def delivery_reports(request: web.Request) -> list[tuple[int, str, str]]:
    """``(survey_id, state, note)`` entries of the ``Vigil-Surveys`` header; an entry
    that does not parse is skipped, and at most :data:`MAX_REPORTED` are taken."""
    raw = request.headers.get(SURVEYS_HEADER, "")
    out: list[tuple[int, str, str]] = []
    for part in raw.split(",")[:MAX_REPORTED] if raw.strip() else []:
        match = _ENTRY.match(part.strip())
        if match is None:
            log.info("ignoring %s entry %r from %s", SURVEYS_HEADER, part[:80], request.remote)
            continue
        out.append((int(match.group(1)), match.group(2), match.group(3) or ""))
    return out


async def survey_ack(
    request: web.Request, host: str, now: float, *, resolved: bool = False
) -> list[dict[str, Any]] | None:
    """Record what the agent of ``host`` reported and return the ack's ``surveys`` list
    (None: leave the key out). ``resolved``: the report just resolved an incident, so a
    survey may have been queued for the host in its transaction. Costs no I/O unless the
    host may have a survey waiting or the agent reported one."""
    surveys = request.app[desk_key].surveys
    if not surveys.policy.enabled:
        return None
    if resolved:
        surveys.note_waiting(host)
    try:
        return await _exchange(request, host, now)
    except Exception:
        # The report is committed: a survey hiccup must not turn its ack into a 500
        # (the agent would resend it for nothing). The survey is offered again later.
        log.exception("survey exchange with %s failed", host)
        return None


async def _exchange(request: web.Request, host: str, now: float) -> list[dict[str, Any]] | None:
    surveys = request.app[desk_key].surveys
    reports = delivery_reports(request)
    if reports:
        await in_storage_thread(request, surveys.record_delivery, host, reports, now)
    if not surveys.has_waiting(host):
        return None
    offered = await in_storage_thread(request, surveys.offer, host, now, utc_offset(request))
    if not offered:
        return None
    base = (surveys.policy.public_url or str(request.url.origin())).rstrip("/")
    return [
        {
            "id": s["id"],
            "url": f"{base}/survey/{s['token']}",
            "incident": s["incident"],
            "title": s["title"],
        }
        for s in offered
    ]
