"""Path source: size, entry count and age of admin-named files and folders.

A walk costs in proportion to the entries walked, bounded by :data:`MAX_PATH_ENTRIES`;
each path's walk is reused for its configured ``interval`` by the regular sample, while a
verification after a remediation always walks again.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from typing import NamedTuple

from vigil.agent.config import PathSpec
from vigil.agent.sampling.series import FailureLog, Item, describe, log, put

MAX_PATH_ENTRIES = 100_000
"""A folder walk stops after this many entries, so one huge folder cannot stall sampling."""

_METRICS = ("size_bytes", "count", "age_seconds")


class PathStats(NamedTuple):
    """What :func:`scan_path` found.

    ``size_bytes``: total size of regular files (a file: its size). ``count``: entries seen
    below a folder, of any kind (a file: 1). ``newest_mtime``: newest
    modification time of a regular file, seconds since the epoch (``None`` if none).
    ``truncated``: the walk stopped at ``max_entries``, so the figures are lower bounds.
    """

    size_bytes: int
    count: int
    newest_mtime: float | None
    truncated: bool = False


def scan_path(path: str | os.PathLike[str], *, max_entries: int = MAX_PATH_ENTRIES) -> PathStats:
    """Size, entry count and newest mtime of a file or of everything under a folder.

    The walk uses ``os.scandir`` and never follows symlinks (or Windows junctions) below
    ``path``; ``path`` itself is followed, since an admin named it. Entries that vanish
    mid-walk and unreadable subfolders are skipped (normal races on a live system); a
    missing ``path`` raises ``FileNotFoundError`` (``NotADirectoryError`` when a parent is a
    file) and an unreadable one ``OSError``: whether missing means empty is the caller's call.
    """
    top = os.stat(path)
    if not stat.S_ISDIR(top.st_mode):
        size = top.st_size if stat.S_ISREG(top.st_mode) else 0
        return PathStats(size, 1, top.st_mtime)

    size = count = 0
    newest: float | None = None
    root = os.fspath(path)
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except OSError:
            if folder == root:
                raise
            continue
        with entries:
            for entry in entries:
                if count >= max_entries:
                    return PathStats(size, count, newest, truncated=True)
                count += 1
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not _is_reparse_point(entry):
                            stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        size += st.st_size
                        newest = st.st_mtime if newest is None else max(newest, st.st_mtime)
                except OSError:
                    continue
    return PathStats(size, count, newest)


def _is_reparse_point(entry: os.DirEntry[str]) -> bool:
    """A Windows junction: ``is_dir(follow_symlinks=False)`` is true for it before 3.12."""
    if os.name != "nt":
        return False
    attributes = getattr(entry.stat(follow_symlinks=False), "st_file_attributes", 0)
    return bool(attributes & stat.FILE_ATTRIBUTE_REPARSE_POINT)


class Paths:
    """``path.{size_bytes,count,age_seconds}[<name>]`` for every configured path.

    A path that does not exist has no series (its reason says so) unless its spec says
    ``missing: empty``; then it reads size 0 and count 0, with no age.

    ``clock`` is monotonic (walk reuse); ``wall_clock`` gives epoch seconds for ages.
    """

    def __init__(
        self,
        specs: Iterable[PathSpec],
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        failures: FailureLog,
        reasons: dict[str, str],
    ) -> None:
        self._specs = tuple(specs)
        self._clock = clock
        self._wall_clock = wall_clock
        self._failures = failures
        self._reasons = reasons
        self._cache: dict[str, tuple[float, PathStats]] = {}

    def walk_due(self, now: float) -> bool:
        """Whether a regular read at monotonic time ``now`` would walk some path."""
        for spec in self._specs:
            cached = self._cache.get(spec.name)
            if spec.interval_s is None or cached is None or now - cached[0] >= spec.interval_s:
                return True
        return False

    def read(self, *, fresh: bool) -> dict[str, float]:
        """The series of every readable path (see ``Sampler.sample_paths``)."""
        values: dict[str, float] = {}
        now = self._wall_clock()
        mono = self._clock()
        for spec in self._specs:
            path, name = spec.path, spec.name
            source = f"path {name} ({path})"
            cached = self._cache.get(name)
            if (
                not fresh
                and cached is not None
                and spec.interval_s is not None
                and mono - cached[0] < spec.interval_s
            ):
                found = cached[1]
            else:
                try:
                    found = scan_path(path)
                except (FileNotFoundError, NotADirectoryError) as exc:
                    if spec.missing != "empty":
                        self._unreadable(spec, source, exc, f"{path} does not exist")
                        continue
                    found = PathStats(0, 0, None)
                except OSError as exc:
                    self._unreadable(spec, source, exc, f"cannot read {path}: {describe(exc)}")
                    continue
                self._cache[name] = (mono, found)
            for m in _METRICS:
                self._reasons.pop(f"path.{m}[{name}]", None)
            self._failures.recovered(source)
            if found.truncated:
                log.debug("path %s: stopped after %d entries", path, found.count)
            items: list[Item] = [
                (f"path.size_bytes[{name}]", found.size_bytes),
                (f"path.count[{name}]", found.count),
            ]
            if found.newest_mtime is not None:
                items.append((f"path.age_seconds[{name}]", max(0.0, now - found.newest_mtime)))
            put(values, items)
        return values

    def _unreadable(self, spec: PathSpec, source: str, exc: OSError, reason: str) -> None:
        """No series for ``spec`` this time: log once, and say why in each series' reason."""
        self._failures.failed(source, exc)
        self._reasons.update(dict.fromkeys((f"path.{m}[{spec.name}]" for m in _METRICS), reason))
        self._cache.pop(spec.name, None)
