"""The Windows process-tree logic that runs anywhere (vigil.agent.exec.winproc): the
CreateProcess command line, environment blocks, the Job Object limit layout, and the
order of the Win32 calls, driven through a fake Win32 that records them.

These tests prove the logic, not the ctypes bindings of vigil.agent.exec._windows:
those have not run on Windows in this project's CI (see docs/install.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from vigil.agent.exec import winproc
from vigil.agent.exec.capture import HeadTail
from vigil.agent.exec.process import supervise
from vigil.agent.exec.winproc import (
    CREATE_NEW_PROCESS_GROUP,
    CREATE_SUSPENDED,
    CREATE_UNICODE_ENVIRONMENT,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    command_line,
    environment_block,
    parse_environment_block,
    set_env,
    spawn_as_user,
    start_as_session_user,
    start_in_job,
)

is_64_bit = ctypes.sizeof(ctypes.c_void_p) == 8


# --- command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["C:\\Program Files\\PowerShell\\pwsh.exe", "-File", "x.ps1"],
         '"C:\\Program Files\\PowerShell\\pwsh.exe" -File x.ps1'),
        (["prog", "two words"], 'prog "two words"'),
        (["prog", 'say "hi"'], 'prog "say \\"hi\\""'),
        (["prog", "C:\\dir with space\\"], 'prog "C:\\dir with space\\\\"'),
        (["prog", "C:\\no_space\\"], "prog C:\\no_space\\"),
        (["prog", ""], 'prog ""'),
        (["prog", "a&b|c>d"], "prog a&b|c>d"),
    ],
    ids=["spaces in the program", "spaces", "quotes", "trailing backslash quoted",
         "trailing backslash bare", "empty argument", "shell characters stay literal"],
)  # fmt: skip
def test_the_command_line_quotes_each_argument_by_the_c_runtime_rules(
    argv: list[str], line: str
) -> None:
    assert command_line(argv) == line == subprocess.list2cmdline(argv)


@pytest.mark.parametrize("argv", [[], ["prog", "a\0b"]], ids=["empty", "NUL"])
def test_a_command_line_that_cannot_be_built_is_refused(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        command_line(argv)


# --- environment blocks ---------------------------------------------------------------


def test_the_environment_block_is_sorted_nul_separated_utf16_with_a_final_nul() -> None:
    block = environment_block({"b": "2", "A": "1", "Ünï": "ç"})
    assert block == "A=1\0b=2\0Ünï=ç\0\0".encode("utf-16-le")


def test_names_differing_only_in_case_are_one_variable_and_the_later_wins() -> None:
    block = environment_block({"PATH": "C:\\Windows", "Path": "C:\\Users\\al\\bin"})
    assert block == "Path=C:\\Users\\al\\bin\0\0".encode("utf-16-le")


def test_an_empty_environment_is_two_nuls() -> None:
    assert environment_block({}) == b"\0\0\0\0"


@pytest.mark.parametrize(
    "env",
    [{"": "x"}, {"A=B": "x"}, {"A\0": "x"}, {"A": "x\0y"}],
    ids=["empty", "=", "NUL", "value"],
)
def test_a_variable_the_block_cannot_carry_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        environment_block(env)


def test_a_parsed_block_round_trips_and_drops_the_hidden_drive_entries() -> None:
    env = {"USERPROFILE": "C:\\Users\\ålice", "TEMP": "C:\\Users\\ålice\\AppData\\Local\\Temp"}
    text = "=C:=C:\\\0" + environment_block(env).decode("utf-16-le")
    assert parse_environment_block(text) == env


def test_set_env_replaces_a_name_whatever_its_case() -> None:
    env = {"PATH": "C:\\Windows", "TEMP": "t"}
    set_env(env, "Path", "C:\\Users\\al\\bin")
    assert env == {"TEMP": "t", "Path": "C:\\Users\\al\\bin"}


# --- Job Object layout ----------------------------------------------------------------


@pytest.mark.skipif(not is_64_bit, reason="the 64-bit layout")
def test_the_job_limit_structures_have_the_64_bit_windows_layout() -> None:
    """SetInformationJobObject checks the size: 144 bytes on 64-bit Windows."""
    assert ctypes.sizeof(JOBOBJECT_EXTENDED_LIMIT_INFORMATION) == 144
    assert JOBOBJECT_EXTENDED_LIMIT_INFORMATION.IoInfo.offset == 64
    assert winproc.JOBOBJECT_BASIC_LIMIT_INFORMATION.LimitFlags.offset == 16
    assert ctypes.sizeof(winproc.STARTUPINFOW) == 104
    assert ctypes.sizeof(winproc.STARTUPINFOEXW) == 112
    assert ctypes.sizeof(winproc.PROCESS_INFORMATION) == 24
    assert ctypes.sizeof(winproc.THREADENTRY32) == 28


def test_a_job_kills_its_tree_on_close_and_allows_no_breakaway() -> None:
    flags = winproc.job_limits().BasicLimitInformation.LimitFlags
    assert flags & JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    assert not flags & 0x00000800  # JOB_OBJECT_LIMIT_BREAKAWAY_OK
    assert not flags & 0x00001000  # JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK


# --- a fake Win32 ---------------------------------------------------------------------


class FakeWin32:
    """Records every call, hands out numbered handles and knows which are open.
    ``fail`` names a call that raises OSError; ``exited`` is the fake child's status."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.open: dict[int, str] = {}
        self.fail = fail
        self.exited: int | None = None
        self.on_terminate: Callable[[], None] = lambda: None
        self._next = 100

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name == self.fail:
            raise OSError(f"{name} failed")

    def _new(self, kind: str) -> int:
        self._next += 4
        self.open[self._next] = kind
        return self._next

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def create_job(self, limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION) -> int:
        self._call("create_job", limits.BasicLimitInformation.LimitFlags)
        return self._new("job")

    def assign_to_job(self, job: int, process: int) -> None:
        self._call("assign_to_job", job, process)

    def terminate_job(self, job: int, exit_code: int) -> None:
        self._call("terminate_job", job)
        assert job in self.open, "terminated a closed job"
        if self.exited is None:
            self.exited = exit_code
        self.on_terminate()

    def open_process(self, pid: int) -> int:
        self._call("open_process", pid)
        return self._new("process")

    def main_thread(self, pid: int) -> int:
        self._call("main_thread", pid)
        return self._new("thread")

    def resume_thread(self, thread: int) -> None:
        self._call("resume_thread", thread)

    def terminate_process(self, process: int, exit_code: int) -> None:
        self._call("terminate_process", process)

    def exit_code(self, process: int) -> int | None:
        assert process in self.open, "asked a closed process handle"
        return self.exited

    def close_handle(self, handle: int) -> None:
        self.calls.append(("close", self.open.get(handle, f"unknown {handle}")))
        assert self.open.pop(handle, None) is not None, f"closed {handle} twice"

    def query_user_token(self, session: int) -> int:
        self._call("query_user_token", session)
        return self._new("token")

    def user_environment(self, token: int) -> dict[str, str]:
        self._call("user_environment", self.open[token])
        return {"USERPROFILE": "C:\\Users\\alice"}

    def create_output_pipe(self) -> tuple[int, int]:
        self._call("create_output_pipe")
        return self._new("read"), self._new("write")

    def open_null(self) -> int:
        self._call("open_null")
        return self._new("null")

    def create_process_as_user(
        self,
        token: int,
        command: str,
        environment: bytes,
        cwd: str | None,
        std: tuple[int, int, int],
        flags: int,
    ) -> tuple[int, int]:
        kinds = tuple(self.open[h] for h in std)
        self._call("create_process_as_user", self.open[token], command, kinds, flags)
        return self._new("user process"), self._new("thread")


FAILURES = [
    "query_user_token",
    "create_job",
    "create_output_pipe",
    "open_null",
    "create_process_as_user",
    "assign_to_job",
    "resume_thread",
]


# --- the console user's child ---------------------------------------------------------


def test_a_user_child_is_created_suspended_put_in_its_job_then_resumed() -> None:
    api = FakeWin32()
    spawned = spawn_as_user(api, 3, "prog arg", b"\0\0\0\0", None, merge_stderr=True)
    names = api.names()
    assert names.index("create_process_as_user") < names.index("assign_to_job")
    assert names.index("assign_to_job") < names.index("resume_thread")
    created = next(c for c in api.calls if c[0] == "create_process_as_user")
    assert created[1:3] == ("token", "prog arg")
    assert created[3] == ("null", "write", "write")  # stdin, stdout, stderr
    assert created[4] & CREATE_SUSPENDED and created[4] & CREATE_UNICODE_ENVIRONMENT
    assert created[4] & CREATE_NEW_PROCESS_GROUP
    # Our copies of the child's ends are closed at once (else the pipe never reaches EOF).
    assert names.index("close", names.index("create_process_as_user")) < names.index(
        "assign_to_job"
    )
    assert api.open == {
        spawned.process: "user process",
        spawned.job: "job",
        spawned.output: "read",
    }


def test_stderr_goes_to_the_null_device_when_not_merged() -> None:
    api = FakeWin32()
    spawn_as_user(api, 3, "prog", b"\0\0\0\0", None, merge_stderr=False)
    created = next(c for c in api.calls if c[0] == "create_process_as_user")
    assert created[3] == ("null", "write", "null")


@pytest.mark.parametrize("failing", FAILURES)
def test_a_failed_user_spawn_leaves_no_handle_open_and_no_child_running(failing: str) -> None:
    api = FakeWin32(fail=failing)
    with pytest.raises(OSError, match=failing):
        spawn_as_user(api, 3, "prog", b"\0\0\0\0", None, merge_stderr=True)
    assert api.open == {}
    names = api.names()
    if "create_process_as_user" in names and failing != "create_process_as_user":
        assert "terminate_process" in names  # created suspended, killed before it ran
    if failing == "assign_to_job":
        assert "resume_thread" not in names  # never runs outside its job


def test_the_user_environment_comes_from_their_token_which_is_then_closed() -> None:
    api = FakeWin32()
    assert winproc.user_environment(api, 3) == {
        "USERPROFILE": "C:\\Users\\alice",
        "HOME": "C:\\Users\\alice",  # not LocalSystem's profile, the agent's HOME
    }
    assert api.names() == ["query_user_token", "user_environment", "close"]
    assert api.open == {}


class FakeTransport(asyncio.BaseTransport):
    def __init__(self, api: FakeWin32, handle: int) -> None:
        super().__init__()
        self.api, self.handle, self.closed = api, handle, False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.api.close_handle(self.handle)


def pipe_connector(api: FakeWin32, stream: asyncio.StreamReader) -> Any:
    async def connect(handle: int) -> tuple[asyncio.BaseTransport, asyncio.StreamReader]:
        api.calls.append(("connect", api.open[handle]))
        return FakeTransport(api, handle), stream

    return connect


async def run_user_child(api: FakeWin32, behave: Callable[[asyncio.StreamReader], None]) -> Any:
    stream = asyncio.StreamReader()
    api.on_terminate = stream.feed_eof
    child = await start_as_session_user(
        api,
        ["prog", "a b"],
        env={"Path": "C:\\x"},
        cwd=None,
        merge_stderr=True,
        session=3,
        connect=pipe_connector(api, stream),
    )
    behave(stream)
    capture = HeadTail(1000)
    try:
        timed_out = await supervise(child, capture, timeout_s=0.3)
    finally:
        child.close()
    return timed_out, child.returncode, capture.result()[0]


def test_a_user_child_that_runs_too_long_has_its_whole_job_terminated() -> None:
    api = FakeWin32()
    timed_out, _, output = asyncio.run(
        run_user_child(api, lambda stream: stream.feed_data(b"working\n"))
    )
    assert timed_out
    assert output == "working\n"
    assert "terminate_job" in api.names()
    assert api.open == {}  # process, job and the pipe's read end closed


def test_a_user_child_that_exits_keeps_its_status_and_output() -> None:
    api = FakeWin32()

    def finish(stream: asyncio.StreamReader) -> None:
        stream.feed_data(b"fixed\n")
        stream.feed_eof()
        api.exited = 0

    timed_out, code, output = asyncio.run(run_user_child(api, finish))
    assert (timed_out, code, output) == (False, 0, "fixed\n")
    # Leftovers are stopped after a normal exit too (the same rule as on POSIX).
    assert "terminate_job" in api.names()
    assert api.open == {}


def test_bad_arguments_are_refused_before_any_handle_is_opened() -> None:
    api = FakeWin32()

    async def never(handle: int) -> tuple[asyncio.BaseTransport, asyncio.StreamReader]:
        raise AssertionError("connected a pipe for a refused command")

    with pytest.raises(ValueError):
        asyncio.run(
            start_as_session_user(
                api,
                ["prog", "a\0"],
                env={},
                cwd=None,
                merge_stderr=True,
                session=3,
                connect=never,
            )
        )
    assert api.calls == []


def test_a_pipe_that_cannot_be_connected_kills_the_child_and_closes_everything() -> None:
    api = FakeWin32()

    async def broken(handle: int) -> tuple[asyncio.BaseTransport, asyncio.StreamReader]:
        raise OSError("no proactor")

    with pytest.raises(OSError, match="no proactor"):
        asyncio.run(
            start_as_session_user(
                api, ["prog"], env={}, cwd=None, merge_stderr=True, session=3, connect=broken
            )
        )
    assert "terminate_job" in api.names()
    assert api.open == {}


def test_a_cancelled_user_start_releases_what_the_spawn_thread_started() -> None:
    """The blocking spawn cannot be interrupted: once it finishes, its child is killed and
    every handle closed, though nobody awaits it any more."""
    api = FakeWin32()
    gate = threading.Event()
    take_token = api.query_user_token

    def slow_token(session: int) -> int:
        gate.wait(5)
        return take_token(session)

    api.query_user_token = slow_token  # type: ignore[method-assign]

    async def never(handle: int) -> tuple[asyncio.BaseTransport, asyncio.StreamReader]:
        raise AssertionError("connected a pipe for a cancelled start")

    async def scenario() -> None:
        start = asyncio.create_task(
            start_as_session_user(
                api, ["prog"], env={}, cwd=None, merge_stderr=True, session=3, connect=never
            )
        )
        await asyncio.sleep(0.05)
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        gate.set()
        for _ in range(100):  # at most 5 s for the thread to finish and the clean-up to run
            if "terminate_job" in api.names() and not api.open:
                break
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert "resume_thread" in api.names()  # it did start...
    assert "terminate_job" in api.names()  # ...and was killed
    assert api.open == {}


# --- a child asyncio starts, in a job ---------------------------------------------------


class FakeProcess:
    """What start_in_job needs of an asyncio Process."""

    def __init__(self, api: FakeWin32) -> None:
        self.pid = 4242
        self.returncode: int | None = None
        self.stdout = asyncio.StreamReader()
        self.killed = False
        self._transport = FakeTransport(api, api._new("asyncio pipe"))

    def kill(self) -> None:
        self.killed = True
        self.returncode = 1

    async def wait(self) -> int:
        assert self.returncode is not None, "waited for a child nobody killed"
        return self.returncode


def fake_start(api: FakeWin32, made: list[FakeProcess]) -> Any:
    async def start(argv: list[str], **kwargs: Any) -> FakeProcess:
        api.calls.append(("start", kwargs["creationflags"]))
        made.append(FakeProcess(api))
        return made[-1]

    return start


async def start_job_child(api: FakeWin32, made: list[FakeProcess]) -> winproc.JobChild:
    return await start_in_job(
        api,
        ["prog"],
        env={},
        cwd=None,
        merge_stderr=True,
        spawn_kwargs={},
        start=fake_start(api, made),
    )


def test_an_asyncio_child_starts_suspended_and_is_resumed_only_inside_its_job() -> None:
    api = FakeWin32()
    made: list[FakeProcess] = []
    child = asyncio.run(start_job_child(api, made))
    assert api.names() == [
        "create_job", "start", "open_process", "assign_to_job", "close",
        "main_thread", "resume_thread", "close",
    ]  # fmt: skip
    assert api.calls[1][1] == CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP
    assert ("open_process", 4242) in api.calls and ("main_thread", 4242) in api.calls
    child.close()
    made[0]._transport.close()
    assert api.open == {}


@pytest.mark.parametrize(
    "failing", ["open_process", "assign_to_job", "main_thread", "resume_thread"]
)
def test_an_asyncio_child_that_cannot_be_put_in_its_job_is_killed_before_it_runs(
    failing: str,
) -> None:
    api = FakeWin32(fail=failing)
    made: list[FakeProcess] = []
    with pytest.raises(OSError, match=failing):
        asyncio.run(start_job_child(api, made))
    assert made[0].killed
    made[0]._transport.close()
    assert api.open == {}
    if failing in ("open_process", "assign_to_job"):
        assert "resume_thread" not in api.names()


def test_a_job_child_on_timeout_terminates_the_job_and_closes_it_at_the_end() -> None:
    api = FakeWin32()
    made: list[FakeProcess] = []

    async def scenario() -> bool:
        child = await start_job_child(api, made)

        def die() -> None:  # what TerminateJobObject does to the asyncio child
            made[0].returncode = 1
            made[0].stdout.feed_eof()

        api.on_terminate = die
        try:
            return await supervise(child, HeadTail(100), timeout_s=0.2)
        finally:
            child.close()

    assert asyncio.run(scenario())
    names = api.names()
    assert "terminate_job" in names
    assert names[-1] == "close" and api.calls[-1] == ("close", "job")
    made[0]._transport.close()
    assert api.open == {}


# --- only on Windows -------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="checks the other platforms")
def test_the_windows_modules_are_not_imported_elsewhere() -> None:
    code = (
        "import sys, vigil.agent.cli, vigil.agent.exec.script, vigil.agent.exec.console, "
        "vigil.agent.svc, vigil.agent.update.launch, vigil.agent.service; "
        "print(sorted(m for m in sys.modules if m.endswith('_windows') "
        "or m.startswith(('win32', 'servicemanager', 'asyncio.windows'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
