"""Who this agent is: a stable id generated once per install, plus hostname and labels.

The id survives hostname changes and reinstalls of the package (it lives in the agent's
state folder, not in the config), so the collector can follow a machine that is renamed.
Deleting ``<state_dir>/agent-id`` makes the agent a new host as far as the collector knows.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("vigil.agent.identity")

ID_FILE = "agent-id"
_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Identity:
    """The fields every report carries to say where it comes from.

    ``agent_id`` is a uuid4 in 32 lowercase hex digits, ``hostname`` is what the
    collector shows, ``labels`` are admin-chosen tags (site, team, ...) from the config.
    """

    agent_id: str
    hostname: str
    labels: dict[str, str]


def load_identity(
    state_dir: Path, *, hostname: str | None = None, labels: Mapping[str, str] = {}
) -> Identity:
    """Read this install's agent id from ``state_dir / "agent-id"``, creating it if needed.

    The folder is created with mode 0700 when missing (existing folders are left as they
    are). The id file is written atomically (temp file, fsync, ``os.replace``), so a crash
    never leaves a half-written id. A file that is empty or does not hold a 32-hex-digit id
    is replaced by a new id with a logged warning: the collector will see a new host, which
    beats an agent that refuses to start. ``hostname`` defaults to ``socket.gethostname()``.

    Raises ``OSError`` when the folder or file cannot be created or read (wrong owner,
    read-only disk); that is an installation problem the caller should report.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / ID_FILE
    agent_id = _read_id(path)
    if agent_id is None:
        agent_id = uuid.uuid4().hex
        write_atomically(path, agent_id + "\n")
        log.info("generated agent id %s in %s", agent_id, path)
    name = socket.gethostname() if hostname is None else hostname
    if not name:
        raise ValueError("hostname: must not be empty")
    return Identity(agent_id=agent_id, hostname=name, labels=dict(labels))


def _read_id(path: Path) -> str | None:
    """The stored id, or ``None`` when there is none or it is unusable (logged)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    text = raw.decode("ascii", errors="replace").strip().lower()
    if _ID_RE.match(text):
        return text
    log.warning(
        "agent id file %s is empty or corrupt (%r); generating a new id, so the collector "
        "will see this machine as a new agent",
        path,
        raw[:64],
    )
    return None


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (ASCII) durably: a temp file in the same folder
    (created 0600 by ``mkstemp``: a secret in it is never readable by others), fsync,
    rename, fsync of the folder. A crash leaves the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave temp files behind in the state folder.
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; not possible (nor needed) on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def renew_agent_id(state_dir: Path) -> str:
    """Give this install a new agent id (``vigil-agent enroll --new-id``, for a cloned
    machine that carries another machine's id); returns it. The collector sees a new host."""
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    agent_id = uuid.uuid4().hex
    write_atomically(state_dir / ID_FILE, agent_id + "\n")
    log.info("generated a new agent id %s in %s", agent_id, state_dir / ID_FILE)
    return agent_id
