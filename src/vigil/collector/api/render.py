"""Records as people and clients read them: Markdown CAPA reports and the hosts' JSON.

Pure functions over the plain dicts the desk returns; no request, no desk, no clock
(the time is a parameter). Agent and admin text is data: it is escaped so it cannot
break the Markdown around it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vigil.collector.desk.catalog import Catalog
from vigil.collector.desk.engine import is_silent

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
    """A Markdown CAPA report of an incident dict (as ``desk.get_incident`` returns)."""
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


def render_problem_report(problem: dict[str, Any]) -> str:
    """A Markdown CAPA report of a problem dict (as ``desk.get_problem`` returns)."""
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


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _iso(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cell(text: str | None) -> str:
    """Text safe inside a Markdown line or table cell (agent/admin text is data)."""
    if not text:
        return "-"
    return " ".join(text.split()).replace("|", "\\|")
