"""Who is at the console, from fake session tables: logind's sessions, utmp entries, and
the session environment a ``logged_on_user`` script gets."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from vigil.agent.exec.logons import (
    ConsoleUser,
    LogindSession,
    parse_properties,
    pick_logind,
    pick_users,
    session_env,
    session_from_properties,
)
from vigil.agent.exec.script import console_user_to_run_as

DESKTOP = LogindSession(
    id="2",
    name="alice",
    uid=1000,
    seat="seat0",
    active=True,
    remote=False,
    type="wayland",
    session_class="user",
    display="",
)
SSH = replace(DESKTOP, id="7", name="admin", uid=1001, seat="", remote=True, type="tty")
GREETER = replace(DESKTOP, id="c1", name="gdm", uid=120, session_class="greeter")
TTY = replace(DESKTOP, id="3", name="bob", uid=1002, type="tty")
X11 = replace(DESKTOP, id="5", name="carol", uid=1003, type="x11", display=":0")


@pytest.mark.parametrize(
    ("sessions", "who"),
    [
        ([DESKTOP], "alice"),
        ([SSH, DESKTOP], "alice"),
        ([SSH], None),
        ([GREETER], None),
        ([replace(DESKTOP, active=False)], None),
        ([replace(DESKTOP, seat="seat1")], None),
        ([TTY, X11], "carol"),
        ([TTY], "bob"),
        ([replace(DESKTOP, state="closing")], None),
        ([replace(X11, id="9", name="dave"), X11], "carol"),
        ([], None),
    ],
    ids=[
        "a desktop session",
        "the desktop, not the ssh login",
        "only ssh: nobody at the console",
        "the login screen is nobody",
        "a session switched away from is not active",
        "another seat is not the console",
        "graphical before text",
        "a text console when that is all",
        "a session being closed",
        "ties go to the lowest session id",
        "no sessions",
    ],
)
def test_pick_logind(sessions: list[LogindSession], who: str | None) -> None:
    found = pick_logind(sessions)
    assert (found.name if found else None) == who


def test_logind_pick_carries_uid_display_and_wayland() -> None:
    assert pick_logind([X11]) == ConsoleUser("carol", 1003, ":0", False, "loginctl")
    assert pick_logind([DESKTOP]) == ConsoleUser("alice", 1000, None, True, "loginctl")


def test_show_session_output_parses_into_a_session() -> None:
    text = (
        "Name=alice\nUser=1000\nSeat=seat0\nActive=yes\nRemote=no\nType=x11\n"
        "Class=user\nDisplay=:0\nState=active\nnot a property line\n"
    )
    session = session_from_properties("2", parse_properties(text))
    assert session == replace(X11, id="2", name="alice", uid=1000)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([("alice", ":0", ":0")], ConsoleUser("alice", display=":0", source="utmp")),
        ([("bob", "tty1", "")], ConsoleUser("bob", source="utmp")),
        (
            [("bob", "tty1", ""), ("alice", "pts/0", ":0")],
            ConsoleUser("alice", display=":0", source="utmp"),
        ),
        ([("eve", "pts/3", "203.0.113.9")], None),
        ([("eve", "tty2", "203.0.113.9")], None),
        ([("", "tty1", "")], None),
        ([], None),
    ],
    ids=[
        "a local X display",
        "a console tty",
        "a display before a tty",
        "a remote login",
        "a tty with a remote host",
        "no name",
        "nobody",
    ],
)
def test_pick_users(
    entries: list[tuple[str, str | None, str | None]], expected: ConsoleUser | None
) -> None:
    assert pick_users(entries) == expected


def test_session_env_has_only_what_is_known() -> None:
    present = {"/run/user/1000", "/run/user/1000/bus", "/run/user/1000/wayland-0"}
    wayland = ConsoleUser("alice", 1000, None, True)
    assert session_env(wayland, 1000, exists=present.__contains__) == {
        "XDG_RUNTIME_DIR": "/run/user/1000",
        "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus",
        "WAYLAND_DISPLAY": "wayland-0",
    }
    x11 = ConsoleUser("carol", 1003, ":0")
    assert session_env(x11, 1003, exists=present.__contains__) == {"DISPLAY": ":0"}


@pytest.mark.parametrize(
    ("root", "at_console", "reason"),
    [
        (False, ConsoleUser("alice"), "run_as logged_on_user needs the agent to run as root"),
        (True, None, "nobody is logged on at the console"),
        (True, ConsoleUser("alice"), ""),
    ],
    ids=["agent not root", "nobody there", "someone there"],
)
def test_why_a_logged_on_user_run_is_skipped(
    root: bool, at_console: ConsoleUser | None, reason: str
) -> None:
    found, why = asyncio.run(
        console_user_to_run_as(lambda: at_console, is_root=lambda: root, account="root")
    )
    assert why == reason
    assert found == (at_console if not reason else None)


def test_on_windows_the_skip_names_localsystem() -> None:
    """WTSQueryUserToken needs LocalSystem: a service under another account is told so."""
    found, why = asyncio.run(
        console_user_to_run_as(
            lambda: ConsoleUser("alice", session=1), is_root=lambda: False, account="LocalSystem"
        )
    )
    assert (found, why) == (None, "run_as logged_on_user needs the agent to run as LocalSystem")
