"""Jinja filters of the console: times as ISO UTC in ``<time datetime=...>`` (the
vendored ``console.js`` shows them in the browser's time zone), durations, shares.

Pure functions; they return :class:`markupsafe.Markup` only around values they escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime

from markupsafe import Markup, escape


def iso(ts: float | None) -> str:
    """``ts`` (Unix seconds) as ISO 8601 UTC to the second (``...Z``); "" for None."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def timetag(ts: float | None) -> Markup:
    """A ``<time>`` element: machine-readable ISO UTC, readable UTC text (kept without
    JavaScript, replaced by local time with it); "—" for None."""
    if ts is None:
        return Markup("&mdash;")
    text = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}">{}</time>').format(iso(ts), text)


def duration(seconds: float | None) -> str:
    """``seconds`` as a short human duration (``2d 3h``, ``4h 5m``, ``6m 7s``)."""
    if seconds is None:
        return "—"
    s = int(abs(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def sla(due: float | None, now: float) -> Markup:
    """The SLA timer of an open incident: time left, or "breached ... ago" with the
    ``breached`` class; ``data-due`` lets ``console.js`` count it down live."""
    if due is None:
        return Markup('<span class="sla">no SLA</span>')
    left = due - now
    cls = "sla breached" if left < 0 else "sla"
    text = f"breached {duration(-left)} ago" if left < 0 else f"{duration(left)} left"
    return Markup('<span class="{}" data-due="{}">{}</span>').format(cls, iso(due), text)


def pct(value: float | None) -> str:
    """A share 0..1 as a percentage with one decimal; "—" for None."""
    return "—" if value is None else f"{100.0 * value:.1f} %"


def labels(values: dict[str, str]) -> Markup:
    """Host labels as ``key=value`` items, escaped."""
    return Markup(", ").join(escape(f"{k}={v}") for k, v in sorted(values.items()))


FILTERS = {
    "iso": iso,
    "timetag": timetag,
    "duration": duration,
    "pct": pct,
    "labels": labels,
}
