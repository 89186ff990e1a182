"""Linux side of :mod:`vigil.agent.exec.console`: logind's sessions, else utmp.

Imported only on Linux, by :mod:`~vigil.agent.exec.console` alone.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from vigil.agent.exec.logons import (
    ConsoleUser,
    parse_properties,
    pick_logind,
    pick_users,
    session_from_properties,
)

log = logging.getLogger("vigil.agent")

# Each loginctl call is bounded; logind answers in milliseconds when it answers at all.
LOGINCTL_TIMEOUT_S = 5.0
# At most this many sessions are examined (a shared server may have hundreds of SSH ones).
MAX_SESSIONS = 64
_PROPERTIES = ("Name", "User", "Seat", "Active", "Remote", "Type", "Class", "Display", "State")


def _loginctl(*args: str) -> str | None:
    tool = shutil.which("loginctl")
    if tool is None:
        return None
    try:
        done = subprocess.run(
            [tool, "--no-pager", *args],
            capture_output=True,
            text=True,
            timeout=LOGINCTL_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("loginctl %s failed: %s", args[0], exc)
        return None
    return done.stdout if done.returncode == 0 else None


def logind_user() -> ConsoleUser | bool | None:
    """The console user per logind; ``False`` when logind cannot be asked (no loginctl,
    no logind running), so the caller falls back to utmp."""
    listing = _loginctl("list-sessions", "--no-legend")
    if listing is None:
        return False
    sessions = []
    for line in listing.splitlines()[:MAX_SESSIONS]:
        words = line.split()
        if not words:
            continue
        props = _loginctl("show-session", words[0], *(f"--property={p}" for p in _PROPERTIES))
        if props is not None:
            sessions.append(session_from_properties(words[0], parse_properties(props)))
    return pick_logind(sessions)


def utmp_user() -> ConsoleUser | None:
    """The console user per ``psutil.users()`` (utmp): a local display or console tty."""
    import psutil  # the agent's sampler dependency; only needed for this fallback

    try:
        entries = [(u.name, u.terminal, u.host) for u in psutil.users()]
    except OSError:
        return None
    return pick_users(entries)


def console_user() -> ConsoleUser | None:
    found = logind_user()
    if found is False:
        return utmp_user()
    return found or None
