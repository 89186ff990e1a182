"""``run_as: logged_on_user`` for real: a non-root user created for the test, a real
script run under its uid, gid and groups with the session's minimal environment, and the
user recorded on the remediation record; nobody at the console means ``skipped``.

Who is at the console is the one fake here (``console=``): this machine has no logind
session nor a local display to log on to. Finding the user from logind's and utmp's
tables is tested on fake tables in ``tests/unit/test_logons.py``.
"""

from __future__ import annotations

import asyncio
import functools
import os
import pwd
import shutil
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from vigil import wire
from vigil.agent.config import load_agent_config
from vigil.agent.exec.logons import ConsoleUser
from vigil.agent.exec.script import run_script
from vigil.agent.service import AgentService, build_service


def _need_root() -> None:
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("useradd"):
        return
    why = "needs root and useradd to create a user and switch to it"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI runs as root)")
    pytest.skip(why)


@pytest.fixture
def person() -> Iterator[pwd.struct_passwd]:
    """A real, non-root user with a supplementary group, removed afterwards."""
    _need_root()
    name = f"vigil-p-{uuid.uuid4().hex[:8]}"
    group = f"vigil-g-{uuid.uuid4().hex[:8]}"
    subprocess.run(["groupadd", group], check=True, timeout=30)
    subprocess.run(
        ["useradd", "--create-home", "--groups", group, "--shell", "/bin/sh", name],
        check=True,
        timeout=30,
    )
    pw = pwd.getpwnam(name)
    runtime = Path(f"/run/user/{pw.pw_uid}")
    made_parent = not runtime.parent.exists()
    runtime.mkdir(parents=True, exist_ok=True)
    (runtime / "bus").touch()  # stands for the session bus socket logind's user@ makes
    try:
        yield pw
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
        if made_parent:
            shutil.rmtree(runtime.parent, ignore_errors=True)
        subprocess.run(["userdel", "--remove", name], check=False, timeout=30)
        subprocess.run(["groupdel", group], check=False, timeout=30)


@pytest.fixture
def library() -> Iterator[Path]:
    """A remediation library other users can read (pytest's tmp_path is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="vigil-lou-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


WHO = """\
#!/bin/sh
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G)"
echo "HOME=$HOME USER=$USER LOGNAME=$LOGNAME"
echo "XDG=$XDG_RUNTIME_DIR DBUS=$DBUS_SESSION_BUS_ADDRESS DISPLAY=$DISPLAY"
echo "LEAK=${VIGIL_TEST_SECRET:-none}"
"""


def _remediation(lib: Path) -> None:
    folder = lib / "notify-user"
    folder.mkdir()
    script = folder / "fix.sh"
    script.write_text(textwrap.dedent(WHO))
    script.chmod(0o755)
    manifest = {
        "id": "notify-user",
        "title": "Tell the person at the machine",
        "description": "Runs in the logged-on user's session.",
        "platforms": ["linux"],
        "scripts": {"linux": "fix.sh"},
        "timeout": "10s",
        "cooldown": "0s",
        "run_as": "logged_on_user",
        "verify": {"delay": "0s"},
    }
    (folder / "remediation.yaml").write_text(yaml.safe_dump(manifest))


def test_a_script_runs_as_the_console_user_with_their_session_env(
    person: pwd.struct_passwd, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _remediation(library)
    monkeypatch.setenv("VIGIL_TEST_SECRET", "agent-only")  # must not reach the script
    at_console = ConsoleUser(name=person.pw_name, uid=person.pw_uid, display=":7")

    result = asyncio.run(
        run_script(
            library / "notify-user" / "fix.sh",
            allowed_roots=[library],
            timeout_s=10,
            output_cap_bytes=4096,
            run_as="logged_on_user",
            console=lambda: at_console,
        )
    )

    assert result.error is None and result.exit_code == 0, result
    assert result.ran_as == person.pw_name
    groups = os.getgrouplist(person.pw_name, person.pw_gid)
    lines = result.output.splitlines()
    uid, gid, got_groups = lines[0].split(" ", 2)
    assert uid == f"uid={person.pw_uid}" and gid == f"gid={person.pw_gid}"
    assert sorted(int(g) for g in got_groups.removeprefix("groups=").split()) == sorted(groups)
    assert len(groups) >= 2  # the supplementary group came along
    name = person.pw_name
    assert lines[1] == f"HOME={person.pw_dir} USER={name} LOGNAME={name}"
    runtime = f"/run/user/{person.pw_uid}"
    assert lines[2] == f"XDG={runtime} DBUS=unix:path={runtime}/bus DISPLAY=:7"
    assert lines[3] == "LEAK=none"


def _service(tmp_path: Path, library: Path, console: ConsoleUser | None) -> AgentService:
    config = {
        "agent": {"state_dir": str(tmp_path / "state")},
        "collector": {"url": "http://127.0.0.1:9", "token": "t"},
        "remediation": {"folders": [str(library)], "verify_delay": "0s"},
        "checks": [
            {"id": "level.high", "metric": "level", "critical": 10, "remediation": "notify-user"}
        ],
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(config))

    class Fixed:
        def sample(self, sources: object = None) -> dict[str, float]:
            return {"level": 50.0}

        def sample_paths(self) -> dict[str, float]:
            return {}

        def reason_for(self, metric: str) -> str:
            return ""

    svc = build_service(load_agent_config(path), sampler=Fixed())
    svc.flow.run_script = functools.partial(run_script, console=lambda: console)

    async def no_ship() -> None:
        return None

    svc.ship = no_ship  # type: ignore[method-assign]
    return svc


def _records(svc: AgentService) -> list[wire.RemediationEvent]:
    batch = svc.outbox.next_batch(1000)
    events = batch.events if batch else ()
    return [e for e in events if isinstance(e, wire.RemediationEvent)]


async def _one_cycle(svc: AgentService) -> None:
    await svc.cycle()
    await svc.flow.idle()


def test_the_remediation_record_names_the_user_it_ran_as(
    tmp_path: Path, person: pwd.struct_passwd, library: Path
) -> None:
    _remediation(library)
    svc = _service(tmp_path, library, ConsoleUser(name=person.pw_name, uid=person.pw_uid))
    asyncio.run(_one_cycle(svc))
    (record,) = _records(svc)
    assert record.run_as_user == person.pw_name
    assert f"uid={person.pw_uid}" in record.output
    # On the wire only because it is set (older collectors never see it otherwise).
    assert wire.to_dict(record)["run_as_user"] == person.pw_name
    svc.outbox.close()


def test_nobody_at_the_console_skips_the_run_and_says_why(
    tmp_path: Path, person: pwd.struct_passwd, library: Path
) -> None:
    _remediation(library)
    svc = _service(tmp_path, library, None)
    asyncio.run(_one_cycle(svc))
    (record,) = _records(svc)
    assert record.outcome == "skipped"
    assert record.output == "nobody is logged on at the console"
    assert record.exit_code is None
    assert record.run_as_user is None
    assert "run_as_user" not in wire.to_dict(record)
    svc.outbox.close()
