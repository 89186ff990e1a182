"""Prometheus Alertmanager client, v2 API (``POST /api/v2/alerts``).

:func:`to_alert` is pure: one incident or problem (a dict from
:meth:`collector.desk.service.Desk.alertables`) becomes one Alertmanager alert with the
labels ``alertname`` (the check id), ``host``, ``service``, ``priority``, ``severity``,
``vigil_kind`` and ``vigil_ref`` (which makes every incident its own alert) and the
annotations ``summary``, ``description``, ``remediation`` and ``incident_url``.

Alertmanager resolves an alert by itself once ``endsAt`` passes, so active alerts carry an
``endsAt`` a few re-post intervals ahead and are re-posted before it; a resolved one is
posted once more with ``endsAt`` set to its resolution time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiohttp

from vigil.collector.notify.config import AlertmanagerTarget
from vigil.collector.text import one_line

SEVERITY = {"P1": "critical", "P2": "critical", "P3": "warning", "P4": "info"}
# Active alerts expire this many re-post intervals after the last post: a collector that
# dies leaves no alert firing forever, and one missed post does not resolve anything.
ENDS_AFTER_RESENDS = 4


def to_alert(
    item: dict[str, Any], *, now: float, resend_s: float, public_url: str | None
) -> dict[str, Any]:
    """The v2 alert for ``item`` at ``now`` (see the module docstring)."""
    # The console's page of the incident or problem: what a person opening the link wants.
    path = f"/console/{'incidents' if item['kind'] == 'incident' else 'problems'}/{item['id']}"
    url = (public_url.rstrip("/") if public_url else "") + path
    ends = item["resolved_at"] if not item["active"] else now + ENDS_AFTER_RESENDS * resend_s
    alert: dict[str, Any] = {
        "labels": {
            "alertname": one_line(item["check"]),
            "host": one_line(item["hostname"]),
            "service": item["service"] or "none",
            "priority": item["priority"],
            "severity": SEVERITY.get(item["priority"], "warning"),
            "vigil_kind": item["kind"],
            "vigil_ref": item["ref"],
        },
        "annotations": {
            "summary": item["summary"],
            "description": item["description"] or item["summary"],
            "remediation": item["remediation"],
            "incident_url": url,
        },
        "startsAt": _iso(item["opened_at"]),
        "endsAt": _iso(ends),
    }
    if public_url:
        alert["generatorURL"] = url
    return alert


async def post_alerts(
    session: aiohttp.ClientSession, target: AlertmanagerTarget, alerts: list[dict[str, Any]]
) -> None:
    """POST ``alerts`` to one Alertmanager; raises ``aiohttp.ClientError`` or
    ``TimeoutError`` on failure (the notifier retries at its next pass)."""
    timeout = aiohttp.ClientTimeout(total=target.timeout_s)
    async with session.post(f"{target.url}/api/v2/alerts", json=alerts, timeout=timeout) as resp:
        if resp.status >= 300:
            text = (await resp.text())[:200]
            raise aiohttp.ClientResponseError(
                resp.request_info, (), status=resp.status, message=text
            )


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
