"""The ``vigil-policy/1`` format's constants, errors and small rules, shared by
:mod:`vigil.policy_bundle` (sign, pack, verify) and :mod:`vigil.policy_build` (building a
manifest from a source folder). Standard library only; import the names from
:mod:`vigil.policy_bundle`, which re-exports them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FORMAT = "vigil-policy/1"
MEDIA_TYPE = "application/vnd.vigil.policy+json"
EXTENSION = ".vpol"
POLICY_FILE = "policy.yaml"  # the config fragment in a policy source folder
REMEDIATIONS_DIR = "remediations"  # the remediation folders in a policy source folder
NO_POLICY = "none"  # X-Vigil-Policy header value of an agent running no bundle

# Bounds on what verify() accepts, so a hostile document costs bounded memory and CPU.
MAX_DOCUMENT = 32 * 1024 * 1024  # bytes
MAX_FILES = 2000
MAX_PATH = 255  # characters of one relative path
MAX_SIGNATURES = 16

# Stable failure reasons (agents report them, tests and the collector match on them).
REASONS: tuple[str, ...] = (
    "malformed",
    "unsigned",
    "unknown_key",
    "bad_signature",
    "unsafe_path",
    "hash_mismatch",
    "missing_file",
    "extra_file",
    "expired",
    "downgrade",
    "agent_too_old",
)

_POLICY_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_LEADING_VERSION = re.compile(r"^([0-9]+(?:\.[0-9]+)*)")
_MANIFEST_KEYS = frozenset(
    {
        "policy",
        "version",
        "created_at",
        "expires_at",
        "min_agent_version",
        "target",
        "files",
        "config",
    }
)
_CONFIG_KEYS = frozenset({"checks", "remediation"})
_REMEDIATION_KEYS = frozenset({"enabled", "schedule"})


class BundleError(Exception):
    """A bundle failed verification (or could not be built).

    ``reason`` is one of :data:`REASONS` (a stable string for reports and tests);
    ``message`` says what exactly is wrong, naming the path or field.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class PolicySourceError(ValueError):
    """A policy source folder (:func:`build`'s input) is unusable; names file and key."""


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose signature and every file hash verified.

    ``created_at``/``expires_at`` are Unix seconds; ``target`` is the manifest's target
    (``{"labels": {...}}`` or ``{}``); ``config`` is the agent-config fragment
    (``checks``, ``remediation``); ``files`` maps relative posix paths to their bytes;
    ``manifest_bytes`` are the exact signed bytes; ``key_id`` names the key that signed.
    """

    policy: str
    version: int
    created_at: float
    expires_at: float
    target: dict[str, Any]
    config: dict[str, Any]
    files: dict[str, bytes]
    manifest_bytes: bytes
    key_id: str

    @property
    def tag(self) -> str:
        """``"<policy>@<version>"`` (the ETag and ``X-Vigil-Policy`` form)."""
        return policy_tag(self.policy, self.version)


# --------------------------------------------------------------------------- tags


def policy_tag(policy: str, version: int) -> str:
    """``"<policy>@<version>"``: what the agent sends in ``X-Vigil-Policy`` and the
    collector's ETag (without the quotes)."""
    return f"{policy}@{version}"


def parse_policy_tag(text: str) -> tuple[str, int] | None:
    """Inverse of :func:`policy_tag`; ``"none"`` gives ``None``. Surrounding double quotes
    (an ETag) are accepted. Raises :class:`ValueError` naming the text when malformed."""
    value = text.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if value == NO_POLICY:
        return None
    name, sep, version = value.rpartition("@")
    if not sep or not _POLICY_NAME.match(name) or not version.isascii():
        raise ValueError(f"bad policy tag {text!r}: expected '<policy>@<version>' or 'none'")
    if not version.isdigit() or int(version) < 1 or len(version) > 18:
        raise ValueError(f"bad policy tag {text!r}: version must be an integer >= 1")
    return name, int(version)


def is_policy_name(name: object) -> bool:
    """True for a valid policy name (``[a-z0-9][a-z0-9._-]{0,63}``)."""
    return isinstance(name, str) and bool(_POLICY_NAME.match(name))


# --------------------------------------------------------------------------- paths, times, targets


def _check_path(path: str) -> str | None:
    """Why ``path`` is not a safe relative posix path, or None when it is."""
    if not isinstance(path, str) or not path:
        return "empty path"
    if len(path) > MAX_PATH:
        return f"path longer than {MAX_PATH} characters"
    if "\x00" in path:
        return "NUL in path"
    if "\\" in path:
        return "backslash in path"
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return "absolute path"
    parts = path.split("/")
    if any(part == "" for part in parts):
        return "empty path component"
    if any(part in (".", "..") for part in parts):
        return "'.' or '..' component"
    return None


def _finite_time(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of Unix seconds, got {value!r}")
    return value


def _check_target(target: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(target, Mapping) or set(target) - {"labels"}:
        raise ValueError(f"target must be {{}} or {{'labels': {{...}}}}, got {target!r}")
    if "labels" not in target:
        return {}
    labels = target["labels"]
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in labels.items()
    ):
        raise ValueError(f"target.labels must map label names to strings, got {labels!r}")
    return {"labels": dict(labels)}
