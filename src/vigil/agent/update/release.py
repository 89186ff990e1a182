"""Install a verified agent release: unpack its wheel into a new folder, prove it imports,
then switch the update state to it.

Nothing here runs before :func:`vigil.policy_bundle.verify` has checked the bundle's
signature and every file hash against a trusted key; :func:`install` takes the
:class:`~vigil.policy_bundle.VerifiedBundle` only. The wheel is unpacked member by member
with every path checked (no absolute path, no ``..``, no link), into a temporary folder
renamed into place once complete, so a half-unpacked release never becomes current.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from vigil.agent.update.state import (
    RELEASES_DIR,
    Release,
    UpdateState,
    load_state,
    save_state,
    switch_to,
)
from vigil.policy_bundle import VerifiedBundle, version_tuple
from vigil.release_bundle import RELEASE_POLICY, VERSION_LINE, WHEEL_NAME

__all__ = ["RELEASE_POLICY", "ReleaseError", "install"]

log = logging.getLogger("vigil.agent.update")

_WHEEL = WHEEL_NAME
_VERSION_LINE = VERSION_LINE
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*)$")
# Bounds on the unpacked wheel (the bundle itself is bounded by policy_bundle).
MAX_MEMBERS = 5000
MAX_UNPACKED = 64 * 1024 * 1024  # bytes
SMOKE_TIMEOUT_S = 60.0


class ReleaseError(Exception):
    """The release cannot be installed; ``reason`` is stable, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def install(
    bundle: VerifiedBundle,
    state_dir: Path,
    *,
    now: Callable[[], float] = time.time,
    python: str = sys.executable,
    smoke_timeout_s: float = SMOKE_TIMEOUT_S,
) -> UpdateState:
    """Install ``bundle`` (a verified :data:`RELEASE_POLICY` bundle) and make it the
    current, pending release; returns the new state (already saved). The running process
    should then re-execute itself (:func:`vigil.agent.update.launch.reexec`).

    Raises :class:`ReleaseError` (``not_a_release``, ``failed_before``, ``bad_wheel``,
    ``needs_dependencies``, ``smoke_test``) and leaves the state and the running release
    untouched.
    """
    if bundle.policy != RELEASE_POLICY:
        raise ReleaseError("not_a_release", f"bundle {bundle.tag} is not an agent release")
    state = load_state(state_dir)
    if bundle.version in state.failed:
        raise ReleaseError("failed_before", f"release {bundle.version} was rolled back here before")
    wheel_name, version = _the_wheel(bundle)
    releases = state_dir / RELEASES_DIR
    releases.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = f"{bundle.version}-{version}"
    target = releases / folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=releases))
    try:
        with zipfile.ZipFile(io.BytesIO(bundle.files[wheel_name])) as wheel:
            _unpack(wheel, tmp)
        _check_unpacked(tmp, version)
        _smoke_test(python, tmp, smoke_timeout_s)
        if target.exists():  # an earlier attempt at the same serial that never switched
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    new = switch_to(state, Release(bundle.version, version, folder), now())
    save_state(state_dir, new)
    log.warning(
        "installed agent release %s (vigil %s) from %s; restarting into it",
        bundle.version,
        version,
        bundle.key_id,
    )
    return new


def _the_wheel(bundle: VerifiedBundle) -> tuple[str, str]:
    """The one wheel in the bundle and the version its name carries."""
    wheels = [(p, m) for p in bundle.files if (m := _WHEEL.match(p))]
    if len(wheels) != 1 or len(bundle.files) != 1:
        raise ReleaseError(
            "bad_wheel",
            f"an agent release holds exactly one vigil-<version>-py3-none-any.whl, "
            f"this one has {sorted(bundle.files)[:5]}",
        )
    path, match = wheels[0]
    return path, match.group(1)


def _unpack(wheel: zipfile.ZipFile, into: Path) -> None:
    """Extract ``wheel`` into ``into``, refusing any member that would land outside it,
    links, and more than the size bounds allow."""
    members = wheel.infolist()
    if len(members) > MAX_MEMBERS:
        raise ReleaseError("bad_wheel", f"{len(members)} members (at most {MAX_MEMBERS})")
    total = 0
    for info in members:
        name = PurePosixPath(info.filename)
        if (
            name.is_absolute()
            or ".." in name.parts
            or "\\" in info.filename
            or "\0" in info.filename
            or not name.parts
        ):
            raise ReleaseError("bad_wheel", f"unsafe member path {info.filename[:80]!r}")
        mode = info.external_attr >> 16
        if mode and (mode & 0o170000) not in (0, 0o100000, 0o040000):
            raise ReleaseError("bad_wheel", f"member {info.filename[:80]!r} is not a file")
        total += info.file_size
        if total > MAX_UNPACKED:
            raise ReleaseError("bad_wheel", f"unpacks to over {MAX_UNPACKED} bytes")
        dest = into.joinpath(*name.parts)
        if info.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with wheel.open(info) as src, open(dest, "wb") as out:
            # Bounded copy: a member may lie about its size in the central directory.
            left = info.file_size
            while chunk := src.read(min(1 << 20, left + 1)):
                left -= len(chunk)
                if left < 0:
                    raise ReleaseError("bad_wheel", f"{info.filename[:80]!r} exceeds its size")
                out.write(chunk)


def _check_unpacked(folder: Path, version: str) -> None:
    """The wheel is the agent at the version its name says, and its dependencies are all
    installed here at a version the release accepts."""
    init = folder / "vigil" / "__init__.py"
    if not (folder / "vigil" / "agent" / "cli.py").is_file() or not init.is_file():
        raise ReleaseError("bad_wheel", "the wheel holds no vigil agent")
    found = _VERSION_LINE.search(init.read_text(encoding="utf-8", errors="replace"))
    if not found or found.group(1) != version:
        raise ReleaseError(
            "bad_wheel", f"vigil/__init__.py says {found and found.group(1)}, not {version}"
        )
    dist_info = next(folder.glob("vigil-*.dist-info"), None)
    if dist_info is None or not (dist_info / "METADATA").is_file():
        raise ReleaseError("bad_wheel", "the wheel has no METADATA")
    metadata = email.parser.Parser().parsestr(
        (dist_info / "METADATA").read_text(encoding="utf-8", errors="replace")
    )
    missing = [r for r in metadata.get_all("Requires-Dist") or [] if not _satisfied(r)]
    if missing:
        raise ReleaseError(
            "needs_dependencies",
            f"needs {', '.join(missing)}: upgrade the agent package, not by self-update",
        )


def _satisfied(requirement: str) -> bool:
    """Whether a base (no ``extra ==`` marker) ``Requires-Dist`` is met by what is
    installed. Only ``>=`` and ``<`` bounds are understood (what Vigil's own metadata
    uses); an extra's requirement (the collector's) always counts as met."""
    spec, _, marker = requirement.partition(";")
    if "extra" in marker:
        return True
    match = _REQUIREMENT.match(spec.strip())
    if not match:
        return False
    name, bounds = match.group(1), match.group(2).strip().strip("()")
    try:
        have = version_tuple(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return False
    for bound in filter(None, (b.strip() for b in bounds.split(","))):
        op = ">=" if bound.startswith(">=") else "<" if bound.startswith("<") else None
        if op is None:
            continue  # other operators: not used by Vigil's metadata; do not block on them
        limit = version_tuple(bound[len(op) :].strip())
        width = max(len(have), len(limit))
        a, b = have + (0,) * (width - len(have)), limit + (0,) * (width - len(limit))
        if (op == ">=" and a < b) or (op == "<" and a >= b):
            return False
    return True


def _smoke_test(python: str, folder: Path, timeout_s: float) -> None:
    """Import the new agent's service and CLI in a child interpreter that sees only the
    new folder ahead of the base install; refuse the release when that fails."""
    env = {**os.environ, "PYTHONPATH": str(folder), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [python, "-c", "import vigil.agent.cli, vigil.agent.service; print(vigil.__file__)"]
    try:
        done = subprocess.run(  # an argument vector of our own, no shell
            argv, env=env, capture_output=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise ReleaseError("smoke_test", f"importing the release took over {timeout_s} s") from None
    loaded_from = done.stdout.decode(errors="replace").strip()
    if done.returncode != 0 or not loaded_from.startswith(str(folder)):
        raise ReleaseError(
            "smoke_test",
            f"the release does not import (exit {done.returncode}): "
            f"{(done.stderr.decode(errors='replace') or loaded_from)[-300:]}",
        )
