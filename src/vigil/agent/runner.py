"""Run one remediation script safely, and gate how often remediations may run.

The agent runs admin-written scripts with its own privileges (often root) on people's
machines, so :func:`run_script` is deliberately strict: never a shell string, only
scripts whose real path lies inside an allowed folder, a minimal clean environment,
stdin from ``/dev/null``, a hard timeout that kills the whole process group, and an
output excerpt whose memory use is bounded by the cap whatever the script prints.

The process-tree lifecycle (spawn, capture, timeout, group kill, reaping) lives in
:func:`run_bounded`, which :func:`agent.plugins.run_plugin` shares; :func:`run_script`
adds the script vetting, interpreter choice and ``run_as`` on top.

It never raises for a script problem: a script that is missing, outside the allowed
folders, not executable or writable by others while we are root comes back as a
:class:`ScriptResult` with ``error`` set, because a broken remediation is a normal
outcome to report, not a crash of the agent.

Known limits: a grandchild that starts its own session (``setsid``, double fork) leaves
the process group and cannot be killed by it; containing that needs cgroups (Linux) or
Job Objects (Windows). On Windows only the direct child is terminated for now.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import math
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

KILL_GRACE_S = 2.0  # between SIGTERM and SIGKILL of the process group
_DRAIN_S = 1.0  # how long to wait for the output pipe's EOF once the group is dead
_REAP_S = 5.0  # how long to wait for the killed child to be reaped
_READ_CHUNK = 64 * 1024
_MAX_STARTS = 128  # remembered run starts per key (attempt budgets are at most 100)
_POSIX = os.name == "posix"
_POSIX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Windows programs misbehave without these, and they carry no user-controlled content.
_WINDOWS_ENV_KEEP = ("SYSTEMROOT", "WINDIR", "COMSPEC", "PATHEXT", "TEMP", "TMP", "PATH")


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
    (missing, outside the allowed folders, not a regular file).
    """

    exit_code: int | None
    output: str
    truncated: bool
    duration_s: float
    timed_out: bool
    error: str | None
    script_sha256: str


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
    SIGKILL :data:`KILL_GRACE_S` seconds later; leftovers of a script that exited on its
    own are killed the same way. At most ``output_cap_bytes`` characters of output are
    kept (head and tail, the truncation marker included).

    ``run_as`` names a user to run as (POSIX only; ``None`` is the agent's own user). It
    needs root unless it names the agent's own user; the child then gets that user's
    uid, gid, supplementary groups and ``HOME``, ``USER`` and ``LOGNAME``.
    """
    started = time.monotonic()

    def failed(reason: str, sha: str = "") -> ScriptResult:
        return ScriptResult(None, "", False, time.monotonic() - started, False, reason, sha)

    real, problem = _vet_script(Path(script), allowed_roots)
    if real is None:
        return failed(problem or "script refused")
    sha = _sha256(real)
    if problem:
        return failed(problem, sha)
    try:
        user_kwargs, user_env = _user(run_as)
        merged_env = child_env({**user_env, **(env or {})})
    except ValueError as exc:
        return failed(str(exc), sha)

    try:
        run = await run_bounded(
            [*_command(real), *args],
            env=merged_env,
            cwd=str(cwd if cwd is not None else real.parent),
            timeout_s=timeout_s,
            output_cap_bytes=output_cap_bytes,
            user_kwargs=user_kwargs,
        )
    except (OSError, ValueError) as exc:
        # ENOEXEC (no shebang), EACCES, a missing interpreter, a NUL byte in an argument.
        return failed(f"cannot start {real}: {_describe(exc)}", sha)

    return ScriptResult(
        exit_code=run.exit_code,
        output=run.output,
        truncated=run.truncated,
        duration_s=time.monotonic() - started,
        timed_out=run.timed_out,
        error=None,
        script_sha256=sha,
    )


@dataclass(frozen=True, slots=True)
class BoundedRun:
    """What one :func:`run_bounded` run did.

    ``exit_code`` is the child's exit status, ``None`` when it was killed on timeout; a
    negative value ``-N`` means the child was killed by signal ``N`` (not by us).
    ``output`` is the captured output decoded as UTF-8 (bad bytes replaced); when
    ``truncated`` it is the head and tail joined by a ``...[truncated N bytes]...`` line,
    the whole at most ``output_cap_bytes`` characters. ``duration_s`` is wall-clock
    seconds from just before the spawn to the end of the clean-up (group stopped, child
    reaped, output drained), so it can exceed ``timeout_s`` by up to :data:`KILL_GRACE_S`
    plus the reap and drain waits.
    """

    exit_code: int | None
    output: str
    truncated: bool
    timed_out: bool
    duration_s: float


async def run_bounded(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    timeout_s: float,
    output_cap_bytes: int,
    merge_stderr: bool = True,
    settle_s: float | None = None,
    user_kwargs: Mapping[str, object] | None = None,
) -> BoundedRun:
    """Run ``argv`` as a bounded process tree and return what it did; owns its whole lifecycle.

    ``argv[0]`` is executed directly (no shell) with exactly ``env`` as its environment
    (build it with :func:`child_env`; nothing of the agent's own is inherited), in
    ``cwd`` (``None``: the agent's), stdin from the null device, in its own session
    (POSIX) or process group (Windows). stdout is captured, head and tail within
    ``output_cap_bytes`` characters, memory O(cap) whatever the child prints; stderr
    goes to the same pipe when ``merge_stderr``, else to the null device.

    Once the child has run ``timeout_s`` seconds its process group gets SIGTERM, then
    SIGKILL :data:`KILL_GRACE_S` seconds later. The group is stopped the same way also
    after a normal exit, so background leftovers never outlive the run (nor hold the
    pipe open); with ``settle_s`` set, the pipe first gets up to that many seconds to
    reach EOF after a normal exit, so output already written is not lost to the kill.
    The child is always reaped (no zombies). Cancelling the call SIGKILLs the group
    before the cancellation propagates.

    ``user_kwargs`` are the ``user``/``group``/``extra_groups`` arguments of
    :func:`asyncio.create_subprocess_exec` to run as another user (POSIX, needs root).

    Raises :class:`OSError` or :class:`ValueError` when the child cannot be started
    (missing program, ``ENOEXEC``, ``EACCES``, a NUL byte in an argument, an empty
    ``argv``); nothing is left to clean up then. Any other outcome is a result.
    Caveat: a grandchild that starts its own session escapes the group (see the module
    docstring), and on Windows only the direct child is terminated.
    """
    if not argv:
        raise ValueError("empty command")
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.DEVNULL,
        env=dict(env),
        cwd=cwd,
        **_session_kwargs(),
        **(user_kwargs or {}),
    )

    capture = _HeadTail(output_cap_bytes)
    assert proc.stdout is not None
    reader = asyncio.create_task(_pump(proc.stdout, capture))
    stopped = False
    try:
        timed_out = not await _exited(proc, timeout_s)
        if not timed_out and settle_s is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), settle_s)
        # Also after a normal exit: background children the program left behind must not
        # outlive the run (they would hold the output pipe open and escape the timeout).
        await _stop_group(proc, reader)
        stopped = True
    finally:
        if not stopped:  # cancelled mid-run: never leave the tree behind
            _signal_tree(proc, _SIGKILL)
        if not reader.done():
            reader.cancel()
            # asyncio's Process has no public close(); without this a pipe still held by
            # a grandchild that escaped the group would keep the transport open.
            proc._transport.close()  # type: ignore[attr-defined]
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    output, truncated = capture.result()
    return BoundedRun(
        exit_code=None if timed_out else proc.returncode,
        output=output,
        truncated=truncated,
        timed_out=timed_out,
        duration_s=time.monotonic() - started,
    )


def _vet_script(script: Path, allowed_roots: Sequence[Path]) -> tuple[Path | None, str | None]:
    """(real path, refusal reason). Real path is None when the script cannot even be hashed."""
    try:
        real = script.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: symlink loop on older Pythons
        return None, f"script not found: {script}"
    roots = [Path(os.path.realpath(r)) for r in allowed_roots]
    if not any(real.is_relative_to(r) for r in roots):
        shown = ", ".join(str(r) for r in roots) or "none configured"
        return None, f"script {real} is outside the allowed folders ({shown})"
    try:
        st = real.stat()
    except OSError as exc:
        return None, f"cannot stat script {real}: {_describe(exc)}"
    if not stat.S_ISREG(st.st_mode):
        return None, f"script {real} is not a regular file"
    if _POSIX and os.geteuid() == 0 and st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        # Anyone who can write the script could run code as root through us.
        return real, f"script {real} is group- or world-writable; refusing to run it as root"
    if _POSIX and _interpreter(real) is None and not st.st_mode & 0o111:
        return real, f"script {real} is not executable (chmod +x, or use .sh, .py or .ps1)"
    return real, None


def _interpreter(script: Path) -> list[str] | None:
    suffix = script.suffix.lower()
    if suffix == ".sh":
        return ["/bin/sh"]
    if suffix == ".py":
        return [sys.executable]
    if suffix == ".ps1":
        return ["powershell", "-NoProfile", "-NonInteractive", "-File"]
    return None


def _command(script: Path) -> list[str]:
    return [*(_interpreter(script) or []), str(script)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(_READ_CHUNK), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    """The minimal child environment plus ``extra`` (which wins); a fresh dict.

    POSIX: ``PATH`` (the system folders only), ``LANG=C.UTF-8`` and the agent's ``HOME``;
    Windows also keeps the few system variables programs need (``SYSTEMROOT`` ...).
    Nothing else of the agent's environment leaks through. Raises :class:`ValueError`
    for an empty name, a name with ``=`` or a NUL byte, or a value with a NUL byte.
    """
    if _POSIX:
        base = {"PATH": _POSIX_PATH, "LANG": "C.UTF-8", "HOME": os.path.expanduser("~")}
    else:
        base = {k: os.environ[k] for k in _WINDOWS_ENV_KEEP if k in os.environ}
        base |= {"LANG": "C.UTF-8", "HOME": os.path.expanduser("~")}
    for name, value in (extra or {}).items():
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"bad environment variable name {name!r}")
        if "\0" in value:
            raise ValueError(f"environment variable {name} contains a NUL byte")
        base[name] = value
    return base


def _user(run_as: str | None) -> tuple[dict[str, object], dict[str, str]]:
    """(subprocess kwargs, environment) to run as ``run_as``; ValueError says why not."""
    if run_as is None:
        return {}, {}
    if not _POSIX:
        raise ValueError(f"run_as {run_as!r} is not supported on this platform")
    import pwd  # POSIX only

    try:
        pw = pwd.getpwnam(run_as)
    except KeyError:
        raise ValueError(f"run_as: no such user {run_as!r}") from None
    env = {"HOME": pw.pw_dir, "USER": pw.pw_name, "LOGNAME": pw.pw_name}
    if pw.pw_uid == os.geteuid():
        return {}, env
    if os.geteuid() != 0:
        raise ValueError(f"cannot run as {run_as!r}: the agent is not running as root")
    groups = os.getgrouplist(pw.pw_name, pw.pw_gid)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}, env


def _session_kwargs() -> dict[str, object]:
    if _POSIX:
        return {"start_new_session": True}
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}


_SIGKILL = getattr(signal, "SIGKILL", signal.SIGTERM)


def _signal_tree(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Send ``sig`` to the child's whole process group (POSIX) or the child (Windows)."""
    try:
        if _POSIX:
            # The child is the group leader (own session), so its pid is the group id. The
            # group id stays reserved while any member lives, so it cannot be recycled
            # under us; once all members are gone the kill is a harmless ESRCH.
            os.killpg(proc.pid, sig)
        elif proc.returncode is None and sig == signal.SIGTERM:
            proc.terminate()
        elif proc.returncode is None:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


async def _stop_group(proc: asyncio.subprocess.Process, reader: asyncio.Task[None]) -> None:
    """SIGTERM the group, give it the grace period, SIGKILL it, reap the child, drain output.

    "Gone" is judged by the child having exited and the output pipe reaching EOF (every
    member that still holds it has exited). Polling the group with ``killpg(pgid, 0)``
    would be fooled by zombies where PID 1 does not reap orphans, as in many containers.
    """
    _signal_tree(proc, signal.SIGTERM)
    started = time.monotonic()
    if await _exited(proc, KILL_GRACE_S):
        with contextlib.suppress(TimeoutError):
            left = KILL_GRACE_S - (time.monotonic() - started)
            await asyncio.wait_for(asyncio.shield(reader), max(0.0, left))
    _signal_tree(proc, _SIGKILL)
    await _exited(proc, _REAP_S)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reader), _DRAIN_S)


async def _exited(proc: asyncio.subprocess.Process, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for the child itself to exit; True if it did.

    Not ``proc.wait()``: asyncio's also waits for every output pipe to close, so a
    background grandchild holding stdout would make a finished script look hung
    (python/cpython#119710). ``returncode`` is set as soon as the child is reaped, so
    poll it, backing off from 1 ms to 50 ms.
    """
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while proc.returncode is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, 0.05)
    return True


async def _pump(stream: asyncio.StreamReader, capture: _HeadTail) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        capture.feed(chunk)


class _HeadTail:
    """Keeps the first and last bytes of a stream within ``cap``; memory is O(cap)."""

    def __init__(self, cap: int) -> None:
        self.cap = max(0, cap)
        self.head_cap = self.cap // 2
        self.tail_cap = self.cap - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()  # a ring of the latest bytes, trimmed from the front
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk or self.tail_cap == 0:
            return
        if len(chunk) >= self.tail_cap:
            self.tail = bytearray(chunk[-self.tail_cap :])
        else:
            self.tail += chunk
            del self.tail[: max(0, len(self.tail) - self.tail_cap)]

    def result(self) -> tuple[str, bool]:
        """(text, truncated). Truncated text, marker included, fits in ``cap`` characters."""
        if self.total <= self.cap:
            return (self.head + self.tail).decode("utf-8", errors="replace"), False
        # Reserve room for the marker so the excerpt, marker included, stays within the cap
        # (and so within the wire's output limit); ``total`` bounds the digits of N.
        budget = max(0, self.cap - len(_marker(self.total)))
        head_keep = budget // 2
        tail_keep = min(budget - head_keep, len(self.tail))
        head = _cut_utf8_end(bytes(self.head[:head_keep]))
        tail = _cut_utf8_start(bytes(self.tail[len(self.tail) - tail_keep :]))
        dropped = self.total - len(head) - len(tail)
        text = head.decode("utf-8", errors="replace") + _marker(dropped)
        return text + tail.decode("utf-8", errors="replace"), True


def _marker(dropped: int) -> str:
    return f"\n...[truncated {dropped} bytes]...\n"


def _cut_utf8_end(data: bytes) -> bytes:
    """Drop a multi-byte character split by the cut at the end (else it decodes as U+FFFD)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # found the lead (or ASCII) byte of the last character
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0xE else 4
            return data if need <= back else data[:-back]
    return data


def _cut_utf8_start(data: bytes) -> bytes:
    """Drop continuation bytes left at the start by the cut (at most three)."""
    skip = 0
    while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return data[skip:]


def _describe(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class AlreadyRunning(RuntimeError):
    """:meth:`RunGate.slot` was entered for a key that is already running."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"{key} is already running")


class RunGate:
    """Decides whether a remediation may run now, and holds its place while it runs.

    Keys are any strings; the agent uses ``"<remediation id>:<check id>"``, so budgets
    are per (remediation, check) on this host. Per key: at most one run at a time,
    ``cooldown_s`` seconds between the end of one run and the start of the next, and at
    most ``max_attempts`` starts within any ``window_s`` seconds (Monit's "N restarts
    within M cycles"; once it is used up the incident path takes over). Globally: at most
    ``max_concurrent`` runs at once; extra runs wait for a slot. ``clock`` returns
    seconds and only needs to be monotonic.

    Use :meth:`check` then enter :meth:`slot` without awaiting in between::

        if (reason := gate.check(key, remediation.cooldown_s)) is None:
            async with gate.slot(key):
                result = await run_script(...)
    """

    def __init__(
        self, max_concurrent: int = 2, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1 (got {max_concurrent!r})")
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrent)
        self._running: set[str] = set()
        self._last_run: dict[str, float] = {}
        self._starts: dict[str, collections.deque[float]] = {}

    def check(
        self,
        key: str,
        cooldown_s: float,
        *,
        max_attempts: int | None = None,
        window_s: float = 0.0,
    ) -> str | None:
        """``None`` when ``key`` may run now, else why not (``"cooldown: 42s left"``,
        ``"attempts: 3 of 3 used in the last 3600s"``)."""
        if key in self._running:
            return "already running"
        now = self._clock()
        last = self._last_run.get(key)
        if last is not None:
            left = last + cooldown_s - now
            if left > 0:
                return f"cooldown: {math.ceil(left)}s left"
        if max_attempts is not None:
            starts = self._starts.get(key, ())
            recent = [t for t in starts if now - t < window_s]
            if len(recent) >= max_attempts:
                wait = math.ceil(recent[0] + window_s - now)
                return (
                    f"attempts: {len(recent)} of {max_attempts} used in the last "
                    f"{window_s:g}s (next in {wait}s)"
                )
        return None

    @contextlib.asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        """Hold a global slot for ``key``; its cooldown starts when the block exits.

        ``key`` counts as running from the moment of entry, also while it waits for a
        slot, so a second trigger is refused rather than queued. Raises
        :class:`AlreadyRunning` if ``key`` is already inside a slot. A run cancelled while
        still waiting never ran, so it starts no cooldown and uses no attempt.
        """
        if key in self._running:
            raise AlreadyRunning(key)
        self._running.add(key)
        try:
            async with self._slots:
                starts = self._starts.setdefault(key, collections.deque(maxlen=_MAX_STARTS))
                starts.append(self._clock())
                try:
                    yield
                finally:
                    self._last_run[key] = self._clock()
        finally:
            self._running.discard(key)
