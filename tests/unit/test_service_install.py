"""The agent's service definitions as generated files, and ``vigil-agent service``."""

from __future__ import annotations

import ast
import configparser
import dataclasses
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.agent.cli import main
from vigil.agent.service_cli import (
    SYSTEMD_RUNNING,
    _uninstall_commands,
    installed_unit,
    systemd_version,
)
from vigil.agent.svc.install import (
    LAUNCHD_THROTTLE_S,
    WATCHDOG_S,
    WINDOWS_SERVICE_NAME,
    ServiceSpec,
    launchd_plist,
    systemd_quote,
    systemd_unit,
    windows_service,
)

SPEC = ServiceSpec(config=Path("/etc/vigil/agent.yaml"))
# A config path an attacker might hope to break out of a unit, a shell or Python source with.
NASTY = Path("/srv/my vigil/50%$HOME\"';rm -rf \\.yaml")


def _unit(spec: ServiceSpec = SPEC) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(systemd_unit(spec))
    return parser


def _systemd_unquote(line: str) -> list[str]:
    """Undo :func:`systemd_quote` for a test: systemd's quoting is shlex's, plus %% and $$."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line, posix=True)]


def test_unit_runs_this_interpreter_with_the_config_as_a_notify_service() -> None:
    service = _unit()["Service"]
    assert _systemd_unquote(service["ExecStart"]) == SPEC.argv()
    assert SPEC.argv()[0] == sys.executable
    assert service["Type"] == "notify"
    assert service["WatchdogSec"] == str(WATCHDOG_S)


def test_unit_restarts_on_failure_with_a_start_limit_so_a_crash_loop_backs_off() -> None:
    unit = _unit()
    assert unit["Service"]["Restart"] == "on-failure"
    assert int(unit["Service"]["RestartSec"]) >= 5
    # A config error (exit 2) is not retried for ever.
    assert unit["Service"]["RestartPreventExitStatus"] == "2"
    # Start limits belong in [Unit] (systemd ignores them in [Service] since v230).
    assert int(unit["Unit"]["StartLimitBurst"]) >= 1
    assert int(unit["Unit"]["StartLimitIntervalSec"]) > int(unit["Service"]["RestartSec"])


def test_unit_is_hardened_where_remediations_allow() -> None:
    service = _unit()["Service"]
    assert service["ProtectSystem"] == "full"  # /var stays writable for log-rotate
    assert service["ProtectHome"] == "read-only"
    assert service["NoNewPrivileges"] == "yes"
    assert service["StateDirectory"] == "vigil"  # /var/lib/vigil, the root default state_dir
    assert "PrivateTmp" not in service  # temp-cleanup must see the real /tmp
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


def test_unit_explains_its_choices_in_comments() -> None:
    text = systemd_unit(SPEC)
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ProtectSystem=", "User="):
        before = text.split(key, 1)[0].rstrip("\n").rsplit("\n", 1)[-1]
        assert before.startswith("#"), f"no comment right above {key}"


def test_exec_start_quotes_blanks_quotes_percent_and_dollar() -> None:
    spec = ServiceSpec(config=NASTY, python=Path("/opt/vigil venv/bin/python"))
    line = _unit(spec)["Service"]["ExecStart"]
    assert _systemd_unquote(line) == spec.argv()
    assert "%%" in line and "$$" in line


@pytest.mark.parametrize("bad", ["a\nExecStartPre=/bin/evil", "nul\0", "esc\x1b"])
def test_control_characters_are_refused_not_written(bad: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        systemd_quote(bad)


def test_a_newline_in_the_config_path_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "a\nExecStartPre=evil.yaml"
    assert main(["--config", str(config), "service", "install", "--print"]) == 2
    assert "control character" in capsys.readouterr().err


def test_systemd_analyze_verifies_the_generated_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing under CI=true (.ci/run installs systemd)")
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    unit = tmp_path / "vigil-agent.service"
    unit.write_text(systemd_unit(SPEC))
    done = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify also reports unrelated units of the host; keep only what is about ours.
    ours = [line for line in done.stderr.splitlines() if "vigil-agent" in line]
    assert done.returncode == 0 and not ours, done.stderr


def test_launchd_plist_round_trips_with_keepalive_and_a_throttle() -> None:
    plist = plistlib.loads(launchd_plist(SPEC))
    assert plist["Label"] == "org.vigil.agent"
    assert plist["ProgramArguments"] == SPEC.argv()
    assert plist["RunAtLoad"] is True
    # Relaunched after a crash, not after a clean exit; never faster than the throttle.
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] == LAUNCHD_THROTTLE_S >= 10


def test_launchd_plist_carries_a_nasty_path_as_one_argument() -> None:
    spec = ServiceSpec(config=NASTY)
    assert plistlib.loads(launchd_plist(spec))["ProgramArguments"][4] == str(NASTY)


def test_windows_service_module_is_valid_python_with_the_argv_as_a_literal() -> None:
    spec = ServiceSpec(config=NASTY, python=Path("C:/Program Files/Vigil/python.exe"))
    svc = windows_service(spec, Path("C:/ProgramData/Vigil/vigil_agent_service.py"))
    tree = ast.parse(svc.module)  # would raise if the path broke out of its literal
    argv = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "ARGV"
    )
    assert ast.literal_eval(argv) == spec.argv()
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert [c.name for c in classes] == ["VigilAgentService"]
    assert ast.unparse(classes[0].bases[0]) == "win32serviceutil.ServiceFramework"
    # pywin32 is imported by the generated module only (on Windows), never by the agent.
    assert "win32serviceutil" not in sys.modules


def test_windows_commands_are_argument_vectors_with_restart_back_off() -> None:
    module = Path("C:/ProgramData/Vigil/vigil_agent_service.py")
    svc = windows_service(SPEC, module)
    assert all(
        isinstance(argv, list) and all(isinstance(a, str) for a in argv) for argv in svc.commands
    )
    assert svc.commands[0] == [sys.executable, str(module), "--startup", "auto", "install"]
    failure = next(argv for argv in svc.commands if argv[:2] == ["sc.exe", "failure"])
    actions = failure[failure.index("actions=") + 1].split("/")
    delays = [int(ms) for ms in actions[1::2]]
    assert actions[0::2] == ["restart"] * len(delays)
    assert delays == sorted(delays) and delays[0] < delays[-1]  # backs off


def test_print_shows_each_platforms_definition(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", "/etc/vigil/agent.yaml", "service", "install", "--print"]) == 0
    if sys.platform.startswith("linux"):
        assert "Type=notify" in capsys.readouterr().out
    assert main(["service", "install", "--dry-run", "--platform", "darwin"]) == 0
    assert plistlib.loads(capsys.readouterr().out.encode())["Label"] == "org.vigil.agent"
    assert main(["service", "install", "--print", "--platform", "win32"]) == 0
    ast.parse(capsys.readouterr().out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd install is Linux's")
@pytest.mark.skipif(SYSTEMD_RUNNING.is_dir(), reason="would enable a real service on this host")
def test_install_writes_the_unit_then_says_systemd_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.yaml"
    args = ["--config", str(config), "service"]
    assert main([*args, "install", "--unit-dir", str(tmp_path / "units")]) == 1
    unit = tmp_path / "units" / "vigil-agent.service"
    assert unit.read_text() == systemd_unit(ServiceSpec(config=config))
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    assert "systemd is not the running init" in capsys.readouterr().err
    assert main([*args, "status", "--unit-dir", str(tmp_path / "units")]) == 1
    assert "(present)" in capsys.readouterr().out
    assert main([*args, "uninstall", "--unit-dir", str(tmp_path / "units")]) == 1
    assert not unit.exists()


def test_install_for_another_platform_is_refused_without_print(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = "win32" if sys.platform != "win32" else "darwin"
    assert main(["service", "install", "--platform", other, "--unit-dir", str(tmp_path)]) == 2
    assert "--print" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_windows_uninstall_stops_best_effort_then_removes_the_service() -> None:
    module = Path("C:/ProgramData/Vigil/vigil_agent_service.py")
    best_effort, before, after = _uninstall_commands("win32", module)
    assert [argv[-1] for argv in best_effort] == ["stop"]  # may fail: not running
    assert [argv[-1] for argv in before] == ["remove"]
    assert after == []


@pytest.mark.parametrize(("version", "steps"), [(None, False), (252, False), (254, True)])
def test_restart_steps_only_for_a_systemd_that_knows_them(version: int | None, steps: bool) -> None:
    unit = _unit(dataclasses.replace(SPEC, systemd_version=version))
    assert ("RestartSteps" in unit["Service"]) is steps
    assert ("RestartMaxDelaySec" in unit["Service"]) is steps
    if steps:
        assert int(unit["Service"]["RestartMaxDelaySec"]) > int(unit["Service"]["RestartSec"])


def test_systemd_analyze_verifies_the_unit_for_this_machines_systemd(tmp_path: Path) -> None:
    """The unit written for the systemd found here passes its own verify."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing under CI=true (.ci/run installs systemd)")
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    version = systemd_version()
    assert version is not None and version > 200
    unit = tmp_path / "vigil-agent.service"
    unit.write_text(systemd_unit(dataclasses.replace(SPEC, systemd_version=version)))
    done = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    ours = [line for line in done.stderr.splitlines() if "vigil-agent" in line]
    assert done.returncode == 0 and not ours, done.stderr


@pytest.mark.parametrize(
    ("stdout", "code", "version"),
    [
        ("systemd 252 (252.38-1~deb12u1)\n+PAM", 0, 252),
        ("systemd 256.1 (x)", 0, 256),
        ("", 1, None),
        ("something else", 0, None),
    ],
    ids=["debian 12", "dotted", "failed", "not systemd"],
)
def test_systemd_version_reads_systemctl(stdout: str, code: int, version: int | None) -> None:
    def run(argv: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        assert argv == ["systemctl", "--version"]
        return subprocess.CompletedProcess(argv, code, stdout, "")

    assert systemd_version(run) == version


def test_launchd_plist_is_an_xml_property_list_of_a_background_daemon() -> None:
    """launchd reads XML plists with Apple's DOCTYPE; the job runs at low priority and
    logs where docs/install.md says."""
    raw = launchd_plist(SPEC, log_dir=Path("/Library/Logs/Vigil"))
    assert raw.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist')
    plist = plistlib.loads(raw, fmt=plistlib.FMT_XML)
    assert plist["ProcessType"] == "Background"
    assert plist["LowPriorityIO"] is True
    assert plist["Nice"] == 10
    assert plist["StandardErrorPath"] == "/Library/Logs/Vigil/agent.log"
    assert plist["StandardOutPath"] == "/Library/Logs/Vigil/agent.out"
    # Only keys launchd knows (a typo is silently ignored by launchd, so catch it here).
    known = {
        "Label", "ProgramArguments", "RunAtLoad", "KeepAlive", "ThrottleInterval",
        "ProcessType", "LowPriorityIO", "Nice", "StandardErrorPath", "StandardOutPath",
    }  # fmt: skip
    assert set(plist) == known


def test_windows_service_module_compiles_and_names_the_service_everywhere() -> None:
    """The module byte-compiles, registers ``VigilAgent`` (the name the sc.exe recovery
    commands use) and hands its command line to pywin32 when run as a script."""
    module = Path("C:/ProgramData/Vigil/vigil_agent_service.py")
    svc = windows_service(SPEC, module)
    compile(svc.module, str(module), "exec")  # raises SyntaxError if the template broke
    tree = ast.parse(svc.module)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    attrs = {
        t.id: ast.literal_eval(n.value)
        for n in cls.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    assert attrs["_svc_name_"] == WINDOWS_SERVICE_NAME == "VigilAgent"
    assert attrs["_svc_display_name_"]
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert {"SvcStop", "SvcDoRun"} <= methods
    assert "win32serviceutil.HandleCommandLine(VigilAgentService)" in svc.module
    sc_targets = [argv[2] for argv in svc.commands if argv[0] == "sc.exe"]
    assert sc_targets and set(sc_targets) == {WINDOWS_SERVICE_NAME}


def test_status_reports_the_unit_systemd_would_load_etc_before_the_package(tmp_path: Path) -> None:
    """``service status`` finds the .deb's unit in /usr/lib when ``service install`` wrote
    none in /etc, and the /etc one (which overrides it) when both exist."""
    etc, vendor = tmp_path / "etc", tmp_path / "usr-lib"
    etc.mkdir()
    vendor.mkdir()
    assert installed_unit((etc, vendor)) == etc / "vigil-agent.service"  # neither: /etc's path
    (vendor / "vigil-agent.service").write_text("[Unit]\n")
    assert installed_unit((etc, vendor)) == vendor / "vigil-agent.service"
    (etc / "vigil-agent.service").write_text("[Unit]\n")
    assert installed_unit((etc, vendor)) == etc / "vigil-agent.service"


def test_the_windows_service_hosts_the_agent_and_relaunches_it_after_an_update() -> None:
    """Windows has no execve: the host runs relaunch.run_host from the base install, with
    its request file beside the module, and fails (recovery) only on a non-zero status."""
    from vigil.agent.svc.install import RELAUNCH_REQUEST_NAME

    module = Path("C:/ProgramData/Vigil/vigil_agent_service.py")
    tree = ast.parse(windows_service(SPEC, module).module)
    imports = {
        f"{n.module}.{a.name}"
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom)
        for a in n.names
    }
    assert "vigil.agent.update.relaunch" in imports
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "relaunch.run_host" in calls
    request = next(
        n.value
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "REQUEST"
    )
    assert ast.unparse(request) == f"Path(__file__).with_name({RELAUNCH_REQUEST_NAME!r})"
