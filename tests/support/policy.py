"""Signed policy bundles for tests: a real key pair and a real policy source folder,
built, signed and packed with ``vigil.policy_bundle`` exactly as the CLI does."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from vigil import policy_bundle

POLICY_YAML = """\
checks: []
remediation:
  enabled:
    disk-cleanup: {}
"""
MANIFEST = """\
id: disk-cleanup
title: Remove old spool files
description: Removes old files from the spool (a test bundle).
platforms: [linux, darwin]
scripts: {linux: fix.sh, darwin: fix.sh}
timeout: 30s
"""


def write_source(root: Path, *, script: bytes = b"#!/bin/sh\nexit 0\n") -> Path:
    """A policy folder with one remediation (``disk-cleanup``)."""
    folder = root / "remediations" / "disk-cleanup"
    folder.mkdir(parents=True, exist_ok=True)
    (root / "policy.yaml").write_text(POLICY_YAML)
    (folder / "remediation.yaml").write_text(MANIFEST)
    (folder / "fix.sh").write_bytes(script)
    return root


def signed_bundle(
    root: Path,
    private_pem: bytes,
    *,
    policy: str = "finance",
    version: int = 1,
    target: Mapping[str, str] | None = None,
    expires_in_s: float = 30 * 86400.0,
    now: float | None = None,
) -> bytes:
    """The ``.vpol`` document of the source folder ``root``, signed with ``private_pem``."""
    at = time.time() if now is None else now
    manifest, files = policy_bundle.build(
        root,
        policy=policy,
        version=version,
        expires_at=at + expires_in_s,
        min_agent_version="0.1.0",
        target={"labels": dict(target)} if target else {},
        created_at=at,
    )
    return policy_bundle.pack(manifest, [policy_bundle.sign(manifest, private_pem)], files)
