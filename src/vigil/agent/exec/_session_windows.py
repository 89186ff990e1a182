"""Windows side of :mod:`vigil.agent.exec.console`: the active console session's user.

Imported only on Windows, by :mod:`~vigil.agent.exec.console` alone: it loads
``kernel32`` and ``wtsapi32`` through ctypes (no pywin32 needed). The session id comes
back with the user: a ``logged_on_user`` run takes that session's token. Not run on
Windows in this project's CI.
"""

from __future__ import annotations

import ctypes
from ctypes import wintypes

from vigil.agent.exec.logons import ConsoleUser

_NO_SESSION = 0xFFFFFFFF  # WTSGetActiveConsoleSessionId: no session attached
_WTS_USER_NAME = 5  # WTS_INFO_CLASS.WTSUserName
_WTS_CURRENT_SERVER_HANDLE = wintypes.HANDLE(0)


def console_user() -> ConsoleUser | None:
    kernel32 = ctypes.WinDLL("kernel32")  # type: ignore[attr-defined]
    wtsapi32 = ctypes.WinDLL("wtsapi32")  # type: ignore[attr-defined]
    kernel32.WTSGetActiveConsoleSessionId.restype = wintypes.DWORD
    session = kernel32.WTSGetActiveConsoleSessionId()
    if session == _NO_SESSION:
        return None
    buffer = wintypes.LPWSTR()
    size = wintypes.DWORD()
    ok = wtsapi32.WTSQuerySessionInformationW(
        _WTS_CURRENT_SERVER_HANDLE,
        wintypes.DWORD(session),
        _WTS_USER_NAME,
        ctypes.byref(buffer),
        ctypes.byref(size),
    )
    if not ok:
        return None
    try:
        name = buffer.value or ""
    finally:
        wtsapi32.WTSFreeMemory(buffer)
    return ConsoleUser(name=name, source="wts", session=int(session)) if name else None
