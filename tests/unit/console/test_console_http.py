"""The console over real HTTP: a real collector app on 127.0.0.1 with a real SQLite file,
real reports through the ingest API, operators through the operators API, login through
the form. Sessions, CSRF, roles, secure headers, the queue order and the writes."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from yarl import URL

from tests.conftest import COLLECTOR_ADMIN_TOKEN, COLLECTOR_AGENT_TOKEN, T0
from tests.support.console import (
    add_operator,
    browser_session,
    csrf_of,
    login,
    page,
    post_report,
    submit,
)
from vigil import wire
from vigil.collector.config import CollectorConfig
from vigil.collector.desk.catalog import Catalog, Service

T = TypeVar("T")
PAGE_LIMIT = 150 * 1024  # bytes of a page's HTML + CSS + scripts, images aside


def run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())  # type: ignore[arg-type]


@pytest.fixture
def config(collector_config: CollectorConfig) -> CollectorConfig:
    """Mail checks belong to a high-impact service (P2 on an ungrouped host), the rest
    rank with the defaults (medium impact: P3)."""
    catalog = Catalog(services=(Service("email", "mail", "mail-team", "high", ("mail.*",)),))
    return dataclasses.replace(collector_config, catalog=catalog)


async def _inject(http: Any, url: str, make_report: Any, make_check_event: Any) -> None:
    # The P3 one first: the queue must still put the P2 one on top.
    await post_report(
        http, url, make_report(make_check_event("disk.free", "critical")), COLLECTOR_AGENT_TOKEN
    )
    await post_report(
        http,
        url,
        make_report(
            make_check_event("mail.imap", "critical"), agent_id="agent-0002", hostname="ws-0002"
        ),
        COLLECTOR_AGENT_TOKEN,
    )


def test_root_redirects_to_the_console_and_the_console_to_its_login(
    config, collector_server
) -> None:
    async def main() -> tuple[Any, ...]:
        async with collector_server(config) as url, browser_session() as http:
            root = await page(http, url, "/")
            bare = await page(http, url, "/console")
            queue = await page(http, url, "/console/")
            return root, bare, queue

    root, bare, queue = run(main)
    assert root[0] == 302 and root[2]["Location"] == "/console/"
    assert bare[0] == 302 and bare[2]["Location"] == "/console/"
    assert queue[0] == 302 and queue[2]["Location"].startswith("/console/login?next=")


def test_login_sets_a_strict_httponly_session_cookie_and_pages_carry_secure_headers(
    config, collector_server
) -> None:
    async def main() -> tuple[Any, ...]:
        async with collector_server(config) as url, browser_session() as http:
            r = await login(http, url, COLLECTOR_ADMIN_TOKEN)
            cookie_header = r.headers.getall("Set-Cookie")
            queue = await page(http, url, "/console/")
            return r.status, r.headers["Location"], cookie_header, queue

    status, location, cookies, (qstatus, html, headers) = run(main)
    assert (status, location) == (303, "/console/")
    [session] = [c for c in cookies if c.startswith("vigil_session=")]
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/console" in session
    assert "Secure" not in session, "plain HTTP on loopback: a Secure cookie would be dropped"
    assert qstatus == 200 and "Queue" in html
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert "<script>" not in html and " style=" not in html, "no inline script or style"


def test_behind_an_https_public_url_the_console_cookies_are_secure_over_plain_http(
    config, collector_server
) -> None:
    """A proxy terminating TLS talks plain HTTP to the collector: with ``public_url``
    on https:// the session and login cookies still get ``Secure``."""
    config = dataclasses.replace(config, public_url="https://desk.example.com")

    async def main() -> tuple[list[str], list[str]]:
        async with collector_server(config) as url, browser_session() as http:
            async with http.get(f"{url}/console/login") as r:
                login_cookies = r.headers.getall("Set-Cookie")
                form = await r.text()
            # The client rightly keeps a Secure cookie off plain HTTP: send it by hand,
            # as the proxy would have.
            nonce = r.cookies["vigil_login"].value
            async with http.post(
                f"{url}/console/login",
                data={"token": COLLECTOR_ADMIN_TOKEN, "csrf": csrf_of(form)},
                headers={"Cookie": f"vigil_login={nonce}"},
                allow_redirects=False,
            ) as r:
                assert r.status == 303
                return login_cookies, r.headers.getall("Set-Cookie")

    login_cookies, cookies = run(main)
    [before] = [c for c in login_cookies if c.startswith("vigil_login=")]
    [session] = [c for c in cookies if c.startswith("vigil_session=")]
    assert "Secure" in before
    assert "Secure" in session and "HttpOnly" in session and "SameSite=Strict" in session


@pytest.mark.parametrize(
    ("token", "with_csrf", "status"),
    [("vigil_op_" + "x" * 43, True, 401), (COLLECTOR_ADMIN_TOKEN, False, 403)],
    ids=["unknown-token", "no-csrf"],
)
def test_a_bad_login_is_refused_without_a_session(
    config, collector_server, token, with_csrf, status
) -> None:
    async def main() -> tuple[int, int]:
        async with collector_server(config) as url, browser_session() as http:
            _, html, _ = await page(http, url, "/console/login")
            data = {"token": token, **({"csrf": csrf_of(html)} if with_csrf else {})}
            answer = (await submit(http, url, "/console/login", data))[0]
            after = (await page(http, url, "/console/"))[0]
            return answer, after

    answer, after = run(main)
    assert answer == status
    assert after == 302, "still not logged in"


def test_a_forged_session_cookie_is_not_a_session(config, collector_server) -> None:
    async def main() -> int:
        async with collector_server(config) as url, browser_session() as http:
            await login(http, url, COLLECTOR_ADMIN_TOKEN)
            real = next(c for c in http.cookie_jar if c.key == "vigil_session").value
            body, sig = real.split(".")
            forged = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + sig
            http.cookie_jar.clear()
            http.cookie_jar.update_cookies({"vigil_session": forged}, response_url=URL(url))
            assert [c.value for c in http.cookie_jar] == [forged]
            return (await page(http, url, "/console/"))[0]

    assert run(main) == 302


def test_the_queue_orders_by_priority_and_a_responder_acknowledges_with_csrf(
    config, collector_server, make_report, make_check_event
) -> None:
    async def main() -> dict[str, Any]:
        async with collector_server(config) as url, browser_session() as http:
            await _inject(http, url, make_report, make_check_event)
            token = await add_operator(http, url, COLLECTOR_ADMIN_TOKEN, "rita", "responder")
            await login(http, url, token)
            _, html, _ = await page(http, url, "/console/")
            out: dict[str, Any] = {"queue": html}
            out["no_csrf"] = (await submit(http, url, "/console/incidents/2/acknowledge", {}))[0]
            out["bad_csrf"] = (
                await submit(http, url, "/console/incidents/2/acknowledge", {"csrf": "x" * 43})
            )[0]
            out["ack"] = await submit(
                http, url, "/console/incidents/2/acknowledge", {"csrf": csrf_of(html)}
            )
            async with http.get(
                f"{url}/api/v1/incidents/2",
                headers={"Authorization": f"Bearer {COLLECTOR_ADMIN_TOKEN}"},
            ) as r:
                out["incident"] = (await r.json())["incident"]
            async with http.get(
                f"{url}/api/v1/audit",
                headers={"Authorization": f"Bearer {COLLECTOR_ADMIN_TOKEN}"},
            ) as r:
                out["audit"] = (await r.json())["records"]
            return out

    out = run(main)
    order = [int(n) for n in re.findall(r'data-incident="(\d+)"', out["queue"])]
    assert order == [2, 1], "P2 (mail, opened second) before P3 (disk)"
    assert out["no_csrf"] == 403 and out["bad_csrf"] == 403
    status, _, headers = out["ack"]
    assert status == 303 and headers["Location"] == "/console/incidents/2"
    assert out["incident"]["acknowledged_by"] == "rita"
    [ack] = [a for a in out["audit"] if a["action"] == "incident.acknowledge"]
    assert (ack["actor"], ack["target"]) == ("rita", "incident:2")


def test_a_viewer_sees_no_action_forms_and_cannot_acknowledge(
    config, collector_server, make_report, make_check_event
) -> None:
    async def main() -> tuple[str, int, Any]:
        async with collector_server(config) as url, browser_session() as http:
            await _inject(http, url, make_report, make_check_event)
            token = await add_operator(http, url, COLLECTOR_ADMIN_TOKEN, "val", "viewer")
            await login(http, url, token)
            _, html, _ = await page(http, url, "/console/")
            status = (
                await submit(http, url, "/console/incidents/1/acknowledge", {"csrf": csrf_of(html)})
            )[0]
            async with http.get(
                f"{url}/api/v1/incidents/1",
                headers={"Authorization": f"Bearer {COLLECTOR_ADMIN_TOKEN}"},
            ) as r:
                incident = (await r.json())["incident"]
            return html, status, incident

    html, status, incident = run(main)
    assert "data-incident=" in html, "a viewer reads the queue"
    assert "/acknowledge" not in html and "/resolve" not in html and "/console/silences" not in html
    assert status == 403
    assert incident["acknowledged_at"] is None


def test_a_logged_in_viewer_downloads_the_markdown_capa_report_an_anonymous_one_does_not(
    config, collector_server, make_report, make_check_event
) -> None:
    """The incident page links the report under the console (the API's takes bearer
    tokens only: a browser got 401 there)."""

    async def main() -> tuple[Any, ...]:
        async with collector_server(config) as url, browser_session() as http:
            await _inject(http, url, make_report, make_check_event)
            anonymous = await page(http, url, "/console/incidents/1/report.md")
            token = await add_operator(http, url, COLLECTOR_ADMIN_TOKEN, "val", "viewer")
            await login(http, url, token)
            _, html, _ = await page(http, url, "/console/incidents/1")
            async with http.get(f"{url}/console/incidents/1/report.md") as r:
                report = (r.status, r.headers, await r.text())
            missing = await page(http, url, "/console/incidents/999/report.md")
            return anonymous, html, report, missing

    anonymous, html, (status, headers, text), missing = run(main)
    assert anonymous[0] == 302 and anonymous[2]["Location"].startswith("/console/login?next=")
    assert "disk.free" not in anonymous[1]
    assert 'href="/console/incidents/1/report.md"' in html
    assert "/api/v1/incidents/1/report" not in html
    assert status == 200
    assert headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert headers["Content-Disposition"] == 'attachment; filename="incident-1.md"'
    assert "disk.free" in text
    assert missing[0] == 404


def test_link_capa_and_closing_a_problem_needs_its_verification(
    config, collector_server, make_report, make_check_event
) -> None:
    """A recurring problem (the same key failing three times) is linked from an
    incident page, its CAPA record filled, closed only once verified."""

    async def main() -> dict[str, Any]:
        async with collector_server(config) as url, browser_session() as http:
            for n in range(3):  # three openings of disk.free on one host: a problem
                await post_report(
                    http,
                    url,
                    make_report(make_check_event("disk.free", "critical", seq=2 * n + 1)),
                    COLLECTOR_AGENT_TOKEN,
                )
                await post_report(
                    http,
                    url,
                    make_report(make_check_event("disk.free", "ok", seq=2 * n + 2)),
                    COLLECTOR_AGENT_TOKEN,
                )
            await post_report(
                http,
                url,
                make_report(make_check_event("mail.imap", "critical"), agent_id="agent-9"),
                COLLECTOR_AGENT_TOKEN,
            )
            await login(http, url, COLLECTOR_ADMIN_TOKEN)
            _, problems, _ = await page(http, url, "/console/problems")
            pid = re.search(r'href="/console/problems/(\d+)"', problems)
            assert pid, problems
            problem = pid.group(1)
            _, incident_html, _ = await page(http, url, "/console/incidents/4")
            csrf = csrf_of(incident_html)
            out: dict[str, Any] = {}
            out["link"] = (
                await submit(
                    http, url, "/console/incidents/4/link", {"csrf": csrf, "problem": problem}
                )
            )[0]
            out["ack"] = (
                await submit(http, url, f"/console/problems/{problem}/acknowledge", {"csrf": csrf})
            )[0]
            out["close_early"] = (
                await submit(http, url, f"/console/problems/{problem}/close", {"csrf": csrf})
            )[0]
            capa = {
                "csrf": csrf,
                "root_cause": "log rotation disabled",
                "corrective_action": "rotation re-enabled",
                "preventive_action": "policy check",
                "verification": "free space stable for a week",
                "known_error": "clean /var/log by hand",
                "capa_owner": "desktop-support",
                "capa_due": "2027-01-31",
            }
            out["capa"] = (await submit(http, url, f"/console/problems/{problem}/capa", capa))[0]
            out["bad_date"] = (
                await submit(
                    http,
                    url,
                    f"/console/problems/{problem}/capa",
                    {**capa, "capa_due": "tomorrow"},
                )
            )[0]
            out["close"] = (
                await submit(http, url, f"/console/problems/{problem}/close", {"csrf": csrf})
            )[0]
            _, out["problem_html"], _ = await page(http, url, f"/console/problems/{problem}")
            _, out["incident_html"], _ = await page(http, url, "/console/incidents/4")
            return out

    out = run(main)
    assert out["link"] == 303
    assert out["ack"] == 303
    assert out["close_early"] == 409
    assert out["capa"] == 303
    assert out["bad_date"] == 400
    assert out["close"] == 303
    html = out["problem_html"]
    assert "free space stable for a week" in html and "clean /var/log by hand" in html
    assert 'value="2027-01-31"' in html
    assert '<dd class="state">resolved</dd>' in html
    assert "incident 4 linked by config:admin_tokens.0" in html
    assert "acknowledged by config:admin_tokens.0" in html
    assert "linked to problem" in out["incident_html"]


def test_every_page_renders_within_the_page_weight(
    config, collector_server, make_report, make_check_event
) -> None:
    async def main() -> dict[str, tuple[int, int]]:
        async with collector_server(config) as url, browser_session() as http:
            await _inject(http, url, make_report, make_check_event)
            await login(http, url, COLLECTOR_ADMIN_TOKEN)
            assets = 0
            for asset in ("console.css", "console.js", "htmx.min.js"):
                async with http.get(f"{url}/console/static/{asset}") as r:
                    assert r.status == 200
                    assets += len(await r.read())
            sizes = {}
            for path in (
                "/console/",
                "/console/incidents/1",
                "/console/problems",
                "/console/hosts?department=test",
                "/console/hosts/agent-0001",
                "/console/catalog",
                "/console/quality",
            ):
                status, html, _ = await page(http, url, path)
                sizes[path] = (status, len(html.encode()) + assets)
            return sizes

    for path, (status, size) in run(main).items():
        assert status == 200, path
        assert size <= PAGE_LIMIT, f"{path}: {size} bytes"


async def _page_weight(http: Any, url: str, path: str) -> tuple[int, int, str]:
    """Status, bytes of the page's HTML plus every script and stylesheet it references,
    and the HTML."""
    status, html, _ = await page(http, url, path)
    size = len(html.encode())
    for asset in re.findall(r'(?:src|href)="(/console/static/[^"]+)"', html):
        async with http.get(f"{url}{asset}") as r:
            assert r.status == 200, asset
            size += len(await r.read())
    return status, size, html


# What escapes worst: "&" is five bytes in HTML, "€" three in UTF-8, "𝄞" four.
HEAVY = "&&&&<>\"'€𝄞"


def test_an_incident_with_many_long_runs_and_a_long_timeline_stays_within_the_page_weight(
    config, collector_server, make_report, make_check_event, make_remediation_event
) -> None:
    """40 failed attempts with the longest output an agent may send (16,384 characters,
    of what escapes worst) and 120 timeline entries of 1,024-character messages: the
    incident page shows the latest ones as excerpts within 150 KB and links to all
    attempts, the whole timeline (paged views, each within 150 KB too) and every
    attempt's output and entry's text in full."""
    output = (HEAVY * 2000)[: wire.MAX_OUTPUT]
    message = (HEAVY * 200)[: wire.MAX_STR]
    runs = [
        dataclasses.replace(
            make_remediation_event(outcome="not_fixed", seq=100 + n),
            output=f"attempt {n + 1}\n{output}"[: wire.MAX_OUTPUT],
            output_truncated=True,
        )
        for n in range(40)
    ]
    flaps = [
        dataclasses.replace(
            make_check_event(
                "disk.free", state, previous_state=previous, seq=200 + n, time=T0 + 10 + n
            ),
            message=message,
        )
        for n, (state, previous) in enumerate(
            [("warning", "critical"), ("critical", "warning")] * 60
        )
    ]

    async def main() -> dict[str, Any]:
        async with collector_server(config) as url, browser_session() as http:
            await post_report(http, url, make_report(make_check_event()), COLLECTOR_AGENT_TOKEN)
            for k in range(0, len(runs), 10):
                await post_report(http, url, make_report(*runs[k : k + 10]), COLLECTOR_AGENT_TOKEN)
            await post_report(http, url, make_report(*flaps), COLLECTOR_AGENT_TOKEN)
            await login(http, url, COLLECTOR_ADMIN_TOKEN)
            out: dict[str, Any] = {}
            for name, path in (
                ("incident", "/console/incidents/1"),
                ("runs", "/console/incidents/1/runs"),
                ("runs-2", "/console/incidents/1/runs?offset=20"),
                ("timeline", "/console/incidents/1/timeline"),
                ("timeline-2", "/console/incidents/1/timeline?offset=100"),
            ):
                out[name] = await _page_weight(http, url, path)
            out["output-40"] = await page(http, url, "/console/incidents/1/runs/40")
            out["output-41"] = await page(http, url, "/console/incidents/1/runs/41")
            entry = re.search(r'href="(/console/incidents/1/timeline/\d+)"', out["incident"][2])
            out["entry"] = await page(http, url, entry.group(1)) if entry else (None, "", {})
            return out

    out = run(main)
    for name in ("incident", "runs", "runs-2", "timeline", "timeline-2"):
        status, size, _ = out[name]
        assert status == 200, name
        assert size <= PAGE_LIMIT, f"{name}: {size} bytes"
    html = out["incident"][2]
    assert "The latest 20 of 40 attempts" in html
    assert 'href="/console/incidents/1/runs"' in html
    assert 'href="/console/incidents/1/timeline"' in html
    assert "Attempt 40:" in html and "Attempt 20:" not in html, "the latest 20, not the first"
    assert 'href="/console/incidents/1/runs/40"' in html, "the clipped output links to the whole"
    assert "characters left out" in html
    runs_page, next_page = out["runs"][2], out["runs-2"][2]
    assert (
        "Attempt 1:" in runs_page and "Attempt 20:" in runs_page and "Attempt 21:" not in runs_page
    )
    assert 'href="?offset=20"' in runs_page
    assert "Attempt 40:" in next_page and 'href="?offset=0"' in next_page
    status, text, headers = out["output-40"]
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert text.startswith("attempt 40\n&&&&<>") and "[output truncated by the agent]" in text
    assert len(text) >= wire.MAX_OUTPUT
    assert out["output-41"][0] == 404
    status, text, _ = out["entry"]
    assert status == 200, "a clipped entry links to its full text"
    assert text in (f"check warning: {message}", f"check critical: {message}")
    assert "Entries 101 to " in out["timeline-2"][2]


def test_host_search_filters_by_department_and_health(
    config, collector_server, make_report, make_check_event
) -> None:
    async def main() -> tuple[str, str, str]:
        async with collector_server(config) as url, browser_session() as http:
            await _inject(http, url, make_report, make_check_event)
            await post_report(
                http,
                url,
                make_report(make_check_event("cpu.busy", "ok"), agent_id="a-3", hostname="lab-3"),
                COLLECTOR_AGENT_TOKEN,
            )
            await login(http, url, COLLECTOR_ADMIN_TOKEN)
            _, by_prefix, _ = await page(http, url, "/console/hosts?hostname=ws-")
            _, healthy, _ = await page(http, url, "/console/hosts?health=healthy")
            _, none, _ = await page(http, url, "/console/hosts?department=sales")
            return by_prefix, healthy, none

    by_prefix, healthy, none = run(main)
    assert ">ws-0001<" in by_prefix and ">ws-0002<" in by_prefix and "lab-3" not in by_prefix
    assert ">lab-3<" in healthy and "ws-0001" not in healthy
    assert "No hosts match." in none


def test_alertmanager_links_open_the_console_incident_page() -> None:
    from vigil.collector.notify.alertmanager import to_alert

    item = {
        "kind": "incident", "id": 7, "check": "disk.free", "hostname": "ws-1", "service": None,
        "priority": "P3", "ref": "incident:7", "summary": "s", "description": "",
        "remediation": "", "opened_at": 0.0, "resolved_at": None, "active": True,
    }  # fmt: skip
    alert = to_alert(item, now=10.0, resend_s=60.0, public_url="https://vigil.example.org/")
    assert alert["annotations"]["incident_url"] == "https://vigil.example.org/console/incidents/7"


def test_rotating_an_operators_token_ends_its_console_session(config, collector_server) -> None:
    async def main() -> tuple[int, int]:
        async with collector_server(config) as url, browser_session() as http:
            await add_operator(http, url, COLLECTOR_ADMIN_TOKEN, "rot", "viewer")
            async with http.post(
                f"{url}/api/v1/operators",
                json={"name": "rot2", "role": "viewer"},
                headers={"Authorization": f"Bearer {COLLECTOR_ADMIN_TOKEN}"},
            ) as r:
                token = (await r.json())["token"]
            await login(http, url, token)
            before = (await page(http, url, "/console/"))[0]
            async with http.post(
                f"{url}/api/v1/operators/rot2/rotate",
                headers={"Authorization": f"Bearer {COLLECTOR_ADMIN_TOKEN}"},
            ) as r:
                assert r.status == 200
            return before, (await page(http, url, "/console/"))[0]

    before, after = run(main)
    assert (before, after) == (200, 302)


def test_silences_from_the_queue_and_the_incident_page_match_what_was_chosen(
    config, collector_server, make_report, make_check_event
) -> None:
    async def main() -> tuple[list[int], list[dict[str, Any]]]:
        async with collector_server(config) as url, browser_session() as http:
            await _inject(http, url, make_report, make_check_event)
            await login(http, url, COLLECTOR_ADMIN_TOKEN)
            _, html, _ = await page(http, url, "/console/incidents/2")
            csrf = csrf_of(html)
            statuses = [
                (await submit(http, url, "/console/silences", form))[0]
                for form in (
                    {"csrf": csrf, "target": "check:mail.imap", "hours": "2", "comment": "c"},
                    {"csrf": csrf, "matcher": "host", "value": "ws-0001", "hours": "4"},
                    {"csrf": csrf, "target": "group:x", "hours": "4"},
                    {"csrf": csrf, "target": "host:ws-0001", "hours": "0"},
                )
            ]
            async with http.get(
                f"{url}/api/v1/silences",
                headers={"Authorization": f"Bearer {COLLECTOR_ADMIN_TOKEN}"},
            ) as r:
                return statuses, (await r.json())["silences"]

    statuses, silences = run(main)
    assert statuses == [303, 303, 400, 400]
    got = sorted((s["matcher"], s["value"], s["created_by"]) for s in silences)
    assert got == [
        ("check", "mail.imap", "config:admin_tokens.0"),
        ("host", "ws-0001", "config:admin_tokens.0"),
    ]


def test_the_quality_page_shows_nps_once_the_desk_reads_survey_answers(
    config, collector_server, monkeypatch
) -> None:
    """Without an answer the page says so; with ``Desk.satisfaction_summary``'s figures,
    it shows them. The summary here stands in for the desk's read (same shape)."""
    from vigil.collector.desk.service import Desk

    async def quality() -> str:
        async with collector_server(config) as url, browser_session() as http:
            await login(http, url, COLLECTOR_ADMIN_TOKEN)
            return (await page(http, url, "/console/quality"))[1]

    assert "No survey answers yet." in run(quality)
    seen: list[float | None] = []

    def summary(self: Desk, department=None, service=None, since=None) -> dict[str, Any]:
        seen.append(since)
        one = {"responses": 4, "promoters": 3, "passives": 0, "detractors": 1,
               "nps": 50.0, "csat": 75.0}  # fmt: skip
        return {**one, "departments": {"sales": one}, "services": {"email": one}}

    monkeypatch.setattr(Desk, "satisfaction_summary", summary, raising=False)
    html = run(quality)
    assert "NPS <strong>50.0</strong>, CSAT 75.0 %, from 4 answers." in html
    assert "<td>sales</td><td>4</td><td>50.0</td>" in html
    assert seen and seen[0] is not None, "read for the page's period"


def test_a_session_outlives_a_restart_of_the_collector(config, collector_server) -> None:
    """The session key comes from the secret the store keeps, not from the process: the
    collector restarted on the same store (or another collector on it) takes the cookie."""

    async def main() -> tuple[int, int, str]:
        async with browser_session() as http:
            async with collector_server(config) as url:
                await login(http, url, COLLECTOR_ADMIN_TOKEN)
                before, _, _ = await page(http, url, "/console/")
            async with collector_server(config) as url:
                after, html, _ = await page(http, url, "/console/")
                return before, after, html

    before, after, html = run(main)
    assert (before, after) == (200, 200)
    assert "Queue" in html and "Log in" not in html
