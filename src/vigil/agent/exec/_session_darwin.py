"""macOS side of :mod:`vigil.agent.exec.console`: the owner of ``/dev/console``.

Imported only on macOS, by :mod:`~vigil.agent.exec.console` alone. While the login
window shows, ``/dev/console`` belongs to root: nobody is logged on then.
"""

from __future__ import annotations

import os
import pwd

from vigil.agent.exec.logons import ConsoleUser

# Accounts that own the console without a person behind it (the login window, Setup
# Assistant's temporary user).
_NOBODY = frozenset({"root", "_mbsetupuser", "loginwindow"})


def console_user() -> ConsoleUser | None:
    try:
        uid = os.stat("/dev/console").st_uid
        name = pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return None
    if uid == 0 or name in _NOBODY:
        return None
    return ConsoleUser(name=name, uid=uid, source="/dev/console")
