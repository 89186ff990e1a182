"""Building a policy bundle's manifest from a policy source folder (the admin's offline
step; :func:`vigil.policy_bundle.build` is the public entry point and calls this).

Imports ``yaml`` (a base dependency) only here, so verifying a bundle never loads it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml

from vigil.policy_format import (
    _CONFIG_KEYS,
    _REMEDIATION_KEYS,
    _VERSION,
    MAX_FILES,
    POLICY_FILE,
    REMEDIATIONS_DIR,
    PolicySourceError,
    _check_path,
    _check_target,
    _finite_time,
    is_policy_name,
)


def build_manifest(
    policy_dir: Path,
    *,
    policy: str,
    version: int,
    expires_at: float,
    min_agent_version: str,
    target: Mapping[str, Any],
    created_at: float,
) -> tuple[bytes, dict[str, bytes]]:
    """Build a manifest from a policy source folder: ``(manifest bytes, files)``.

    ``policy_dir/policy.yaml`` holds the config fragment (``checks``: a list in the agent
    config's schema; ``remediation``: ``enabled`` and ``schedule`` maps); every file under
    ``policy_dir/remediations/`` goes into the bundle. Symlinks and anything that is not a
    regular file or folder are refused (:class:`PolicySourceError` naming the path), as
    are bad arguments (:class:`ValueError`). Only the structure is checked here; the agent
    validates the checks and remediations with its own loader before it applies them
    (``vigil-agent remediation test`` checks them before signing). ``created_at`` and
    ``expires_at`` are Unix seconds. The manifest's keys are sorted (orjson).
    """
    _check_fields(policy, version, min_agent_version, created_at, expires_at, target)

    root = Path(policy_dir)
    policy_file = root / POLICY_FILE
    if policy_file.is_symlink() or not policy_file.is_file():
        raise PolicySourceError(f"{policy_file}: missing (or not a regular file)")
    try:
        loaded = yaml.safe_load(policy_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PolicySourceError(f"{policy_file}: not valid YAML: {exc}") from None
    config = _source_config(policy_file, {} if loaded is None else loaded)

    files: dict[str, bytes] = {}
    rem_root = root / REMEDIATIONS_DIR
    if rem_root.is_symlink():
        raise PolicySourceError(f"{rem_root}: symlinks are refused")
    if rem_root.exists():
        _collect(rem_root, REMEDIATIONS_DIR, files)
    if len(files) > MAX_FILES:
        raise PolicySourceError(f"{rem_root}: {len(files)} files, at most {MAX_FILES}")
    manifest = manifest_for(
        files,
        policy=policy,
        version=version,
        expires_at=expires_at,
        min_agent_version=min_agent_version,
        target=target,
        created_at=created_at,
        config=config,
    )
    return manifest, files


def manifest_for(
    files: Mapping[str, bytes],
    *,
    policy: str,
    version: int,
    expires_at: float,
    min_agent_version: str,
    target: Mapping[str, Any],
    created_at: float,
    config: Mapping[str, Any],
) -> bytes:
    """The manifest bytes (keys sorted) listing ``files`` with their SHA-256 and size.

    :func:`build_manifest` uses it for a policy folder; an agent release (one wheel and an
    empty ``config``, see ``vigil/agent/update/``) is built with it directly. Bad
    arguments raise :class:`ValueError` naming the field.
    """
    target_doc = _check_fields(policy, version, min_agent_version, created_at, expires_at, target)
    manifest = {
        "policy": policy,
        "version": version,
        "created_at": created_at,
        "expires_at": expires_at,
        "min_agent_version": min_agent_version,
        "target": target_doc,
        "files": {
            path: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for path, data in sorted(files.items())
        },
        "config": dict(config),
    }
    return orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)


def _check_fields(
    policy: str,
    version: int,
    min_agent_version: str,
    created_at: float,
    expires_at: float,
    target: Mapping[str, Any],
) -> dict[str, Any]:
    """Validate the manifest's scalar fields; the normalised target."""
    if not is_policy_name(policy):
        raise ValueError(f"policy name {policy!r} must match [a-z0-9][a-z0-9._-]{{0,63}}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be an integer >= 1, got {version!r}")
    if not isinstance(min_agent_version, str) or not _VERSION.match(min_agent_version):
        raise ValueError(
            f"min_agent_version must be dotted integers like '0.1.0', got {min_agent_version!r}"
        )
    _finite_time(created_at, "created_at")
    _finite_time(expires_at, "expires_at")
    if expires_at <= created_at:
        raise ValueError(f"expires_at {expires_at} is not after created_at {created_at}")
    return _check_target(target)


def _source_config(policy_file: Path, loaded: Any) -> dict[str, Any]:
    if not isinstance(loaded, dict):
        raise PolicySourceError(f"{policy_file}: expected a mapping, got {type(loaded).__name__}")
    unknown = sorted(str(k) for k in set(loaded) - _CONFIG_KEYS)
    if unknown:
        raise PolicySourceError(
            f"{policy_file}: unknown key {unknown[0]!r} (allowed: checks, remediation)"
        )
    checks = loaded.get("checks") or []
    if not isinstance(checks, list):
        raise PolicySourceError(f"{policy_file}: checks: expected a list, got {checks!r}")
    remediation = loaded.get("remediation") or {}
    if not isinstance(remediation, dict):
        raise PolicySourceError(f"{policy_file}: remediation: expected a mapping")
    bad = sorted(str(k) for k in set(remediation) - _REMEDIATION_KEYS)
    if bad:
        raise PolicySourceError(
            f"{policy_file}: remediation.{bad[0]}: unknown key (allowed: enabled, schedule)"
        )
    out_rem: dict[str, Any] = {}
    for key in sorted(_REMEDIATION_KEYS):
        value = remediation.get(key) or {}
        if not isinstance(value, dict):
            raise PolicySourceError(f"{policy_file}: remediation.{key}: expected a mapping")
        out_rem[key] = value
    config = {"checks": checks, "remediation": out_rem}
    try:
        orjson.dumps(config)  # dates, sets, non-string keys would not survive JSON
    except TypeError as exc:
        raise PolicySourceError(f"{policy_file}: not representable as JSON: {exc}") from None
    return config


def _collect(folder: Path, prefix: str, out: dict[str, bytes]) -> None:
    for entry in sorted(folder.iterdir()):
        rel = f"{prefix}/{entry.name}"
        if entry.is_symlink():
            raise PolicySourceError(f"{entry}: symlinks are refused in a policy bundle")
        if entry.is_dir():
            _collect(entry, rel, out)
        elif entry.is_file():
            problem = _check_path(rel)
            if problem:
                raise PolicySourceError(f"{entry}: {problem}")
            out[rel] = entry.read_bytes()
        else:
            raise PolicySourceError(f"{entry}: not a regular file or folder")
