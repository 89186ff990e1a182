"""``GET /metrics``: rendered from store state at scrape time, on an explicit registry.

Scraped over real HTTP from an app on 127.0.0.1 and parsed with prometheus_client's own
parser, as Prometheus would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import io
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import wire
from collector.config import CollectorConfig
from collector.metrics import agents_by_state

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


async def scrape(http: aiohttp.ClientSession, url: str) -> Samples:
    async with http.get(f"{url}/metrics") as r:
        assert r.status == 200
        return parse(await r.text())


async def post(
    http: aiohttp.ClientSession, url: str, config: CollectorConfig, report: wire.Report
) -> int:
    headers = {
        "Authorization": f"Bearer {config.auth.agent_tokens[0]}",
        "Content-Encoding": "gzip",
    }
    body = gzip.compress(wire.encode_report(report))
    async with http.post(f"{url}/api/v1/reports", data=body, headers=headers) as r:
        return r.status


def test_metrics_are_served_without_a_token_in_the_prometheus_text_format(
    collector_config, collector_server
) -> None:
    async def main() -> tuple[int, str, str]:
        async with (
            collector_server(collector_config) as url,
            aiohttp.ClientSession() as http,
            http.get(f"{url}/metrics") as r,
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


def test_an_open_incident_shows_by_priority_and_check(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    async def main() -> Samples:
        async with collector_server(collector_config) as url, aiohttp.ClientSession() as http:
            await post(http, url, collector_config, make_report(make_check_event("disk.free")))
            return await scrape(http, url)

    samples = run(main)
    assert samples[("vigil_incidents_open", (("check", "disk.free"), ("priority", "P3")))] == 1
    assert samples[("vigil_incidents_opened_total", ())] == 1
    assert samples[("vigil_checks_failing", (("check", "disk.free"),))] == 1


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
    auth = {"Authorization": f"Bearer {collector_config.auth.agent_tokens[0]}"}
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
    assert rejected == {"unauthorized": 2, "too_large": 1, "bad_gzip": 1, "invalid": 1}


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
    other = dataclasses.replace(collector_config, database=tmp_path / "other.db")

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
        ({"a": 970.0}, {}, (1, 0)),
        ({"a": 969.0}, {}, (0, 1)),
        ({"a": 1000.0, "b": 500.0, "c": 990.0}, {"a": 60.0, "b": 60.0}, (2, 1)),
    ],
    ids=[
        "no-hosts",
        "seen-within-ttl",
        "past-ttl-and-grace",
        "no-ttl-up-for-twice-grace",
        "no-ttl-past-twice-grace",
        "mixed-fleet",
    ],
)
def test_agents_by_state(
    last_seen: dict[str, float], ttl: dict[str, float], expected: tuple[int, int]
) -> None:
    """At now=1030 with grace 30 s."""
    assert agents_by_state(last_seen, ttl, now=1030.0, grace_s=30.0) == expected
