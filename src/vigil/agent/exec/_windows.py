"""Windows side of :mod:`vigil.agent.exec.process`: Job Objects and the console user.

Imported only on Windows, by :mod:`~vigil.agent.exec.process` alone. It binds the Win32
calls through ctypes (no pywin32): :class:`Kernel32` is the real
:class:`~vigil.agent.exec.winproc.Win32`. What the calls do and in which order (a job
per child, created suspended and resumed only once inside it; the console user's token,
environment block and ``CreateProcessAsUserW``; every handle closed on every path) is in
:mod:`~vigil.agent.exec.winproc`, which is tested with a fake on any machine.

Not verified on Windows: this project's CI has no Windows runner, so the bindings
below (argument types, the handle list, the pipe handed to asyncio's proactor) have
never run. docs/install.md says what to check on a first Windows deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
from asyncio import windows_utils
from collections.abc import Mapping, Sequence
from ctypes import wintypes

from vigil.agent.exec.logons import ConsoleUser
from vigil.agent.exec.winproc import (
    JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    PROCESS_INFORMATION,
    STARTUPINFOEXW,
    THREADENTRY32,
    JobChild,
    SessionUserChild,
    parse_environment_block,
    set_env,
    start_as_session_user,
    start_in_job,
    user_environment,
)

__all__ = ["set_env"]  # re-exported for process.child_env

# Windows has no SIGKILL; every stop terminates the child's whole job.
SIGKILL = signal.SIGTERM
NEUTRAL_CWD: str | None = None  # the agent's own working folder
EXEC_BIT_MATTERS = False
PRIVILEGED_ACCOUNT = "LocalSystem"
# Windows programs misbehave without these, and they carry no user-controlled content.
_ENV_KEEP = ("SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "TEMP", "TMP", "PATH")

_PROCESS_TERMINATE = 0x0001
_PROCESS_SET_QUOTA = 0x0100
_THREAD_SUSPEND_RESUME = 0x0002
_TH32CS_SNAPTHREAD = 0x00000004
_WAIT_OBJECT_0 = 0x00000000
_WAIT_TIMEOUT = 0x00000102
_STARTF_USESTDHANDLES = 0x00000100
_PROC_THREAD_ATTRIBUTE_HANDLE_LIST = 0x00020002
_TOKEN_QUERY = 0x0008
_TOKEN_USER = 1  # TOKEN_INFORMATION_CLASS.TokenUser
_WIN_LOCAL_SYSTEM_SID = 22  # WELL_KNOWN_SID_TYPE.WinLocalSystemSid
_GENERIC_READ = 0x80000000
_GENERIC_WRITE = 0x40000000
_FILE_SHARE_READ_WRITE = 0x00000003
_OPEN_EXISTING = 3
_INVALID_HANDLE = ctypes.c_void_p(-1).value
# The user's interactive desktop: a script run as them may show a window there.
_USER_DESKTOP = "winsta0\\default"

_H = wintypes.HANDLE
_kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
_advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined]
_wtsapi32 = ctypes.WinDLL("wtsapi32", use_last_error=True)  # type: ignore[attr-defined]
_userenv = ctypes.WinDLL("userenv", use_last_error=True)  # type: ignore[attr-defined]


def _bind(dll: ctypes.CDLL, name: str, restype: object, *argtypes: object) -> ctypes._CFuncPtr:
    func = getattr(dll, name)
    func.restype = restype
    func.argtypes = argtypes
    return func  # type: ignore[no-any-return]


class _SECURITY_ATTRIBUTES(ctypes.Structure):
    _fields_ = [
        ("nLength", wintypes.DWORD),
        ("lpSecurityDescriptor", ctypes.c_void_p),
        ("bInheritHandle", wintypes.BOOL),
    ]


_BOOL, _DWORD = wintypes.BOOL, wintypes.DWORD
_CreateJobObjectW = _bind(_kernel32, "CreateJobObjectW", _H, ctypes.c_void_p, wintypes.LPCWSTR)
_SetInformationJobObject = _bind(
    _kernel32, "SetInformationJobObject", _BOOL, _H, ctypes.c_int, ctypes.c_void_p, _DWORD
)
_AssignProcessToJobObject = _bind(_kernel32, "AssignProcessToJobObject", _BOOL, _H, _H)
_TerminateJobObject = _bind(_kernel32, "TerminateJobObject", _BOOL, _H, wintypes.UINT)
_CloseHandle = _bind(_kernel32, "CloseHandle", _BOOL, _H)
_OpenProcess = _bind(_kernel32, "OpenProcess", _H, _DWORD, _BOOL, _DWORD)
_TerminateProcess = _bind(_kernel32, "TerminateProcess", _BOOL, _H, wintypes.UINT)
_WaitForSingleObject = _bind(_kernel32, "WaitForSingleObject", _DWORD, _H, _DWORD)
_GetExitCodeProcess = _bind(_kernel32, "GetExitCodeProcess", _BOOL, _H, ctypes.POINTER(_DWORD))
_CreateToolhelp32Snapshot = _bind(_kernel32, "CreateToolhelp32Snapshot", _H, _DWORD, _DWORD)
_Thread32First = _bind(_kernel32, "Thread32First", _BOOL, _H, ctypes.POINTER(THREADENTRY32))
_Thread32Next = _bind(_kernel32, "Thread32Next", _BOOL, _H, ctypes.POINTER(THREADENTRY32))
_OpenThread = _bind(_kernel32, "OpenThread", _H, _DWORD, _BOOL, _DWORD)
_ResumeThread = _bind(_kernel32, "ResumeThread", _DWORD, _H)
_GetCurrentProcess = _bind(_kernel32, "GetCurrentProcess", _H)
_CreateFileW = _bind(
    _kernel32,
    "CreateFileW",
    _H,
    wintypes.LPCWSTR,
    _DWORD,
    _DWORD,
    ctypes.POINTER(_SECURITY_ATTRIBUTES),
    _DWORD,
    _DWORD,
    _H,
)
_InitializeProcThreadAttributeList = _bind(
    _kernel32,
    "InitializeProcThreadAttributeList",
    _BOOL,
    ctypes.c_void_p,
    _DWORD,
    _DWORD,
    ctypes.POINTER(ctypes.c_size_t),
)
_UpdateProcThreadAttribute = _bind(
    _kernel32,
    "UpdateProcThreadAttribute",
    _BOOL,
    ctypes.c_void_p,
    _DWORD,
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
    ctypes.c_void_p,
)
_DeleteProcThreadAttributeList = _bind(
    _kernel32, "DeleteProcThreadAttributeList", None, ctypes.c_void_p
)
_CreateProcessAsUserW = _bind(
    _advapi32,
    "CreateProcessAsUserW",
    _BOOL,
    _H,
    wintypes.LPCWSTR,
    wintypes.LPWSTR,
    ctypes.c_void_p,
    ctypes.c_void_p,
    _BOOL,
    _DWORD,
    ctypes.c_void_p,
    wintypes.LPCWSTR,
    ctypes.POINTER(STARTUPINFOEXW),
    ctypes.POINTER(PROCESS_INFORMATION),
)
_OpenProcessToken = _bind(_advapi32, "OpenProcessToken", _BOOL, _H, _DWORD, ctypes.POINTER(_H))
_GetTokenInformation = _bind(
    _advapi32,
    "GetTokenInformation",
    _BOOL,
    _H,
    ctypes.c_int,
    ctypes.c_void_p,
    _DWORD,
    ctypes.POINTER(_DWORD),
)
_IsWellKnownSid = _bind(_advapi32, "IsWellKnownSid", _BOOL, ctypes.c_void_p, ctypes.c_int)
_WTSQueryUserToken = _bind(
    _wtsapi32, "WTSQueryUserToken", _BOOL, wintypes.ULONG, ctypes.POINTER(_H)
)
_CreateEnvironmentBlock = _bind(
    _userenv, "CreateEnvironmentBlock", _BOOL, ctypes.POINTER(ctypes.c_void_p), _H, _BOOL
)
_DestroyEnvironmentBlock = _bind(_userenv, "DestroyEnvironmentBlock", _BOOL, ctypes.c_void_p)


def _check(ok: object) -> None:
    if not ok:
        raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]


def _handle(value: int | None) -> int:
    if not value or value == _INVALID_HANDLE:
        raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
    return value


class Kernel32:
    """The real :class:`~vigil.agent.exec.winproc.Win32`, through ctypes."""

    def create_job(self, limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION) -> int:
        job = _handle(_CreateJobObjectW(None, None))
        try:
            _check(
                _SetInformationJobObject(
                    job,
                    JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
                    ctypes.byref(limits),
                    ctypes.sizeof(limits),
                )
            )
        except OSError:
            _CloseHandle(job)
            raise
        return job

    def assign_to_job(self, job: int, process: int) -> None:
        _check(_AssignProcessToJobObject(job, process))

    def terminate_job(self, job: int, exit_code: int) -> None:
        _check(_TerminateJobObject(job, exit_code))

    def open_process(self, pid: int) -> int:
        return _handle(_OpenProcess(_PROCESS_SET_QUOTA | _PROCESS_TERMINATE, False, pid))

    def main_thread(self, pid: int) -> int:
        snapshot = _handle(_CreateToolhelp32Snapshot(_TH32CS_SNAPTHREAD, 0))
        try:
            entry = THREADENTRY32()
            entry.dwSize = ctypes.sizeof(entry)
            found = _Thread32First(snapshot, ctypes.byref(entry))
            while found:
                if entry.th32OwnerProcessID == pid:
                    return _handle(_OpenThread(_THREAD_SUSPEND_RESUME, False, entry.th32ThreadID))
                found = _Thread32Next(snapshot, ctypes.byref(entry))
        finally:
            _CloseHandle(snapshot)
        raise OSError(f"no thread of process {pid} found to resume")

    def resume_thread(self, thread: int) -> None:
        if _ResumeThread(thread) == 0xFFFFFFFF:
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]

    def terminate_process(self, process: int, exit_code: int) -> None:
        _check(_TerminateProcess(process, exit_code))

    def exit_code(self, process: int) -> int | None:
        state = _WaitForSingleObject(process, 0)
        if state == _WAIT_TIMEOUT:
            return None
        if state != _WAIT_OBJECT_0:
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
        code = wintypes.DWORD()
        _check(_GetExitCodeProcess(process, ctypes.byref(code)))
        return int(code.value)

    def close_handle(self, handle: int) -> None:
        _CloseHandle(handle)

    def query_user_token(self, session: int) -> int:
        token = _H()
        if not _WTSQueryUserToken(session, ctypes.byref(token)):
            error = ctypes.get_last_error()
            if error == 1314:  # ERROR_PRIVILEGE_NOT_HELD
                raise PermissionError("WTSQueryUserToken needs the agent to run as LocalSystem")
            raise ctypes.WinError(error)  # type: ignore[attr-defined]
        return _handle(token.value)

    def user_environment(self, token: int) -> dict[str, str]:
        block = ctypes.c_void_p()
        _check(_CreateEnvironmentBlock(ctypes.byref(block), token, False))
        try:
            return parse_environment_block(_read_block(block.value or 0))
        finally:
            _DestroyEnvironmentBlock(block)

    def create_output_pipe(self) -> tuple[int, int]:
        # asyncio's own layout for a child's stdout: an overlapped read end for the
        # proactor, a plain write end for the child.
        read, write = windows_utils.pipe(overlapped=(True, False), duplex=False)
        os.set_handle_inheritable(write, True)  # type: ignore[attr-defined]
        return read, write

    def open_null(self) -> int:
        inherit = _SECURITY_ATTRIBUTES(ctypes.sizeof(_SECURITY_ATTRIBUTES), None, True)
        return _handle(
            _CreateFileW(
                "NUL",
                _GENERIC_READ | _GENERIC_WRITE,
                _FILE_SHARE_READ_WRITE,
                ctypes.byref(inherit),
                _OPEN_EXISTING,
                0,
                None,
            )
        )

    def create_process_as_user(
        self,
        token: int,
        command: str,
        environment: bytes,
        cwd: str | None,
        std: tuple[int, int, int],
        flags: int,
    ) -> tuple[int, int]:
        # Only these handles are inherited, whatever else is inheritable in the agent at
        # this moment (another thread may be starting a child too).
        handles = list(dict.fromkeys(std))
        size = ctypes.c_size_t()
        _InitializeProcThreadAttributeList(None, 1, 0, ctypes.byref(size))  # asks the size
        attributes = ctypes.create_string_buffer(size.value)
        _check(_InitializeProcThreadAttributeList(attributes, 1, 0, ctypes.byref(size)))
        try:
            inherit = (_H * len(handles))(*handles)
            _check(
                _UpdateProcThreadAttribute(
                    attributes,
                    0,
                    _PROC_THREAD_ATTRIBUTE_HANDLE_LIST,
                    inherit,
                    ctypes.sizeof(inherit),
                    None,
                    None,
                )
            )
            info = STARTUPINFOEXW()
            info.StartupInfo.cb = ctypes.sizeof(info)
            info.StartupInfo.dwFlags = _STARTF_USESTDHANDLES
            info.StartupInfo.lpDesktop = _USER_DESKTOP
            info.StartupInfo.hStdInput, info.StartupInfo.hStdOutput = std[0], std[1]
            info.StartupInfo.hStdError = std[2]
            info.lpAttributeList = ctypes.addressof(attributes)
            line = ctypes.create_unicode_buffer(command)  # CreateProcess may write to it
            block = ctypes.create_string_buffer(environment)
            created = PROCESS_INFORMATION()
            _check(
                _CreateProcessAsUserW(
                    token,
                    None,
                    line,
                    None,
                    None,
                    True,
                    flags,
                    block,
                    cwd,
                    ctypes.byref(info),
                    ctypes.byref(created),
                )
            )
        finally:
            _DeleteProcThreadAttributeList(attributes)
        return created.hProcess, created.hThread

    def is_local_system(self) -> bool:
        """Whether this process runs as LocalSystem (S-1-5-18)."""
        token = _H()
        _check(_OpenProcessToken(_GetCurrentProcess(), _TOKEN_QUERY, ctypes.byref(token)))
        try:
            size = wintypes.DWORD()
            _GetTokenInformation(token, _TOKEN_USER, None, 0, ctypes.byref(size))  # the size
            buffer = ctypes.create_string_buffer(size.value)
            _check(_GetTokenInformation(token, _TOKEN_USER, buffer, size, ctypes.byref(size)))
            sid = ctypes.cast(buffer, ctypes.POINTER(ctypes.c_void_p))[0]  # TOKEN_USER.User.Sid
            return bool(_IsWellKnownSid(sid, _WIN_LOCAL_SYSTEM_SID))
        finally:
            _CloseHandle(token)


# An environment block is a few KiB; this bounds the walk should one ever lack its end.
_MAX_BLOCK_ENTRIES = 4096


def _read_block(address: int) -> str:
    """The environment block at ``address`` as text (entries joined by NUL)."""
    entries = []
    for _ in range(_MAX_BLOCK_ENTRIES):
        entry = ctypes.wstring_at(address)
        if not entry:
            break
        entries.append(entry)
        address += len(entry.encode("utf-16-le", "surrogatepass")) + 2  # and its NUL
    return "\0".join(entries) + "\0\0"


_API = Kernel32()


def base_env() -> dict[str, str]:
    """The few system variables programs need, ``LANG=C.UTF-8`` and the agent's ``HOME``."""
    base = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
    return base | {"LANG": "C.UTF-8", "HOME": os.path.expanduser("~")}


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    merge_stderr: bool,
    spawn_kwargs: Mapping[str, object],
) -> JobChild:
    """Start ``argv`` as the agent's account, in a Job Object of its own."""
    return await start_in_job(
        _API, argv, env=env, cwd=cwd, merge_stderr=merge_stderr, spawn_kwargs=spawn_kwargs
    )


async def _connect_pipe(handle: int) -> tuple[asyncio.BaseTransport, asyncio.StreamReader]:
    """The read end of a child's output pipe as an asyncio stream (proactor loop)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), windows_utils.PipeHandle(handle)
    )
    return transport, reader


async def spawn_in_session(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    merge_stderr: bool,
    session: int,
) -> SessionUserChild:
    """Start ``argv`` as the user of console ``session``, in a Job Object of its own."""
    return await start_as_session_user(
        _API,
        argv,
        env=env,
        cwd=cwd,
        merge_stderr=merge_stderr,
        session=session,
        connect=_connect_pipe,
    )


def privileged() -> bool:
    """Always False: the root-only refusals of vetting (file modes) have no Windows
    equivalent, LocalSystem or not."""
    return False


def may_switch_user() -> bool:
    """Whether the agent runs as LocalSystem, which ``WTSQueryUserToken`` needs."""
    with contextlib.suppress(OSError):
        return _API.is_local_system()
    return False


def console_user(found: ConsoleUser) -> tuple[dict[str, object], dict[str, str], int]:
    """(no spawn kwargs, the user's environment block, their console session)."""
    if found.session is None:
        raise ValueError(f"the console session of {found.name!r} is not known")
    return {}, user_environment(_API, found.session), found.session


def user(run_as: str) -> tuple[dict[str, object], dict[str, str]]:
    """A named user is not supported here (only ``logged_on_user``): always ValueError."""
    raise ValueError(
        f"run_as {run_as!r} is not supported on Windows: only logged_on_user is "
        "(a named user would need their password or an S4U logon)"
    )
