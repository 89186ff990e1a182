"""The agent's identity: a stable id per install, stored in the state folder."""

from __future__ import annotations

import logging
import re
import socket
import stat
from pathlib import Path

import pytest

from vigil.agent.identity import ID_FILE, load_identity


def test_first_use_creates_a_uuid4_hex_id_in_the_state_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"

    identity = load_identity(state)

    assert re.fullmatch(r"[0-9a-f]{32}", identity.agent_id)
    assert (state / ID_FILE).read_text().strip() == identity.agent_id


def test_state_folder_is_created_private(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"

    load_identity(state)

    assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_the_id_is_stable_across_loads(tmp_path: Path) -> None:
    first = load_identity(tmp_path)

    second = load_identity(tmp_path)

    assert second.agent_id == first.agent_id


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    load_identity(tmp_path)

    assert [p.name for p in tmp_path.iterdir()] == [ID_FILE]


@pytest.mark.parametrize(
    "content",
    [b"", b"\n", b"not-an-id\n", b"\xff\xfe\x00garbage", b"0123456789abcdef"],
    ids=["empty", "blank-line", "not-hex", "binary", "too-short"],
)
def test_an_unusable_id_file_is_regenerated_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / ID_FILE).write_bytes(content)

    with caplog.at_level(logging.WARNING, logger="vigil.agent.identity"):
        identity = load_identity(tmp_path)

    assert re.fullmatch(r"[0-9a-f]{32}", identity.agent_id)
    assert (tmp_path / ID_FILE).read_text().strip() == identity.agent_id
    assert "corrupt" in caplog.text


def test_an_id_written_in_upper_case_with_spaces_is_accepted(tmp_path: Path) -> None:
    (tmp_path / ID_FILE).write_text("  0123456789ABCDEF0123456789ABCDEF  \n")

    assert load_identity(tmp_path).agent_id == "0123456789abcdef0123456789abcdef"


def test_hostname_defaults_to_the_machine_name(tmp_path: Path) -> None:
    assert load_identity(tmp_path).hostname == socket.gethostname()


def test_hostname_and_labels_are_taken_from_arguments(tmp_path: Path) -> None:
    labels = {"site": "paris"}

    identity = load_identity(tmp_path, hostname="ws-042", labels=labels)
    labels["site"] = "changed later"

    assert identity.hostname == "ws-042"
    assert identity.labels == {"site": "paris"}


def test_an_empty_hostname_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hostname"):
        load_identity(tmp_path, hostname="")
