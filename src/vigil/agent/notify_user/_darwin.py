"""macOS: ``osascript`` showing a notification.

The title and body reach AppleScript as ``argv`` of its ``run`` handler, not inside the
script's text, so no quoting is needed and none can be got wrong; :func:`applescript_quote`
exists for readers who wonder how it would be done in the script instead.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping

from vigil.agent.notify_user._common import Notification

_SCRIPT = (
    "on run argv",
    "display notification (item 2 of argv) with title (item 1 of argv)",
    "end run",
)


def unavailable() -> str | None:
    return None if shutil.which("osascript") else "osascript not found"


def argv(note: Notification) -> list[str]:
    script = [arg for line in _SCRIPT for arg in ("-e", line)]
    return ["osascript", *script, note.title, f"{note.body} {note.url}"]


def env(note: Notification) -> Mapping[str, str]:
    return {}


def applescript_quote(text: str) -> str:
    """``text`` as an AppleScript string literal (backslash and double quote escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
