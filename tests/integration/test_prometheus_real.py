"""The shipped Prometheus and Grafana configuration, proven with Debian's real tools.

One real collector process is fed real wire reports (the agent's own schema, gzip, bearer
token) in two phases around a real Prometheus's first scrape, so counters move while
Prometheus watches and rates, increases and histograms have data. Then:

- ``promtool check metrics`` is clean on the live ``/metrics``;
- ``promtool check rules`` and ``promtool test rules`` pass on ``config/prometheus/``;
- the real Prometheus loads the shipped alert rules and evaluates every one without error;
- every query of every panel of the shipped Grafana dashboard, run through Prometheus's
  HTTP API, succeeds and returns at least one finite value.

Grafana's own variables are replaced as Grafana would before sending a query:
``$__rate_interval`` by ``1m`` and ``$__range`` by ``1h`` (Prometheus here scrapes every
second, so both windows hold many samples).
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.peers import free_port, require_binary
from tests.support.procs import collector_config, get_json, start_collector, stop, wait_for
from vigil import wire

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "config" / "prometheus"
DASHBOARD = REPO / "config" / "grafana" / "dashboards" / "vigil.json"
AGENT_TOKEN = "prom-agent-token-0123456789abcdef0123456789abcdef"
# /metrics needs an operator token; Prometheus sends it (scrape config ``authorization``).
ADMIN_TOKEN = "prom-admin-token-0123456789abcdef0123456789abcdef"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h"}
# What wait_for treats as "not yet" here: connection errors and answers not JSON (yet).
RETRY_ON = (OSError, ValueError)


# --------------------------------------------------------------------------- helpers


def post_report(url: str, report: wire.Report, token: str = AGENT_TOKEN) -> int:
    return post_report_ack(url, report, token)[0]


def post_report_ack(
    url: str, report: wire.Report, token: str = AGENT_TOKEN
) -> tuple[int, dict[str, Any]]:
    """POST a report; ``(status, the JSON ack or {})``."""
    request = urllib.request.Request(
        f"{url}/api/v1/reports",
        data=gzip.compress(wire.encode_report(report)),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def dashboard_queries() -> list[tuple[str, str]]:
    """``(panel title #refId, PromQL)`` for every query of every panel of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((f"{panel['title']} #{target['refId']}", expr))
    return queries


# --------------------------------------------------------------------------- the fleet


class Fleet:
    """Five hosts' worth of real wire reports, sent in two phases."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.accepted = 0
        self._seq = 0
        self.surveys: list[dict[str, Any]] = []  # survey offers the acks carried

    def send(self, host: str, *events: wire.Event, sent_at: float | None = None) -> None:
        now = time.time()
        report = wire.Report(
            schema_version=wire.SCHEMA_VERSION,
            agent_id=f"agent-{host}",
            hostname=host,
            labels={"department": "prom-test"},
            batch_id=str(uuid.uuid4()),
            sent_at=now if sent_at is None else sent_at,
            agent_version="0.1.0",
            events=events,
        )
        status, ack = post_report_ack(self.url, report)
        assert status == 200
        self.accepted += 1
        self.surveys += ack.get("surveys", [])

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def check(self, name: str, state: wire.CheckState, remediation: str | None = None) -> Any:
        return wire.CheckEvent(
            event_id=str(uuid.uuid4()),
            seq=self._next(),
            time=time.time(),
            check=name,
            state=state,
            previous_state=None,
            value=97.0 if state == "critical" else 40.0,
            message=f"{name} is {state}",
            remediation=remediation,
            ttl_s=60.0 if name == wire.HEARTBEAT_CHECK else None,
        )

    def run(self, remediation: str, check: str, outcome: wire.Outcome, seconds: float) -> Any:
        now = time.time()
        return wire.RemediationEvent(
            event_id=str(uuid.uuid4()),
            seq=self._next(),
            time=now,
            remediation=remediation,
            check=check,
            outcome=outcome,
            exit_code=0 if outcome == "fixed" else 1,
            started_at=now - seconds,
            duration_s=seconds,
            value_before=97.0,
            value_after=40.0 if outcome == "fixed" else 97.0,
            output="done\n",
            output_truncated=False,
            script_sha256="0" * 64,
            dry_run=False,
        )

    def footprint(self, cpu_seconds: float, rss_mib: float) -> Any:
        return wire.MetricsEvent(
            event_id=str(uuid.uuid4()),
            seq=self._next(),
            time=time.time(),
            values={
                "agent.cpu_seconds_total": cpu_seconds,
                "agent.rss_bytes": rss_mib * 2**20,
                "cpu.busy_percent": 12.0,
            },
        )

    def phase_one(self) -> None:
        """Before Prometheus: hosts, open incidents, a prevented failure, a failed fix."""
        for n, host in enumerate(("ws-1", "ws-2", "ws-3", "ws-4", "ws-5")):
            skewed = time.time() - 900 if host == "ws-5" else None  # a clock 15 min slow
            beat = self.check(wire.HEARTBEAT_CHECK, "ok")
            self.send(host, beat, self.footprint(1.0 + n, 30 + 5 * n), sent_at=skewed)
        self.send("ws-1", self.check("disk.free", "critical"))
        self.send("ws-2", self.check("disk.free", "critical"))
        self.send(
            "ws-3",
            self.check("disk.free", "critical", remediation="disk-cleanup"),
            self.run("disk-cleanup", "disk.free", "fixed", 2.0),
        )
        self.send(
            "ws-4",
            self.check("spooler.up", "critical", remediation="restart-spooler"),
            self.run("restart-spooler", "spooler.up", "not_fixed", 12.0),
        )

    def phase_two(self) -> None:
        """While Prometheus watches: a restore, more runs, CPU rates, a rejection."""
        time.sleep(1.0)  # a measurable time to restore, and a CPU interval
        self.send("ws-1", self.check("disk.free", "ok"))
        # ws-1's user answers the survey its resolved incident brought (NPS panels).
        (survey,) = self.surveys
        answer = urllib.parse.urlencode({"score": "9"}).encode()
        with urllib.request.urlopen(survey["url"], data=answer, timeout=10) as response:
            assert response.status == 200
        self.send(
            "ws-5",
            self.check("disk.free", "critical", remediation="disk-cleanup"),
            self.run("disk-cleanup", "disk.free", "fixed", 1.0),
        )
        self.send("ws-2", self.check("memory.free", "critical"))
        for n, host in enumerate(("ws-1", "ws-2", "ws-3", "ws-4", "ws-5")):
            self.send(host, self.footprint(1.0 + n + 0.01 * (n + 1), 31 + 5 * n))
        assert post_report(self.url, wire_report_for_rejection(), token="wrong") == 401


def wire_report_for_rejection() -> wire.Report:
    return wire.Report(
        schema_version=wire.SCHEMA_VERSION,
        agent_id="agent-intruder",
        hostname="intruder",
        labels={},
        batch_id=str(uuid.uuid4()),
        sent_at=time.time(),
        agent_version="0.1.0",
        events=(),
    )


@dataclass
class Stack:
    collector_url: str
    prometheus_url: str
    accepted: int

    def query(self, promql: str) -> dict[str, Any]:
        params = urllib.parse.urlencode({"query": promql})
        return get_json(f"{self.prometheus_url}/api/v1/query?{params}")


def start_prometheus(tmp: Path, collector_url: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    target = collector_url.removeprefix("http://")
    config = tmp / "prometheus.yml"
    # The shipped rules, by absolute path, evaluated every second.
    config.write_text(
        f"""\
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: ["{PROMETHEUS_DIR / "vigil.rules.yml"}"]
scrape_configs:
  - job_name: vigil-collector
    authorization: {{credentials: "{ADMIN_TOKEN}"}}
    static_configs: [{{targets: ["{target}"]}}]
"""
    )
    proc = subprocess.Popen(
        [
            require_binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "prometheus.log").open("w"),
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus-real")
    config = collector_config(
        tmp,
        agent_token=AGENT_TOKEN,
        admin_token=ADMIN_TOKEN,
        extra="metrics: {per_host_series: true, max_host_series: 3}\n"
        "satisfaction: {enabled: true}\n",
    )
    collector, collector_url = start_collector(config, tmp / "collector.log", cwd=REPO)
    prometheus: subprocess.Popen[str] | None = None
    try:
        fleet = Fleet(collector_url)
        fleet.phase_one()
        prometheus, prometheus_url = start_prometheus(tmp, collector_url)
        stack = Stack(collector_url, prometheus_url, fleet.accepted)

        def scraped_value(promql: str) -> float | None:
            result = stack.query(promql)["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        wait_for(
            "Prometheus's first scrape of the collector",
            lambda: scraped_value('up{job="vigil-collector"}') == 1,
            retry_on=RETRY_ON,
        )
        fleet.phase_two()
        stack.accepted = fleet.accepted
        wait_for(
            "a scrape after phase two",
            lambda: scraped_value("sum(vigil_reports_accepted_total)") == fleet.accepted,
            retry_on=RETRY_ON,
        )
        wait_for(  # survey figures are counted at the collector's tick (every 5 s)
            "a scrape with the survey answer",
            lambda: scraped_value("sum(vigil_survey_responses_total)") == 1,
            retry_on=RETRY_ON,
        )
        time.sleep(2.5)  # two more scrapes and rule evaluations on the final state
        yield stack
    finally:
        if prometheus is not None:
            stop(prometheus)
        stop(collector)


# --------------------------------------------------------------------------- promtool


def test_promtool_check_metrics_is_clean_on_a_live_metrics_page(stack: Stack) -> None:
    scrape = urllib.request.Request(
        f"{stack.collector_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with urllib.request.urlopen(scrape, timeout=10) as response:
        page = response.read()
    done = subprocess.run(
        [require_binary("promtool"), "check", "metrics"],
        input=page,
        capture_output=True,
        timeout=30,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, b"")


def test_promtool_check_rules_passes_on_the_shipped_rules() -> None:
    done = subprocess.run(
        [require_binary("promtool"), "check", "rules", str(PROMETHEUS_DIR / "vigil.rules.yml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_test_rules_passes_on_the_shipped_rule_tests() -> None:
    done = subprocess.run(
        [require_binary("promtool"), "test", "rules", "vigil.rules.test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROMETHEUS_DIR,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_example_scrape_config_is_valid(tmp_path: Path) -> None:
    # A copy, with the viewer token file the example reads (promtool checks it exists).
    shutil.copytree(PROMETHEUS_DIR, tmp_path / "prometheus")
    (tmp_path / "prometheus" / "vigil-viewer.token").write_text("vigil_op_example\n")
    done = subprocess.run(
        [require_binary("promtool"), "check", "config", "prometheus.yml"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path / "prometheus",
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- real Prometheus


def test_prometheus_evaluates_every_shipped_rule_without_error(stack: Stack) -> None:
    groups = get_json(f"{stack.prometheus_url}/api/v1/rules")["data"]["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert len(rules) == 12  # 12th: VigilNoCollectorLeads (several collectors)
    assert {name: (r["health"], r.get("lastError", "")) for name, r in rules.items()} == {
        name: ("ok", "") for name in rules
    }


def test_a_single_collector_leads_so_the_no_leader_alert_stays_quiet(stack: Stack) -> None:
    result = stack.query("sum by (job) (vigil_collector_leader)")["data"]["result"]
    assert [float(r["value"][1]) for r in result] == [1.0]


def test_the_failed_fix_is_seen_by_the_success_rate_alert_expression(stack: Stack) -> None:
    """restart-spooler fixed nothing: its success ratio is 0, not absent."""
    ratio = (
        '(sum by (remediation) (vigil_remediation_runs_total{outcome="fixed"})'
        " or sum by (remediation) (vigil_remediation_runs_total) * 0)"
        " / sum by (remediation) (vigil_remediation_runs_total)"
    )
    result = stack.query(ratio)["data"]["result"]
    assert {r["metric"]["remediation"]: float(r["value"][1]) for r in result} == {
        "disk-cleanup": 1.0,
        "restart-spooler": 0.0,
    }


def test_per_host_series_reach_prometheus_capped_with_an_overflow_series(stack: Stack) -> None:
    result = stack.query("vigil_host_last_seen_timestamp_seconds")["data"]["result"]
    hosts = sorted(r["metric"]["host"] for r in result)
    assert hosts == ["_overflow", "ws-1", "ws-2", "ws-3"]


@pytest.mark.parametrize(
    ("panel", "promql"), dashboard_queries(), ids=[p for p, _ in dashboard_queries()]
)
def test_every_dashboard_query_returns_data(stack: Stack, panel: str, promql: str) -> None:
    answer = stack.query(promql)
    assert answer["status"] == "success", answer
    values = [float(r["value"][1]) for r in answer["data"]["result"]]
    assert any(math.isfinite(v) for v in values), (panel, promql, answer["data"])


# --------------------------------------------------------------------------- shipped files


def test_every_dashboard_panel_queries_the_chosen_prometheus() -> None:
    """Each panel (rows aside) has a query, on the dashboard's data source variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert [p["title"] for p in panels if not p.get("targets")] == []
    sources = {t["datasource"]["uid"] for p in panels for t in p["targets"]}
    assert sources == {"${datasource}"}
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]


def test_dashboard_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids))


def test_the_provisioning_file_loads_dashboards_from_files() -> None:
    path = REPO / "config" / "grafana" / "provisioning" / "dashboards" / "vigil.yaml"
    (provider,) = yaml.safe_load(path.read_text())["providers"]
    assert (provider["type"], provider["folder"]) == ("file", "Vigil")
    assert provider["options"]["path"]
