"""The survey flow through a real collector app on 127.0.0.1 (in process, fake clock):
queued when an incident resolves, handed over in the report ack, answered once through
the signed link, counted in /api/v1/satisfaction and /metrics; and the config section."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import COLLECTOR_ADMIN_TOKEN, COLLECTOR_AGENT_TOKEN, FakeClock
from vigil import wire
from vigil.collector.config import CollectorConfig, load_collector_config
from vigil.collector.desk.satisfaction import SatisfactionPolicy
from vigil.configio import ConfigError
from vigil.quiet_hours import parse_quiet_hours

AGENT = {"Authorization": f"Bearer {COLLECTOR_AGENT_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {COLLECTOR_ADMIN_TOKEN}"}
NOON_EAST = {"Vigil-UTC-Offset": str(12 * 3600)}  # T0 is midnight UTC: noon there


def surveyed(config: CollectorConfig, **policy: Any) -> CollectorConfig:
    return dataclasses.replace(config, satisfaction=SatisfactionPolicy(enabled=True, **policy))


async def send(
    http: aiohttp.ClientSession, url: str, report: wire.Report, headers: dict[str, str]
) -> dict[str, Any]:
    body = gzip.compress(wire.encode_report(report))
    extra = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with http.post(
        f"{url}/api/v1/reports", data=body, headers={**AGENT, **extra, **headers}
    ) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def incident_comes_and_goes(
    http: aiohttp.ClientSession,
    url: str,
    make_report: Callable[..., wire.Report],
    make_check_event: Callable[..., wire.CheckEvent],
    headers: dict[str, str],
    check: str = "disk.free",
) -> dict[str, Any]:
    """A check fails (an incident opens), then recovers; returns the recovery's ack."""
    await send(http, url, make_report(make_check_event(check, "critical")), headers)
    ok = make_check_event(check, "ok", previous_state="critical", seq=2)
    return await send(http, url, make_report(ok), headers)


def test_a_resolved_incident_brings_a_survey_that_is_answered_once_and_counted(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    config = surveyed(collector_config)
    clock = FakeClock()

    async def main() -> None:
        async with collector_server(config, clock=clock) as url, aiohttp.ClientSession() as http:
            ack = await incident_comes_and_goes(http, url, make_report, make_check_event, NOON_EAST)
            (offer,) = ack["surveys"]
            assert offer["url"].startswith(f"{url}/survey/")
            assert offer["title"] == "disk.free is critical"

            async with http.get(offer["url"]) as r:
                page = await r.text()
                assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            assert "How likely are you to recommend IT support?" in page
            assert len(re.findall(r'type="radio"[^>]*name="score"', page)) == 11
            assert "<script" not in page

            async with http.post(offer["url"], data={"score": "eleven"}) as r:
                assert r.status == 400 and "score" in await r.text()
            async with http.post(offer["url"], data={"score": "9", "comment": "<b>fast</b>"}) as r:
                assert r.status == 200 and "Thank you" in await r.text()
            async with http.post(offer["url"], data={"score": "0"}) as r:
                assert r.status == 410 and "already" in await r.text()
            async with http.get(offer["url"]) as r:
                assert r.status == 410

            async with http.get(f"{url}/api/v1/satisfaction", headers=ADMIN) as r:
                summary = (await r.json())["satisfaction"]
            assert summary["responses"] == 1 and summary["nps"] == 100.0
            assert summary["departments"]["test"]["csat"] == 100.0
            path = f"/api/v1/incidents/{offer['incident']}/surveys"
            async with http.get(f"{url}{path}", headers=ADMIN) as r:
                (answer,) = (await r.json())["surveys"]
            assert (answer["score"], answer["comment"]) == (9, "<b>fast</b>")

    asyncio.run(main())


def test_metrics_show_an_answer_at_once(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    config = surveyed(collector_config)
    clock = FakeClock()

    async def main() -> None:
        async with collector_server(config, clock=clock) as url, aiohttp.ClientSession() as http:
            ack = await incident_comes_and_goes(http, url, make_report, make_check_event, NOON_EAST)
            async with http.post(ack["surveys"][0]["url"], data={"score": "3"}) as r:
                assert r.status == 200
            async with http.get(f"{url}/metrics", headers=ADMIN) as r:
                metrics = await r.text()
        assert 'vigil_nps{department="test",service="none"} -100.0' in metrics
        assert 'vigil_survey_responses_total{department="test",service="none"} 1.0' in metrics
        assert 'vigil_surveys{state="answered"} 1.0' in metrics

    asyncio.run(main())


def test_forged_and_expired_links_are_refused_with_a_page(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    config = surveyed(collector_config, link_lifetime_s=3600.0)
    clock = FakeClock()

    async def main() -> None:
        async with collector_server(config, clock=clock) as url, aiohttp.ClientSession() as http:
            ack = await incident_comes_and_goes(http, url, make_report, make_check_event, NOON_EAST)
            link = ack["surveys"][0]["url"]
            forged = link[:-2] + ("AA" if not link.endswith("AA") else "BB")
            for method in (http.get, http.post):
                async with method(forged, data={"score": "10"}) as r:
                    assert r.status == 403 and "not valid" in await r.text()
                    assert r.content_type == "text/html"
            clock.advance(3600)
            async with http.post(link, data={"score": "10"}) as r:
                assert r.status == 410 and "expired" in await r.text()
            async with http.get(f"{url}/api/v1/satisfaction", headers=ADMIN) as r:
                assert (await r.json())["satisfaction"]["responses"] == 0

    asyncio.run(main())


def test_no_survey_for_a_prevented_incident_nor_twice_within_the_rate_limit(
    collector_config, collector_server, make_report, make_check_event, make_remediation_event
) -> None:
    config = surveyed(collector_config)

    async def main() -> None:
        async with (
            collector_server(config, clock=FakeClock()) as url,
            aiohttp.ClientSession() as http,
        ):
            promise = make_check_event("disk.free", "critical", remediation="clean-temp")
            fixed = make_remediation_event("clean-temp", "disk.free", "fixed")
            ack = await send(http, url, make_report(promise, fixed), NOON_EAST)
            assert "surveys" not in ack  # prevented: the user never saw it
            first = await incident_comes_and_goes(
                http, url, make_report, make_check_event, NOON_EAST, check="cpu.load"
            )
            assert len(first["surveys"]) == 1
            async with http.post(first["surveys"][0]["url"], data={"score": "8"}) as r:
                assert r.status == 200
            again = await incident_comes_and_goes(
                http, url, make_report, make_check_event, NOON_EAST, check="mem.free"
            )
            assert "surveys" not in again  # one survey a week per host

    asyncio.run(main())


def test_quiet_hours_hold_a_survey_until_the_agents_local_time_allows(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    config = surveyed(collector_config, quiet_hours=parse_quiet_hours("22:00-07:00"))

    async def main() -> None:
        async with (
            collector_server(config, clock=FakeClock()) as url,
            aiohttp.ClientSession() as http,
        ):
            utc_midnight = {"Vigil-UTC-Offset": "0"}
            ack = await incident_comes_and_goes(
                http, url, make_report, make_check_event, utc_midnight
            )
            assert "surveys" not in ack
            later = await send(http, url, make_report(), NOON_EAST)
            assert len(later["surveys"]) == 1

    asyncio.run(main())


def test_the_agent_reports_a_survey_shown_and_it_is_not_offered_again(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    config = surveyed(collector_config)

    async def main() -> None:
        async with (
            collector_server(config, clock=FakeClock()) as url,
            aiohttp.ClientSession() as http,
        ):
            ack = await incident_comes_and_goes(http, url, make_report, make_check_event, NOON_EAST)
            offer = ack["surveys"][0]
            again = await send(http, url, make_report(), NOON_EAST)
            assert [s["id"] for s in again["surveys"]] == [offer["id"]]  # not confirmed yet
            shown = {**NOON_EAST, "Vigil-Surveys": f"{offer['id']}=shown, junk"}
            confirmed = await send(http, url, make_report(), shown)
            assert "surveys" not in confirmed
            path = f"/api/v1/incidents/{offer['incident']}/surveys"
            async with http.get(f"{url}{path}", headers=ADMIN) as r:
                (row,) = (await r.json())["surveys"]
            assert row["state"] == "shown" and row["offers"] == 2

    asyncio.run(main())


def test_a_fix_that_needed_the_user_brings_a_survey_once_the_check_recovers(
    collector_config, collector_server, make_report, make_check_event, make_remediation_event
) -> None:
    config = surveyed(collector_config)

    async def main() -> None:
        async with (
            collector_server(config, clock=FakeClock()) as url,
            aiohttp.ClientSession() as http,
        ):
            promise = make_check_event("vpn.up", "critical", remediation="vpn-reset")
            asked = make_remediation_event("vpn-reset", "vpn.up", "needs_user")
            ack = await send(http, url, make_report(promise, asked), NOON_EAST)
            assert "surveys" not in ack  # the user was asked to act: an incident opened
            ok = make_check_event("vpn.up", "ok", previous_state="critical", seq=3)
            done = await send(http, url, make_report(ok), NOON_EAST)
            (offer,) = done["surveys"]
            async with http.get(f"{url}/api/v1/incidents/{offer['incident']}", headers=ADMIN) as r:
                incident = (await r.json())["incident"]
            assert incident["remediation_outcome"] == "needs_user"

    asyncio.run(main())


def test_a_manually_resolved_incident_is_surveyed_too(
    collector_config, collector_server, make_report, make_check_event
) -> None:
    config = surveyed(collector_config)

    async def main() -> None:
        async with (
            collector_server(config, clock=FakeClock()) as url,
            aiohttp.ClientSession() as http,
        ):
            await send(http, url, make_report(make_check_event("disk.free", "critical")), {})
            async with http.get(f"{url}/api/v1/incidents", headers=ADMIN) as r:
                (incident,) = (await r.json())["incidents"]
            resolve = f"{url}/api/v1/incidents/{incident['id']}/resolve"
            async with http.post(resolve, json={"note": "fixed it"}, headers=ADMIN) as r:
                assert r.status == 200, await r.text()
            await asyncio.sleep(5.5)  # a tick picks up surveys queued outside ingest
            ack = await send(http, url, make_report(), NOON_EAST)
            assert [s["incident"] for s in ack["surveys"]] == [incident["id"]]

    asyncio.run(main())


def test_the_survey_page_is_404_when_surveys_are_off(collector_config, collector_server) -> None:
    async def main() -> None:
        async with (
            collector_server(collector_config) as url,
            aiohttp.ClientSession() as http,
            http.get(f"{url}/survey/1.2.3.abc") as r,
        ):
            assert r.status == 404

    asyncio.run(main())


def write(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "collector.yaml"
    auth = f"auth:\n  agent_tokens: [{COLLECTOR_AGENT_TOKEN}]\n"
    path.write_text(auth + "satisfaction:\n" + section)
    return path


def test_the_satisfaction_section_is_read(tmp_path: Path) -> None:
    config = load_collector_config(
        write(
            tmp_path,
            "  enabled: true\n  rate_limit: 14d\n  link_lifetime: 2d\n"
            "  quiet_hours: '20:00-08:00'\n  public_url: https://it.example.com\n"
            "  department_label: team\n  retention: 180d\n",
        )
    )
    policy = config.satisfaction
    assert (
        policy.enabled and policy.rate_limit_s == 14 * 86400 and policy.link_lifetime_s == 2 * 86400
    )
    assert str(policy.quiet_hours) == "20:00-08:00" and policy.department_label == "team"
    assert policy.public_url == "https://it.example.com" and policy.secret is None
    assert policy.retention_s == 180 * 86400


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("  quiet_hours: '8pm-8am'\n", "satisfaction.quiet_hours"),
        ("  rate_limit: soon\n", "satisfaction.rate_limit"),
        ("  link_lifetime: 10s\n", "satisfaction.link_lifetime"),
        ("  public_url: ftp://x\n", "satisfaction.public_url"),
        ("  secret: short\n", "satisfaction.secret"),
        ("  enabled: maybe\n", "satisfaction.enabled"),
        ("  colour: blue\n", "satisfaction.colour"),
        ("  retention: 12h\n", "satisfaction.retention"),
        ("  rate_limit: 30d\n  retention: 20d\n", "satisfaction.retention"),
    ],
)
def test_a_bad_satisfaction_value_names_file_and_key(
    tmp_path: Path, section: str, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_collector_config(write(tmp_path, section))
    assert caught.value.key == key and caught.value.file.endswith("collector.yaml")
