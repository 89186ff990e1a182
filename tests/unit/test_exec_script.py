"""exec.script: running remediation scripts safely (vetting, interpreter, run_as, limits).

Scripts are real files in tmp_path run as real subprocesses.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import resource
import stat
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.procs import assert_process_gone
from vigil.agent.exec.process import KILL_GRACE_S
from vigil.agent.exec.script import ScriptResult, run_script

T = TypeVar("T")
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX process groups and sh")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def write_script(path: Path, text: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def run_in(root: Path, script: Path, **kwargs: Any) -> ScriptResult:
    """Run ``script`` with ``root`` as the only allowed folder and roomy defaults."""
    kwargs.setdefault("timeout_s", 10.0)
    kwargs.setdefault("output_cap_bytes", 4096)
    return run(run_script(script, allowed_roots=[root], **kwargs))


def wait_for_file(path: Path, timeout_s: float = 5.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text().strip()):
            return text
        time.sleep(0.01)
    raise AssertionError(f"{path} was never written")


# --- running and exit codes ---------------------------------------------------------


@posix_only
@pytest.mark.parametrize(
    "code", [0, 1, 137], ids=["success", "failure", "exit-137-is-an-exit-not-a-kill"]
)
def test_exit_code_is_recorded(tmp_path: Path, code: int) -> None:
    script = write_script(tmp_path / "exit.sh", f"exit {code}\n")

    result = run_in(tmp_path, script)

    assert result.exit_code == code
    assert not result.timed_out
    assert result.error is None


@posix_only
def test_stdout_and_stderr_are_merged_in_order(tmp_path: Path) -> None:
    script = write_script(tmp_path / "both.sh", "echo out1\necho err1 >&2\necho out2\n")

    result = run_in(tmp_path, script)

    assert result.output == "out1\nerr1\nout2\n"
    assert not result.truncated


@posix_only
@pytest.mark.parametrize(
    ("name", "text", "mode"),
    [
        ("plain.sh", "echo ran\n", 0o644),
        ("plain.py", "print('ran')\n", 0o644),
        ("plain", "#!/bin/sh\necho ran\n", 0o755),
    ],
    ids=["sh-needs-no-exec-bit", "py-needs-no-exec-bit", "other-runs-directly"],
)
def test_interpreter_follows_the_suffix(tmp_path: Path, name: str, text: str, mode: int) -> None:
    script = write_script(tmp_path / name, text, mode)

    result = run_in(tmp_path, script)

    assert (result.exit_code, result.output, result.error) == (0, "ran\n", None)


@posix_only
def test_python_scripts_run_with_the_agents_python(tmp_path: Path) -> None:
    script = write_script(tmp_path / "which.py", "import sys\nprint(sys.executable)\n", 0o644)

    result = run_in(tmp_path, script)

    assert result.output.strip() == sys.executable


@posix_only
def test_script_sha256_is_recorded(tmp_path: Path) -> None:
    script = write_script(tmp_path / "hash.sh", "echo hashed\n")

    result = run_in(tmp_path, script)

    assert result.script_sha256 == hashlib.sha256(script.read_bytes()).hexdigest()


@posix_only
def test_working_folder_defaults_to_the_scripts_folder(tmp_path: Path) -> None:
    script = write_script(tmp_path / "sub" / "where.sh", "pwd -P\n")

    result = run_in(tmp_path, script)

    assert result.output == f"{(tmp_path / 'sub').resolve()}\n"


@posix_only
def test_working_folder_can_be_given(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    script = write_script(tmp_path / "where.sh", "pwd -P\n")

    result = run_in(tmp_path, script, cwd=tmp_path / "work")

    assert result.output == f"{(tmp_path / 'work').resolve()}\n"


@posix_only
def test_stdin_is_empty(tmp_path: Path) -> None:
    """A script that reads stdin sees end-of-file at once instead of hanging."""
    script = write_script(tmp_path / "read.sh", "read line\necho read-status=$?\n")

    result = run_in(tmp_path, script, timeout_s=5.0)

    assert result.output == "read-status=1\n"


# --- environment and arguments ---------------------------------------------------------


@posix_only
def test_environment_is_minimal_plus_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SECRET", "must-not-leak")
    script = write_script(tmp_path / "env.sh", "env | sort\n")

    result = run_in(tmp_path, script, env={"VIGIL_PARAM_DIR": "/srv/spool"})

    names = {line.split("=", 1)[0] for line in result.output.splitlines()}
    assert "AGENT_SECRET" not in names
    assert {"PATH", "HOME", "LANG", "VIGIL_PARAM_DIR"} <= names
    assert "LANG=C.UTF-8" in result.output.splitlines()
    assert "VIGIL_PARAM_DIR=/srv/spool" in result.output.splitlines()


@posix_only
def test_hostile_param_is_passed_literally_not_interpreted(tmp_path: Path) -> None:
    """Shell syntax in a parameter reaches the script as plain text and runs nothing."""
    canary = tmp_path / "canary"
    hostile = f'x; rm -rf {tmp_path}; touch {canary} $(touch {canary}) `touch {canary}` "'
    script = write_script(tmp_path / "echo.sh", 'printf "%s\\n" "$VIGIL_PARAM_DIR" "$1"\n')

    result = run_in(tmp_path, script, env={"VIGIL_PARAM_DIR": hostile}, args=[hostile])

    assert result.output == f"{hostile}\n{hostile}\n"
    assert not canary.exists()
    assert script.exists()


@posix_only
def test_nul_byte_in_env_is_an_error_not_an_exception(tmp_path: Path) -> None:
    script = write_script(tmp_path / "ok.sh", "exit 0\n")

    result = run_in(tmp_path, script, env={"VIGIL_PARAM_DIR": "a\0b"})

    assert result.exit_code is None
    assert "NUL" in (result.error or "")


# --- refusing scripts ----------------------------------------------------------------


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "root" / "nope.sh"


def _not_executable(tmp_path: Path) -> Path:
    return write_script(tmp_path / "root" / "noexec", "#!/bin/sh\necho ran\n", 0o644)


def _outside_root(tmp_path: Path) -> Path:
    return write_script(tmp_path / "elsewhere" / "evil.sh", "echo ran\n")


def _symlink_out_of_root(tmp_path: Path) -> Path:
    target = write_script(tmp_path / "elsewhere" / "evil.sh", "echo ran\n")
    link = tmp_path / "root" / "innocent.sh"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def _dotdot_out_of_root(tmp_path: Path) -> Path:
    write_script(tmp_path / "elsewhere" / "evil.sh", "echo ran\n")
    (tmp_path / "root").mkdir(parents=True, exist_ok=True)
    return tmp_path / "root" / ".." / "elsewhere" / "evil.sh"


def _a_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "root" / "folder.sh"
    folder.mkdir(parents=True)
    return folder


@posix_only
@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_missing, "not found"),
        (_not_executable, "not executable"),
        (_outside_root, "outside the allowed folders"),
        (_symlink_out_of_root, "outside the allowed folders"),
        (_dotdot_out_of_root, "outside the allowed folders"),
        (_a_folder, "not a regular file"),
    ],
    ids=["missing", "not-executable", "outside-root", "symlink-escape", "dotdot-escape", "folder"],
)
def test_refused_script_gives_an_error_without_running(
    tmp_path: Path, make: Any, reason: str
) -> None:
    script = make(tmp_path)

    result = run_in(tmp_path / "root", script)

    assert reason in (result.error or "")
    assert result.exit_code is None
    assert result.output == ""


@posix_only
def test_no_allowed_roots_refuses_everything(tmp_path: Path) -> None:
    script = write_script(tmp_path / "ok.sh", "echo ran\n")

    result = run(run_script(script, allowed_roots=[], timeout_s=5, output_cap_bytes=1024))

    assert "outside the allowed folders" in (result.error or "")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="only enforced as root")
@pytest.mark.parametrize("bit", [stat.S_IWGRP, stat.S_IWOTH], ids=["group", "world"])
def test_root_refuses_writable_script(tmp_path: Path, bit: int) -> None:
    script = write_script(tmp_path / "shared.sh", "echo ran\n", 0o644 | bit)

    result = run_in(tmp_path, script)

    assert "writable" in (result.error or "")
    assert result.exit_code is None
    assert result.script_sha256 == hashlib.sha256(script.read_bytes()).hexdigest()


@posix_only
def test_file_without_shebang_gives_an_error(tmp_path: Path) -> None:
    script = write_script(tmp_path / "binary", "\x7fnot really an executable\n")

    result = run_in(tmp_path, script)

    assert "cannot start" in (result.error or "")
    assert result.exit_code is None


# --- timeouts and process trees ------------------------------------------------------

STUBBORN_GRANDCHILD = """\
# The grandchild ignores SIGTERM (ignored signals survive exec) and records its pid.
sh -c 'trap "" TERM; echo $$ > "$1"; exec sleep 60' sh "$PIDFILE" &
sleep 60
"""


@posix_only
def test_timeout_kills_a_grandchild_that_ignores_sigterm(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    script = write_script(tmp_path / "stubborn.sh", STUBBORN_GRANDCHILD)

    result = run_in(tmp_path, script, env={"PIDFILE": str(pidfile)}, timeout_s=0.5)

    grandchild = int(wait_for_file(pidfile))
    assert result.timed_out
    assert result.exit_code is None
    assert result.error is None
    assert_process_gone(grandchild)
    assert result.duration_s < 0.5 + KILL_GRACE_S + 2.0


@posix_only
def test_timeout_of_a_cooperative_script_needs_no_grace_period(tmp_path: Path) -> None:
    script = write_script(tmp_path / "slow.sh", "echo started\nexec sleep 60\n")

    result = run_in(tmp_path, script, timeout_s=0.3)

    assert result.timed_out
    assert result.output == "started\n"
    assert result.duration_s < 0.3 + KILL_GRACE_S


@posix_only
def test_background_child_left_after_normal_exit_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "leftover.pid"
    script = write_script(tmp_path / "leaves.sh", 'sleep 60 &\necho $! > "$PIDFILE"\nexit 0\n')

    result = run_in(tmp_path, script, env={"PIDFILE": str(pidfile)})

    assert result.exit_code == 0
    assert not result.timed_out
    assert_process_gone(int(wait_for_file(pidfile)))
    assert result.duration_s < KILL_GRACE_S


@posix_only
def test_cancelled_run_kills_the_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = write_script(tmp_path / "long.sh", 'sleep 60 &\necho $! > "$PIDFILE"\nwait\n')

    async def main() -> None:
        task = asyncio.create_task(
            run_script(
                script,
                allowed_roots=[tmp_path],
                env={"PIDFILE": str(pidfile)},
                timeout_s=30,
                output_cap_bytes=1024,
            )
        )
        for _ in range(500):  # the script is running once it has written the pid
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())

    assert_process_gone(int(pidfile.read_text()))


ESCAPING_GRANDCHILD = """\
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()  # leaves the process group, keeps the output pipe open
    time.sleep(30)
    os._exit(0)
with open(os.environ["PIDFILE"], "w") as f:
    f.write(str(pid))
print("parent done", flush=True)
"""


@posix_only
def test_grandchild_escaping_the_group_does_not_hang_the_run(tmp_path: Path) -> None:
    """It cannot be killed through the group (a documented limit), but we still return."""
    pidfile = tmp_path / "escaped.pid"
    script = write_script(tmp_path / "escape.py", ESCAPING_GRANDCHILD)
    try:
        result = run_in(tmp_path, script, env={"PIDFILE": str(pidfile)}, timeout_s=10)

        assert result.exit_code == 0
        assert result.output == "parent done\n"
        assert result.duration_s < KILL_GRACE_S + 3.0
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 9)


# --- output capping ------------------------------------------------------------------

FLOOD = """\
import sys
out = sys.stdout
out.write("FIRST LINE\\n")
line = "x" * 1023 + "\\n"
for _ in range(100 * 1024):  # 100 MiB
    out.write(line)
out.write("LAST LINE\\n")
"""


@posix_only
def test_100mb_of_output_keeps_head_and_tail_in_bounded_memory(tmp_path: Path) -> None:
    script = write_script(tmp_path / "flood.py", FLOOD)
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    result = run_in(tmp_path, script, output_cap_bytes=16 * 1024, timeout_s=60)

    peak_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib) / 1024
    total = len("FIRST LINE\n") + 100 * 2**20 + len("LAST LINE\n")
    dropped = int(re.search(r"\n\.\.\.\[truncated (\d+) bytes\]\.\.\.\n", result.output)[1])
    kept = len(re.sub(r"\n\.\.\.\[truncated \d+ bytes\]\.\.\.\n", "", result.output))
    assert result.exit_code == 0
    assert result.truncated
    assert result.output.startswith("FIRST LINE\nxxx")
    assert result.output.endswith("xxx\nLAST LINE\n")
    assert len(result.output) <= 16 * 1024
    assert kept + dropped == total
    assert peak_growth_mib < 50


@posix_only
def test_output_at_the_cap_is_kept_whole(tmp_path: Path) -> None:
    script = write_script(tmp_path / "fits.py", "import sys\nsys.stdout.write('y' * 1000)\n")

    result = run_in(tmp_path, script, output_cap_bytes=1000)

    assert result.output == "y" * 1000
    assert not result.truncated


@posix_only
def test_truncation_does_not_split_multibyte_characters(tmp_path: Path) -> None:
    script = write_script(tmp_path / "utf8.py", "print('\u00e9\u20ac' * 5000)\n")

    result = run_in(tmp_path, script, output_cap_bytes=1001)

    assert result.truncated
    assert "\ufffd" not in result.output


@posix_only
def test_invalid_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    script = write_script(tmp_path / "bad.py", "import sys\nsys.stdout.buffer.write(b'a\\xffb')\n")

    result = run_in(tmp_path, script)

    assert result.output == "a\ufffdb"


# --- run_as ----------------------------------------------------------------------------


def _world_readable_dir() -> Path:
    """A folder other users can read (pytest's tmp_path is private to root)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="vigil-runas-", dir="/tmp"))
    path.chmod(0o755)
    return path


@posix_only
@pytest.mark.skipif(os.name == "posix" and os.geteuid() != 0, reason="needs root to switch user")
def test_run_as_switches_user_groups_and_home() -> None:
    import pwd
    import shutil

    folder = _world_readable_dir()
    try:
        script = write_script(folder / "who.sh", 'echo "$(id -u) $(id -g) $HOME $USER"\n')
        result = run_in(folder, script, run_as="nobody")
    finally:
        shutil.rmtree(folder)

    pw = pwd.getpwnam("nobody")
    assert result.error is None
    assert result.output.split() == [str(pw.pw_uid), str(pw.pw_gid), pw.pw_dir, "nobody"]


@posix_only
def test_run_as_an_unknown_user_is_an_error_not_a_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    script = write_script(tmp_path / "x.sh", f"touch {marker}\n")

    result = run_in(tmp_path, script, run_as="no-such-user-vigil")

    assert result.error == "run_as: no such user 'no-such-user-vigil'"
    assert not marker.exists()


@posix_only
def test_run_as_the_agents_own_user_needs_no_privilege(tmp_path: Path) -> None:
    import pwd

    me = pwd.getpwuid(os.geteuid()).pw_name
    script = write_script(tmp_path / "x.sh", "id -u\n")

    result = run_in(tmp_path, script, run_as=me)

    assert result.output.strip() == str(os.geteuid())
