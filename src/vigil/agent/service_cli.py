"""``vigil-agent service install|uninstall|status``: run the agent as a system service.

``install`` writes the platform's definition (:mod:`vigil.agent.svc.install`): a systemd
unit on Linux, a LaunchDaemon plist on macOS, a pywin32 service module on Windows, for
this interpreter and the ``--config`` given (made absolute). ``--print`` (``--dry-run``)
prints it and changes nothing; ``--platform`` picks another platform's definition to
print. On Linux the unit goes to ``--unit-dir`` (default ``/etc/systemd/system``) and
``systemctl daemon-reload`` + ``enable --now`` run only when systemd is the running init
(``/run/systemd/system`` exists, as ``sd_booted()`` checks); otherwise the command says so
and exits 1 with the file written. ``uninstall`` reverses it; ``status`` says whether the
file is there (on Linux also the .deb's unit in ``/usr/lib/systemd/system``) and, under
systemd, whether the unit is active.

Exit status: 0 done; 1 the service manager failed or is absent, or writing failed;
2 bad usage (an unsupported platform, a config path with control characters).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vigil.agent.svc.install import (
    LAUNCHD_DIR,
    LAUNCHD_LABEL,
    PACKAGE_UNIT_DIR,
    SYSTEMD_UNIT_DIR,
    SYSTEMD_UNIT_NAME,
    ServiceSpec,
    launchd_plist,
    systemd_unit,
    windows_service,
)
from vigil.configio import CONFIG_EXIT_CODE

PLATFORMS = ("linux", "darwin", "win32")
# Seconds any one service-manager command may take (systemctl, launchctl, sc.exe).
COMMAND_TIMEOUT_S = 60.0
SYSTEMD_RUNNING = Path("/run/systemd/system")
WINDOWS_MODULE = "vigil_agent_service.py"


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Add ``service`` to the agent's subcommands."""
    p = sub.add_parser(
        "service", parents=list(parents), help="install, uninstall or inspect the agent service"
    )
    p.add_argument("action", choices=["install", "uninstall", "status"])
    p.add_argument(
        "--print",
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="print the service definition and change nothing",
    )
    p.add_argument(
        "--platform", choices=PLATFORMS, help="platform whose definition to use (default: this one)"
    )
    p.add_argument(
        "--unit-dir",
        type=Path,
        help="where the definition goes (default: /etc/systemd/system, /Library/LaunchDaemons, "
        "or the config's folder on Windows)",
    )


def _platform(args: argparse.Namespace) -> str:
    if args.platform:
        return str(args.platform)
    return "linux" if sys.platform.startswith("linux") else sys.platform


def definition_path(platform: str, unit_dir: Path | None, config: Path) -> Path:
    """Where ``install`` writes the definition on ``platform``."""
    if platform == "linux":
        return (unit_dir or SYSTEMD_UNIT_DIR) / SYSTEMD_UNIT_NAME
    if platform == "darwin":
        return (unit_dir or LAUNCHD_DIR) / f"{LAUNCHD_LABEL}.plist"
    return (unit_dir or config.parent) / WINDOWS_MODULE


def installed_unit(unit_dirs: Sequence[Path]) -> Path:
    """The unit file systemd loads from the first of ``unit_dirs`` that has one (systemd's
    own precedence: ``/etc`` before the package's ``/usr/lib``); the first folder's path
    when none has."""
    for folder in unit_dirs:
        if (folder / SYSTEMD_UNIT_NAME).is_file():
            return folder / SYSTEMD_UNIT_NAME
    return unit_dirs[0] / SYSTEMD_UNIT_NAME


def main(args: argparse.Namespace, config_path: Path) -> int:
    """Run ``vigil-agent service ...``; the exit status."""
    platform = _platform(args)
    if platform not in PLATFORMS:
        print(f"vigil-agent: service: platform {platform!r} is not supported", file=sys.stderr)
        return CONFIG_EXIT_CODE
    spec = ServiceSpec(
        config=config_path.absolute(),
        log_level=args.log_level or "INFO",
        systemd_version=systemd_version() if platform == "linux" else None,
    )
    path = definition_path(platform, args.unit_dir, spec.config)
    if args.action == "status" and platform == "linux" and args.unit_dir is None:
        # Installed by the .deb rather than by `service install`: report that unit.
        path = installed_unit((SYSTEMD_UNIT_DIR, PACKAGE_UNIT_DIR))
    try:
        content = _definition(platform, spec, path)
    except ValueError as exc:
        print(f"vigil-agent: service: {exc}", file=sys.stderr)
        return CONFIG_EXIT_CODE
    if args.action == "install" and args.dry_run:
        sys.stdout.write(content.decode("utf-8"))
        return 0
    if args.dry_run:
        print(f"would {args.action} {path}")
        return 0
    if platform != ("linux" if sys.platform.startswith("linux") else sys.platform):
        print(
            f"vigil-agent: service: can only {args.action} for this machine's platform; "
            f"--platform {platform} works with --print",
            file=sys.stderr,
        )
        return CONFIG_EXIT_CODE
    if args.action == "install":
        return _install(platform, spec, path, content)
    if args.action == "uninstall":
        return _uninstall(platform, path)
    return _status(platform, path)


def systemd_version(
    run: Any = subprocess.run,
) -> int | None:
    """This machine's systemd version from ``systemctl --version`` (first line
    ``systemd 252 (...)``); ``None`` when systemctl is missing, fails or says otherwise.
    The unit gets the keys that version understands (:func:`systemd_unit`)."""
    try:
        done = run(
            ["systemctl", "--version"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    words = (done.stdout or "").split()
    if done.returncode != 0 or len(words) < 2 or words[0] != "systemd":
        return None
    digits = words[1].split(".")[0]
    return int(digits) if digits.isdigit() else None


def _definition(platform: str, spec: ServiceSpec, path: Path) -> bytes:
    if platform == "linux":
        return systemd_unit(spec).encode("utf-8")
    if platform == "darwin":
        return launchd_plist(spec)
    return windows_service(spec, path).module.encode("utf-8")


def _install_commands(platform: str, spec: ServiceSpec, path: Path) -> list[list[str]]:
    """The service manager's argument vectors that load ``path`` (never a shell string)."""
    if platform == "linux":
        return [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", SYSTEMD_UNIT_NAME]]
    if platform == "darwin":
        return [["launchctl", "bootstrap", "system", str(path)]]
    return windows_service(spec, path).commands


def _uninstall_commands(
    platform: str, path: Path
) -> tuple[list[list[str]], list[list[str]], list[list[str]]]:
    """``(best effort, before removal, after removal)`` argument vectors for uninstall.
    A best-effort command (stopping a service that is not running) may fail."""
    if platform == "linux":
        before = [["systemctl", "disable", "--now", SYSTEMD_UNIT_NAME]]
        return [], before, [["systemctl", "daemon-reload"]]
    if platform == "darwin":
        return [], [["launchctl", "bootout", f"system/{LAUNCHD_LABEL}"]], []
    python = sys.executable
    return [[python, str(path), "stop"]], [[python, str(path), "remove"]], []


def _manager_present(platform: str) -> bool:
    return platform != "linux" or SYSTEMD_RUNNING.is_dir()


def _run(commands: list[list[str]], *, quiet: bool = False) -> int:
    """Run each argument vector in turn (bounded by :data:`COMMAND_TIMEOUT_S`); 1 at the
    first failure, said on stderr unless ``quiet``."""
    for argv in commands:
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            if not quiet:
                print(f"vigil-agent: service: {argv[0]}: {exc}", file=sys.stderr)
            return 1
        if done.returncode != 0:
            if quiet:
                return 1
            detail = (done.stderr or done.stdout).strip()
            print(
                f"vigil-agent: service: {' '.join(argv)} exited {done.returncode}: {detail}",
                file=sys.stderr,
            )
            return 1
    return 0


def _no_manager(path: Path, what: str) -> int:
    print(
        f"vigil-agent: service: systemd is not the running init (no {SYSTEMD_RUNNING}); "
        f"{what} {path}, but cannot ask systemd to load it. On a machine booted with "
        "systemd: systemctl daemon-reload && systemctl enable --now vigil-agent",
        file=sys.stderr,
    )
    return 1


def _install(platform: str, spec: ServiceSpec, path: Path, content: bytes) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(content)
        tmp.chmod(0o644)
        tmp.replace(path)  # atomic: systemd never reads half a unit
    except OSError as exc:
        print(f"vigil-agent: service: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 1
    if not _manager_present(platform):
        return _no_manager(path, "wrote")
    code = _run(_install_commands(platform, spec, path))
    if code == 0:
        print(f"installed and started vigil-agent ({path})")
    return code


def _uninstall(platform: str, path: Path) -> int:
    best_effort, before, after = _uninstall_commands(platform, path)
    code = 0
    if path.exists() and _manager_present(platform):
        for argv in best_effort:
            _run([argv], quiet=True)
        code = _run(before)
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        print(f"vigil-agent: service: cannot remove {path}: {exc.strerror}", file=sys.stderr)
        return 1
    if not _manager_present(platform):
        return _no_manager(path, "removed")
    code = _run(after) or code
    if code == 0:
        print(f"uninstalled vigil-agent ({path} removed)")
    return code


def _status(platform: str, path: Path) -> int:
    print(f"definition: {path} ({'present' if path.exists() else 'absent'})")
    if platform != "linux":
        return 0 if path.exists() else 1
    if not _manager_present(platform):
        print(f"state: unknown (systemd is not the running init: no {SYSTEMD_RUNNING})")
        return 1
    try:
        done = subprocess.run(
            ["systemctl", "is-active", SYSTEMD_UNIT_NAME],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"state: unknown ({exc})")
        return 1
    print(f"state: {done.stdout.strip() or 'unknown'}")
    return 0 if done.returncode == 0 else 1
