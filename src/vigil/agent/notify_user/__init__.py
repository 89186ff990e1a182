"""Desktop notifications to the person at the machine, one facade over platform modules.

The platform module is picked once at import, psutil-style: ``_linux`` (libnotify's
``notify-send``), ``_darwin`` (``osascript``), ``_windows`` (a PowerShell toast). Each
builds an argument vector (never a shell string) and, where the platform's tool only
takes a script, passes the data out of band (AppleScript ``argv``, environment variables
for PowerShell), so a survey title can never become code.

:class:`Notification` is what to show; :class:`Notifier` shows it, bounded in time and
output; :func:`platform_notifier` is the default, :func:`command_notifier` runs a
configured program instead (``surveys.notifier``).
"""

from __future__ import annotations

import sys

from vigil.agent.notify_user._common import (
    CommandNotifier,
    Notification,
    Notifier,
    command_notifier,
)

if sys.platform == "darwin":
    from vigil.agent.notify_user import _darwin as _platform
elif sys.platform == "win32":
    from vigil.agent.notify_user import _windows as _platform
else:
    from vigil.agent.notify_user import _linux as _platform


def platform_notifier() -> Notifier:
    """This platform's notifier (its :meth:`~Notifier.unavailable` says when it cannot
    show anything here: no tool, no graphical session)."""
    return CommandNotifier(_platform.argv, _platform.unavailable, _platform.env)


__all__ = ["Notification", "Notifier", "command_notifier", "platform_notifier"]
