"""Linux (and other freedesktop systems): libnotify's ``notify-send``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

from vigil.agent.notify_user._common import Notification


def unavailable() -> str | None:
    """Why no notification can be shown: ``notify-send`` missing (Debian: libnotify-bin),
    or no graphical session in this process's environment (a system service has none
    unless it runs in the user's session)."""
    if shutil.which("notify-send") is None:
        return "notify-send not found (install libnotify-bin)"
    if not (os.environ.get("DBUS_SESSION_BUS_ADDRESS") or os.environ.get("DISPLAY")
            or os.environ.get("WAYLAND_DISPLAY")):  # fmt: skip
        return "no graphical session (no DBUS_SESSION_BUS_ADDRESS, DISPLAY or WAYLAND_DISPLAY)"
    return None


def argv(note: Notification) -> list[str]:
    """``notify-send`` with the data after ``--``, so a title starting with ``-`` is text."""
    return ["notify-send", "--app-name=Vigil", "--urgency=low", "--", note.title,
            f"{note.body}\n{note.url}"]  # fmt: skip


def env(note: Notification) -> Mapping[str, str]:
    return {}
