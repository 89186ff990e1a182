"""The launch step of ``vigil-agent run``: run the current release, roll back a bad one.

The base install (the package or venv the service manager starts) always runs this first.
It reads the update state, applies :func:`~vigil.agent.update.state.decide_launch` (count
one more start of an unconfirmed release, or roll it back), saves the state, and when a
release other than the base is current, replaces this process with a fresh interpreter
whose ``PYTHONPATH`` puts the release's folder ahead of the base install
(:func:`~vigil.agent.update.relaunch.relaunch`: ``os.execve`` on POSIX, same PID, so the
service manager and ``sd_notify`` see one process; on Windows the service host starts
it). The new process carries :data:`RELEASE_ENV` and skips the step. This code is
stdlib-only and small on purpose: it is the part of the agent a bad release cannot
replace.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from vigil.agent.update.relaunch import RELEASE_ENV, relaunch
from vigil.agent.update.state import (
    RELEASES_DIR,
    UpdateState,
    decide_launch,
    load_state,
    save_state,
)

log = logging.getLogger("vigil.agent.update")

__all__ = ["RELEASE_ENV", "launch", "reexec", "release_folder", "state_dir_of"]


def state_dir_of(config_path: Path) -> Path:
    """``agent.state_dir`` of ``config_path`` read without validating the rest of the file
    (a release may understand keys the base install does not); the default when absent
    or unreadable (the full config check that follows reports the problem)."""
    from vigil.agent.config import default_state_dir  # the one definition of the default

    try:
        import yaml

        data: Any = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        value = data["agent"]["state_dir"]
    except Exception:  # any problem: the full config check that follows reports it
        return default_state_dir()
    if not isinstance(value, str) or not value:
        return default_state_dir()
    path = Path(value).expanduser()
    return path if path.is_absolute() else config_path.parent / path


def release_folder(state_dir: Path, state: UpdateState) -> Path | None:
    """The current release's folder, None for the base install."""
    if state.current is None:
        return None
    return state_dir / RELEASES_DIR / state.current.folder


def launch(
    state_dir: Path,
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] = os.environ,
    now: float | None = None,
) -> None:
    """Return to run the base install here, or replace this process with the current
    release. Never raises for a bad state: the base install is the fallback."""
    if environ.get(RELEASE_ENV):
        return  # we are the release the launcher started
    state = load_state(state_dir)
    if state.current is None and state.pending is None:
        return
    folder = release_folder(state_dir, state)
    ok = folder is None or (folder / "vigil" / "agent" / "cli.py").is_file()
    new = decide_launch(state, time.time() if now is None else now, folder_ok=ok)
    if new != state:
        try:
            save_state(state_dir, new)
        except OSError as exc:
            # Cannot count starts: run the base install, which always works.
            log.error("cannot write the update state in %s (%s): running the base", state_dir, exc)
            return
    if new.rolled_back is not None and new.rolled_back != state.rolled_back:
        log.error(
            "rolled back agent release %s (vigil %s): %s",
            new.rolled_back["serial"],
            new.rolled_back["version"],
            new.rolled_back["reason"],
        )
    target = release_folder(state_dir, new)
    if target is not None and new.current is not None:
        reexec(target, new.current.serial, argv, environ)


def reexec(
    folder: Path | None, serial: int, argv: Sequence[str], environ: Mapping[str, str]
) -> NoReturn:
    """Replace this process with ``python -m vigil.agent ARGV`` running from ``folder``
    (None: the base install, which runs the launch step again). On Windows the service
    host does the starting (exit status
    :data:`~vigil.agent.update.relaunch.RELAUNCH_EXIT_CODE`)."""
    relaunch(argv, environ, folder, serial)
