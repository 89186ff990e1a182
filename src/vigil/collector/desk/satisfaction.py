"""User satisfaction tied to incidents: whom to ask, when, and what the answers add up to.

Pure decisions over plain data (time is a parameter); the desk stores, the API renders.

- :func:`should_ask`: when an incident resolves, is a survey queued for the person at
  that host? Never for a prevented incident (the user never saw it), never for a silent
  agent (a laptop asleep is not something its user suffered), at most one survey per
  person (per host when the person is unknown) per ``rate_limit_s``.
- :func:`may_deliver`: is the agent's local time outside quiet hours right now?
- :func:`score_summary`: NPS and CSAT from answer counts.

NPS (Net Promoter Score) = % promoters (9-10) - % detractors (0-6), from -100 to 100.
CSAT here = % of answers that are 9 or 10 (the share of satisfied users on the same
0-10 question), from 0 to 100. Both are None without answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vigil import wire
from vigil.quiet_hours import QuietHours, local_seconds

DAY_S = 86400.0
PROMOTER_MIN = 9
DETRACTOR_MAX = 6
SCORES = range(0, 11)
QUESTION = "How likely are you to recommend IT support?"
# Longest comment kept (characters): a survey answer, not a document.
MAX_COMMENT_CHARS = 2000
_SCORE = re.compile(r"10|[0-9]")


@dataclass(frozen=True, slots=True)
class SatisfactionPolicy:
    """The ``satisfaction:`` section of the collector config.

    ``rate_limit_s``: at most one survey per person in this many seconds (per host when
    the agent did not say who is at the console; see ``desk/surveys.py``). ``link_lifetime_s``:
    how long a survey link stays valid. ``quiet_hours``: local time of the agent in which
    no survey is handed to it (None: none). ``public_url``: the collector's URL as people's
    browsers reach it (links are ``{public_url}/survey/{token}``). ``secret``: the HMAC key
    of the links; None means one generated once and kept in the database (so several
    collectors on one database agree). ``department_label``: the host label that names
    the department. ``retention_s``: surveys (answers and comments included) older than
    this are deleted.
    """

    enabled: bool = False
    rate_limit_s: float = 7 * DAY_S
    link_lifetime_s: float = 7 * DAY_S
    quiet_hours: QuietHours | None = None
    public_url: str | None = None
    secret: str | None = None
    department_label: str = "department"
    retention_s: float = 365 * DAY_S


DISABLED = SatisfactionPolicy()


def should_ask(
    policy: SatisfactionPolicy,
    *,
    state: str,
    check: str,
    last_asked_at: float | None,
    now: float,
) -> tuple[bool, str]:
    """Whether to queue a survey for the host of an incident resolved at ``now``.

    ``state`` is the incident's state before it resolved (``open`` for a raised one,
    ``prevented`` for one a remediation fixed before anyone saw it); ``check`` its check;
    ``last_asked_at`` when the person at the host (the host, when unknown) was last
    asked (Unix seconds, None: never; see ``desk/surveys.queue_after_resolve``). Returns
    ``(ask, reason)``; the reason is a short phrase for logs and tests.
    """
    if not policy.enabled:
        return False, "surveys disabled"
    if state == "prevented":
        return False, "prevented: the user never saw it"
    if check == wire.HEARTBEAT_CHECK:
        return False, "silent agent: not something the user suffered"
    if last_asked_at is not None and now - last_asked_at < policy.rate_limit_s:
        return False, "rate limited: asked recently"
    return True, "ask"


def may_deliver(quiet: QuietHours | None, now: float, utc_offset_s: float | None) -> bool:
    """Whether a survey may be handed to an agent at ``now`` whose clock is
    ``utc_offset_s`` east of UTC. An agent that did not say its offset is judged on UTC
    (its own quiet hours still hold the notification back)."""
    if quiet is None:
        return True
    return not quiet.contains(local_seconds(now, utc_offset_s or 0.0))


def valid_score(value: Any) -> int | None:
    """The form's score as an int 0-10, or None when it is not one."""
    # ASCII digits only: str.isdigit() and int() also take other scripts' digits.
    if isinstance(value, str) and _SCORE.fullmatch(value.strip()):
        return int(value.strip())
    return None


def score_summary(counts: Mapping[int, int]) -> dict[str, Any]:
    """``{responses, promoters, passives, detractors, nps, csat}`` from ``score -> n``."""
    total = sum(counts.values())
    promoters = sum(n for s, n in counts.items() if s >= PROMOTER_MIN)
    detractors = sum(n for s, n in counts.items() if s <= DETRACTOR_MAX)
    return {
        "responses": total,
        "promoters": promoters,
        "passives": total - promoters - detractors,
        "detractors": detractors,
        "nps": None if not total else round(100.0 * (promoters - detractors) / total, 1),
        "csat": None if not total else round(100.0 * promoters / total, 1),
    }


def summarize(
    rows: Iterable[tuple[str, str, int, int]],
    *,
    department: str | None = None,
    service: str | None = None,
) -> dict[str, Any]:
    """Roll ``(department, service, score, n)`` rows up: the overall figures plus one
    entry per department and per service (``""`` names hosts without a department or
    incidents without a service), filtered to ``department``/``service`` when given."""
    overall: dict[int, int] = {}
    by_department: dict[str, dict[int, int]] = {}
    by_service: dict[str, dict[int, int]] = {}
    for dep, svc, score, n in rows:
        if (department is not None and dep != department) or (
            service is not None and svc != service
        ):
            continue
        for bucket in (overall, by_department.setdefault(dep, {}), by_service.setdefault(svc, {})):
            bucket[score] = bucket.get(score, 0) + n
    return {
        **score_summary(overall),
        "departments": {d: score_summary(c) for d, c in sorted(by_department.items())},
        "services": {s: score_summary(c) for s, c in sorted(by_service.items())},
    }
