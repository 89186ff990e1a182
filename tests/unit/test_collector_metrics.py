"""``GET /metrics``: rendered from store state at scrape time, on an explicit registry.

Scraped over real HTTP from an app on 127.0.0.1 and parsed with prometheus_client's own
parser, as Prometheus would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import io
import math
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import COLLECTOR_ADMIN_TOKEN
from tests.support.desk import open_desk
from vigil import wire
from vigil.collector.config import CollectorConfig, MetricsConfig, load_collector_config
from vigil.collector.desk.catalog import Catalog, HostGroup
from vigil.collector.desk.service import Desk
from vigil.collector.metrics import (
    MAX_LABEL_VALUES,
    OTHER_LABEL,
    VigilCollector,
    agents_by_state,
    cap_histograms,
    cap_label,
    fleet_states,
    open_by_priority_and_service,
    with_priorities,
)
from vigil.collector.notify.health import NotifyHealth
from vigil.collector.storage.url import sqlite_url
from vigil.collector.telemetry.aggregates import MetricsSnapshot
from vigil.collector.telemetry.buckets import (
    AGENT_CPU_SERIES,
    AGENT_RSS_SERIES,
    CLOCK_OFFSET_BUCKETS_S,
    AgentFootprint,
    BucketCounts,
    FleetDistribution,
    LivenessIndex,
    cpu_rate,
)
from vigil.collector.telemetry.requests import RequestCounters
from vigil.configio import ConfigError

# The conftest's fixed epoch time (2024-01-01T00:00:00Z).
T0 = 1_704_067_200.0

T = TypeVar("T")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())  # type: ignore[arg-type]


def parse(text: str) -> Samples:
    """Every sample as ``{(name, sorted label pairs): value}``."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# /metrics needs a viewer token like the read API; the test config's admin token is one.
SCRAPE_HEADERS = {"Authorization": f"Bearer {COLLECTOR_ADMIN_TOKEN}"}


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(f"{url}/metrics", headers=SCRAPE_HEADERS) as r:
        assert r.status == 200
        return parse(await r.text())


async def post(
    http: aiohttp.ClientSession, url: str, config: CollectorConfig, report: wire.Report
) -> int:
    headers = {
        "Authorization": f"Bearer {config.auth.agent_tokens[0]}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    body = gzip.compress(wire.encode_report(report))
    async with http.post(f"{url}/api/v1/reports", data=body, headers=headers) as r:
        return r.status


def test_metrics_are_served_to_a_viewer_in_the_prometheus_text_format(
    collector_config, collector_server
) -> None:
    async def main() -> tuple[int, str, str]:
        async with (
            collector_server(collector_config) as url,
            aiohttp.ClientSession() as http,
            http.get(f"{url}/metrics", headers=SCRAPE_HEADERS) as r,
        ):
            return r.status, r.headers["Content-Type"], await r.text()

    status, content_type, text = run(main)
    assert status == 200
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    assert parse(text)[("vigil_build_info", (("version", "0.1.0"),))] == 1


def test_a_fresh_collector_exposes_every_family_at_zero(collector_config, collector_server) -> None:
    async def main() -> Samples:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            return await scrape(http, url)

    samples = run(main)
    assert samples[("vigil_agents", (("state", "up"),))] == 0
    assert samples[("vigil_agents", (("state", "silent"),))] == 0
    for name in (
        "vigil_reports_accepted_total",
        "vigil_reports_duplicate_total",
        "vigil_events_ingested_total",
        "vigil_incidents_opened_total",
        "vigil_incidents_resolved_total",
        "vigil_incidents_prevented_total",
        "vigil_ingest_duration_seconds_count",
    ):
        assert samples[(name, ())] == 0, name
    for reason in ("unauthorized", "too_large", "bad_gzip", "invalid"):
        assert samples[("vigil_reports_rejected_total", (("reason", reason),))] == 0


def test_an_open_incident_shows_by_priority_and_service_and_by_check(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    async def main() -> Samples:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            await post(http, url, collector_config, make_report(make_check_event("disk.free")))
            return await scrape(http, url)

    samples = run(main)
    assert samples[("vigil_incidents_open", (("priority", "P3"), ("service", "none")))] == 1
    assert samples[("vigil_incidents_open_by_check", (("check", "disk.free"),))] == 1
    assert samples[("vigil_incidents_opened_total", ())] == 1
    failing = ("vigil_checks_failing", (("check", "disk.free"), ("service", "none")))
    assert samples[failing] == 1


def test_a_fixed_failure_counts_as_prevented_with_its_remediation_run(
    collector_config, collector_server, make_report, make_check_event, make_remediation_event
) -> None:
    report = make_report(
        make_check_event("disk.free", remediation="clean-temp"),
        make_remediation_event("clean-temp", "disk.free", "fixed"),
    )

    async def main() -> Samples:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            await post(http, url, collector_config, report)
            return await scrape(http, url)

    samples = run(main)
    assert samples[("vigil_incidents_prevented_total", ())] == 1
    assert samples[("vigil_incidents_opened_total", ())] == 0
    runs = ("vigil_remediation_runs_total", (("outcome", "fixed"), ("remediation", "clean-temp")))
    assert samples[runs] == 1


def test_accepted_duplicate_and_event_counts_follow_ingest(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    report = make_report(make_check_event("a"), make_check_event("b", seq=2))

    async def main() -> Samples:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            await post(http, url, collector_config, report)
            await post(http, url, collector_config, report)
            return await scrape(http, url)

    samples = run(main)
    assert samples[("vigil_reports_accepted_total", ())] == 1
    assert samples[("vigil_reports_duplicate_total", ())] == 1
    assert samples[("vigil_events_ingested_total", ())] == 2
    assert samples[("vigil_ingest_duration_seconds_count", ())] == 2


def test_rejected_reports_are_counted_by_reason(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    auth = {
        "Authorization": f"Bearer {collector_config.auth.agent_tokens[0]}",
        "Content-Type": "application/json",
    }
    gz = {**auth, "Content-Encoding": "gzip"}
    # BytesIO: aiohttp warns that a large raw bytes body may block the client's loop.
    too_big = io.BytesIO(bytes(collector_config.limits.max_body_bytes + 1))

    async def main() -> Samples:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            endpoint = f"{url}/api/v1/reports"
            for data, headers in [
                (b"{}", {}),
                (b"{}", {"Authorization": "Bearer wrong"}),
                (too_big, auth),
                (b"not gzip", gz),
                (gzip.compress(b"[]"), gz),
            ]:
                async with http.post(endpoint, data=data, headers=headers):
                    pass
            return await scrape(http, url)

    samples = run(main)
    rejected = {
        labels[0][1]: value
        for (name, labels), value in samples.items()
        if name == "vigil_reports_rejected_total"
    }
    assert rejected == {
        "unauthorized": 2,
        "forbidden": 0,
        "too_large": 1,
        "bad_gzip": 1,
        "invalid": 1,
        "overloaded": 0,
    }


@pytest.mark.parametrize(
    ("seconds_later", "expected_up"),
    [(0, 1), (90, 1), (91, 0)],
    ids=["just-seen", "at-ttl-plus-grace", "one-second-past"],
)
def test_an_agent_goes_silent_after_its_heartbeat_ttl_plus_grace(
    seconds_later,
    expected_up,
    collector_config,
    collector_server,
    fake_clock,
    make_report,
    make_check_event,
) -> None:
    """TTL 60 s and grace 30 s: up through 90 s after the last report, silent after."""
    config = dataclasses.replace(collector_config, heartbeat_grace_s=30.0)
    heartbeat = make_check_event(wire.HEARTBEAT_CHECK, "ok", value=None, ttl_s=60.0)

    async def main() -> Samples:
        async with (
            collector_server(config, clock=fake_clock) as url,
            aiohttp.ClientSession() as http,
        ):
            await post(http, url, config, make_report(heartbeat))
            fake_clock.advance(seconds_later)
            return await scrape(http, url)

    samples = run(main)
    assert samples[("vigil_agents", (("state", "up"),))] == expected_up
    assert samples[("vigil_agents", (("state", "silent"),))] == 1 - expected_up


def test_no_series_carries_a_per_host_label(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    async def main() -> Samples:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            for n in range(3):
                report = make_report(make_check_event(), agent_id=f"a{n}", hostname=f"ws-{n}")
                await post(http, url, collector_config, report)
            return await scrape(http, url)

    samples = run(main)
    labels = {name for _, pairs in samples for name, _ in pairs}
    assert labels.isdisjoint({"host", "hostname", "agent_id", "instance"})
    assert samples[("vigil_agents", (("state", "up"),))] == 3


def test_two_apps_in_one_process_share_no_series(
    tmp_path, collector_config, collector_server, make_report, make_check_event
) -> None:
    other = dataclasses.replace(collector_config, storage_url=sqlite_url(tmp_path / "other.db"))

    async def main() -> tuple[Samples, Samples]:
        async with (
            collector_server(collector_config) as first,
            collector_server(other) as second,
            aiohttp.ClientSession() as http,
        ):
            await post(http, first, collector_config, make_report(make_check_event()))
            return await scrape(http, first), await scrape(http, second)

    first, second = run(main)
    assert first[("vigil_reports_accepted_total", ())] == 1
    assert second[("vigil_reports_accepted_total", ())] == 0


def test_nothing_is_registered_on_the_global_registry(collector_config, collector_server) -> None:
    async def main() -> None:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            await scrape(http, url)

    run(main)
    text = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "vigil_" not in text


# --------------------------------------------------------------------------- agents_by_state


@pytest.mark.parametrize(
    ("last_seen", "ttl", "expected"),
    [
        ({}, {}, (0, 0)),
        ({"a": 1000.0}, {"a": 60.0}, (1, 0)),
        ({"a": 900.0}, {"a": 60.0}, (0, 1)),
        ({"a": 940.0}, {"a": 60.0}, (1, 0)),
        ({"a": 939.0}, {"a": 60.0}, (0, 1)),
        ({"a": 0.0}, {}, (1, 0)),
        ({"a": 1000.0, "b": 500.0, "c": 0.0}, {"a": 60.0, "b": 60.0}, (2, 1)),
    ],
    ids=[
        "no-hosts",
        "seen-within-ttl",
        "past-ttl-and-grace",
        "at-ttl-plus-grace",
        "one-second-past",
        "no-ttl-is-never-silent",
        "mixed-fleet",
    ],
)
def test_agents_by_state(
    last_seen: dict[str, float], ttl: dict[str, float], expected: tuple[int, int]
) -> None:
    """At now=1030 with grace 30 s."""
    assert agents_by_state(last_seen, ttl, now=1030.0, grace_s=30.0) == expected


@pytest.mark.parametrize(
    ("last_seen", "ttl", "expected"),
    [
        ({}, {}, (0, 0)),
        ({"a": 1000.0}, {"a": 60.0}, (1, 0)),
        ({"a": 900.0}, {"a": 60.0}, (0, 1)),
        ({"a": 940.0}, {"a": 60.0}, (1, 0)),
        ({"a": 939.0}, {"a": 60.0}, (0, 1)),
        ({"a": 0.0}, {}, (1, 0)),
        ({"a": 1000.0, "b": 500.0, "c": 0.0}, {"a": 60.0, "b": 60.0}, (2, 1)),
    ],
    ids=[
        "no-hosts",
        "seen-within-ttl",
        "past-ttl-and-grace",
        "at-ttl-plus-grace",
        "one-second-past",
        "no-ttl-is-never-silent",
        "mixed-fleet",
    ],
)
def test_the_liveness_index_counts_like_agents_by_state(
    last_seen: dict[str, float], ttl: dict[str, float], expected: tuple[int, int]
) -> None:
    """At now=1030 with grace 30 s, the O(log n) index agrees with the reference rule."""
    index = LivenessIndex()
    index.load((host, seen, ttl.get(host)) for host, seen in last_seen.items())
    view = index.view()
    assert (view.count_up(1030.0, 30.0), view.hosts) == (expected[0], sum(expected))


def test_the_liveness_index_moves_a_host_when_it_reports_again() -> None:
    index = LivenessIndex()
    index.update("a", 100.0, 60.0)
    index.update("b", 100.0, 60.0)
    index.update("a", 1000.0, 60.0)
    view = index.view()
    assert (view.count_up(1030.0, 30.0), view.hosts) == (1, 2)


def test_the_liveness_index_forgets_a_discarded_host() -> None:
    index = LivenessIndex()
    index.update("a", 1000.0, None)
    index.discard("a")
    assert index.view().hosts == 0


# --------------------------------------------------------------------------- histograms


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    """Prometheus buckets are "less than or equal": 1.0 belongs to le="1.0"."""
    hist = BucketCounts.empty((1.0, 2.0))
    for value in (1.0, 1.5, 3.0):
        hist.observe(value)
    assert hist.cumulative() == [("1.0", 1), ("2.0", 2), ("+Inf", 3)]
    assert (hist.count, hist.total) == (3, 5.5)


def test_histograms_with_different_bounds_do_not_add() -> None:
    with pytest.raises(ValueError, match="different bounds"):
        BucketCounts.empty((1.0,)).add(BucketCounts.empty((2.0,)))


def test_a_fleet_distribution_moves_a_host_to_its_new_bucket() -> None:
    dist = FleetDistribution((1.0, 2.0))
    dist.set("a", 0.5)
    dist.set("b", 1.5)
    dist.set("a", 5.0)
    snap = dist.snapshot()
    assert (snap.counts, snap.total, len(dist)) == ([0, 1, 1], 6.5, 2)


def test_a_fleet_distribution_forgets_a_discarded_host() -> None:
    dist = FleetDistribution((1.0,))
    dist.set("a", 0.5)
    dist.discard("a")
    assert (dist.snapshot().counts, dist.snapshot().total, len(dist)) == ([0, 0], 0.0, 0)


def test_a_fleet_distribution_ignores_a_non_finite_value() -> None:
    dist = FleetDistribution((1.0,))
    dist.set("a", math.nan)
    assert len(dist) == 0


# --------------------------------------------------------------------------- footprint


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        (None, (100.0, 5.0), None),
        ((100.0, 5.0), (100.0, 6.0), None),
        ((100.0, 5.0), (400.0, 2.0), None),
        ((100.0, 5.0), (400.0, 8.0), 0.01),
    ],
    ids=["no-earlier-sample", "time-did-not-advance", "agent-restarted", "three-s-in-300-s"],
)
def test_cpu_rate(
    previous: tuple[float, float] | None, current: tuple[float, float], expected: float | None
) -> None:
    assert cpu_rate(previous, current) == expected


def test_agent_footprint_needs_two_summaries_for_a_cpu_rate() -> None:
    footprint = AgentFootprint()
    footprint.update("a", 100.0, {AGENT_CPU_SERIES: 5.0, AGENT_RSS_SERIES: 30 * 2**20})
    assert (len(footprint.cpu), len(footprint.rss)) == (0, 1)
    footprint.update("a", 400.0, {AGENT_CPU_SERIES: 8.0, AGENT_RSS_SERIES: 30 * 2**20})
    assert footprint.cpu.snapshot().total == pytest.approx(0.01)


def test_agent_footprint_ignores_a_late_older_summary() -> None:
    footprint = AgentFootprint()
    footprint.update("a", 400.0, {AGENT_RSS_SERIES: 40 * 2**20})
    footprint.update("a", 100.0, {AGENT_RSS_SERIES: 90 * 2**20})
    assert footprint.rss.snapshot().total == 40 * 2**20


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("hosts", "up", "sleeping", "expected"),
    [
        (10, 10, 0, {"up": 10, "silent": 0, "sleeping": 0}),
        (10, 6, 0, {"up": 6, "silent": 4, "sleeping": 0}),
        (10, 6, 3, {"up": 6, "silent": 1, "sleeping": 3}),
        (10, 6, 9, {"up": 6, "silent": 0, "sleeping": 4}),
    ],
    ids=["all-up", "down-are-silent", "known-asleep-are-sleeping", "sleeping-capped-at-down"],
)
def test_fleet_states(hosts: int, up: int, sleeping: int, expected: dict[str, int]) -> None:
    assert fleet_states(hosts, up, sleeping) == expected


def test_open_incidents_regroup_by_service_with_every_priority_present() -> None:
    grouped = open_by_priority_and_service(
        {("P1", "db.up"): 2, ("P1", "db.disk"): 1, ("P3", "printer"): 4}, {"db.up": "erp"}
    )
    assert grouped == {
        ("P1", "erp"): 2,
        ("P1", "none"): 1,
        ("P2", "none"): 0,
        ("P3", "none"): 4,
        ("P4", "none"): 0,
    }


def test_priorities_outside_the_standard_four_are_kept() -> None:
    assert with_priorities({"P0": 1, "P2": 3}) == [
        ("P1", 0),
        ("P2", 3),
        ("P3", 0),
        ("P4", 0),
        ("P0", 1),
    ]


# --------------------------------------------------------------------------- the collector


def snapshot_of(**fields: Any) -> Callable[..., MetricsSnapshot]:
    """A fake store: ``snapshot(host_series=N)`` over hosts ``{agent_id: (name, seen)}``."""
    hosts: dict[str, tuple[str, float]] = fields.pop("hosts", {})

    def snapshot(*, host_series: int = 0, host_maps: bool = True) -> MetricsSnapshot:
        listed = list(hosts.items())[:host_series]
        rest = [seen for _, (_, seen) in list(hosts.items())[host_series:]]
        index = LivenessIndex()
        index.load((h, seen, 60.0) for h, (_, seen) in hosts.items())
        defaults: dict[str, Any] = {
            "liveness": index.view(),
            "incidents_open": {},
            "incidents_opened_total": 0,
            "incidents_resolved_total": 0,
            "incidents_prevented_total": 0,
            "checks_failing": {},
            "remediation_runs": {},
            "reports_accepted_total": 0,
            "reports_duplicate_total": 0,
            "events_total": 0,
            "host_detail": tuple((h, name, seen) for h, (name, seen) in listed),
            "host_overflow": (len(rest), min(rest) if rest else None),
        }
        return MetricsSnapshot(**{**defaults, **fields})

    return snapshot


def render(collector: VigilCollector) -> Samples:
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return parse(prometheus_client.generate_latest(registry).decode())


def collector_over(snapshot: Callable[..., MetricsSnapshot], **options: Any) -> VigilCollector:
    return VigilCollector(
        snapshot, RequestCounters(), heartbeat_grace_s=30.0, clock=lambda: T0, **options
    )


THREE_HOSTS = {
    "id-a": ("ws-a", T0 - 10),
    "id-b": ("ws-b", T0 - 20),
    "id-c": ("ws-c", T0 - 500),
}


def host_rows(samples: Samples) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        labels: value
        for (name, labels), value in samples.items()
        if name == "vigil_host_last_seen_timestamp_seconds"
    }


def test_per_host_series_are_off_by_default() -> None:
    samples = render(collector_over(snapshot_of(hosts=THREE_HOSTS)))
    assert not [name for name, _ in samples if name.startswith("vigil_host_")]


def test_per_host_series_when_switched_on_name_each_host() -> None:
    collector = collector_over(snapshot_of(hosts=THREE_HOSTS), per_host_series=True)
    samples = render(collector)
    assert host_rows(samples) == {
        (("agent_id", "id-a"), ("host", "ws-a")): T0 - 10,
        (("agent_id", "id-b"), ("host", "ws-b")): T0 - 20,
        (("agent_id", "id-c"), ("host", "ws-c")): T0 - 500,
    }
    assert samples[("vigil_host_series_overflow_hosts", ())] == 0


def test_hosts_past_the_cap_share_one_overflow_series_with_the_oldest_time() -> None:
    collector = collector_over(
        snapshot_of(hosts=THREE_HOSTS), per_host_series=True, max_host_series=1
    )
    samples = render(collector)
    assert host_rows(samples) == {
        (("agent_id", "id-a"), ("host", "ws-a")): T0 - 10,
        (("agent_id", "_overflow"), ("host", "_overflow")): T0 - 500,
    }
    assert samples[("vigil_host_series_overflow_hosts", ())] == 2


def test_a_host_that_goes_away_leaves_no_series() -> None:
    hosts = dict(THREE_HOSTS)
    collector = collector_over(snapshot_of(hosts=hosts), per_host_series=True)
    render(collector)
    del hosts["id-b"]
    after = render(collector)
    assert not [labels for labels in host_rows(after) if ("agent_id", "id-b") in labels]
    assert len(host_rows(after)) == 2


def test_a_down_host_whose_silence_is_expected_counts_as_sleeping() -> None:
    """id-c was seen 500 s ago with TTL 60 s: down; its catalog group expects silence."""
    laptops = LivenessIndex()
    laptops.update("id-c", T0 - 500, 60.0)
    snapshot = snapshot_of(hosts=THREE_HOSTS, liveness_silence_expected=laptops.view())
    samples = render(collector_over(snapshot))
    states = {labels[0][1]: v for (name, labels), v in samples.items() if name == "vigil_agents"}
    assert states == {"up": 2, "silent": 0, "sleeping": 1}


def test_a_host_whose_silence_is_expected_is_up_while_it_reports() -> None:
    laptops = LivenessIndex()
    laptops.update("id-a", T0 - 10, 60.0)
    snapshot = snapshot_of(hosts=THREE_HOSTS, liveness_silence_expected=laptops.view())
    samples = render(collector_over(snapshot))
    states = {labels[0][1]: v for (name, labels), v in samples.items() if name == "vigil_agents"}
    assert states == {"up": 2, "silent": 1, "sleeping": 0}


def test_priority_series_exist_at_zero_before_any_incident() -> None:
    """Alert rules and dashboard panels need a series to compare, not an absent one."""
    samples = render(collector_over(snapshot_of()))
    for priority in ("P1", "P2", "P3", "P4"):
        assert samples[("vigil_incidents_open", (("priority", priority), ("service", "none")))] == 0
        assert samples[("vigil_incidents_past_sla", (("priority", priority),))] == 0
        assert samples[("vigil_incidents_acknowledged", (("priority", priority),))] == 0
        restore = ("vigil_incident_time_to_restore_seconds_count", (("priority", priority),))
        assert samples[restore] == 0
    for kind in ("recurring", "fleet"):
        assert samples[("vigil_problems_open", (("kind", kind),))] == 0


def test_checks_and_incidents_carry_the_service_the_catalog_names() -> None:
    snapshot = snapshot_of(incidents_open={("P1", "db.up"): 1}, checks_failing={"db.up": 3})
    services = {"db.up": "erp"}
    samples = render(collector_over(snapshot, service_of=services.get))
    assert samples[("vigil_incidents_open", (("priority", "P1"), ("service", "erp")))] == 1
    assert samples[("vigil_checks_failing", (("check", "db.up"), ("service", "erp")))] == 3


def test_unknown_checks_are_exported_by_check_with_bounded_labels() -> None:
    """A check stuck unknown (a metric-name typo) has a series an alert can watch; past
    the label cap, the rarest checks share one ``_other`` series, losing no host."""
    unknown = {f"typo.{i:04d}": 1 for i in range(MAX_LABEL_VALUES + 5)} | {"disk.free": 7}
    samples = render(collector_over(snapshot_of(checks_unknown=unknown)))
    series = {
        labels[0][1]: v for (name, labels), v in samples.items() if name == "vigil_checks_unknown"
    }
    assert series["disk.free"] == 7
    assert len(series) == MAX_LABEL_VALUES + 1
    assert sum(series.values()) == sum(unknown.values())
    assert series[OTHER_LABEL] == 6


def test_clock_skewed_agents_are_those_past_five_minutes() -> None:
    offsets = FleetDistribution(CLOCK_OFFSET_BUCKETS_S)
    for host, offset in {"a": 0.2, "b": 300.0, "c": 301.0, "d": 86400.0}.items():
        offsets.set(host, offset)
    samples = render(collector_over(snapshot_of(clock_offsets=offsets.snapshot())))
    assert samples[("vigil_agents_clock_skewed", ())] == 2
    assert samples[("vigil_agent_clock_offset_seconds_gcount", ())] == 4


def test_no_paused_remediations_gauge_until_a_guard_can_pause_anything() -> None:
    """The desk's collector renders no ``vigil_remediations_paused``: that gauge belongs
    to the policy collector (``collector/policy/metrics.py``), rendered from the kill
    switch's halts (an admin's or the blast-radius guard's), so the desk must not
    render a second, always-empty family of the same name."""
    samples = render(collector_over(snapshot_of()))
    assert not any(name.startswith("vigil_remediations_paused") for name, _ in samples)


# --------------------------------------------------------------------------- from the store


@pytest.fixture
def store(tmp_path) -> Iterator[Desk]:
    store = open_desk(tmp_path / "collector.db")
    yield store
    store.close()


def test_a_resolved_incident_observes_its_time_to_restore_by_priority(
    store, make_report, make_check_event
) -> None:
    store.ingest(make_report(make_check_event("disk.free", "critical")), T0 + 100)
    store.ingest(make_report(make_check_event("disk.free", "ok")), T0 + 400)
    hist = store.metrics_snapshot().time_to_restore["P3"]
    assert (hist.count, hist.total) == (1, 300.0)
    assert dict(hist.cumulative())["300.0"] == 1


def test_a_remediation_run_observes_its_duration(
    store, make_report, make_remediation_event
) -> None:
    store.ingest(make_report(make_remediation_event("clean-temp", None)), T0)
    hist = store.metrics_snapshot().remediation_durations["clean-temp"]
    assert (hist.count, hist.total) == (1, 1.5)


def test_agent_footprint_comes_from_the_metrics_summaries(store, make_report) -> None:
    def summary(at: float, cpu: float) -> wire.MetricsEvent:
        values = {AGENT_CPU_SERIES: cpu, AGENT_RSS_SERIES: 40.0 * 2**20}
        return wire.MetricsEvent(event_id=str(uuid.uuid4()), seq=1, time=at, values=values)

    store.ingest(make_report(summary(T0, 10.0)), T0)
    store.ingest(make_report(summary(T0 + 300, 13.0)), T0 + 300)
    snap = store.metrics_snapshot()
    assert snap.agent_cpu.total == pytest.approx(0.01)
    assert (snap.agent_rss.count, snap.agent_rss.total) == (1, 40.0 * 2**20)


def test_a_report_sets_the_hosts_clock_offset(store, make_report, make_check_event) -> None:
    store.ingest(make_report(make_check_event("x", "ok"), sent_at=T0 - 600), T0)
    assert store.metrics_snapshot().clock_offsets.total == 600.0


def test_histograms_and_footprint_survive_a_restart(
    tmp_path, make_report, make_check_event, make_remediation_event
) -> None:
    path = tmp_path / "collector.db"
    store = open_desk(path)
    rss = wire.MetricsEvent(
        event_id=str(uuid.uuid4()), seq=3, time=T0, values={AGENT_RSS_SERIES: 50.0 * 2**20}
    )
    store.ingest(make_report(make_check_event("d", "critical"), rss), T0 + 100)
    store.ingest(make_report(make_check_event("d", "ok"), make_remediation_event()), T0 + 700)
    before = store.metrics_snapshot()
    store.close()
    reopened = open_desk(path)
    try:
        after = reopened.metrics_snapshot()
    finally:
        reopened.close()
    assert after.time_to_restore == before.time_to_restore
    assert after.remediation_durations == before.remediation_durations
    assert after.agent_rss == before.agent_rss
    assert after.clock_offsets == before.clock_offsets


def test_the_metrics_path_does_not_copy_per_host_maps(store, make_report, make_check_event) -> None:
    store.ingest(make_report(make_check_event("x", "ok")), T0)
    snap = store.metrics_snapshot(host_maps=False)
    assert (snap.host_last_seen, snap.host_ttl, snap.liveness.hosts) == ({}, {}, 1)


# --------------------------------------------------------------------------- config


def write_config(tmp_path: Path, metrics: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(f"auth: {{agent_tokens: [t-0123456789abcdef0123456789abcdef]}}\n{metrics}\n")
    return path


def test_per_host_series_are_off_and_capped_at_1000_by_default(tmp_path) -> None:
    config = load_collector_config(write_config(tmp_path, ""))
    assert (config.metrics.per_host_series, config.metrics.max_host_series) == (False, 1000)


def test_the_metrics_section_switches_per_host_series_on(tmp_path) -> None:
    path = write_config(tmp_path, "metrics: {per_host_series: true, max_host_series: 50}")
    config = load_collector_config(path)
    assert (config.metrics.per_host_series, config.metrics.max_host_series) == (True, 50)


@pytest.mark.parametrize(
    ("metrics", "key"),
    [
        ("metrics: {max_host_series: 0}", "metrics.max_host_series"),
        ("metrics: {per_host_series: maybe}", "metrics.per_host_series"),
        ("metrics: {per_host: true}", "metrics.per_host"),
    ],
    ids=["cap-below-one", "switch-not-a-bool", "unknown-key"],
)
def test_a_bad_metrics_setting_is_an_error_naming_the_key(tmp_path, metrics, key) -> None:
    with pytest.raises(ConfigError) as caught:
        load_collector_config(write_config(tmp_path, metrics))
    assert caught.value.key == key


def test_the_app_serves_per_host_series_when_the_config_says_so(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    config = dataclasses.replace(
        collector_config, metrics=MetricsConfig(per_host_series=True, max_host_series=1)
    )

    async def main() -> Samples:
        async with collector_server(config) as url, aiohttp.ClientSession() as http:
            for n in range(3):
                report = make_report(make_check_event(), agent_id=f"a{n}", hostname=f"ws-{n}")
                await post(http, url, config, report)
            return await scrape(http, url)

    samples = run(main)
    assert {labels for (name, labels) in samples if name.startswith("vigil_host_last")} == {
        (("agent_id", "a0"), ("host", "ws-0")),
        (("agent_id", "_overflow"), ("host", "_overflow")),
    }
    assert samples[("vigil_host_series_overflow_hosts", ())] == 2


# --------------------------------------------------------------------------- desk figures


def test_incident_desk_figures_reach_the_snapshot_only_when_refreshed(
    store, make_report, make_check_event
) -> None:
    """Open past SLA (P3: 3 days by default), acknowledged, and a fleet problem (3 hosts)."""
    opened = []
    for n in range(3):
        report = make_report(make_check_event("disk.free"), agent_id=f"a{n}", hostname=f"ws-{n}")
        opened += store.ingest(report, T0).opened
    store.acknowledge("incident", opened[0], "alice", "", T0 + 60)
    assert store.metrics_snapshot().incidents_past_sla == {}
    store.refresh_metrics_figures(T0 + 4 * 86400)
    snap = store.metrics_snapshot()
    assert sum(snap.incidents_past_sla.values()) == 3
    assert sum(snap.incidents_acknowledged.values()) == 1
    assert snap.problems_open.get("fleet") == 1


def test_the_store_tracks_hosts_whose_catalog_group_expects_silence(tmp_path, make_report) -> None:
    laptops = HostGroup("laptops", {"role": "laptop"}, "medium", silence_expected=True)
    servers = HostGroup("servers", {"role": "server"}, "high", silence_expected=False)
    store = open_desk(tmp_path / "c.db", catalog=Catalog(groups=(laptops, servers)))
    try:
        for agent_id, role in (("l1", "laptop"), ("s1", "server")):
            report = dataclasses.replace(make_report(agent_id=agent_id), labels={"role": role})
            store.ingest(report, T0)
        assert store.metrics_snapshot().liveness_silence_expected.hosts == 1
    finally:
        store.close()
    reopened = open_desk(tmp_path / "c.db", catalog=Catalog(groups=(laptops, servers)))
    try:
        assert reopened.metrics_snapshot().liveness_silence_expected.hosts == 1
    finally:
        reopened.close()


# --------------------------------------------------------------------------- cardinality


def test_cap_label_keeps_the_largest_values_and_folds_the_rest_into_other() -> None:
    samples = {("a", "fixed"): 5, ("b", "fixed"): 1, ("c", "fixed"): 2, ("c", "error"): 2}
    assert cap_label(samples, 0, limit=2) == {
        ("a", "fixed"): 5,
        ("c", "fixed"): 2,
        ("c", "error"): 2,
        ("_other", "fixed"): 1,
    }


def test_cap_label_changes_nothing_within_the_limit() -> None:
    samples = {("a",): 1, ("b",): 2}
    assert cap_label(samples, 0, limit=2) == samples


def test_cap_histograms_adds_the_folded_histograms_together() -> None:
    hists = {name: BucketCounts.empty((1.0,)) for name in ("a", "b", "c")}
    hists["a"].observe(0.5)
    hists["a"].observe(0.5)
    hists["b"].observe(2.0)
    hists["c"].observe(0.5)
    capped = cap_histograms(hists, limit=1)
    assert sorted(capped) == ["_other", "a"]
    assert (capped["_other"].counts, capped["_other"].total) == ([1, 1], 2.5)


def test_an_agent_inventing_remediation_names_cannot_explode_the_series_count() -> None:
    runs = {(f"fix-{n:04d}", "fixed"): 1 for n in range(MAX_LABEL_VALUES + 100)}
    samples = render(collector_over(snapshot_of(remediation_runs=runs)))
    names = {
        dict(labels)["remediation"]
        for (name, labels) in samples
        if name == "vigil_remediation_runs_total"
    }
    assert len(names) == MAX_LABEL_VALUES + 1
    other = ("vigil_remediation_runs_total", (("outcome", "fixed"), ("remediation", "_other")))
    assert samples[other] == 100


# --------------------------------------------------------------------------- never waits


def test_a_snapshot_does_not_wait_behind_a_commit(store) -> None:
    """A commit holds the store's lock across its fsync; a scrape must not queue behind it."""
    taken: list[MetricsSnapshot] = []
    with store.storage.lock:  # what ingest holds from BEGIN to COMMIT
        reader = threading.Thread(target=lambda: taken.append(store.metrics_snapshot()))
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive()
    assert len(taken) == 1


def test_failed_notifications_are_exported_per_configured_target() -> None:
    """Every configured target from 0 (so ``increase()`` sees the first failure)."""
    health = NotifyHealth(
        [("alertmanager", "http://am:9093"), ("webhook", "https://h/x")], base_s=5.0
    )
    health.failed(("webhook", "https://h/x"), 0.0, "boom")
    samples = render(collector_over(snapshot_of(), notify_failures=health.failed_totals))
    name = "vigil_notifications_failed_total"
    assert samples[(name, (("kind", "alertmanager"), ("target", "http://am:9093")))] == 0
    assert samples[(name, (("kind", "webhook"), ("target", "https://h/x")))] == 1
