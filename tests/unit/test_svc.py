"""The service facade: parsing each platform's answer, and unknown (never "stopped") on doubt."""

from __future__ import annotations

import sys

import pytest

from vigil.agent import svc
from vigil.agent.svc import ServiceState
from vigil.agent.svc._darwin import parse_list
from vigil.agent.svc._linux import parse_show

SHOW = """Id=cups.service
LoadState=loaded
ActiveState=active
SubState=running

Id=bluetooth.service
LoadState=loaded
ActiveState=inactive
SubState=dead

Id=typo.service
LoadState=not-found
ActiveState=inactive
SubState=dead
"""


def test_systemctl_show_blocks_map_to_names_in_order() -> None:
    states = parse_show(SHOW, ["cups", "bluetooth", "typo"])

    assert states == {
        "cups": ServiceState(True, "active (running)"),
        "bluetooth": ServiceState(False, "inactive (dead)"),
        "typo": ServiceState(None, "unit typo: LoadState=not-found"),
    }


def test_a_unit_systemctl_did_not_answer_for_is_unknown() -> None:
    states = parse_show("", ["cups"])

    assert states["cups"] == ServiceState(None, "no answer from systemctl")


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        pytest.param(0, '{\n\t"PID" = 312;\n};', ServiceState(True, "running (pid 312)"), id="pid"),
        pytest.param(
            0,
            '{\n\t"LastExitStatus" = 0;\n};',
            ServiceState(False, "loaded, not running"),
            id="no pid",
        ),
        pytest.param(113, "", ServiceState(None, "no launchd job com.x"), id="not loaded"),
    ],
)
def test_launchctl_list(code: int, text: str, expected: ServiceState) -> None:
    assert parse_list("com.x", code, text) == expected


def test_no_names_asks_nothing() -> None:
    assert svc.service_states([]) == {}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd facade")
def test_real_facade_answers_every_name_and_never_guesses() -> None:
    """With or without systemd running here, each name gets an answer; unknown has a reason."""
    states = svc.service_states(["no-such-unit-vigil-test"], timeout_s=5)

    (state,) = states.values()
    assert state.active is None
    assert state.detail
