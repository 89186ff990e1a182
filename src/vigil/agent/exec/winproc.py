"""Windows process trees, the half that runs anywhere: layouts, blocks and the ordering.

:mod:`._windows` binds the Win32 calls through ctypes and is imported only on Windows.
Everything that can be decided without Windows lives here, so it is tested on any
machine: the command line ``CreateProcess`` parses (:func:`command_line`), the
environment block (:func:`environment_block`, :func:`parse_environment_block`), the
Job Object limit structure's layout, and the order of the Win32 calls that start a
bounded child, driven through a :class:`Win32` object that tests replace with a fake.

Every child lives in a Job Object of its own, created with
``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE``: descendants are in the job too (breakaway is not
allowed), ``TerminateJobObject`` stops the whole tree at once, and closing the last
handle (the agent's, even when the agent dies) kills whatever is left. The child is
created suspended and resumed only once it is in the job, so not even its first
instruction runs outside the job.

Two ways in: :func:`start_in_job` (asyncio starts the child as the agent's account;
asyncio closes the thread handle, so the main thread is found by pid) and
:func:`start_as_session_user` (``CreateProcessAsUserW`` with the console user's token,
which asyncio cannot do: a worker thread makes the blocking calls, and the output pipe
is handed to asyncio's proactor so the same :func:`~vigil.agent.exec.process.supervise`
bounds it). Not run on Windows in this project's CI: see docs/install.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from vigil.agent.exec.child import SubprocessChild, start_subprocess

# Process creation flags (WinBase.h).
CREATE_SUSPENDED = 0x00000004
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_UNICODE_ENVIRONMENT = 0x00000400
EXTENDED_STARTUPINFO_PRESENT = 0x00080000
CREATE_NO_WINDOW = 0x08000000
# A child asyncio starts: suspended until it is in its job, in a group of its own.
JOB_CHILD_FLAGS = CREATE_NEW_PROCESS_GROUP | CREATE_SUSPENDED
# A child started with the console user's token: the same, plus a Unicode environment
# block, the handle list in STARTUPINFOEX, and no console window on the user's desktop.
USER_CHILD_FLAGS = (
    CREATE_UNICODE_ENVIRONMENT
    | CREATE_NEW_PROCESS_GROUP
    | CREATE_SUSPENDED
    | EXTENDED_STARTUPINFO_PRESENT
    | CREATE_NO_WINDOW
)

# Job Objects (winnt.h).
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9  # JobObjectExtendedLimitInformation
JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION = 0x00000400
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
# Kill on close: nothing outlives the agent's handle. Die on an unhandled exception: a
# crashing child ends instead of waiting on an error-reporting dialog nobody sees.
JOB_LIMITS = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
# The exit status of a process the agent terminated (the run is a timeout then, and the
# status is not reported; after a normal exit the child's own status stands).
TERMINATED_EXIT_CODE = 1
# How long a child that could not be put in its job may take to be reaped once killed.
_REAP_S = 5.0


# Layouts with fixed-width fields (DWORD is 32 bits on Windows, but ctypes.wintypes maps
# it to C long, 64 bits on Linux): the same layout everywhere a pointer has the same size,
# so the sizes are tested on Linux too. The names are Win32's.
class JOBOBJECT_BASIC_LIMIT_INFORMATION(ctypes.Structure):
    _fields_ = [
        ("PerProcessUserTimeLimit", ctypes.c_int64),  # LARGE_INTEGER
        ("PerJobUserTimeLimit", ctypes.c_int64),
        ("LimitFlags", ctypes.c_uint32),  # DWORD
        ("MinimumWorkingSetSize", ctypes.c_size_t),  # SIZE_T
        ("MaximumWorkingSetSize", ctypes.c_size_t),
        ("ActiveProcessLimit", ctypes.c_uint32),
        ("Affinity", ctypes.c_size_t),  # ULONG_PTR
        ("PriorityClass", ctypes.c_uint32),
        ("SchedulingClass", ctypes.c_uint32),
    ]


class IO_COUNTERS(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)  # ULONGLONG
        for name in (
            "ReadOperationCount",
            "WriteOperationCount",
            "OtherOperationCount",
            "ReadTransferCount",
            "WriteTransferCount",
            "OtherTransferCount",
        )
    ]


class JOBOBJECT_EXTENDED_LIMIT_INFORMATION(ctypes.Structure):
    """144 bytes on 64-bit Windows, 112 on 32-bit (what SetInformationJobObject checks)."""

    _fields_ = [
        ("BasicLimitInformation", JOBOBJECT_BASIC_LIMIT_INFORMATION),
        ("IoInfo", IO_COUNTERS),
        ("ProcessMemoryLimit", ctypes.c_size_t),
        ("JobMemoryLimit", ctypes.c_size_t),
        ("PeakProcessMemoryUsed", ctypes.c_size_t),
        ("PeakJobMemoryUsed", ctypes.c_size_t),
    ]


class STARTUPINFOW(ctypes.Structure):
    _fields_ = [
        ("cb", ctypes.c_uint32),
        ("lpReserved", ctypes.c_wchar_p),
        ("lpDesktop", ctypes.c_wchar_p),
        ("lpTitle", ctypes.c_wchar_p),
        *(
            (name, ctypes.c_uint32)
            for name in (
                "dwX",
                "dwY",
                "dwXSize",
                "dwYSize",
                "dwXCountChars",
                "dwYCountChars",
                "dwFillAttribute",
                "dwFlags",
            )
        ),
        ("wShowWindow", ctypes.c_uint16),
        ("cbReserved2", ctypes.c_uint16),
        ("lpReserved2", ctypes.c_void_p),
        ("hStdInput", ctypes.c_void_p),
        ("hStdOutput", ctypes.c_void_p),
        ("hStdError", ctypes.c_void_p),
    ]


class STARTUPINFOEXW(ctypes.Structure):
    _fields_ = [("StartupInfo", STARTUPINFOW), ("lpAttributeList", ctypes.c_void_p)]


class PROCESS_INFORMATION(ctypes.Structure):
    _fields_ = [
        ("hProcess", ctypes.c_void_p),
        ("hThread", ctypes.c_void_p),
        ("dwProcessId", ctypes.c_uint32),
        ("dwThreadId", ctypes.c_uint32),
    ]


class THREADENTRY32(ctypes.Structure):
    _fields_ = [
        ("dwSize", ctypes.c_uint32),
        ("cntUsage", ctypes.c_uint32),
        ("th32ThreadID", ctypes.c_uint32),
        ("th32OwnerProcessID", ctypes.c_uint32),
        ("tpBasePri", ctypes.c_int32),
        ("tpDeltaPri", ctypes.c_int32),
        ("dwFlags", ctypes.c_uint32),
    ]


def job_limits() -> JOBOBJECT_EXTENDED_LIMIT_INFORMATION:
    """The limits every child's job gets: :data:`JOB_LIMITS`, nothing else."""
    info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
    info.BasicLimitInformation.LimitFlags = JOB_LIMITS
    return info


def command_line(argv: Sequence[str]) -> str:
    """The command line ``CreateProcess`` gets for ``argv``: each argument quoted by the
    Microsoft C runtime's rules (:func:`subprocess.list2cmdline`), never a shell string.
    Raises :class:`ValueError` for an empty ``argv`` or a NUL character.

    Caveat: ``cmd.exe`` parses a ``.bat``/``.cmd`` file's arguments by other rules; the
    script runner starts batch files only through ``argv[0]`` as vetted, with the
    manifest's arguments, never with data from the endpoint."""
    if not argv:
        raise ValueError("empty command")
    for arg in argv:
        if "\0" in arg:
            raise ValueError(f"embedded NUL character in argument {arg!r}")
    return subprocess.list2cmdline(argv)


def set_env(env: dict[str, str], name: str, value: str) -> None:
    """``env[name] = value`` the Windows way: names are case-insensitive, so an existing
    ``PATH`` is replaced by a ``Path`` (which keeps the new spelling)."""
    for key in [k for k in env if k.upper() == name.upper()]:
        del env[key]
    env[name] = value


def environment_block(env: Mapping[str, str]) -> bytes:
    """The UTF-16-LE environment block for ``CreateProcessAsUserW`` (with
    ``CREATE_UNICODE_ENVIRONMENT``): ``name=value`` strings each ending in NUL, sorted by
    upper-cased name as Windows expects, names differing only in case merged (the later
    wins), and a final NUL. Raises :class:`ValueError` for an empty name, a name with
    ``=`` or NUL, or a value with NUL (the block could not carry them)."""
    merged: dict[str, str] = {}
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"bad environment variable name {name!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {name} contains a NUL character")
        set_env(merged, name, value)
    entries = "".join(f"{k}={merged[k]}\0" for k in sorted(merged, key=str.upper))
    # An empty block still needs two NULs: one ending the (absent) list, one ending it.
    return (entries or "\0").encode("utf-16-le", "surrogatepass") + b"\0\0"


def parse_environment_block(text: str) -> dict[str, str]:
    """The variables of an environment block (``CreateEnvironmentBlock``'s) decoded to
    ``str``: it ends at the first empty string; the hidden per-drive entries
    (``=C:=C:\\``) are dropped."""
    env: dict[str, str] = {}
    for entry in text.split("\0"):
        if not entry:
            break
        name, sep, value = entry.partition("=")
        if name and sep:
            set_env(env, name, value)
    return env


class Win32(Protocol):
    """The Win32 calls the children need; handles are ints, failures :class:`OSError`.

    :class:`vigil.agent.exec._windows.Kernel32` is the real one (Windows only); tests
    pass a fake to check the ordering and that every handle is closed on every path."""

    def create_job(self, limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION) -> int:
        """CreateJobObjectW, then SetInformationJobObject(limits); the job handle."""
        ...

    def assign_to_job(self, job: int, process: int) -> None: ...

    def terminate_job(self, job: int, exit_code: int) -> None: ...

    def open_process(self, pid: int) -> int:
        """OpenProcess with the rights AssignProcessToJobObject needs."""
        ...

    def main_thread(self, pid: int) -> int:
        """A handle to the only thread of a suspended process (Toolhelp, OpenThread)."""
        ...

    def resume_thread(self, thread: int) -> None: ...

    def terminate_process(self, process: int, exit_code: int) -> None: ...

    def exit_code(self, process: int) -> int | None:
        """The exit status once the process has ended, else None."""
        ...

    def close_handle(self, handle: int) -> None: ...

    def query_user_token(self, session: int) -> int:
        """WTSQueryUserToken: a primary token of the session's user (needs LocalSystem)."""
        ...

    def user_environment(self, token: int) -> dict[str, str]:
        """CreateEnvironmentBlock(token) parsed (:func:`parse_environment_block`)."""
        ...

    def create_output_pipe(self) -> tuple[int, int]:
        """(read end, overlapped for asyncio's proactor; write end, inheritable)."""
        ...

    def open_null(self) -> int:
        """The null device, inheritable (the child's stdin, and stderr when not merged)."""
        ...

    def create_process_as_user(
        self,
        token: int,
        command: str,
        environment: bytes,
        cwd: str | None,
        std: tuple[int, int, int],
        flags: int,
    ) -> tuple[int, int]:
        """CreateProcessAsUserW; (process, thread). ``std`` is (stdin, stdout, stderr):
        the only handles the child inherits (PROC_THREAD_ATTRIBUTE_HANDLE_LIST)."""
        ...


def open_job(api: Win32) -> int:
    """A new job with :func:`job_limits`, its handle (the caller closes it)."""
    return api.create_job(job_limits())


def _adopt(api: Win32, job: int, pid: int) -> None:
    """Put the suspended child ``pid`` in ``job``, then let it run.

    The pid cannot be recycled meanwhile: asyncio holds the process handle and the child,
    suspended, cannot exit. It has one thread, found by pid because asyncio closed the
    handle ``CreateProcess`` gave it."""
    process = api.open_process(pid)
    try:
        api.assign_to_job(job, process)
    finally:
        api.close_handle(process)
    thread = api.main_thread(pid)
    try:
        api.resume_thread(thread)
    finally:
        api.close_handle(thread)


class JobChild(SubprocessChild):
    """A child asyncio started, with its tree in a Job Object the agent holds."""

    def __init__(self, proc: asyncio.subprocess.Process, api: Win32, job: int) -> None:
        super().__init__(proc)
        self.api = api
        self.job: int | None = job

    def signal_tree(self, sig: int) -> None:
        """Terminate the whole job: a windowless child has no catchable stop request, so
        SIGTERM and SIGKILL mean the same here."""
        if self.job is not None:
            with contextlib.suppress(OSError):
                self.api.terminate_job(self.job, TERMINATED_EXIT_CODE)

    def close(self) -> None:
        """Close the job handle: with kill-on-close, whatever is left in it dies."""
        if self.job is not None:
            job, self.job = self.job, None
            self.api.close_handle(job)


async def start_in_job(
    api: Win32,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    merge_stderr: bool,
    spawn_kwargs: Mapping[str, object],
    start: Callable[..., Awaitable[asyncio.subprocess.Process]] = start_subprocess,
) -> JobChild:
    """Start ``argv`` through asyncio (``start``), suspended, in a new job; resume it
    once it is in the job. On any failure the suspended child is killed and reaped and
    the job closed before the error propagates: nothing is left to clean up."""
    job = open_job(api)
    try:
        proc = await start(
            argv,
            env=env,
            cwd=cwd,
            merge_stderr=merge_stderr,
            creationflags=JOB_CHILD_FLAGS,
            **spawn_kwargs,
        )
    except BaseException:
        api.close_handle(job)
        raise
    try:
        _adopt(api, job, proc.pid)
    except BaseException:
        # Still suspended (it ran nothing, started nothing): killing it alone is enough.
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), _REAP_S)
        api.close_handle(job)
        raise
    return JobChild(proc, api, job)


@dataclass(frozen=True, slots=True)
class Spawned:
    """What :func:`spawn_as_user` leaves open: the running process, its job and the read
    end of its output pipe. The caller owns all three."""

    process: int
    job: int
    output: int


def _kill_quietly(api: Win32, process: int) -> None:
    with contextlib.suppress(OSError):
        api.terminate_process(process, TERMINATED_EXIT_CODE)


def spawn_as_user(
    api: Win32,
    session: int,
    command: str,
    environment: bytes,
    cwd: str | None,
    merge_stderr: bool,
) -> Spawned:
    """Start ``command`` as the user of console ``session``, in a new job; blocking.

    Order: the user's token; the job; the output pipe; the process, created suspended
    (its copies of the pipe's write end and of the null device closed at once, or the
    pipe would never reach EOF); the process put in the job; only then its thread
    resumed. Every handle is closed on every path; on a failure after the process was
    created it is terminated (it never ran) and the error propagates."""
    with contextlib.ExitStack() as always:
        token = api.query_user_token(session)
        always.callback(api.close_handle, token)
        with contextlib.ExitStack() as on_error:
            job = open_job(api)
            on_error.callback(api.close_handle, job)
            read, write = api.create_output_pipe()
            on_error.callback(api.close_handle, read)
            with contextlib.ExitStack() as child_ends:
                child_ends.callback(api.close_handle, write)
                null = api.open_null()
                child_ends.callback(api.close_handle, null)
                std = (null, write, write if merge_stderr else null)
                process, thread = api.create_process_as_user(
                    token, command, environment, cwd, std, USER_CHILD_FLAGS
                )
            on_error.callback(api.close_handle, process)
            on_error.callback(_kill_quietly, api, process)  # runs before the close (LIFO)
            try:
                api.assign_to_job(job, process)
                api.resume_thread(thread)  # only once it is in the job: no escape window
            finally:
                api.close_handle(thread)
            on_error.pop_all()  # success: the caller owns process, job and read end
    return Spawned(process=process, job=job, output=read)


def user_environment(api: Win32, session: int) -> dict[str, str]:
    """The environment the user of console ``session`` gets at logon (their profile
    folders, ``TEMP``, ``PATH`` with their own entries), from their token, plus ``HOME``
    set to their ``USERPROFILE`` (else the agent's ``HOME``, LocalSystem's profile,
    would stay: the child environment starts from the agent's base)."""
    token = api.query_user_token(session)
    try:
        env = api.user_environment(token)
    finally:
        api.close_handle(token)
    profile = next((v for k, v in env.items() if k.upper() == "USERPROFILE"), None)
    if profile:
        set_env(env, "HOME", profile)
    return env


class SessionUserChild:
    """A child started with a console user's token, read through a pipe asyncio polls."""

    def __init__(
        self,
        api: Win32,
        spawned: Spawned,
        reader: asyncio.StreamReader,
        transport: asyncio.BaseTransport,
    ) -> None:
        self.api = api
        self.spawned = spawned
        self._reader = reader
        self._transport = transport
        self._code: int | None = None
        self._closed = False

    @property
    def returncode(self) -> int | None:
        if self._code is None and not self._closed:
            self._code = self.api.exit_code(self.spawned.process)
        return self._code

    @property
    def stdout(self) -> asyncio.StreamReader:
        return self._reader

    def signal_tree(self, sig: int) -> None:
        """Terminate the whole job (see :meth:`JobChild.signal_tree`)."""
        if not self._closed:
            with contextlib.suppress(OSError):
                self.api.terminate_job(self.spawned.job, TERMINATED_EXIT_CODE)

    def abort_output(self) -> None:
        self._transport.close()

    def close(self) -> None:
        """Close the pipe, the process handle and the job (killing any leftover)."""
        if self._closed:
            return
        self.returncode  # noqa: B018 (keep the status: the handle is about to go)
        self._closed = True
        self._transport.close()  # owns the read end
        self.api.close_handle(self.spawned.process)
        self.api.close_handle(self.spawned.job)


def _release(api: Win32, spawned: Spawned) -> None:
    """Kill the tree of a child nobody will supervise and close its handles."""
    with contextlib.suppress(OSError):
        api.terminate_job(spawned.job, TERMINATED_EXIT_CODE)
    for handle in (spawned.output, spawned.process, spawned.job):
        api.close_handle(handle)


def _discard(api: Win32, spawning: asyncio.Future[Spawned]) -> None:
    """Release what a spawn started after its caller was cancelled."""
    if not spawning.cancelled() and spawning.exception() is None:
        _release(api, spawning.result())


async def start_as_session_user(
    api: Win32,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    merge_stderr: bool,
    session: int,
    connect: Callable[[int], Awaitable[tuple[asyncio.BaseTransport, asyncio.StreamReader]]],
) -> SessionUserChild:
    """Start ``argv`` as the user of console ``session`` (:func:`spawn_as_user` in a worker
    thread: the Win32 calls block), then hand the pipe's read end to ``connect`` (which
    returns the transport that now owns it and the reader). Bad arguments raise
    :class:`ValueError` before any handle is opened. A cancelled call lets the spawn
    finish and then kills and releases what it started."""
    command = command_line(argv)
    environment = environment_block(env)
    spawning = asyncio.ensure_future(
        asyncio.to_thread(spawn_as_user, api, session, command, environment, cwd, merge_stderr)
    )
    try:
        spawned = await asyncio.shield(spawning)
    except asyncio.CancelledError:
        # The thread cannot be interrupted mid-call: clean up whenever it finishes.
        spawning.add_done_callback(lambda done: _discard(api, done))
        raise
    try:
        transport, reader = await connect(spawned.output)
    except BaseException:
        _release(api, spawned)
        raise
    return SessionUserChild(api, spawned, reader, transport)
