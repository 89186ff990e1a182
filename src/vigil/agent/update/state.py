"""The self-update state file and the pure decisions over it.

``<state_dir>/update/state.json`` says which release runs (``current``; ``None`` is the
base install), which ran before it (``previous``, the rollback target), whether the
current one still has to prove itself (``pending``: its starts so far and when it was
switched to), which serials failed (never installed again) and the last rollback (reported
by the agent as check ``agent.update`` until a release confirms). The decisions
(:func:`decide_launch`, :func:`confirm`, :func:`roll_back`) are functions from one state
to the next; :func:`load_state`/:func:`save_state` are the only I/O, and a save is atomic
(write, fsync, rename), so a power cut leaves either the old state or the new one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil.agent.identity import write_atomically

log = logging.getLogger("vigil.agent.update")

STATE_FILE = Path("update") / "state.json"
RELEASES_DIR = "releases"
# A release that has started this many times without confirming is rolled back at the
# next start (a crash loop under a service manager that restarts it).
MAX_UNCONFIRMED_STARTS = 3
# Failed serials remembered (oldest dropped first): enough to never retry a recent one.
MAX_FAILED = 50


@dataclass(frozen=True, slots=True)
class Release:
    """One installed release: the bundle serial, the agent version it carries and its
    folder, relative to ``<state_dir>/releases``."""

    serial: int
    version: str
    folder: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Release:
        if not isinstance(data, dict):
            raise ValueError(f"release: expected an object, got {type(data).__name__}")
        serial, version, folder = data.get("serial"), data.get("version"), data.get("folder")
        if not isinstance(serial, int) or isinstance(serial, bool) or serial < 1:
            raise ValueError(f"release.serial: expected an integer >= 1, got {serial!r}")
        if not isinstance(version, str) or not isinstance(folder, str):
            raise ValueError("release: version and folder must be strings")
        if "/" in folder or "\\" in folder or folder in ("", ".", ".."):
            raise ValueError(f"release.folder: not a plain folder name: {folder!r}")
        return cls(serial, version, folder)


@dataclass(frozen=True, slots=True)
class Pending:
    """The current release has not confirmed yet: ``starts`` launches so far, switched to
    at ``since`` (Unix seconds)."""

    starts: int
    since: float


@dataclass(frozen=True, slots=True)
class UpdateState:
    """What :mod:`vigil.agent.update.launch` runs and what it rolls back to."""

    current: Release | None = None
    previous: Release | None = None
    pending: Pending | None = None
    failed: tuple[int, ...] = ()
    # The last rollback: ``{"serial", "version", "reason", "at"}``; cleared on confirm.
    rolled_back: dict[str, Any] | None = None

    @property
    def serial(self) -> int:
        """The running release's serial, 0 for the base install (for downgrade checks)."""
        return self.current.serial if self.current else 0


def load_state(state_dir: Path) -> UpdateState:
    """The state in ``state_dir``; a missing file is the base install. An unreadable or
    invalid file is logged and treated as the base install (the safe fallback: the code
    that came with the package)."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return UpdateState()
    except (OSError, ValueError) as exc:
        log.error("update state %s unreadable (%s): running the base install", path, exc)
        return UpdateState()
    try:
        return _from_dict(data)
    except (ValueError, TypeError, KeyError) as exc:
        log.error("update state %s invalid (%s): running the base install", path, exc)
        return UpdateState()


def save_state(state_dir: Path, state: UpdateState) -> None:
    """Write ``state`` atomically (0600: it names folders the agent executes from)."""
    path = state_dir / STATE_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomically(path, json.dumps(_to_dict(state), indent=2, sort_keys=True) + "\n")


def _to_dict(state: UpdateState) -> dict[str, Any]:
    return {
        "current": state.current.to_dict() if state.current else None,
        "previous": state.previous.to_dict() if state.previous else None,
        "pending": dataclasses.asdict(state.pending) if state.pending else None,
        "failed": list(state.failed),
        "rolled_back": state.rolled_back,
    }


def _from_dict(data: Any) -> UpdateState:
    if not isinstance(data, dict):
        raise ValueError("expected an object")
    pending = data.get("pending")
    failed = data.get("failed") or []
    if not all(isinstance(s, int) for s in failed):
        raise ValueError("failed: expected a list of serials")
    rolled_back = data.get("rolled_back")
    return UpdateState(
        current=Release.from_dict(data["current"]) if data.get("current") else None,
        previous=Release.from_dict(data["previous"]) if data.get("previous") else None,
        pending=Pending(int(pending["starts"]), float(pending["since"])) if pending else None,
        failed=tuple(failed),
        rolled_back=rolled_back if isinstance(rolled_back, dict) else None,
    )


# ------------------------------------------------------------------ pure decisions


def switch_to(state: UpdateState, release: Release, now: float) -> UpdateState:
    """``release`` becomes current and pending (unconfirmed); the running one becomes the
    rollback target."""
    return dataclasses.replace(
        state, current=release, previous=state.current, pending=Pending(0, now)
    )


def roll_back(state: UpdateState, reason: str, now: float) -> UpdateState:
    """Give up on the current (pending) release: the previous one runs again and the
    failed serial is never installed again."""
    bad = state.current
    if bad is None:
        return dataclasses.replace(state, pending=None)
    return dataclasses.replace(
        state,
        current=state.previous,
        previous=None,
        pending=None,
        failed=(*state.failed, bad.serial)[-MAX_FAILED:],
        rolled_back={"serial": bad.serial, "version": bad.version, "reason": reason, "at": now},
    )


def confirm(state: UpdateState) -> UpdateState:
    """The current release proved itself: nothing pending, no rollback to report."""
    return dataclasses.replace(state, pending=None, rolled_back=None)


def decide_launch(
    state: UpdateState, now: float, *, folder_ok: bool, max_starts: int = MAX_UNCONFIRMED_STARTS
) -> UpdateState:
    """The state after one launch: a pending release that already started ``max_starts``
    times without confirming, or whose folder is gone or broken (``folder_ok`` False), is
    rolled back; otherwise a pending release counts one more start."""
    if state.current is not None and not folder_ok:
        return roll_back(state, "release folder missing or incomplete", now)
    if state.pending is None:
        return state
    if state.pending.starts >= max_starts:
        return roll_back(
            state, f"started {state.pending.starts} times without confirming (crash loop)", now
        )
    return dataclasses.replace(
        state, pending=Pending(state.pending.starts + 1, state.pending.since)
    )
