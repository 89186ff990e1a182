"""Run one remediation script safely: vetting, interpreter, ``run_as``, a bounded tree.

:func:`run_script` adds what a remediation script needs on top of
:func:`~vigil.agent.exec.process.run_bounded`: the vetting of
:mod:`~vigil.agent.exec.vetting` (inside an allowed folder, a regular file, not
writable by others while we are root), the interpreter chosen by suffix, the script's
SHA-256 for the record, and ``run_as``.

It never raises for a script problem: a script that is missing, outside the allowed
folders, not executable or writable by others while we are root comes back as a
:class:`ScriptResult` with ``error`` set, because a broken remediation is a normal
outcome to report, not a crash of the agent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vigil.agent.exec import vetting
from vigil.agent.exec.console import console_user
from vigil.agent.exec.logons import LOGGED_ON_USER, ConsoleUser
from vigil.agent.exec.process import (
    PRIVILEGED_ACCOUNT,
    child_env,
    may_switch_user,
    resolve_console_user,
    resolve_user,
    run_bounded,
)


@dataclass(frozen=True, slots=True)
class ScriptResult:
    """What one script run did.

    ``exit_code`` is ``None`` when the script never started or was killed on timeout; a
    negative value ``-N`` means the script was killed by signal ``N`` (not by us).
    ``output`` is a stdout+stderr excerpt decoded as UTF-8 (bad bytes replaced); when
    ``truncated`` it is the head and tail joined by a ``...[truncated N bytes]...`` line.
    ``duration_s`` is wall-clock seconds from start to reaping. ``error`` says why the
    script could not run (``None`` when it ran). ``script_sha256`` is the hex digest of
    the script's bytes, ``""`` when it could not be read or was refused before reading
    (missing, outside the allowed folders, not a regular file). ``skipped``: the script
    was not run on purpose (``error`` says why: nobody logged on for a
    ``logged_on_user`` run, the agent not root). ``ran_as``: the user name it ran (or
    would have run) as, when ``run_as`` asked for another user; ``None`` otherwise.
    """

    exit_code: int | None
    output: str
    truncated: bool
    duration_s: float
    timed_out: bool
    error: str | None
    script_sha256: str
    skipped: bool = False
    ran_as: str | None = None


async def run_script(
    script: Path,
    *,
    allowed_roots: Sequence[Path],
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout_s: float,
    output_cap_bytes: int,
    cwd: Path | None = None,
    run_as: str | None = None,
    console: Callable[[], ConsoleUser | None] = console_user,
) -> ScriptResult:
    """Run ``script`` with ``args`` and return what happened; never raises for script faults.

    The interpreter follows the suffix: ``.sh`` runs via ``/bin/sh``, ``.py`` via this
    Python, ``.ps1`` via ``powershell -NoProfile -NonInteractive -File``; anything else is
    executed directly and must be executable. The script's real path must lie inside one
    of ``allowed_roots`` (after resolving symlinks); when the agent runs as root the script
    must not be group- or world-writable.

    The child gets a clean environment (``PATH``, ``LANG=C.UTF-8``, ``HOME``) updated with
    ``env``, stdin from the null device, and runs in ``cwd`` (default: the script's folder)
    in its own session. After ``timeout_s`` seconds its process group gets SIGTERM, then
    SIGKILL :data:`~vigil.agent.exec.process.KILL_GRACE_S` seconds later; leftovers of a
    script that exited on its own are killed the same way. At most ``output_cap_bytes``
    characters of output are kept (head and tail, the truncation marker included).

    ``run_as`` names a user to run as (a name: POSIX only; ``None`` is the agent's own
    user). It needs root unless it names the agent's own user; the child then gets that
    user's uid, gid, supplementary groups and ``HOME``, ``USER`` and ``LOGNAME``.
    ``run_as="logged_on_user"`` runs as whoever ``console()`` finds at the console
    (:mod:`~vigil.agent.exec.console`): on POSIX with their session's
    ``XDG_RUNTIME_DIR``, ``DBUS_SESSION_BUS_ADDRESS``, ``DISPLAY``/``WAYLAND_DISPLAY``
    when known; on Windows with their console session's token and their own environment
    block (the agent must be LocalSystem). With nobody there or the agent not root
    (LocalSystem), the result is ``skipped`` with the reason. ``ran_as`` records the
    user's name either way.
    """
    started = time.monotonic()

    def failed(reason: str, sha: str = "", *, skipped: bool = False) -> ScriptResult:
        took = time.monotonic() - started
        return ScriptResult(None, "", False, took, False, reason, sha, skipped, user_name)

    # Who it runs as, for the record: known up front unless it is the console user.
    user_name = None if run_as == LOGGED_ON_USER else run_as

    real, problem = vetting.vet_script(Path(script), allowed_roots)
    if real is None:
        return failed(problem or "script refused")
    sha = vetting.sha256(real)
    if problem:
        return failed(problem, sha)
    found: ConsoleUser | None = None
    if run_as == LOGGED_ON_USER:
        found, why_not = await console_user_to_run_as(console)
        if found is None:
            return failed(why_not, sha, skipped=True)
        user_name = found.name
    try:
        # resolve_console_user may ask Windows for the user's token (a few fast calls).
        user = resolve_console_user(found) if found is not None else resolve_user(user_name)
        merged_env = child_env({**user.env, **(env or {})})
    except (ValueError, OSError) as exc:
        return failed(str(exc), sha)

    try:
        run = await run_bounded(
            [*vetting.command(real), *args],
            env=merged_env,
            cwd=str(cwd if cwd is not None else real.parent),
            timeout_s=timeout_s,
            output_cap_bytes=output_cap_bytes,
            run_as=user,
        )
    except (OSError, ValueError) as exc:
        # ENOEXEC (no shebang), EACCES, a missing interpreter, a NUL byte in an argument.
        return failed(f"cannot start {real}: {vetting.describe(exc)}", sha)

    return ScriptResult(
        exit_code=run.exit_code,
        output=run.output,
        truncated=run.truncated,
        duration_s=time.monotonic() - started,
        timed_out=run.timed_out,
        error=None,
        script_sha256=sha,
        ran_as=user_name,
    )


async def console_user_to_run_as(
    console: Callable[[], ConsoleUser | None],
    *,
    is_root: Callable[[], bool] = may_switch_user,
    account: str = PRIVILEGED_ACCOUNT,
) -> tuple[ConsoleUser | None, str]:
    """(the console user, ``""``) or (``None``, why a ``logged_on_user`` run is skipped):
    the agent not ``account`` (root, or LocalSystem on Windows: ``is_root``), or nobody
    at the console (``console``)."""
    if not is_root():
        return None, f"run_as logged_on_user needs the agent to run as {account}"
    # loginctl is a subprocess with a timeout: off the event loop.
    found = await asyncio.to_thread(console)
    if found is None:
        return None, "nobody is logged on at the console"
    return found, ""
