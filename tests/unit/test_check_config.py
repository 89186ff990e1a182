"""Config for checks and sampling: hysteresis, flapping, intervals, plugins, probes, processes.

Every mistake names the file, the key path and the value (and exits 2 from the CLI).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vigil.agent.config import CheckSpec, ProbeSpec, ProcessSpec, load_agent_config
from vigil.configio import ConfigError

REPO = Path(__file__).resolve().parents[2]
HEAD = """\
collector: {url: "http://127.0.0.1:9750", token: t0ken}
"""


def load(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD + body)
    return load_agent_config(path)


def check(tmp_path: Path, lines: str) -> CheckSpec:
    (spec,) = load(tmp_path, "checks:\n  - " + lines.replace("\n", "\n    ")).checks
    return spec


def test_threshold_check_options(tmp_path: Path) -> None:
    spec = check(
        tmp_path,
        "id: cpu\nmetric: cpu.busy_percent\nwarning: 90\ncritical: 98\nrecovery: 80\n"
        "flapping: {changes: 6, window: 10m}\ninterval: 1s",
    )

    assert (spec.recovery, spec.flap_changes, spec.flap_window_s, spec.interval_s) == (
        80.0,
        6,
        600.0,
        1.0,
    )
    assert not spec.is_command


def test_command_check(tmp_path: Path) -> None:
    spec = check(
        tmp_path,
        "id: load\ncommand: [/usr/lib/nagios/plugins/check_load, -w, '5,4,3']\n"
        "timeout: 5s\ninterval: 1m\nfor: 2m",
    )

    assert spec.command == ("/usr/lib/nagios/plugins/check_load", "-w", "5,4,3")
    assert (spec.timeout_s, spec.interval_s, spec.for_s, spec.metric) == (5.0, 60.0, 120.0, "")
    assert spec.is_command


def test_relative_plugin_path_resolves_against_the_config_folder(tmp_path: Path) -> None:
    spec = check(tmp_path, "id: mine\ncommand: [plugins/check_mine]")

    assert spec.command == (str(tmp_path / "plugins" / "check_mine"),)


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        pytest.param(
            "id: d\nmetric: m\nwarning: 90\nrecovery: 95",
            "checks[0].recovery",
            "must be on the ok side of 90.0",
            id="recovery beyond the warning level",
        ),
        pytest.param(
            "id: d\nmetric: m\nop: '<'\ncritical: 10\nrecovery: 5",
            "checks[0].recovery",
            "must be on the ok side of 10.0",
            id="recovery on the wrong side for <",
        ),
        pytest.param(
            "id: d\nmetric: m\ncritical: 1\nflapping: {changes: 1}",
            "checks[0].flapping.changes",
            "must be at least 2",
            id="flapping needs two changes",
        ),
        pytest.param(
            "id: d\nmetric: m\ncritical: 1\nflapping: {changes: 3, windw: 1m}",
            "checks[0].flapping.windw",
            "unknown key",
            id="typo in flapping",
        ),
        pytest.param(
            "id: d\nmetric: m\ncritical: 1\ninterval: 0s",
            "checks[0].interval",
            "must be at least 0.1s",
            id="zero interval",
        ),
        pytest.param(
            "id: d\nmetric: m\ncritical: 1\ntimeout: 5s",
            "checks[0].timeout",
            "only command checks take a timeout",
            id="timeout on a threshold check",
        ),
        pytest.param(
            "id: d\ncommand: []",
            "checks[0].command",
            "expected a non-empty list",
            id="empty command",
        ),
        pytest.param(
            "id: d\ncommand: /bin/check_x -w 5",
            "checks[0].command",
            "expected a list",
            id="command as a shell string",
        ),
        pytest.param(
            "id: d\ncommand: [/bin/x]\ncritical: 1",
            "checks[0].critical",
            "takes its state from the plugin",
            id="thresholds on a command check",
        ),
    ],
)
def test_bad_check_names_key_and_reason(tmp_path: Path, lines: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check(tmp_path, lines)

    assert err.value.key == key
    assert message in str(err.value)


def test_sampler_sources(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
sampler:
  disk_timeout: 500ms
  per_core: true
  process_scan: 2m
  slow_interval: 5m
  top_n: 3
  services: [cups]
  processes:
    - {name: vpn, cmdline: "openconnect .*", user: root}
  probes:
    - {name: dns, dns: intranet.example.com, timeout: 1s}
    - {name: proxy, tcp: "proxy.example.com:3128"}
    - {name: web, http: "https://intranet.example.com/"}
  paths:
    - {name: tmp, path: /tmp, interval: 5m}
""",
    )
    sa = config.sampler

    assert (sa.disk_timeout_s, sa.per_core, sa.process_scan_s, sa.slow_s, sa.top_n) == (
        0.5,
        True,
        120.0,
        300.0,
        3,
    )
    assert sa.services == ("cups",)
    assert sa.processes == (ProcessSpec("vpn", None, "openconnect .*", "root"),)
    assert sa.probes == (
        ProbeSpec("dns", "dns", "intranet.example.com", 1.0),
        ProbeSpec("proxy", "tcp", "proxy.example.com:3128", 5.0),
        ProbeSpec("web", "http", "https://intranet.example.com/", 5.0),
    )
    assert sa.paths[0].interval_s == 300.0


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        pytest.param(
            "sampler:\n  processes:\n    - {name: x}",
            "sampler.processes[0].exe",
            "at least one of exe, cmdline, user",
            id="process without criteria",
        ),
        pytest.param(
            "sampler:\n  processes:\n    - {name: x, cmdline: '(['}",
            "sampler.processes[0].cmdline",
            "not a regular expression",
            id="bad cmdline regex",
        ),
        pytest.param(
            "sampler:\n  probes:\n    - {name: x, tcp: intranet}",
            "sampler.probes[0].tcp",
            "expected host:port",
            id="tcp probe without port",
        ),
        pytest.param(
            "sampler:\n  probes:\n    - {name: x, dns: a, http: 'http://a'}",
            "sampler.probes[0].dns",
            "exactly one of dns, tcp, http",
            id="two probe kinds",
        ),
        pytest.param(
            "sampler:\n  probes:\n    - {name: x, http: 'ftp://a'}",
            "sampler.probes[0].http",
            "http:// or https://",
            id="non-http url",
        ),
        pytest.param(
            "sampler:\n  processes:\n    - {name: x, exe: a}\n    - {name: x, exe: b}",
            "sampler.processes[1].name",
            "duplicate processes name",
            id="duplicate process name",
        ),
    ],
)
def test_bad_sampler_config_names_key_and_reason(
    tmp_path: Path, body: str, key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, body)

    assert err.value.key == key
    assert message in str(err.value)


def test_bad_check_config_exits_2_from_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD + "checks:\n  - {id: d, metric: m, warning: 90, recovery: 95}\n")

    done = subprocess.run(
        [sys.executable, "-m", "vigil.agent", "--config", str(path), "check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )

    assert done.returncode == 2
    assert "checks[0].recovery" in done.stderr
