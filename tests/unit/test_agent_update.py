"""Agent self-update: the state decisions, installing a verified release, the launch step
(real child processes re-executed into a release) and rollback."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.support.releases import fake_wheel, release_document
from vigil import policy_bundle
from vigil.agent.update import state as st
from vigil.agent.update.guard import CONFIRM_DELIVERIES, UpdateGuard
from vigil.agent.update.launch import RELEASE_ENV, state_dir_of
from vigil.agent.update.release import ReleaseError, install
from vigil.policy_bundle import BundleError

REL1 = st.Release(1, "0.2.0", "1-0.2.0")
REL2 = st.Release(2, "0.3.0", "2-0.3.0")


@pytest.fixture(scope="module")
def keys() -> tuple[bytes, str]:
    return policy_bundle.generate_keypair()


def verified(document: bytes, public: str, installed: int = 0) -> policy_bundle.VerifiedBundle:
    return policy_bundle.verify(
        document,
        [public],
        now=time.time(),
        installed=("vigil-agent", installed) if installed else None,
        agent_version="0.1.0",
    )


# --- pure decisions ----------------------------------------------------------------------


def test_a_switch_keeps_the_running_release_as_the_rollback_target() -> None:
    s = st.switch_to(st.UpdateState(current=REL1), REL2, 100.0)
    assert (s.current, s.previous, s.pending) == (REL2, REL1, st.Pending(0, 100.0))


@pytest.mark.parametrize("starts", range(st.MAX_UNCONFIRMED_STARTS))
def test_an_unconfirmed_release_counts_its_starts(starts: int) -> None:
    s = st.UpdateState(current=REL2, previous=REL1, pending=st.Pending(starts, 5.0))
    after = st.decide_launch(s, 10.0, folder_ok=True)
    assert (after.current, after.pending) == (REL2, st.Pending(starts + 1, 5.0))


def test_a_crash_looping_release_is_rolled_back_and_never_retried() -> None:
    s = st.UpdateState(
        current=REL2, previous=REL1, pending=st.Pending(st.MAX_UNCONFIRMED_STARTS, 5.0)
    )
    after = st.decide_launch(s, 10.0, folder_ok=True)
    assert (after.current, after.previous, after.pending) == (REL1, None, None)
    assert after.failed == (2,)
    assert after.rolled_back is not None and "crash loop" in after.rolled_back["reason"]


def test_a_missing_release_folder_rolls_back_even_when_confirmed() -> None:
    after = st.decide_launch(st.UpdateState(current=REL2, previous=REL1), 1.0, folder_ok=False)
    assert after.current == REL1 and after.failed == (2,)


def test_rolling_back_the_first_release_returns_to_the_base_install() -> None:
    s = st.switch_to(st.UpdateState(), REL1, 1.0)
    assert st.roll_back(s, "no heartbeat", 2.0).current is None


def test_the_state_file_round_trips_and_a_corrupt_one_means_the_base(tmp_path: Path) -> None:
    s = st.roll_back(st.switch_to(st.UpdateState(current=REL1), REL2, 3.0), "why", 4.0)
    st.save_state(tmp_path, s)
    assert st.load_state(tmp_path) == s
    (tmp_path / st.STATE_FILE).write_text(
        '{"current": {"serial": 1, "version": "x", "folder": "../../etc"}}'
    )
    assert st.load_state(tmp_path) == st.UpdateState()


# --- install ------------------------------------------------------------------------------


def test_a_good_release_is_unpacked_beside_the_running_one_and_becomes_pending(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    private, public = keys
    bundle = verified(release_document(fake_wheel("0.2.0"), 1, private), public)

    new = install(bundle, tmp_path, now=lambda: 50.0)

    assert new.current == REL1 and new.pending == st.Pending(0, 50.0) and new.previous is None
    assert st.load_state(tmp_path) == new
    assert (tmp_path / "releases" / "1-0.2.0" / "vigil" / "agent" / "cli.py").is_file()
    # Nothing half-made is left beside it.
    assert [p.name for p in (tmp_path / "releases").iterdir()] == ["1-0.2.0"]


@pytest.mark.parametrize(
    ("where", "flip_at"),
    [("script", "files"), ("manifest", "manifest"), ("signature", "signatures")],
)
def test_a_tampered_release_is_refused_before_anything_is_written(
    tmp_path: Path, keys: tuple[bytes, str], where: str, flip_at: str
) -> None:
    private, public = keys
    document = json.loads(release_document(fake_wheel("0.2.0"), 1, private))
    if flip_at == "files":
        (name,) = document["files"]
        raw = bytearray(base64.b64decode(document["files"][name]))
        raw[len(raw) // 2] ^= 1
        document["files"][name] = base64.b64encode(bytes(raw)).decode()
    elif flip_at == "manifest":
        document["manifest"] = document["manifest"].replace('"version":1', '"version":9')
    else:
        sig = bytearray(base64.b64decode(document["signatures"][0]["sig"]))
        sig[0] ^= 1
        document["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    with pytest.raises(BundleError) as refused:
        verified(json.dumps(document).encode(), public)
    assert refused.value.reason in {"hash_mismatch", "bad_signature"}
    assert not (tmp_path / "releases").exists()


def test_a_release_signed_by_another_key_or_older_than_the_running_one_is_refused(
    keys: tuple[bytes, str],
) -> None:
    private, public = keys
    other_private, _ = policy_bundle.generate_keypair()
    with pytest.raises(BundleError, match="unknown_key"):
        verified(release_document(fake_wheel("0.2.0"), 3, other_private), public)
    with pytest.raises(BundleError, match="downgrade"):
        verified(release_document(fake_wheel("0.2.0"), 3, private), public, installed=3)


@pytest.mark.parametrize(
    ("wheel", "reason"),
    [
        (fake_wheel("0.2.0", extra={"../../evil.py": b"x"}), "bad_wheel"),
        (fake_wheel("0.2.0", extra={"/abs/evil.py": b"x"}), "bad_wheel"),
        (fake_wheel("0.2.0", init_version="0.9.9"), "bad_wheel"),
        (fake_wheel("0.2.0", requires=("psutil>=999",)), "needs_dependencies"),
        (fake_wheel("0.2.0", requires=("no-such-dist-vigil>=1",)), "needs_dependencies"),
        (fake_wheel("0.2.0", broken_import=True), "smoke_test"),
    ],
    ids=["dotdot", "absolute", "version-lies", "newer-dep", "missing-dep", "broken-import"],
)
def test_a_release_that_cannot_run_here_is_refused_and_the_state_kept(
    tmp_path: Path, keys: tuple[bytes, str], wheel: tuple[str, bytes], reason: str
) -> None:
    private, public = keys
    st.save_state(tmp_path, st.UpdateState(current=REL1))
    bundle = verified(release_document(wheel, 2, private), public)

    with pytest.raises(ReleaseError) as refused:
        install(bundle, tmp_path)

    assert refused.value.reason == reason
    assert st.load_state(tmp_path) == st.UpdateState(current=REL1)
    assert [p.name for p in (tmp_path / "releases").iterdir()] == []


def test_a_symlink_member_is_refused(tmp_path: Path, keys: tuple[bytes, str]) -> None:
    name, data = fake_wheel("0.2.0")
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            out.writestr(info, src.read(info))
        link = zipfile.ZipInfo("vigil/agent/link.py")
        link.external_attr = 0o120777 << 16
        out.writestr(link, "/etc/passwd")
    private, public = keys
    bundle = verified(release_document((name, buf.getvalue()), 1, private), public)
    with pytest.raises(ReleaseError, match="not a file"):
        install(bundle, tmp_path)


def test_a_serial_rolled_back_before_is_never_installed_again(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    st.save_state(tmp_path, st.UpdateState(failed=(4,)))
    private, public = keys
    with pytest.raises(ReleaseError, match="failed_before"):
        install(verified(release_document(fake_wheel("0.2.0"), 4, private), public), tmp_path)


# --- the guard ----------------------------------------------------------------------------


def test_the_release_confirms_after_its_first_deliveries(tmp_path: Path) -> None:
    st.save_state(tmp_path, st.switch_to(st.UpdateState(current=REL1), REL2, 100.0))
    guard = UpdateGuard(tmp_path, lambda: 101.0, running_serial=2)

    results = [guard.delivered() for _ in range(CONFIRM_DELIVERIES)]

    assert results == [False] * (CONFIRM_DELIVERIES - 1) + [True]
    assert st.load_state(tmp_path).pending is None
    assert not guard.overdue()


def test_a_release_that_delivers_nothing_in_time_rolls_itself_back(tmp_path: Path) -> None:
    st.save_state(tmp_path, st.switch_to(st.UpdateState(current=REL1), REL2, 100.0))
    clock = [150.0]
    guard = UpdateGuard(tmp_path, lambda: clock[0], confirm_within_s=60.0, running_serial=2)
    guard.delivered()

    assert not guard.overdue()
    clock[0] = 161.0
    assert guard.overdue()

    after = st.load_state(tmp_path)
    assert (after.current, after.failed) == (REL1, (2,))
    assert "1 of 2 reports delivered" in after.rolled_back["reason"]  # type: ignore[index]


def test_the_base_install_never_confirms_or_rolls_back_a_release_it_does_not_run(
    tmp_path: Path,
) -> None:
    st.save_state(tmp_path, st.switch_to(st.UpdateState(), REL1, 0.0))
    guard = UpdateGuard(tmp_path, lambda: 1e9, running_serial=0)
    assert not guard.delivered() and not guard.overdue()
    assert st.load_state(tmp_path).pending is not None


# --- the launch step, in real processes ---------------------------------------------------


def launch_once(state_dir: Path, log: Path, exit_code: int = 0) -> str:
    """Run the launch step in a child interpreter, as ``vigil-agent run`` does; what ran."""
    code = (
        "import sys; from pathlib import Path; from vigil.agent.update.launch import launch; "
        f"launch(Path({str(state_dir)!r}), ['run', '--flag']); print('base ran')"
    )
    env = {k: v for k, v in os.environ.items() if k not in (RELEASE_ENV, "PYTHONPATH")}
    env |= {"VIGIL_TEST_RELEASE_LOG": str(log), "VIGIL_TEST_RELEASE_EXIT": str(exit_code)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    if "base ran" in done.stdout:
        return "base"
    lines = log.read_text().splitlines() if log.exists() else []
    return lines[-1] if lines else f"nothing (exit {done.returncode}: {done.stderr[-300:]})"


def test_the_launcher_runs_the_current_release_and_rolls_back_a_crash_loop(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    private, public = keys
    install(verified(release_document(fake_wheel("0.2.0"), 1, private), public), tmp_path)
    log = tmp_path / "ran.log"

    # The release crashes at every start: it runs MAX times, then the base runs again.
    ran = [launch_once(tmp_path, log, exit_code=1) for _ in range(st.MAX_UNCONFIRMED_STARTS)]
    assert ran == ["release 0.2.0 run --flag"] * st.MAX_UNCONFIRMED_STARTS
    assert launch_once(tmp_path, log) == "base"
    state = st.load_state(tmp_path)
    assert state.current is None and state.failed == (1,)


def test_a_confirmed_release_keeps_running_at_every_start(
    tmp_path: Path, keys: tuple[bytes, str]
) -> None:
    private, public = keys
    install(verified(release_document(fake_wheel("0.2.0"), 1, private), public), tmp_path)
    st.save_state(tmp_path, st.confirm(st.load_state(tmp_path)))
    log = tmp_path / "ran.log"
    ran = [launch_once(tmp_path, log) for _ in range(st.MAX_UNCONFIRMED_STARTS + 2)]
    assert set(ran) == {"release 0.2.0 run --flag"}


def test_the_state_dir_is_read_from_the_config_without_validating_it(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("agent:\n  state_dir: state\n  a_key_only_a_newer_release_knows: 1\n")
    assert state_dir_of(config) == tmp_path / "state"
