"""Satisfaction surveys end to end: a real collector and a real agent process.

An incident opens and resolves on the agent's machine; the collector queues a survey,
hands it over in the report ack; the agent runs its notifier (here a small program that
records its argument vector, set by ``surveys.notifier``) and reports it shown; the
person's answer goes over HTTP through the link the notification carried; NPS changes
in the API and in ``/metrics``. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import html.parser
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import (
    collector_config,
    get_json,
    read_metrics,
    spawn_agent,
    start_collector,
    stop,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX scripts as check/notifier")

REPO = Path(__file__).resolve().parents[2]
AGENT_TOKEN = "survey-agent-token-0123456789abcdef0123456789abcdef"
ADMIN_TOKEN = "survey-admin-token-0123456789abcdef0123456789abcdef"


def wait_until(what: str, probe: Callable[[], Any], timeout_s: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"{what} did not happen within {timeout_s} s; agent log:\n{log.read_text()}")


class _Form(html.parser.HTMLParser):
    """The survey page's form: its action and radio values."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.scores: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.action = a.get("action")
        if tag == "input" and a.get("type") == "radio" and a.get("name") == "score":
            self.scores.append(a.get("value") or "")


def post_form(url: str, fields: dict[str, str]) -> tuple[int, str]:
    data = urllib.parse.urlencode(fields).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_resolved_incident_is_surveyed_through_the_agent_and_the_answer_moves_nps(
    tmp_path: Path,
) -> None:
    flag = tmp_path / "broken"
    check = tmp_path / "check_flag"
    check.write_text(
        f'#!/bin/sh\nif [ -e "{flag}" ]; then echo "CRITICAL: printer jammed"; exit 2; fi\n'
        'echo "OK: printer fine"; exit 0\n'
    )
    check.chmod(0o755)
    calls = tmp_path / "notifier-calls.jsonl"
    notifier = tmp_path / "notifier"
    notifier.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(calls)!r}, 'a') as f:\n    f.write(json.dumps(sys.argv) + '\\n')\n"
    )
    notifier.chmod(0o755)

    ccfg = collector_config(
        tmp_path,
        agent_token=AGENT_TOKEN,
        admin_token=ADMIN_TOKEN,
        extra="satisfaction: {enabled: true, rate_limit: 7d, link_lifetime: 1d}\n",
    )
    collector, url = start_collector(ccfg, tmp_path / "collector.log", cwd=REPO)
    agent_cfg = tmp_path / "agent.yaml"
    agent_cfg.write_text(
        f"""\
agent: {{state_dir: state, labels: {{department: sales}}}}
collector: {{url: "{url}", token: {AGENT_TOKEN}}}
intervals: {{sample: 300ms, report: 300ms, heartbeat: 1s, metrics: 5s}}
shipping: {{start_jitter: 0s}}
surveys: {{notifier: ["{notifier}", "--from-vigil"]}}
checks:
  - id: printer.queue
    command: ["{check}"]
    interval: 300ms
"""
    )
    log = tmp_path / "agent.log"
    flag.touch()
    agent = spawn_agent(agent_cfg, log, cwd=REPO, unbuffered=True)
    try:

        def incidents(state: str) -> list[dict[str, Any]]:
            return get_json(f"{url}/api/v1/incidents?state={state}", ADMIN_TOKEN)["incidents"]

        (incident,) = wait_until("the incident opening", lambda: incidents("open"), 30, log)
        flag.unlink()
        wait_until("the incident resolving", lambda: incidents("resolved"), 30, log)

        # The agent's notifier ran with the title, body and the survey link.
        argv = wait_until(
            "the notifier call",
            lambda: calls.exists() and [json.loads(x) for x in calls.read_text().splitlines()],
            30,
            log,
        )
        assert len(argv) == 1
        _, flag_arg, title, body, link = argv[0]
        assert flag_arg == "--from-vigil" and "how did we do" in title
        assert "printer" in body and link.startswith(f"{url}/survey/")

        surveys_path = f"{url}/api/v1/incidents/{incident['id']}/surveys"
        shown = wait_until(
            "the agent reporting the survey shown",
            lambda: [
                s for s in get_json(surveys_path, ADMIN_TOKEN)["surveys"] if s["state"] == "shown"
            ],
            30,
            log,
        )
        assert shown[0]["department"] == "sales"

        before = get_json(f"{url}/api/v1/satisfaction", ADMIN_TOKEN)["satisfaction"]
        assert before["responses"] == 0 and before["nps"] is None

        with urllib.request.urlopen(link, timeout=10) as page:
            form = _Form()
            form.feed(page.read().decode())
        assert form.scores == [str(n) for n in range(11)] and form.action
        action = urllib.parse.urljoin(link, form.action)
        assert post_form(action, {"score": "4", "comment": "took a while"})[0] == 200
        status, text = post_form(action, {"score": "10"})
        assert status == 410 and "already" in text  # single use
        forged = link[:-3] + ("xyz" if not link.endswith("xyz") else "abc")
        assert post_form(forged, {"score": "10"})[0] == 403

        after = get_json(f"{url}/api/v1/satisfaction", ADMIN_TOKEN)["satisfaction"]
        assert after["responses"] == 1 and after["nps"] == -100.0
        assert after["departments"]["sales"]["detractors"] == 1
        (answer,) = get_json(surveys_path, ADMIN_TOKEN)["surveys"]
        assert (answer["score"], answer["comment"]) == (4, "took a while")

        key = ("vigil_nps", (("department", "sales"), ("service", "none")))
        metrics = wait_until(
            "vigil_nps in /metrics",
            lambda: (m := read_metrics(f"{url}/metrics", ADMIN_TOKEN)).get(key) is not None and m,
            15,
            log,
        )
        assert metrics[key] == -100.0
        responses = ("vigil_survey_responses_total", (("department", "sales"), ("service", "none")))
        assert metrics[responses] == 1.0
        # No second notification: the survey was shown once and reported.
        time.sleep(1.0)
        assert len(calls.read_text().splitlines()) == 1
    finally:
        assert stop(agent) == 0, log.read_text()
        assert stop(collector) == 0, (tmp_path / "collector.log").read_text()
