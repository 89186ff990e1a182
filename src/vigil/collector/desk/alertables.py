"""What the notifier must consider, and the text its notifications show.

Pure: :func:`alertables` turns stored rows and the active silences into plain dicts at
``now``; the notifier (``collector/notify/``) plans and sends from them. The text fields
(summary, description, remediation) are plain single lines
(:func:`vigil.collector.text.one_line`): agent text cannot forge lines in a chat message
or a mail; receivers' templates escape for their own format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vigil.collector.desk import engine
from vigil.collector.storage.records import IncidentAlertRow, ProblemAlertRow, SilenceRow
from vigil.collector.text import one_line

# Characters of a notification's summary and description: receivers (chat, pager, mail)
# show a line, not a script's whole output.
MAX_SUMMARY = 200
MAX_DESCRIPTION = 1000


def alertables(
    incidents: Sequence[IncidentAlertRow],
    problems: Sequence[ProblemAlertRow],
    silences: Sequence[SilenceRow],
    now: float,
) -> list[dict[str, Any]]:
    """Incidents then problems as the notifier sees them at ``now``.

    Each dict: ``ref`` (``incident:12``/``problem:3``), ``kind``, ``id``, ``active``,
    Self-healed problems are left out (never notified). ``held`` (flapping, silenced,
    or claimed by a fleet problem), ``notified``,
    ``resolve_notified``, ``opened_at``, ``resolved_at`` and the fields notifications
    show (check, host, hostname, service, priority, summary, description, remediation,
    resolution).
    """
    active = [engine.Silence(s.id, s.matcher, s.value, s.starts_at, s.ends_at) for s in silences]
    out = [incident_alertable(row, active, now) for row in incidents]
    # A self-healed problem is never notified: every host fixed itself, nobody is to be
    # paged; it waits in the problem list for its CAPA record.
    out += [problem_alertable(row, active, now) for row in problems if row.kind != "self_healed"]
    return out


def incident_alertable(
    row: IncidentAlertRow, silences: Sequence[engine.Silence], now: float
) -> dict[str, Any]:
    """One incident as an alertable dict (see :func:`alertables`)."""
    silenced = any(
        engine.silence_applies(
            s, host=row.host, hostname=row.hostname, groups=row.groups,
            service=row.service, check=row.check, now=now,
        )
        for s in silences
    )  # fmt: skip
    return {
        "ref": f"incident:{row.id}",
        "kind": "incident",
        "id": row.id,
        "active": row.state == "open",
        "held": row.flapping or silenced or row.in_fleet_problem,
        "notified": row.notified_at is not None,
        "resolve_notified": row.resolve_notified_at is not None,
        "opened_at": row.opened_at,
        "resolved_at": row.resolved_at,
        "check": row.check,
        "host": row.host,
        "hostname": row.hostname,
        "service": row.service,
        "priority": row.priority,
        "summary": one_line(f"{row.check} failing on {row.hostname}", MAX_SUMMARY),
        "description": one_line(row.message, MAX_DESCRIPTION) or None,
        "remediation": one_line(
            f"{row.remediation}: {row.remediation_outcome or 'promised, no result'}"
            if row.remediation
            else "none",
            MAX_SUMMARY,
        ),
        "resolution": row.resolution,
    }


def problem_alertable(
    row: ProblemAlertRow, silences: Sequence[engine.Silence], now: float
) -> dict[str, Any]:
    """One problem as an alertable dict (see :func:`alertables`)."""
    silenced = any(
        engine.silence_applies(
            s, host=row.host or "", hostname=row.hostname or "", groups=(),
            service=row.service, check=row.check, now=now,
        )
        for s in silences
    )  # fmt: skip
    return {
        "ref": f"problem:{row.id}",
        "kind": f"{row.kind}_problem",
        "id": row.id,
        "active": row.state == "open",
        "held": silenced,
        "notified": row.notified_at is not None,
        "resolve_notified": row.resolve_notified_at is not None,
        "opened_at": row.opened_at,
        "resolved_at": row.resolved_at,
        "check": row.check,
        "host": row.host or "fleet",
        "hostname": row.hostname or f"{row.linked} hosts",
        "service": row.service,
        "priority": row.priority,
        "summary": one_line(row.summary, MAX_SUMMARY),
        "description": one_line(f"{row.summary}; {row.linked} linked incidents", MAX_DESCRIPTION),
        "remediation": "see linked incidents",
        "resolution": row.resolution,
    }
