"""Bounded calls: a hung call costs one stuck worker and a timeout, never a blocked caller."""

from __future__ import annotations

import threading

import pytest

from vigil.agent.sampling.bounded import BoundedCaller, BoundedCallError, CallTimeout, StillRunning


@pytest.fixture
def release() -> threading.Event:
    """Set at teardown so no worker stays stuck after the test."""
    event = threading.Event()
    yield event
    event.set()


def test_a_quick_call_returns_its_result() -> None:
    assert BoundedCaller().call("a", lambda: 42, 1.0) == 42


def test_an_exception_in_the_call_reaches_the_caller() -> None:
    def fail() -> None:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(PermissionError):
        BoundedCaller().call("a", fail, 1.0)


def test_a_hung_call_times_out(release: threading.Event) -> None:
    with pytest.raises(CallTimeout, match=r"timed out after 0\.05s"):
        BoundedCaller().call("nfs", release.wait, 0.05)


def test_a_key_with_a_hung_call_refuses_the_next_one_at_once(release: threading.Event) -> None:
    caller = BoundedCaller()
    with pytest.raises(CallTimeout):
        caller.call("nfs", release.wait, 0.05)
    started = []

    with pytest.raises(StillRunning):
        caller.call("nfs", lambda: started.append(1), 5.0)
    assert started == []
    assert caller.hung() == ["nfs"]


def test_other_keys_still_work_while_one_is_hung(release: threading.Event) -> None:
    caller = BoundedCaller()
    with pytest.raises(CallTimeout):
        caller.call("nfs", release.wait, 0.05)

    assert caller.call("/", lambda: "ok", 1.0) == "ok"


def test_a_key_works_again_once_its_hung_call_returns(release: threading.Event) -> None:
    caller = BoundedCaller()
    with pytest.raises(CallTimeout):
        caller.call("nfs", release.wait, 0.05)
    release.set()
    for _ in range(100):  # bounded: the worker clears its busy flag right after returning
        if not caller.hung():
            break
        threading.Event().wait(0.01)

    assert caller.call("nfs", lambda: "back", 1.0) == "back"


def test_workers_are_reused_per_key() -> None:
    caller = BoundedCaller()
    names = {caller.call("a", lambda: threading.current_thread().name, 1.0) for _ in range(5)}

    assert len(names) == 1


def test_the_number_of_keys_is_bounded() -> None:
    caller = BoundedCaller(max_workers=1)
    caller.call("a", lambda: None, 1.0)

    with pytest.raises(BoundedCallError, match="more than 1 keys"):
        caller.call("b", lambda: None, 1.0)


def test_calls_started_together_run_meanwhile_and_are_collected_later() -> None:
    caller = BoundedCaller()
    first = caller.start("a", lambda: "A", 1.0)
    second = caller.start("b", lambda: "B", 1.0)

    assert (caller.wait(second, 1.0), caller.wait(first, 1.0)) == ("B", "A")


def test_a_started_call_still_hung_at_its_deadline_times_out_with_its_own_timeout(
    release: threading.Event,
) -> None:
    caller = BoundedCaller()
    pending = caller.start("nfs", release.wait, 0.5)

    with pytest.raises(CallTimeout, match=r"timed out after 0\.5s"):
        caller.wait(pending, 0.0)  # the deadline shared with other mounts has passed
    with pytest.raises(StillRunning):
        caller.start("nfs", release.wait, 0.5)
