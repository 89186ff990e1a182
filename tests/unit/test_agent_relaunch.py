"""The Windows relaunch protocol (vigil.agent.update.relaunch): an agent that needs
another release writes a request and exits with RELAUNCH_EXIT_CODE; the service host
starts it again in that release. The host loop runs here with real processes; the
pywin32 wrapper around it has not run on Windows in this project's CI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from vigil.agent.update import relaunch
from vigil.agent.update.relaunch import (
    MAX_RELAUNCHES,
    RELAUNCH_EXIT_CODE,
    RELEASE_ENV,
    REQUEST_ENV,
    release_environment,
    run_host,
    take_request,
    write_request,
)

BASE_ENV = {"PATH": "/usr/bin", "PYTHONPATH": "/old", RELEASE_ENV: "3", REQUEST_ENV: "r.json"}


def test_a_release_environment_puts_the_release_first_and_names_its_serial() -> None:
    env = release_environment(BASE_ENV, Path("/state/releases/7-0.2.0"), 7)
    assert env == {"PATH": "/usr/bin", "PYTHONPATH": "/state/releases/7-0.2.0", RELEASE_ENV: "7"}


def test_the_base_environment_has_no_release_and_no_request() -> None:
    assert release_environment(BASE_ENV, None, 0) == {"PATH": "/usr/bin"}


@pytest.mark.parametrize("folder", [Path("/state/releases/7-0.2.0"), None], ids=["release", "base"])
def test_a_request_is_read_once(tmp_path: Path, folder: Path | None) -> None:
    request = tmp_path / "relaunch.json"
    write_request(request, folder, 7 if folder else 0)
    assert take_request(request) == (folder, 7 if folder else 0)
    assert not request.exists()
    assert take_request(request) == (None, 0)  # gone: the base install


@pytest.mark.parametrize(
    "text", ["{not json", '{"folder": 3, "serial": 1}', '{"serial": 1}', "[]"],
    ids=["not json", "folder not a string", "no folder", "not an object"],
)  # fmt: skip
def test_an_unreadable_request_means_the_base_install(tmp_path: Path, text: str) -> None:
    request = tmp_path / "relaunch.json"
    request.write_text(text)
    assert take_request(request) == (None, 0)
    assert not request.exists()


# A stand-in agent: the base asks for release 7 (as the launch step does when a release
# is current); a release exits with $AGENT_EXIT.
AGENT = """\
import os, sys
from pathlib import Path
from vigil.agent.update import relaunch
if "VIGIL_AGENT_RELEASE" not in os.environ:
    relaunch.write_request(Path(os.environ[relaunch.REQUEST_ENV]), Path("/rel/7"), 7)
    sys.exit(relaunch.RELAUNCH_EXIT_CODE)
sys.exit(int(os.environ.get("AGENT_EXIT", "0")))
"""


def host(tmp_path: Path, agent_exit: int) -> tuple[int, list[str]]:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", RELEASE_ENV, REQUEST_ENV)
    }
    environ |= {"AGENT_EXIT": str(agent_exit)}
    ran: list[str] = []

    def start(argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        ran.append(f"{env.get(RELEASE_ENV, 'base')} {env.get('PYTHONPATH', '-')}")
        # The release's PYTHONPATH is a fake folder: keep vigil importable for the stand-in.
        env = env | {
            "PYTHONPATH": os.pathsep.join(filter(None, [env.get("PYTHONPATH"), *sys.path]))
        }
        return subprocess.Popen(argv, env=env)

    code = run_host(
        [sys.executable, "-c", AGENT],
        tmp_path / "relaunch.json",
        environ=environ,
        start=start,
        stopping=lambda: False,
    )
    return code, ran


def test_the_host_relaunches_the_agent_in_the_release_it_asked_for(tmp_path: Path) -> None:
    code, ran = host(tmp_path, agent_exit=0)
    assert ran == ["base -", "7 /rel/7"]
    assert code == 0  # the release stopped cleanly: so does the host
    assert not (tmp_path / "relaunch.json").exists()


def test_a_crashing_release_fails_the_host_so_the_service_recovery_applies(
    tmp_path: Path,
) -> None:
    code, ran = host(tmp_path, agent_exit=1)
    assert (code, ran) == (1, ["base -", "7 /rel/7"])


class Scripted:
    """A started agent whose exit status is given."""

    def __init__(self, code: int, on_start: list[str]) -> None:
        self.code, self.terminated = code, False
        on_start.append("start")

    def wait(self) -> int:
        return self.code

    def terminate(self) -> None:
        self.terminated = True


def test_a_relaunch_loop_is_bounded(tmp_path: Path) -> None:
    starts: list[str] = []
    code = run_host(
        ["agent"],
        tmp_path / "relaunch.json",
        environ={},
        start=lambda argv, env: Scripted(RELAUNCH_EXIT_CODE, starts),
        stopping=lambda: False,
        clock=lambda: 100.0,
    )
    assert code == RELAUNCH_EXIT_CODE
    assert len(starts) == MAX_RELAUNCHES + 1


def test_a_stop_that_races_a_start_terminates_the_new_agent(tmp_path: Path) -> None:
    started: list[Scripted] = []
    stop = [False]

    def start(argv: Sequence[str], env: dict[str, str]) -> Scripted:
        started.append(Scripted(0, []))
        stop[0] = True  # the service stop came while this agent was starting
        return started[-1]

    code = run_host(
        ["agent"], tmp_path / "r.json", environ={}, start=start, stopping=lambda: stop[0]
    )
    assert code == 0
    assert [p.terminated for p in started] == [True]


def test_without_a_host_a_windows_agent_writes_the_request_and_exits_with_the_code(
    tmp_path: Path,
) -> None:
    """The Windows half, run here: with the host's variable set, the agent asks the host."""
    request = tmp_path / "relaunch.json"
    code = (
        "from pathlib import Path; from vigil.agent.update import relaunch; "
        "relaunch._ask_host(['run'], {}, Path('/rel/7'), 7)"
    )
    env = {**os.environ, REQUEST_ENV: str(request)}
    done = subprocess.run([sys.executable, "-c", code], env=env, timeout=60, check=False)
    assert done.returncode == RELAUNCH_EXIT_CODE
    assert take_request(request) == (Path("/rel/7"), 7)


def test_posix_keeps_execve() -> None:
    if os.name == "posix":
        assert relaunch._replace is relaunch._execve
    else:
        assert relaunch._replace is relaunch._ask_host
