"""Records as people and clients read them: Markdown CAPA reports and the hosts' JSON.

Pure functions over the plain dicts the desk returns; no request, no desk, no clock
(the time is a parameter). Agent and admin text is data: every string goes through
:func:`vigil.collector.text.markdown`, so it cannot add structure to a report.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vigil.collector.desk.catalog import Catalog
from vigil.collector.desk.engine import is_silent
from vigil.collector.text import markdown as _md

# Characters of a remediation's output shown in a report's table (the API has it all).
OUTPUT_EXCERPT = 200

# --------------------------------------------------------------------------- hosts


def host_json(
    host: dict[str, Any], *, catalog: Catalog, heartbeat_grace_s: float, now: float
) -> dict[str, Any]:
    """A host record (as ``desk.list_hosts`` returns it) with ``liveness``, ``health``
    and ``groups`` added; ``now`` is epoch seconds. The record itself is not changed.

    ``liveness``: ``alive``; ``silent`` (heartbeat TTL plus ``heartbeat_grace_s``
    expired); ``asleep`` (silent, but its catalog group expects silence: a laptop
    asleep); ``unknown`` (no TTL announced yet). ``health``: ``critical`` if any check is
    critical or an incident is open, else ``warning`` if any check warns, else ``ok``.
    """
    ttl = host["heartbeat_ttl_s"]
    if ttl is None:
        liveness = "unknown"
    elif is_silent(host["last_seen"], ttl, heartbeat_grace_s, now):
        liveness = "asleep" if catalog.silence_expected(host["labels"]) else "silent"
    else:
        liveness = "alive"
    states = set(host["checks"].values())
    if "critical" in states or host["open_incidents"]:
        health = "critical"
    elif "warning" in states:
        health = "warning"
    else:
        health = "ok"
    return {
        **host,
        "liveness": liveness,
        "health": health,
        "groups": list(catalog.group_names(host["labels"])),
    }


# --------------------------------------------------------------------------- CAPA reports


def render_incident_report(incident: dict[str, Any]) -> str:
    """A Markdown CAPA report of an incident dict (as ``desk.get_incident`` returns).

    Every string from the record goes through :func:`vigil.collector.text.markdown`:
    agent and admin text renders as itself and adds no structure."""
    lines = [
        f"# Incident {incident['id']}: {_md(incident['check'])} on {_md(incident['hostname'])}",
        "",
        "| field | value |",
        "|---|---|",
        f"| state | {_md(incident['state'])} |",
        f"| priority | {_md(incident['priority'])} (impact {_md(incident.get('impact'))},"
        f" urgency {_md(incident.get('urgency'))}) |",
        f"| service | {_md(incident.get('service'))} |",
        f"| host | {_md(incident['hostname'])} (agent {_md(incident['host'])}) |",
        f"| opened | {_iso(incident['opened_at'])} |",
        f"| SLA due | {_iso(incident.get('sla_due'))} |",
        f"| acknowledged | {_iso(incident.get('acknowledged_at'))}"
        f"{_by(incident.get('acknowledged_by'))} |",
        f"| resolved | {_iso(incident.get('resolved_at'))} |",
        f"| remediation | {_md(incident.get('remediation'))}"
        f" ({_md(incident.get('remediation_outcome'))}) |",
        f"| problems | {', '.join(str(p) for p in incident.get('problems', [])) or '-'} |",
        "",
        "## What happened",
        "",
        _md(incident.get("message")),
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
            f"| {_iso(r['received_at'])} | {_md(r['remediation'])} | {_md(r['outcome'])}"
            # The user the script ran as, when its manifest asked for another than the agent's.
            + (f" (as {_md(r['run_as_user'])})" if r.get("run_as_user") else "")
            + f" | {'-' if r['exit_code'] is None else r['exit_code']} | {r['duration_s']:.1f} s"
            f" | {_num(r['value_before'])} → {_num(r['value_after'])}"
            f" | {_md(r['output'], OUTPUT_EXCERPT)}{' …' if r['output_truncated'] else ''} |"
            for r in runs
        ]
        lines.append("")
    return "\n".join(lines + _capa_and_timeline(incident))


def render_problem_report(problem: dict[str, Any]) -> str:
    """A Markdown CAPA report of a problem dict (as ``desk.get_problem`` returns);
    strings are escaped as in :func:`render_incident_report`."""
    lines = [
        f"# Problem {problem['id']} ({_md(problem['kind'])}): {_md(problem['check'])}",
        "",
        "| field | value |",
        "|---|---|",
        f"| state | {_md(problem['state'])} |",
        f"| priority | {_md(problem['priority'])} |",
        f"| service | {_md(problem.get('service'))} |",
        f"| host | {_md(problem.get('hostname') or 'fleet-wide')} |",
        f"| opened | {_iso(problem['opened_at'])} |",
        f"| resolved | {_iso(problem.get('resolved_at'))} |",
        f"| incidents | {', '.join(str(i) for i in problem['incidents']) or '-'} |",
        "",
        "## Summary",
        "",
        _md(problem.get("summary")),
        "",
    ]
    return "\n".join(lines + _capa_and_timeline(problem))


def _capa_and_timeline(item: dict[str, Any]) -> list[str]:
    lines = [
        "## Resolution",
        "",
        f"- **Resolution:** {_md(item.get('resolution'))}",
        f"- **Root cause:** {_md(item.get('root_cause'))}",
        f"- **Corrective action:** {_md(item.get('corrective_action'))}",
        f"- **Preventive action:** {_md(item.get('preventive_action'))}",
        "",
        "## Timeline",
        "",
    ]
    lines += [f"- {_iso(e['at'])} — {_md(e['text'])}" for e in item.get("timeline", [])]
    return [*lines, ""]


def _by(who: str | None) -> str:
    return f" {_md(who)}" if who else ""


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
