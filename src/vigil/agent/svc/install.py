"""The agent's own service definition for each platform, generated as data.

:func:`systemd_unit` (Linux), :func:`launchd_plist` (macOS) and :func:`windows_service`
(a pywin32 service module plus the argument vectors that register it) are pure: they take
a :class:`ServiceSpec` and return text, bytes or lists, so every platform's definition is
tested on any machine. Installing (writing the file, asking the service manager to load it)
is :mod:`vigil.agent.service_cli`'s. No value is ever pasted into a shell string: commands
are argument vectors, the unit's ``ExecStart`` is quoted by systemd's own rules, the plist
is written by :mod:`plistlib` and the Windows module embeds values as Python literals.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from vigil.agent.update.relaunch import RELAUNCH_EXIT_CODE

SYSTEMD_UNIT_NAME = "vigil-agent.service"
SYSTEMD_UNIT_DIR = Path("/etc/systemd/system")
# Where the vigil-agent .deb ships the same unit (packaging/build_deb.py): the vendor
# folder, which a unit of the same name in SYSTEMD_UNIT_DIR overrides.
PACKAGE_UNIT_DIR = Path("/usr/lib/systemd/system")
LAUNCHD_LABEL = "org.vigil.agent"
LAUNCHD_DIR = Path("/Library/LaunchDaemons")
WINDOWS_SERVICE_NAME = "VigilAgent"
# systemd's watchdog interval (seconds): the agent pings every half of it
# (vigil.agent.svc.notify), so a loop blocked this long gets the agent restarted.
WATCHDOG_S = 60
# Restart back-off: the first restart after RESTART_S; more than START_LIMIT_BURST starts
# within START_LIMIT_INTERVAL_S stop the restarts (systemd) until an admin looks. The
# agent backs off by itself too (vigil.agent.crashguard: 10 s doubling to 5 min after 3
# crashed starts), so the start limit is the last resort for a loop that the agent's own
# back-off cannot stop: wide enough that the back-off gets to work (about 18 starts in
# the first hour of a loop), narrow enough that a broken agent is not started for ever.
RESTART_S = 10
START_LIMIT_BURST = 30
START_LIMIT_INTERVAL_S = 3600
# systemd >= 254 grows the restart delay itself: RESTART_S up to RESTART_MAX_DELAY_S in
# RESTART_STEPS steps. Older versions reject the keys, so they are written only for them.
RESTART_STEPS = 5
RESTART_MAX_DELAY_S = 300
RESTART_STEPS_SINCE = 254
# launchd relaunches no more often than this (seconds): its crash-loop back-off.
LAUNCHD_THROTTLE_S = 30
# Windows service recovery: restart after 10 s, 60 s, then 5 min; the count resets daily.
WINDOWS_RESTART_MS = (10_000, 60_000, 300_000)
WINDOWS_RESET_S = 86_400
# Where the Windows service host and the agent exchange relaunch requests (self-update):
# a file beside the service module (vigil.agent.update.relaunch).
RELAUNCH_REQUEST_NAME = "vigil_agent_relaunch.json"


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs: ``python -m vigil.agent --config CONFIG run``.

    ``python`` defaults to this interpreter (the venv the agent is installed in);
    ``config`` should be absolute (a service does not start in the admin's directory).
    """

    config: Path
    python: Path = field(default_factory=lambda: Path(sys.executable))
    log_level: str = "INFO"
    # The target's systemd version (``None``: unknown, assume an old one): from 254 the
    # unit also gets RestartSteps=/RestartMaxDelaySec=.
    systemd_version: int | None = None

    def argv(self) -> list[str]:
        """The agent's command line as an argument vector."""
        return [
            str(self.python),
            "-m",
            "vigil.agent",
            "--config",
            str(self.config),
            "--log-level",
            self.log_level,
            "run",
        ]


def _check_printable(argv: list[str]) -> None:
    for arg in argv:
        if any(ord(ch) < 32 or ch == "\x7f" for ch in arg):
            raise ValueError(f"control character in service argument {arg!r}")


def systemd_quote(arg: str) -> str:
    """One ``ExecStart=`` word by systemd's rules: ``%`` and ``$`` doubled (else they are
    specifiers and variables), and double quotes with backslash escapes around a word
    that has blanks, quotes or backslashes. Raises ValueError on control characters."""
    _check_printable([arg])
    word = arg.replace("%", "%%").replace("$", "$$")
    if word and not any(ch in word for ch in " \t\"\\'"):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(spec: ServiceSpec) -> str:
    """The hardened ``vigil-agent.service`` text; each choice is explained in the file.

    With ``spec.systemd_version`` >= 254 the restart delay also grows by itself
    (``RestartSteps=``, ``RestartMaxDelaySec=``); older systemd refuses those keys."""
    exec_start = " ".join(systemd_quote(a) for a in spec.argv())
    steps = ""
    if spec.systemd_version is not None and spec.systemd_version >= RESTART_STEPS_SINCE:
        steps = (
            f"# systemd >= {RESTART_STEPS_SINCE}: the delay grows from {RESTART_S} s to "
            f"{RESTART_MAX_DELAY_S} s over {RESTART_STEPS} restarts.\n"
            f"RestartSteps={RESTART_STEPS}\nRestartMaxDelaySec={RESTART_MAX_DELAY_S}\n"
        )
    return f"""\
# vigil-agent.service, written by `vigil-agent service install`; see docs/install.md.
# Regenerate with `vigil-agent service install --print` rather than editing by hand.
[Unit]
Description=Vigil endpoint agent
# The agent samples local state from the start but delivers over the network: start it
# once the network is configured, without delaying boot for it (the outbox holds events).
Wants=network-online.target
After=network-online.target
# A crash loop backs off: restarts are {RESTART_S} s apart (growing, on systemd >= 254),
# the agent itself waits longer at each crashed start (docs/install.md, "Crash-loop
# back-off"), and after {START_LIMIT_BURST} starts in {START_LIMIT_INTERVAL_S} s systemd stops
# trying and the unit stays failed until `systemctl reset-failed vigil-agent` (or a reboot).
StartLimitIntervalSec={START_LIMIT_INTERVAL_S}
StartLimitBurst={START_LIMIT_BURST}

[Service]
# Type=notify: the agent sends READY=1 once its jobs are scheduled (sd_notify over
# NOTIFY_SOCKET, no dependency), so `systemctl start` returns when it really runs.
Type=notify
# Only the agent's own process may send notifications (not its remediation scripts).
NotifyAccess=main
ExecStart={exec_start}
# The agent pings WATCHDOG=1 every {WATCHDOG_S // 2} s from its event loop; a loop blocked for
# {WATCHDOG_S} s sends none, and systemd kills (SIGABRT) and restarts it.
WatchdogSec={WATCHDOG_S}
# Restart after a crash, a watchdog timeout or an unclean exit, not after a clean stop or
# a config error (exit 2: restarting cannot fix the config, so do not loop on it).
Restart=on-failure
RestartPreventExitStatus=2
RestartSec={RESTART_S}
{steps}# SIGTERM makes the agent flush its outbox for up to 3 s and stop; allow some margin.
TimeoutStopSec=20
# Runs as root: remediations restart services, flush DNS caches, clear print queues and
# kill runaway processes, which need it (docs/install.md, "What runs as root").
User=root
# State (identity, outbox, credential) in /var/lib/vigil, created 0700 by systemd.
StateDirectory=vigil
StateDirectoryMode=0700
# Hardening that the shipped remediations tolerate:
#   ProtectSystem=full   /usr, /boot, /efi and /etc read-only (remediations write under
#                        /var and /tmp only); not "strict", which would make /var read-only.
#   ProtectHome=read-only  home folders can be read (disk-usage checks), never written.
#   NoNewPrivileges      no setuid escalation from remediation scripts (root already).
#   PrivateTmp is NOT set: temp-cleanup must see the real /tmp.
ProtectSystem=full
ProtectHome=read-only
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictRealtime=yes
# Stay a background citizen on a laptop (docs/benchmarks.md): lower CPU and I/O priority
# (not the idle class, which could starve the agent on a busy disk).
Nice=10
IOSchedulingClass=best-effort
IOSchedulingPriority=7

[Install]
WantedBy=multi-user.target
"""


def launchd_plist(spec: ServiceSpec, log_dir: Path = Path("/Library/Logs/Vigil")) -> bytes:
    """The ``org.vigil.agent`` LaunchDaemon plist (XML). ``KeepAlive`` relaunches it
    after a crash (not after a clean exit), ``ThrottleInterval`` spaces relaunches so a
    crash loop backs off. launchd has no watchdog: a hung agent is seen by the collector
    as a silent agent (liveness), not restarted."""
    import plistlib  # here, not at the top: every `vigil-agent` start would pay for expat

    return plistlib.dumps(
        {
            "Label": LAUNCHD_LABEL,
            "ProgramArguments": spec.argv(),
            "RunAtLoad": True,
            "KeepAlive": {"SuccessfulExit": False},
            "ThrottleInterval": LAUNCHD_THROTTLE_S,
            "ProcessType": "Background",
            "LowPriorityIO": True,
            "Nice": 10,
            "StandardErrorPath": str(log_dir / "agent.log"),
            "StandardOutPath": str(log_dir / "agent.out"),
        },
        fmt=plistlib.FMT_XML,
    )


@dataclass(frozen=True)
class WindowsService:
    """The Windows service: ``module`` is the pywin32 service module's source (saved as
    ``vigil_agent_service.py`` beside the config); ``commands`` are the argument vectors
    that register it, set its recovery (restart with back-off) and start it."""

    module: str
    commands: list[list[str]]


def windows_service(spec: ServiceSpec, module_path: Path) -> WindowsService:
    """The pywin32 service (imported only on Windows, when the module runs) for ``spec``;
    ``module_path`` is where its source will be written. The module is the agent's host:
    it runs :func:`vigil.agent.update.relaunch.run_host`, which starts the agent again
    in a new release when it exits with
    :data:`~vigil.agent.update.relaunch.RELAUNCH_EXIT_CODE` (Windows has no ``execve``)."""
    module = f'''\
"""Vigil agent as a Windows service (pywin32). Written by `vigil-agent service install`.

The host owns the agent's process: an agent that self-updates exits with
{RELAUNCH_EXIT_CODE} and this host starts it again in the release it asked for
(vigil.agent.update.relaunch, from the base install: a bad release cannot replace it).
"""

import os
import subprocess
from pathlib import Path

import servicemanager
import win32event
import win32service
import win32serviceutil

from vigil.agent.update import relaunch

ARGV = {spec.argv()!r}
# The agent's relaunch requests: beside this module, as trusted as the module itself.
REQUEST = Path(__file__).with_name({RELAUNCH_REQUEST_NAME!r})


class VigilAgentService(win32serviceutil.ServiceFramework):
    _svc_name_ = {WINDOWS_SERVICE_NAME!r}
    _svc_display_name_ = "Vigil endpoint agent"
    _svc_description_ = "Samples health, runs checks and remediations, reports to Vigil."

    def __init__(self, args):
        super().__init__(args)
        self.stop_event = win32event.CreateEvent(None, 0, 0, None)
        self.proc = None

    def SvcStop(self):
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
        # The event first, then the process: run_host checks the event after each start.
        win32event.SetEvent(self.stop_event)
        proc = self.proc
        if proc is not None:
            proc.terminate()

    def stopping(self):
        return win32event.WaitForSingleObject(self.stop_event, 0) == win32event.WAIT_OBJECT_0

    def start(self, argv, env):
        self.proc = subprocess.Popen(argv, env=env)
        return self.proc

    def SvcDoRun(self):
        servicemanager.LogInfoMsg("vigil-agent starting: " + subprocess.list2cmdline(ARGV))
        code = relaunch.run_host(
            ARGV,
            REQUEST,
            environ=os.environ,
            start=self.start,
            stopping=self.stopping,
            note=servicemanager.LogInfoMsg,
        )
        if code != 0:
            # A non-zero exit makes the service manager apply its recovery actions.
            raise SystemExit(code)


if __name__ == "__main__":
    win32serviceutil.HandleCommandLine(VigilAgentService)
'''
    actions = "/".join(f"restart/{ms}" for ms in WINDOWS_RESTART_MS)
    python = str(spec.python)
    commands = [
        [python, str(module_path), "--startup", "auto", "install"],
        # Recovery: restart with growing delays; also on a non-zero exit, not only a crash.
        # (sc.exe wants "reset=" and its value as two words.)
        [
            "sc.exe",
            "failure",
            WINDOWS_SERVICE_NAME,
            "reset=",
            str(WINDOWS_RESET_S),
            "actions=",
            actions,
        ],
        ["sc.exe", "failureflag", WINDOWS_SERVICE_NAME, "1"],
        [python, str(module_path), "start"],
    ]
    return WindowsService(module=module, commands=commands)
