"""Several collector processes: the ``listen.reuse_port`` config rules, and what one
process's ``/metrics`` shows depending on whether it leads (telemetry/scope.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from vigil.collector.config import load_collector_config
from vigil.collector.telemetry.scope import LeaderFlag, ScopedRegistry
from vigil.configio import CONFIG_EXIT_CODE, ConfigError

TOKEN = "mc-agent-token-0123456789abcdef0123456789abcdef"
PG = "postgresql://vigil@127.0.0.1:5432/vigil"


def write(tmp_path: Path, listen: str, storage: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(
        f"listen: {{host: 127.0.0.1, port: 9750{listen}}}\n"
        f"storage: {storage}\n"
        f"auth: {{agent_tokens: [{TOKEN}]}}\n"
    )
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads on Linux")
def test_reuse_port_with_postgresql_loads(tmp_path: Path) -> None:
    config = load_collector_config(write(tmp_path, ", reuse_port: true", f"{{url: '{PG}'}}"))
    assert config.reuse_port is True


def test_reuse_port_is_off_by_default(tmp_path: Path) -> None:
    assert load_collector_config(write(tmp_path, "", "{sqlite_path: c.db}")).reuse_port is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux-only error differs")
def test_reuse_port_with_sqlite_is_refused_naming_both_keys(tmp_path: Path) -> None:
    path = write(tmp_path, ", reuse_port: true", "{sqlite_path: c.db}")
    with pytest.raises(ConfigError) as caught:
        load_collector_config(path)
    text = str(caught.value)
    assert str(path) in text and "listen.reuse_port" in text
    assert "storage.url" in text and "SQLite" in text


def test_reuse_port_elsewhere_than_linux_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SO_REUSEPORT does not spread connections on macOS/BSD and is absent on Windows."""
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ConfigError, match=r"listen\.reuse_port.*needs Linux"):
        load_collector_config(write(tmp_path, ", reuse_port: true", f"{{url: '{PG}'}}"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux-only error differs")
def test_the_collector_exits_2_for_reuse_port_on_sqlite(tmp_path: Path) -> None:
    path = write(tmp_path, ", reuse_port: true", "{sqlite_path: c.db}")
    done = subprocess.run(
        [sys.executable, "-m", "vigil.collector", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == CONFIG_EXIT_CODE
    assert "listen.reuse_port" in done.stderr and "storage.url" in done.stderr


class _Families:
    """One fleet gauge, one fleet counter and two process families."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("vigil_agents", "fleet", value=7)
        yield CounterMetricFamily("vigil_reports_accepted", "fleet", value=100)
        yield CounterMetricFamily("vigil_reports_rejected", "process", value=2)
        yield GaugeMetricFamily("vigil_build_info", "process", value=1)


def scrape(leading: bool) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families())  # type: ignore[arg-type]
    return generate_latest(ScopedRegistry(registry, LeaderFlag(leading))).decode()  # type: ignore[arg-type]


def test_the_leader_serves_fleet_and_process_families() -> None:
    text = scrape(leading=True)
    assert "vigil_collector_leader 1.0" in text
    assert "vigil_agents 7.0" in text and "vigil_reports_accepted_total 100.0" in text
    assert "vigil_reports_rejected_total 2.0" in text and "vigil_build_info 1.0" in text


def test_a_follower_serves_only_its_process_families() -> None:
    text = scrape(leading=False)
    assert "vigil_collector_leader 0.0" in text
    assert "vigil_agents " not in text and "vigil_reports_accepted" not in text
    assert "vigil_reports_rejected_total 2.0" in text and "vigil_build_info 1.0" in text


def test_a_new_leader_rebuilds_at_once_then_every_interval() -> None:
    flag = LeaderFlag()
    assert not flag.rebuild_due(0.0, 60.0)  # a follower never rebuilds
    flag.set(True)
    assert flag.rebuild_due(0.0, 60.0)
    flag.rebuilt(0.0)
    assert not flag.rebuild_due(59.0, 60.0)
    assert flag.rebuild_due(60.0, 60.0)
    flag.set(False)
    flag.set(True)  # lost the lock and took it again: others applied meanwhile
    assert flag.rebuild_due(1.0, 60.0)


def test_a_rebuild_counts_what_another_process_applied(tmp_path: Path) -> None:
    """Two desks on one database stand for two collector processes: the leader's figures
    follow only its own reports until it rebuilds them from the database."""
    from tests.support.desk import open_desk
    from tests.support.simagents import SimAgent

    leader, other = open_desk(tmp_path / "c.db"), open_desk(tmp_path / "c.db")
    try:
        agents = [SimAgent(f"h{i}") for i in range(3)]
        leader.ingest(agents[0].report(), 1000.0)
        for agent in agents[1:]:
            other.ingest(agent.report(check="disk.full", state="critical"), 1000.0)
        before = leader.metrics_snapshot()
        assert before.reports_accepted_total == 1 and before.liveness.hosts == 1

        leader.refresh_metrics_figures(1000.0)
        leader.reload_aggregates()
        after = leader.metrics_snapshot()
        assert after.reports_accepted_total == 3 and after.liveness.hosts == 3
        assert after.checks_failing == {"disk.full": 2}
        assert sum(after.incidents_open.values()) == 2
        # Its own next report still counts once, on top of the rebuilt figures.
        leader.ingest(agents[0].report(), 1001.0)
        assert leader.metrics_snapshot().reports_accepted_total == 4
    finally:
        leader.close()
        other.close()
