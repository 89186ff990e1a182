"""Config of the detection sources (clock, print, dns answers, service fallbacks) and the
per-host override of a manifest's detection schedule."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.agent.config import (
    ClockSpec,
    PrintSpec,
    ServiceFallback,
    load_agent_config,
)
from vigil.agent.remediation.manifest import check_library, load_library, with_schedule
from vigil.agent.remediation.schedule import host_offset
from vigil.agent.sampling.series import source_of
from vigil.agent.service import build_service
from vigil.agent.timers import Timers
from vigil.configio import ConfigError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "remediations"
MINIMAL = "collector:\n  url: http://127.0.0.1:9750\n  token: t0ken\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(MINIMAL + text)
    return path


def test_clock_print_and_service_fallbacks_load(tmp_path: Path) -> None:
    config = load_agent_config(
        write(
            tmp_path,
            "sampler:\n"
            "  clock: {server: '127.0.0.1:12300', timeout: 1s, interval: 2m}\n"
            "  print: {server: /run/cups/cups.sock, interval: 30s}\n"
            "  services:\n"
            "    - cups\n"
            "    - {name: legacyd, pidfile: run/legacyd.pid}\n"
            "    - {name: vpn, process: openconnect}\n"
            "    - {name: ntp, sysv: true}\n",
        )
    ).sampler
    assert config.clock == ClockSpec(server="127.0.0.1:12300", timeout_s=1.0, interval_s=120.0)
    assert config.printing == PrintSpec(server="/run/cups/cups.sock", interval_s=30.0)
    assert config.services == ("cups", "legacyd", "vpn", "ntp")
    assert config.service_fallbacks == (
        ServiceFallback("legacyd", pidfile=(tmp_path / "run/legacyd.pid").resolve()),
        ServiceFallback("vpn", process="openconnect"),
        ServiceFallback("ntp", sysv=True),
    )


def test_an_empty_clock_section_asks_the_local_time_service(tmp_path: Path) -> None:
    assert (
        load_agent_config(write(tmp_path, "sampler:\n  clock: {}\n")).sampler.clock == ClockSpec()
    )


def test_dns_probe_server_and_expect_load(tmp_path: Path) -> None:
    config = load_agent_config(
        write(
            tmp_path,
            "sampler:\n  probes:\n"
            "    - {name: intranet, dns: intranet.example.com, server: '127.0.0.1:5353',"
            " expect: [10.0.0.1, '::1']}\n"
            "    - {name: mail, dns: mail.example.com, expect: 10.0.0.2}\n",
        )
    )
    first, second = config.sampler.probes
    assert (first.server, first.expect) == ("127.0.0.1:5353", ("10.0.0.1", "::1"))
    assert (second.server, second.expect) == (None, ("10.0.0.2",))


def test_schedule_overrides_load_as_seconds(tmp_path: Path) -> None:
    path = write(tmp_path, "remediation:\n  schedule: {service-restart: 30s, clock-resync: 2m}\n")
    assert load_agent_config(path).remediation.schedule == {
        "service-restart": 30.0,
        "clock-resync": 120.0,
    }


@pytest.mark.parametrize(
    ("extra", "key", "value"),
    [
        (
            "remediation:\n  schedule: {service-restart: soon}\n",
            "remediation.schedule.service-restart",
            "soon",
        ),
        (
            "remediation:\n  schedule: {service-restart: 200ms}\n",
            "remediation.schedule.service-restart",
            "200ms",
        ),
        ("sampler:\n  clock: {server: 'ntp://x'}\n", "sampler.clock.server", "ntp://x"),
        ("sampler:\n  clock: {timeout: 1m}\n", "sampler.clock.timeout", "1m"),
        ("sampler:\n  clock: {sever: x}\n", "sampler.clock.sever", "x"),
        ("sampler:\n  print: {server: 'a b'}\n", "sampler.print.server", "a b"),
        ("sampler:\n  print: {interval: never}\n", "sampler.print.interval", "never"),
        ("sampler:\n  services: [{name: d}]\n", "sampler.services[0].pidfile", None),
        ("sampler:\n  services: [{name: d, process: a/b}]\n", "sampler.services[0].process", "a/b"),
        ("sampler:\n  services: [{name: d, sysv: false}]\n", "sampler.services[0].sysv", "False"),
        ("sampler:\n  services: [cups, {name: cups, sysv: true}]\n", "sampler.services[1]", "cups"),
        ("sampler:\n  services: [42]\n", "sampler.services[0]", "42"),
        (
            "sampler:\n  probes: [{name: p, dns: x, server: dns.example.com}]\n",
            "sampler.probes[0].server",
            "dns.example.com",
        ),
        (
            "sampler:\n  probes: [{name: p, dns: x, expect: [not-an-ip]}]\n",
            "sampler.probes[0].expect[0]",
            "not-an-ip",
        ),
        (
            "sampler:\n  probes: [{name: p, tcp: 'h:1', expect: 10.0.0.1}]\n",
            "sampler.probes[0].expect",
            "10.0.0.1",
        ),
    ],
    ids=[
        "schedule that is not a duration",
        "schedule below a second",
        "clock server with a scheme",
        "clock timeout too long",
        "typo in the clock section",
        "print server with a space",
        "print interval that is not a duration",
        "service mapping without a fallback",
        "process name with a slash",
        "sysv false",
        "duplicate service",
        "service that is not a name",
        "dns server that is not an address",
        "expect that is not an address",
        "expect on a tcp probe",
    ],
)
def test_a_mistake_names_file_key_and_value(
    tmp_path: Path, extra: str, key: str, value: str | None
) -> None:
    path = write(tmp_path, extra)
    with pytest.raises(ConfigError) as exc:
        load_agent_config(path)
    assert (exc.value.file, exc.value.key) == (str(path), key)
    if value is not None:
        assert value in str(exc.value)


def test_schedule_override_replaces_the_manifests_interval(tmp_path: Path) -> None:
    """service-restart ships with detection every 1 m; this host wants 30 s."""
    config = load_agent_config(
        write(
            tmp_path,
            f"remediation:\n  folders: [{SHIPPED}]\n  schedule: {{service-restart: 30s}}\n",
        )
    )
    library, errors = load_library(config.remediation.folders)
    assert not errors
    assert library["service-restart"].detect_every_s == 60.0
    check_library(config, library)
    scheduled = with_schedule(config, library)
    assert scheduled["service-restart"].detect_every_s == 30.0
    assert (
        scheduled["print-queue-clear"].detect_every_s == library["print-queue-clear"].detect_every_s
    )


def test_an_every_schedule_with_a_splay_starts_each_host_at_its_own_offset(
    tmp_path: Path,
) -> None:
    """Like a daily schedule's splay: the first detection run comes a stable per-host
    offset below the splay after the job starts, then every interval."""
    config = load_agent_config(
        write(
            tmp_path,
            f"agent: {{state_dir: {tmp_path / 'state'}}}\n"
            f"remediation:\n  folders: [{SHIPPED}]\n  enable: [service-restart]\n"
            "  params: {service-restart: {service: cups}}\n"
            "  schedule: {service-restart: {every: 60s, splay: 40s}}\n",
        )
    )
    svc = build_service(config)
    timers = Timers()
    svc._add_detection_jobs(timers)
    job = timers.jobs["detect.service-restart"]
    offset = host_offset(svc.identity.agent_id, "service-restart", 40.0)
    assert (job.period_s, job.first_in_s) == (60.0, offset)
    assert 0 < offset < 40.0


@pytest.mark.parametrize(
    ("rem_id", "why"),
    [("no-such-fix", "no such remediation"), ("kill-runaway", "no detection script")],
)
def test_a_schedule_for_a_fix_without_detection_is_rejected(
    tmp_path: Path, rem_id: str, why: str
) -> None:
    config = load_agent_config(
        write(tmp_path, f"remediation:\n  folders: [{SHIPPED}]\n  schedule: {{{rem_id}: 5m}}\n")
    )
    library, _ = load_library(config.remediation.folders)
    with pytest.raises(ConfigError) as exc:
        check_library(config, library)
    assert exc.value.key == f"remediation.schedule.{rem_id}"
    assert why in str(exc.value)


def test_agent_exits_2_naming_a_bad_schedule(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "agent:\n  state_dir: state\nremediation:\n  schedule: {service-restart: sometimes}\n",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "vigil.agent", "--config", str(path), "check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert str(path) in proc.stderr
    assert "remediation.schedule.service-restart" in proc.stderr
    assert "sometimes" in proc.stderr


def uncommented(text: str, *starts: str) -> str:
    """``text`` with each commented block that begins ``# <start>`` uncommented: that line
    and the more deeply indented commented lines right after it."""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)# (.*)$", lines[i], re.DOTALL)
        if match and match.group(2).startswith(starts):
            indent = match.group(1)
            lines[i] = indent + match.group(2)
            i += 1
            while i < len(lines) and lines[i].startswith(indent + "#  "):
                lines[i] = indent + lines[i][len(indent) + 2 :]
                i += 1
            continue
        i += 1
    return "".join(lines)


def test_the_example_config_triggers_the_fixes_from_sampled_series(tmp_path: Path) -> None:
    """config/agent.yaml's commented examples, uncommented: clock-resync and
    print-queue-clear are named by checks on the clock and print series, dns-flush's
    trigger check reads a dns answer, service-restart a service state, every check reads
    a series some source produces, and the whole passes the agent's start-up checks."""
    text = uncommented(
        (REPO / "config/agent.yaml").read_text(),
        "clock:",
        "print:",
        "services:",
        "probes:",
        "- id: clock.offset",
        "- id: print.",
        "- id: dns.answer",
        "- id: service.cups",
    )
    path = tmp_path / "agent.yaml"
    path.write_text(text.replace("../remediations", str(SHIPPED)))
    config = load_agent_config(path)
    library, errors = load_library(config.remediation.folders)
    assert not errors
    check_library(config, library)
    by_fix: dict[str, set[str | None]] = {}
    for check in config.checks:
        assert source_of(check.metric) is not None, check.metric
        if check.remediation is not None:
            by_fix.setdefault(check.remediation.id, set()).add(source_of(check.metric))
    assert by_fix["clock-resync"] == {"clock"}
    assert by_fix["print-queue-clear"] == {"print"}
    assert by_fix["service-restart"] == {"services"}
    metrics = {c.id: c.metric for c in config.checks}
    assert metrics["dns.answer"] == "probe.answer_ok[intranet-answer]"
    assert "intranet-answer" in [p.name for p in config.sampler.probes]
    assert config.sampler.clock is not None and config.sampler.printing is not None


def test_dns_flush_ships_with_a_trigger_on_the_dns_answer_check() -> None:
    library, _ = load_library([SHIPPED])
    assert [t.check for t in library["dns-flush"].trigger_checks] == ["dns.answer"]
