"""The agent's policy state on disk: verified bundles, the kill switch, run-now ids done.

Layout under ``<state_dir>/policy/`` (folders 0700)::

    <policy>/<version>/bundle.vpol      the document exactly as fetched (and verified)
    <policy>/<version>/files/...        its files, extracted (scripts run from here)
    current.json                        {"good": ["finance@7", "finance@6", ...]}, newest first
    highest.json                        {"finance": 7, ...}: highest version accepted per name
    halt.json                           {"halted": [...], "halt_all": false}
    run_now_done.json                   {"ids": [...]}: run-now requests already run

A version folder is written as a temp folder and renamed into place, so a crash leaves a
complete bundle or none. :meth:`PolicyCache.load_good` re-verifies what it loads (the
document's signature and hashes, and every extracted file against them): a cache that was
tampered with is skipped for the previous good bundle, never run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vigil.agent.identity import write_atomically
from vigil.policy_bundle import (
    REMEDIATIONS_DIR,
    BundleError,
    VerifiedBundle,
    parse_policy_tag,
    verify,
)

log = logging.getLogger("vigil.agent")

POLICY_DIR = "policy"
DOCUMENT = "bundle.vpol"
FILES = "files"
KEEP_GOOD = 3  # bundles kept for fallback (the current one included)
MAX_DONE_IDS = 1000  # run-now ids remembered (a repeated ack never runs one twice)


@dataclass(frozen=True, slots=True)
class CachedBundle:
    """A verified bundle and the folder its files were extracted to."""

    bundle: VerifiedBundle
    folder: Path  # <version>/files

    @property
    def tag(self) -> str:
        return self.bundle.tag


class PolicyCache:
    """The policy folder of one agent's state dir (see the module doc)."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / POLICY_DIR

    # ------------------------------------------------------------------ bundles

    def version_dir(self, policy: str, version: int) -> Path:
        return self.root / policy / str(version)

    def store(self, bundle: VerifiedBundle, document: bytes) -> CachedBundle:
        """Write a verified bundle (document + extracted files) atomically and make it
        the current one; older good bundles beyond :data:`KEEP_GOOD` are removed."""
        target = self.version_dir(bundle.policy, bundle.version)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{bundle.version}.", dir=target.parent))
        try:
            (tmp / DOCUMENT).write_bytes(document)
            for rel, data in bundle.files.items():
                # verify() refused absolute paths, '..', backslashes and empty parts.
                path = tmp / FILES / rel
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                path.write_bytes(data)
                # Never group/other-writable whatever the umask (the runner's vetting
                # refuses such scripts); a script with a shebang may run directly.
                path.chmod(0o700 if _has_shebang(data) else 0o600)
            # Always there, even for a bundle without remediations (a library folder).
            (tmp / FILES / REMEDIATIONS_DIR).mkdir(mode=0o700, parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        good = [t for t in self.good_tags() if t != bundle.tag]
        self._write_good([bundle.tag, *good][:KEEP_GOOD])
        self._note_highest(bundle.policy, bundle.version)
        self._prune()
        return CachedBundle(bundle, target / FILES)

    def highest(self, policy: str) -> int | None:
        """The highest version of ``policy`` this agent ever accepted (persisted, also
        while it runs another policy), or None. Older ones are downgrades."""
        data = _read_json(self.root / "highest.json")
        versions = [data.get(policy)] if isinstance(data, dict) else []
        # A cache from before highest.json existed: its good bundles count too.
        for tag in self.good_tags():
            with contextlib.suppress(ValueError):
                parsed = parse_policy_tag(tag)
                if parsed is not None and parsed[0] == policy:
                    versions.append(parsed[1])
        found = [v for v in versions if isinstance(v, int) and not isinstance(v, bool)]
        return max(found) if found else None

    def _note_highest(self, policy: str, version: int) -> None:
        data = _read_json(self.root / "highest.json")
        highest = dict(data) if isinstance(data, dict) else {}
        known = highest.get(policy)
        if isinstance(known, int) and known >= version:
            return
        highest[policy] = version
        write_atomically(self.root / "highest.json", json.dumps(highest, sort_keys=True))

    def good_tags(self) -> list[str]:
        """Tags of the good bundles, newest first (the first is the current one)."""
        data = _read_json(self.root / "current.json")
        tags = data.get("good", []) if isinstance(data, dict) else []
        return [t for t in tags if isinstance(t, str)]

    def _write_good(self, tags: list[str]) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(self.root / "current.json", json.dumps({"good": tags}))

    def forget(self, tag: str) -> None:
        """Drop ``tag`` from the good list (it failed to verify or to apply)."""
        self._write_good([t for t in self.good_tags() if t != tag])

    def load_good(
        self, trusted: Iterable[str], *, now: float, agent_version: str
    ) -> tuple[CachedBundle | None, list[str]]:
        """The newest good bundle that still verifies, and a message per one skipped.

        Each candidate's document is verified again (signature, hashes, expiry) and every
        extracted file compared with it; a bundle that fails is dropped from the good
        list (its folder is left for inspection) and the previous one is tried.
        """
        keys = list(trusted)
        problems: list[str] = []
        for tag in self.good_tags():
            try:
                cached = self._reverify(tag, keys, now=now, agent_version=agent_version)
            except (BundleError, OSError, ValueError) as exc:
                reason = exc.reason if isinstance(exc, BundleError) else "malformed"
                message = exc.message if isinstance(exc, BundleError) else str(exc)
                problems.append(f"cached {tag}: {reason}: {message}")
                log.error("cached policy %s refused: %s: %s", tag, reason, message)
                self.forget(tag)
                continue
            return cached, problems
        return None, problems

    def _reverify(
        self, tag: str, trusted: list[str], *, now: float, agent_version: str
    ) -> CachedBundle:
        parsed = parse_policy_tag(tag)
        if parsed is None:
            raise ValueError(f"bad tag {tag!r} in current.json")
        folder = self.version_dir(*parsed)
        document = (folder / DOCUMENT).read_bytes()
        bundle = verify(document, trusted, now=now, installed=None, agent_version=agent_version)
        if bundle.tag != tag:
            raise BundleError("malformed", f"{folder} holds {bundle.tag}, not {tag}")
        files = folder / FILES
        on_disk = {
            p.relative_to(files).as_posix()
            for p in files.rglob("*")
            if p.is_file() or p.is_symlink()
        }
        for rel, data in bundle.files.items():
            path = files / rel
            if path.is_symlink() or not path.is_file():
                raise BundleError("missing_file", f"extracted {rel} is missing or not a file")
            if hashlib.sha256(path.read_bytes()).digest() != hashlib.sha256(data).digest():
                raise BundleError("hash_mismatch", f"extracted {rel} differs from the bundle")
        extra = sorted(on_disk - set(bundle.files))
        if extra:
            raise BundleError("extra_file", f"extracted folder holds {extra[0]}, not in bundle")
        return CachedBundle(bundle, files)

    def _prune(self) -> None:
        keep = set()
        for tag in self.good_tags():
            with contextlib.suppress(ValueError):
                parsed = parse_policy_tag(tag)
                if parsed:
                    keep.add(self.version_dir(*parsed))
        for policy_dir in self.root.iterdir():
            if not policy_dir.is_dir():
                continue
            for version_dir in policy_dir.iterdir():
                if version_dir.is_dir() and version_dir not in keep:
                    shutil.rmtree(version_dir, ignore_errors=True)

    # ------------------------------------------------------------------ kill switch

    def load_halts(self) -> tuple[frozenset[str], bool]:
        """The halted remediation ids and whether everything is halted (persisted)."""
        data = _read_json(self.root / "halt.json")
        if not isinstance(data, dict):
            return frozenset(), False
        halted = data.get("halted", [])
        return frozenset(h for h in halted if isinstance(h, str)), data.get("halt_all") is True

    def save_halts(self, halted: Iterable[str], halt_all: bool) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = json.dumps({"halted": sorted(halted), "halt_all": bool(halt_all)})
        write_atomically(self.root / "halt.json", text)

    # ------------------------------------------------------------------ run-now

    def load_done(self) -> list[str]:
        data = _read_json(self.root / "run_now_done.json")
        ids = data.get("ids", []) if isinstance(data, dict) else []
        return [i for i in ids if isinstance(i, str)]

    def save_done(self, ids: list[str]) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = json.dumps({"ids": ids[-MAX_DONE_IDS:]}, ensure_ascii=True)
        write_atomically(self.root / "run_now_done.json", text)


def _has_shebang(data: bytes) -> bool:
    return data.startswith(b"#!")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("policy state file %s is unreadable (%s); ignoring it", path, exc)
        return None
