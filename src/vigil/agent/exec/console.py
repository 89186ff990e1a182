"""Who is logged on at this machine's console, read through the platform's session
table (see :mod:`~vigil.agent.exec.logons` for the rules and the platforms).

The platform module is picked once at import, psutil's way; the Windows one (ctypes and
``wtsapi32``) is imported only on Windows.
"""

from __future__ import annotations

import sys
from types import ModuleType

from vigil.agent.exec.logons import ConsoleUser

_impl: ModuleType | None
if sys.platform.startswith("linux"):
    from vigil.agent.exec import _session_linux as _impl
elif sys.platform == "darwin":
    from vigil.agent.exec import _session_darwin as _impl
elif sys.platform == "win32":
    from vigil.agent.exec import _session_windows as _impl
else:  # other systems: nobody is ever found
    _impl = None


def console_user() -> ConsoleUser | None:
    """The user logged on at the console now, ``None`` when nobody is (or it cannot be
    told on this system). Bounded: each command it runs has a short timeout."""
    if _impl is None:
        return None
    user: ConsoleUser | None = _impl.console_user()
    return user
