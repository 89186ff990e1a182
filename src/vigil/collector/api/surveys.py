"""Satisfaction survey handlers: the page people answer, and the reads for responders.

``GET /survey/{token}`` serves a small HTML form (no JavaScript, no cookie); ``POST``
records the answer. The signed token in the URL is the capability: whoever has the link
may answer that one survey, once, before it expires. A forged link is refused with 403,
an expired, used or unknown one with 410, always as a readable page. Nothing here needs
a login: the person answering is an employee, not an operator.

``GET /api/v1/satisfaction`` (NPS and CSAT) and ``GET /api/v1/incidents/{id}/surveys``
(an incident's survey answers and comments) are reads like the rest of the API.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jinja2
from aiohttp import web

from vigil.collector.api.http import (
    MAX_TIME,
    ApiError,
    in_storage_thread,
    item_id,
    json_response,
    query_params,
    require_reader,
)
from vigil.collector.desk import satisfaction
from vigil.collector.desk.survey_links import LinkError
from vigil.collector.desk.surveys import SurveyUnknown, SurveyUsed
from vigil.collector.keys import clock_key, desk_key

TOKEN = "{token:[A-Za-z0-9._-]{1,200}}"
# A form post carries a score and a comment: a few KiB at most.
MAX_FORM_BYTES = 16 * 1024

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("vigil.collector.api", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
# The page is only ever about the one survey in its URL: keep it out of caches, frames
# and referrers, and allow no script at all.
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


def _page(status: int, heading: str, message: str = "", **form: Any) -> web.Response:
    context = {
        "heading": heading,
        "message": message,
        "error": status >= 400,
        "survey": None,
        "question": satisfaction.QUESTION,
        "scores": list(satisfaction.SCORES),
        "chosen": None,
        "comment": "",
        "action": "",
        "max_comment": satisfaction.MAX_COMMENT_CHARS,
    } | form
    html = _templates.get_template("survey.html").render(context)
    return web.Response(
        status=status, text=html, content_type="text/html", charset="utf-8", headers=_HEADERS
    )


def _refused(exc: Exception) -> web.Response:
    if isinstance(exc, LinkError):
        return _page(exc.status, "This link cannot be used", str(exc))
    if isinstance(exc, SurveyUsed):
        return _page(410, "Already answered", str(exc))
    return _page(410, "This link cannot be used", str(exc))


async def get_survey(request: web.Request) -> web.Response:
    """``GET /survey/{token}``: the question for a valid link, else a page saying why not."""
    surveys = request.app[desk_key].surveys
    if not surveys.policy.enabled:
        return _page(404, "No survey here", "Surveys are not enabled on this server.")
    token = request.match_info["token"]
    now = request.app[clock_key]()
    try:
        row = await in_storage_thread(request, surveys.open_link, token, now)
    except (LinkError, SurveyUsed, SurveyUnknown) as exc:
        return _refused(exc)
    return _page(200, "How did we do?", survey=row, action=request.path)


async def post_survey(request: web.Request) -> web.Response:
    """``POST /survey/{token}`` with form fields ``score`` (0-10) and ``comment``."""
    surveys = request.app[desk_key].surveys
    if not surveys.policy.enabled:
        return _page(404, "No survey here", "Surveys are not enabled on this server.")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return _page(413, "Answer too long", "Please shorten your comment and send it again.")
    token = request.match_info["token"]
    try:
        form = await request.post()
    except ValueError:
        return _page(400, "Could not read the answer", "The form could not be read.")
    raw_score, comment = form.get("score"), form.get("comment", "")
    score = satisfaction.valid_score(raw_score)
    comment = comment if isinstance(comment, str) else ""
    now = request.app[clock_key]()
    try:
        if score is None:
            # Still check the link first: a forged link learns nothing about the form.
            row = await in_storage_thread(request, surveys.open_link, token, now)
            return _page(
                400,
                "How did we do?",
                "score: choose a number from 0 to 10.",
                survey=row,
                action=request.path,
                comment=comment[: satisfaction.MAX_COMMENT_CHARS],
            )
        await in_storage_thread(request, surveys.answer, token, score, comment, now)
    except (LinkError, SurveyUsed, SurveyUnknown) as exc:
        return _refused(exc)
    return _page(200, "Thank you", "Your answer was recorded. Thank you for telling us.")


async def get_satisfaction(request: web.Request) -> web.Response:
    """``GET /api/v1/satisfaction?department=&service=&since=``: NPS and CSAT overall,
    per department and per service (``since``: Unix seconds; answers at or after it)."""
    require_reader(request)
    q = query_params(request, ("department", "service", "since"))
    since = None
    if "since" in q:
        try:
            since = float(q["since"])
        except ValueError:
            since = math.nan
        if not (math.isfinite(since) and 0 <= since <= MAX_TIME):
            raise ApiError(400, f"since must be Unix seconds, got {q['since']!r}", "since")
    desk = request.app[desk_key]
    summary = await in_storage_thread(
        request,
        functools.partial(
            desk.satisfaction_summary,
            department=q.get("department"),
            service=q.get("service"),
            since=since,
        ),
    )
    return json_response({"satisfaction": summary, "enabled": desk.surveys.policy.enabled})


async def get_incident_surveys(request: web.Request) -> web.Response:
    """``GET /api/v1/incidents/{id}/surveys``: the incident's surveys, their delivery,
    score and comment (404 for an incident that does not exist)."""
    require_reader(request)
    incident_id = item_id(request, "incident")
    desk = request.app[desk_key]
    if await in_storage_thread(request, desk.get_incident, incident_id) is None:
        raise ApiError(404, f"no incident with id {incident_id}", "id")
    rows = await in_storage_thread(request, desk.surveys.of_incident, incident_id)
    return json_response({"surveys": rows})
