"""The desk's arithmetic holds for every value a report can carry, and its in-memory
aggregates stay bounded however many names an agent invents.

Reports here are built from the wire dataclasses directly, past the decoder's bounds, to
show the desk itself does not depend on them: an extreme number is clamped where it is
bucketed, a far-future agent time cannot pin a host's metrics, and a desk reopened on
the resulting store starts with the very same figures.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.support.desk import open_desk
from tests.unit.desk.test_reports import FIX, T0, WAIT, check, metrics, report, run
from vigil.collector.telemetry.aggregates import MAX_NAMES, OTHER_NAME
from vigil.collector.telemetry.buckets import AGENT_RSS_SERIES, CLAMP


@pytest.mark.parametrize("sent_at", [1e308, -1e308])
def test_an_extreme_sent_at_is_stored_and_a_reopened_desk_starts(
    tmp_path: Path, sent_at: float
) -> None:
    desk = open_desk(tmp_path / "c.db", remediation_wait_s=WAIT)
    try:
        result = desk.ingest(report(check("critical"), sent_at=sent_at), T0 + 101)
        assert result.events == 1
        before = desk.metrics_snapshot()
        assert before.clock_offsets.total == CLAMP  # |offset| clamped where it is summed
    finally:
        desk.close()
    reopened = open_desk(tmp_path / "c.db", remediation_wait_s=WAIT)
    try:
        assert reopened.metrics_snapshot().clock_offsets == before.clock_offsets
    finally:
        reopened.close()


def test_extreme_values_are_clamped_in_every_histogram(tmp_path: Path) -> None:
    desk = open_desk(tmp_path / "c.db", remediation_wait_s=WAIT)
    try:
        slow = dataclasses.replace(run("fixed"), duration_s=1e308)
        desk.ingest(report(slow, metrics({AGENT_RSS_SERIES: 1e300})), T0 + 101)
        snap = desk.metrics_snapshot()
        assert snap.remediation_durations[FIX].total == CLAMP
        assert snap.agent_rss.total == CLAMP
    finally:
        desk.close()
    reopened = open_desk(tmp_path / "c.db", remediation_wait_s=WAIT)
    try:
        assert reopened.metrics_snapshot().remediation_durations[FIX].total == CLAMP
    finally:
        reopened.close()


def test_a_far_future_summary_does_not_pin_the_hosts_metrics(tmp_path: Path) -> None:
    desk = open_desk(tmp_path / "c.db", remediation_wait_s=WAIT)
    try:
        # An agent whose clock said 2286 sends one summary, then its clock is fixed.
        desk.ingest(report(metrics({"cpu": 1.0}, time=9.9e9)), T0 + 100)
        desk.ingest(report(metrics({"cpu": 2.0}, time=T0 + 200)), T0 + 201)
        assert desk.latest_metrics("a1") == {"cpu": 2.0}
        # A late retry of an older summary still does not replace a newer one.
        desk.ingest(report(metrics({"cpu": 3.0}, time=T0 + 150)), T0 + 202)
        assert desk.latest_metrics("a1") == {"cpu": 2.0}
    finally:
        desk.close()


def test_invented_names_fold_into_other_and_survive_a_restart(tmp_path: Path) -> None:
    n = MAX_NAMES + 50
    desk = open_desk(tmp_path / "c.db", remediation_wait_s=WAIT)
    try:
        events = [check("critical", name=f"invented.{i}") for i in range(n)]
        events += [run("fixed", remediation=f"fix-{i}", name=None) for i in range(n)]
        desk.ingest(report(*events), T0 + 101)
        snap = desk.metrics_snapshot()
    finally:
        desk.close()
    checks = {c for _, c in snap.incidents_open}
    assert len(checks) == MAX_NAMES + 1 and OTHER_NAME in checks
    assert sum(snap.incidents_open.values()) == n  # folded, never lost
    assert len(snap.checks_failing) == MAX_NAMES + 1
    assert snap.checks_failing[OTHER_NAME] == 50
    assert len(snap.remediation_durations) == MAX_NAMES + 1
    assert snap.remediation_durations[OTHER_NAME].count == 50
    assert sum(snap.remediation_runs.values()) == n
    reopened = open_desk(tmp_path / "c.db", remediation_wait_s=WAIT)
    try:
        again = reopened.metrics_snapshot()
        assert len(again.remediation_durations) == MAX_NAMES + 1
        assert sum(again.incidents_open.values()) == n
        assert len({c for _, c in again.incidents_open}) == MAX_NAMES + 1
    finally:
        reopened.close()


def test_a_folded_gauge_goes_back_to_zero(tmp_path: Path) -> None:
    desk = open_desk(tmp_path / "c.db", remediation_wait_s=WAIT)
    try:
        names = [f"invented.{i}" for i in range(MAX_NAMES + 5)]
        desk.ingest(report(*[check("critical", name=c) for c in names]), T0 + 101)
        desk.ingest(report(*[check("ok", name=c) for c in names]), T0 + 102)
        snap = desk.metrics_snapshot()
        assert snap.incidents_open == {}
        assert snap.checks_failing == {}
    finally:
        desk.close()
