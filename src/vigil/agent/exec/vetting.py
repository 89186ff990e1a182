"""Which scripts and plugins the agent agrees to run, and with which interpreter.

The agent runs admin-written code with its own privileges (often root), so a program
must earn its run: a remediation script's real path (symlinks resolved) must lie
inside an allowed folder, a plugin's path must be absolute; either must be a regular
file; when the agent is root it must not be writable by group or others (anyone who
could write it could run code as root through us); and where the executable bit
matters it needs one, unless its suffix names an interpreter (``.sh``, ``.py``,
``.ps1``). Remediation scripts, Nagios plugins and ``vigil-agent remediation validate``
share these rules, so the three never disagree.

Refusals are reasons (strings), never exceptions: a broken remediation is a normal
outcome to report.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from vigil.agent.exec.process import EXEC_BIT_MATTERS, privileged

_READ_CHUNK = 64 * 1024


def writable_by_others(mode: int) -> bool:
    """Whether ``mode`` lets group or others write the file."""
    return bool(mode & (stat.S_IWGRP | stat.S_IWOTH))


def lacks_exec_bit(path: Path, mode: int) -> bool:
    """Whether ``path`` cannot be started: no interpreter for its suffix and, where the
    executable bit matters (POSIX), none set."""
    return EXEC_BIT_MATTERS and interpreter(path) is None and not mode & 0o111


def interpreter(script: Path) -> list[str] | None:
    """The interpreter argv for ``script``'s suffix: ``.sh`` via ``/bin/sh``, ``.py`` via
    this Python, ``.ps1`` via ``powershell -NoProfile -NonInteractive -File``; else None
    (the script is executed directly)."""
    suffix = script.suffix.lower()
    if suffix == ".sh":
        return ["/bin/sh"]
    if suffix == ".py":
        return [sys.executable]
    if suffix == ".ps1":
        return ["powershell", "-NoProfile", "-NonInteractive", "-File"]
    return None


def command(script: Path) -> list[str]:
    """The argv that runs ``script`` (its interpreter, if any, then its path)."""
    return [*(interpreter(script) or []), str(script)]


def sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes, ``""`` when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(_READ_CHUNK), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def confine(
    path: Path, allowed_roots: Sequence[Path], *, what: str = "file"
) -> tuple[Path | None, str | None]:
    """(real path, ``None``) when ``path`` exists and, symlinks resolved, lies inside one of
    ``allowed_roots`` (each resolved too); else (``None``, the refusal reason).

    The one allowed-roots rule of the agent: remediation scripts, remediation bundles and
    their ``remediation.yaml`` all pass through it, so a symlink can never lead the agent
    (or ``vigil-agent remediation``) out of the folders the admin named. ``what`` names
    the thing in the reason (``"script"``, ``"bundle"``...).
    """
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # loop; ValueError: an embedded NUL byte
        return None, f"{what} not found: {path}"
    roots = [Path(os.path.realpath(r)) for r in allowed_roots]
    if not any(real.is_relative_to(r) for r in roots):
        shown = ", ".join(str(r) for r in roots) or "none configured"
        return None, f"{what} {real} is outside the allowed folders ({shown})"
    return real, None


def vet_script(script: Path, allowed_roots: Sequence[Path]) -> tuple[Path | None, str | None]:
    """(real path, refusal reason) for a remediation script.

    The real path is ``None`` when the script is refused before it could even be hashed
    (missing, outside every one of ``allowed_roots`` after resolving symlinks, not a
    regular file); the reason is ``None`` when it may run.
    """
    real, refusal = confine(script, allowed_roots, what="script")
    if real is None:
        return None, refusal
    try:
        st = real.stat()
    except OSError as exc:
        return None, f"cannot stat script {real}: {describe(exc)}"
    if not stat.S_ISREG(st.st_mode):
        return None, f"script {real} is not a regular file"
    if privileged() and writable_by_others(st.st_mode):
        return real, f"script {real} is group- or world-writable; refusing to run it as root"
    if lacks_exec_bit(real, st.st_mode):
        return real, f"script {real} is not executable (chmod +x, or use .sh, .py or .ps1)"
    return real, None


def vet_program(program: str) -> str | None:
    """Why the plugin ``program`` may not run, or ``None``.

    Unlike a script, a plugin is executed directly (no interpreter by suffix) and may
    live anywhere, but its path must be absolute so ``PATH`` never chooses it.
    """
    if not os.path.isabs(program):
        return f"plugin path must be absolute: {program}"
    try:
        st = os.stat(program)
    except OSError as exc:
        return f"cannot run {program}: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{program} is not a regular file"
    if EXEC_BIT_MATTERS and not st.st_mode & 0o111:
        return f"{program} is not executable"
    if privileged() and writable_by_others(st.st_mode):
        return f"{program} is group- or world-writable; refusing to run it as root"
    return None


def describe(exc: BaseException) -> str:
    """An OS error's ``strerror`` (else its text, else its type), for a refusal reason."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
