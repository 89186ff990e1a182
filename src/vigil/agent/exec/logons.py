"""Who is logged on at this machine's console: the pure half (session tables in, the
console user out). :mod:`~vigil.agent.exec.console` reads the tables.

The user found is who a ``run_as: logged_on_user`` remediation runs as.
:func:`vigil.agent.exec.console.console_user` reads the tables through a platform module
picked once at import (psutil's split; the Windows module, which loads ``wtsapi32``
through ctypes, is imported only on Windows):

- Linux (:mod:`._session_linux`): the active, local session on ``seat0`` from
  ``loginctl list-sessions`` / ``show-session`` (graphical before text), falling back to
  ``psutil.users()`` entries on a local display or console tty when logind is absent.
- macOS (:mod:`._session_darwin`): the owner of ``/dev/console`` (root while the login
  window shows, so nobody then).
- Windows (:mod:`._session_windows`): the user of ``WTSGetActiveConsoleSessionId``'s
  session, with the session id. A script runs as them with the session's token
  (``WTSQueryUserToken``, which needs the agent to run as LocalSystem), their own
  environment block (``CreateEnvironmentBlock``) and ``CreateProcessAsUserW``, in a Job
  Object like every child (:mod:`~vigil.agent.exec.winproc`). Nobody at the console
  (the session is disconnected, or shows the logon screen) means nobody is found. This
  path has not run on Windows in this project's CI.

The choosing here (:func:`pick_logind`, :func:`pick_users`) is tested with fake session
tables; the platform modules only read the tables.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

LOGGED_ON_USER = "logged_on_user"
"""The manifest ``run_as`` value meaning "the user at the console right now"."""

# Session types by preference: a graphical session is where the person is looking.
_GRAPHICAL = ("wayland", "x11", "mir")
_TEXT = ("tty",)
_LOCAL_TTY = re.compile(r"^(tty\d+|console|seat\d+)$")
_LOCAL_DISPLAY = re.compile(r"^:\d+(\.\d+)?$")


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """The console user: ``name`` and, when known, their ``uid``, the session's
    ``display`` (X11 ``:0``) and whether it is a ``wayland`` session; ``source`` says
    how it was found (``loginctl``, ``utmp``, ``/dev/console``, ``wts``). ``session`` is
    the Windows console session id (whose token a ``logged_on_user`` run is started
    with), ``None`` elsewhere."""

    name: str
    uid: int | None = None
    display: str | None = None
    wayland: bool = False
    source: str = ""
    session: int | None = None


@dataclass(frozen=True, slots=True)
class LogindSession:
    """The ``loginctl show-session`` properties that matter (names as logind's)."""

    id: str
    name: str
    uid: int | None
    seat: str
    active: bool
    remote: bool
    type: str
    session_class: str
    display: str
    state: str = "active"


def parse_properties(text: str) -> dict[str, str]:
    """``Key=value`` lines (``loginctl show-session``) as a dict; other lines ignored."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def session_from_properties(session_id: str, props: dict[str, str]) -> LogindSession:
    """A :class:`LogindSession` from ``show-session`` properties (missing ones are empty)."""
    uid = props.get("User", "")
    return LogindSession(
        id=session_id,
        name=props.get("Name", ""),
        uid=int(uid) if uid.isdigit() else None,
        seat=props.get("Seat", ""),
        active=props.get("Active", "") == "yes",
        remote=props.get("Remote", "") == "yes",
        type=props.get("Type", ""),
        session_class=props.get("Class", ""),
        display=props.get("Display", ""),
        state=props.get("State", ""),
    )


def pick_logind(sessions: Iterable[LogindSession]) -> ConsoleUser | None:
    """The person at the console: an active, local (not remote) ``user``-class session
    on ``seat0`` with a name, graphical before text; ``None`` when there is none (a
    greeter's ``greeter``-class session, an SSH login and a locked-out seat do not count).
    Ties go to the lowest session id, so the choice is stable."""
    candidates = [
        s
        for s in sessions
        if s.active
        and not s.remote
        and s.seat == "seat0"
        and s.session_class == "user"
        and s.name
        and s.state in ("active", "")
        and s.type in (*_GRAPHICAL, *_TEXT)
    ]
    if not candidates:
        return None
    best = min(candidates, key=lambda s: (s.type not in _GRAPHICAL, _id_key(s.id)))
    return ConsoleUser(
        name=best.name,
        uid=best.uid,
        display=best.display or None,
        wayland=best.type == "wayland",
        source="loginctl",
    )


def pick_users(entries: Sequence[tuple[str, str | None, str | None]]) -> ConsoleUser | None:
    """From ``psutil.users()``-like ``(name, terminal, host)`` entries: a user on a local
    X display (terminal or host ``:0``) first, else on a console tty (``tty1``,
    ``console``, ``seat0``); remote logins (a host name, a ``pts`` terminal) never. The
    first such entry in table order wins."""
    display = tty = None
    for name, terminal, host in entries:
        term, where = terminal or "", host or ""
        if not name:
            continue
        if display is None and (_LOCAL_DISPLAY.match(term) or _LOCAL_DISPLAY.match(where)):
            shown = term if _LOCAL_DISPLAY.match(term) else where
            display = ConsoleUser(name=name, display=shown, source="utmp")
        elif tty is None and _LOCAL_TTY.match(term) and where in ("", "localhost"):
            tty = ConsoleUser(name=name, source="utmp")
    return display or tty


def _id_key(session_id: str) -> tuple[int, str]:
    return (int(session_id), "") if session_id.isdigit() else (sys.maxsize, session_id)


def session_env(
    user: ConsoleUser, uid: int, runtime_root: str = "/run/user", exists: Any = os.path.exists
) -> dict[str, str]:
    """The session variables a script run as ``user`` (uid ``uid``) needs to reach their
    desktop, each only when known: ``XDG_RUNTIME_DIR`` (``/run/user/<uid>`` when it
    exists), ``DBUS_SESSION_BUS_ADDRESS`` (its ``bus`` socket), ``DISPLAY`` (the
    session's X display) and ``WAYLAND_DISPLAY`` (``wayland-0`` in a Wayland session
    whose socket exists). ``exists`` is the existence test (a seam for tests)."""
    env: dict[str, str] = {}
    runtime = f"{runtime_root}/{uid}"
    if exists(runtime):
        env["XDG_RUNTIME_DIR"] = runtime
        if exists(f"{runtime}/bus"):
            env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={runtime}/bus"
        if user.wayland and exists(f"{runtime}/wayland-0"):
            env["WAYLAND_DISPLAY"] = "wayland-0"
    if user.display:
        env["DISPLAY"] = user.display
    return env
