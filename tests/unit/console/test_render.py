"""The console's pure renderers: times, SLA timers, durations and SVG charts."""

from __future__ import annotations

import pytest

from vigil.collector.console import charts, fmt

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def test_a_time_is_iso_utc_in_a_time_element_readable_without_javascript() -> None:
    assert str(fmt.timetag(T0)) == (
        '<time datetime="2023-11-14T22:13:20Z">2023-11-14 22:13:20 UTC</time>'
    )
    assert str(fmt.timetag(None)) == "&mdash;"


@pytest.mark.parametrize(
    ("due", "cls", "text"),
    [(T0 + 3700, "sla", "1h 1m left"), (T0 - 90, "sla breached", "breached 1m 30s ago")],
    ids=["running", "breached"],
)
def test_an_sla_timer_says_what_is_left_or_marks_the_breach(due, cls, text) -> None:
    html = str(fmt.sla(due, T0))
    assert f'class="{cls}"' in html and f">{text}<" in html
    assert f'data-due="{fmt.iso(due)}"' in html


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(5, "5s"), (65, "1m 5s"), (3 * 3600 + 120, "3h 2m"), (2 * 86400 + 3600, "2d 1h"), (None, "—")],
)
def test_durations_read_short(seconds, text) -> None:
    assert fmt.duration(seconds) == text


def test_a_chart_escapes_its_labels_and_has_an_accessible_name() -> None:
    svg = str(charts.stacked_bars("T <x>", [("<script>", 3, 1)], ("a", "b")))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'role="img"' in svg and 'aria-label="T &lt;x&gt;"' in svg
    assert " style=" not in svg, "the CSP forbids inline styles"


def test_an_empty_chart_says_so() -> None:
    assert "no data" in str(charts.stacked_bars("T", [], ("a", "b")))
