"""Signed policy bundles (``vigil-policy/1``): build, sign, pack and verify.

A policy bundle carries what an admin publishes centrally for a group of hosts: checks,
remediation settings (enabled fixes with their parameters, schedules) and the remediation
folders themselves. One JSON document (media type :data:`MEDIA_TYPE`, extension ``.vpol``)::

    {"format": "vigil-policy/1",
     "manifest": "<manifest JSON as a string: these exact UTF-8 bytes are signed>",
     "signatures": [{"key_id": "<16 hex>", "sig": "<base64 Ed25519 signature>"}],
     "files": {"<relative posix path>": "<base64 of the file's bytes>"}}

The manifest lists the SHA-256 and size of every file, so one signature covers them all.
Both programs import this module (the collector verifies uploads, the agent verifies what it
runs); it imports only the standard library, :mod:`orjson`, and -- lazily, inside the
functions that need them -- ``cryptography`` (Ed25519) and ``yaml`` (only :func:`build`
reads a YAML file), so ``import vigil.policy_bundle`` stays cheap on a laptop.

:func:`verify` never trusts anything it has not checked: the envelope is parsed with
bounded sizes, the signature is checked over the manifest's exact bytes *before* the
manifest is parsed, and every file is hashed against the signed manifest. Its failures are
:class:`BundleError` with a stable ``reason`` (see :data:`REASONS`). ``docs/policy.md``
describes the format and the signing workflow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from vigil.policy_keys import (
    KEY_PREFIX,
    _load_private,
    _public_text_of,
    _raw_public,
    check_public_key,
    generate_keypair,
    key_id,
    public_key_text,
    write_private_key,
)

__all__ = [
    "KEY_PREFIX",
    "BundleError",
    "PolicySourceError",
    "VerifiedBundle",
    "build",
    "check_public_key",
    "generate_keypair",
    "key_id",
    "matches_target",
    "pack",
    "parse_policy_tag",
    "policy_tag",
    "public_key_text",
    "sign",
    "verify",
    "write_private_key",
]

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


# --------------------------------------------------------------------------- build


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


def build(
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
    validates the checks and remediations with its own loader before it applies them.
    ``created_at`` and ``expires_at`` are Unix seconds. The manifest's keys are sorted.
    Implemented in :mod:`vigil.policy_build` (loaded on first use: it imports YAML).
    """
    from vigil.policy_build import build_manifest

    return build_manifest(
        policy_dir,
        policy=policy,
        version=version,
        expires_at=expires_at,
        min_agent_version=min_agent_version,
        target=target,
        created_at=created_at,
    )


# --------------------------------------------------------------------------- sign/pack


def sign(manifest: bytes, private_pem: bytes, passphrase: bytes | str | None = None) -> dict:
    """One signature entry ``{"key_id", "sig"}`` over the manifest's exact bytes."""
    key = _load_private(private_pem, passphrase)
    signature = key.sign(bytes(manifest))
    return {"key_id": key_id(_public_text_of(key)), "sig": base64.b64encode(signature).decode()}


def pack(manifest: bytes, signatures: list[dict], files: Mapping[str, bytes]) -> bytes:
    """The bundle document (JSON bytes) from a manifest, its signatures and its files."""
    document = {
        "format": FORMAT,
        "manifest": bytes(manifest).decode("utf-8"),
        "signatures": [{"key_id": s["key_id"], "sig": s["sig"]} for s in signatures],
        "files": {path: base64.b64encode(data).decode() for path, data in sorted(files.items())},
    }
    return orjson.dumps(document)


# --------------------------------------------------------------------------- verify


def trusted_key_map(trusted: Mapping[str, str] | Iterable[str]) -> dict[str, bytes]:
    """key id -> raw public key, from a mapping (id -> text) or texts; malformed keys are
    :class:`ValueError` (a config error, not a bundle error)."""
    texts = trusted.values() if isinstance(trusted, Mapping) else trusted
    return {key_id(text): _raw_public(text.strip()) for text in texts}


def _malformed(message: str) -> BundleError:
    return BundleError("malformed", message)


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise _malformed(f"{where}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"{where}: not valid base64") from None


def _envelope(document: bytes) -> tuple[bytes, list[tuple[str, bytes]], dict[str, bytes]]:
    if len(document) > MAX_DOCUMENT:
        raise _malformed(f"document is {len(document)} bytes, at most {MAX_DOCUMENT}")
    try:
        doc = orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        raise _malformed(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _malformed("document: expected a JSON object")
    if set(doc) != {"format", "manifest", "signatures", "files"}:
        raise _malformed(
            f"document keys {sorted(doc)}, expected format, manifest, signatures, files"
        )
    if doc["format"] != FORMAT:
        raise _malformed(f"format: {str(doc['format'])[:40]!r}, expected {FORMAT!r}")
    if not isinstance(doc["manifest"], str):
        raise _malformed("manifest: expected a string")
    sigs = doc["signatures"]
    if not isinstance(sigs, list) or len(sigs) > MAX_SIGNATURES:
        raise _malformed(f"signatures: expected a list of at most {MAX_SIGNATURES}")
    signatures: list[tuple[str, bytes]] = []
    for i, entry in enumerate(sigs):
        if not isinstance(entry, dict) or set(entry) != {"key_id", "sig"}:
            raise _malformed(f"signatures[{i}]: expected {{key_id, sig}}")
        if not isinstance(entry["key_id"], str) or not _KEY_ID.match(entry["key_id"]):
            raise _malformed(f"signatures[{i}].key_id: expected 16 hex characters")
        signatures.append((entry["key_id"], _b64(entry["sig"], f"signatures[{i}].sig")))
    raw_files = doc["files"]
    if not isinstance(raw_files, dict):
        raise _malformed("files: expected an object")
    if len(raw_files) > MAX_FILES:
        raise _malformed(f"files: {len(raw_files)} entries, at most {MAX_FILES}")
    files: dict[str, bytes] = {}
    for path, value in raw_files.items():
        if len(path) > MAX_PATH:
            raise _malformed(f"files: path {path[:60]!r}... longer than {MAX_PATH}")
        files[path] = _b64(value, f"files[{path!r}]")
    return doc["manifest"].encode("utf-8"), signatures, files


def _check_signatures(
    manifest: bytes, signatures: list[tuple[str, bytes]], trusted: dict[str, bytes]
) -> str:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not signatures:
        raise BundleError("unsigned", "the bundle carries no signature")
    ours = [(kid, sig) for kid, sig in signatures if kid in trusted]
    if not ours:
        ids = ", ".join(kid for kid, _ in signatures)
        raise BundleError("unknown_key", f"signed only by untrusted key(s) {ids}")
    # Every signature by a trusted key must verify: one that does not means the manifest
    # or the signature was altered, whatever the other signatures say.
    for kid, sig in ours:
        try:
            Ed25519PublicKey.from_public_bytes(trusted[kid]).verify(sig, manifest)
        except InvalidSignature:
            raise BundleError(
                "bad_signature", f"the signature by key {kid} does not match the manifest"
            ) from None
    return ours[0][0]


def _parse_manifest(manifest: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(manifest)
    except orjson.JSONDecodeError as exc:
        raise _malformed(f"manifest: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _malformed("manifest: expected a JSON object")
    if set(data) != _MANIFEST_KEYS:
        missing = sorted(_MANIFEST_KEYS - set(data))
        extra = sorted(set(data) - _MANIFEST_KEYS)
        raise _malformed(f"manifest: missing keys {missing}, unknown keys {extra}")
    if not is_policy_name(data["policy"]):
        raise _malformed(f"manifest.policy: bad name {str(data['policy'])[:70]!r}")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _malformed(f"manifest.version: expected an integer >= 1, got {version!r}")
    for name in ("created_at", "expires_at"):
        try:
            _finite_time(data[name], f"manifest.{name}")
        except ValueError as exc:
            raise _malformed(str(exc)) from None
    mav = data["min_agent_version"]
    if not isinstance(mav, str) or not _VERSION.match(mav):
        raise _malformed(f"manifest.min_agent_version: expected dotted integers, got {mav!r}")
    try:
        data["target"] = _check_target(data["target"])
    except ValueError as exc:
        raise _malformed(f"manifest.{exc}") from None
    config = data["config"]
    if (
        not isinstance(config, dict)
        or set(config) != _CONFIG_KEYS
        or not isinstance(config["checks"], list)
        or not isinstance(config["remediation"], dict)
        or not set(config["remediation"]) <= _REMEDIATION_KEYS
        or not all(isinstance(v, dict) for v in config["remediation"].values())
    ):
        raise _malformed("manifest.config: expected {checks: [...], remediation: {...}}")
    entries = data["files"]
    if not isinstance(entries, dict) or len(entries) > MAX_FILES:
        raise _malformed(f"manifest.files: expected an object of at most {MAX_FILES}")
    for path, entry in entries.items():
        if (
            not isinstance(entry, dict)
            or set(entry) != {"sha256", "size"}
            or not isinstance(entry["sha256"], str)
            or not _SHA256.match(entry["sha256"])
            or isinstance(entry["size"], bool)
            or not isinstance(entry["size"], int)
            or entry["size"] < 0
        ):
            raise _malformed(f"manifest.files[{path[:60]!r}]: expected {{sha256, size}}")
    return data


def version_tuple(text: str) -> tuple[int, ...]:
    """Leading dotted integers of a version string (``"0.1.0rc1"`` -> ``(0, 1, 0)``),
    compared numerically; ``()`` when it starts with none."""
    match = _LEADING_VERSION.match(text.strip())
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def _pad(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def verify(
    document: bytes,
    trusted: Mapping[str, str] | Iterable[str],
    *,
    now: float,
    installed: tuple[str, int] | None,
    agent_version: str,
) -> VerifiedBundle:
    """Verify a bundle document completely; :class:`BundleError` on the first failure.

    Checks, in this order: the envelope (``malformed``: not the format, or over the size
    bounds), ``unsigned``, ``unknown_key`` (no signature by a key in ``trusted``, a mapping
    id -> public text or an iterable of public texts), ``bad_signature`` (any trusted
    key's signature fails over the manifest's exact bytes); only then is the manifest
    parsed (a signed but invalid manifest is ``malformed``), then ``unsafe_path``
    (absolute, ``..``, backslash, empty part, NUL; in the manifest or the document),
    ``missing_file``/``hash_mismatch`` (per manifest entry, sorted by path),
    ``extra_file`` (a file the manifest does not list), ``expired`` (``now`` >
    ``expires_at``, Unix seconds), ``downgrade`` (``installed`` is ``(policy, version)``
    of the running bundle: same name and version not greater), ``agent_too_old``
    (``agent_version`` below ``min_agent_version``, numeric dotted comparison).
    A malformed key in ``trusted`` raises :class:`ValueError` (a configuration error).
    """
    keys = trusted_key_map(trusted)
    manifest, signatures, files = _envelope(bytes(document))
    signer = _check_signatures(manifest, signatures, keys)
    data = _parse_manifest(manifest)
    entries: dict[str, dict[str, Any]] = data["files"]
    for path in (*entries, *files):
        problem = _check_path(path)
        if problem:
            raise BundleError("unsafe_path", f"{path[:80]!r}: {problem}")
    for path in sorted(entries):
        entry = entries[path]
        if path not in files:
            raise BundleError("missing_file", f"{path!r} is in the manifest but not the bundle")
        data_bytes = files[path]
        digest = hashlib.sha256(data_bytes).hexdigest()
        if len(data_bytes) != entry["size"] or digest != entry["sha256"]:
            raise BundleError(
                "hash_mismatch",
                f"{path!r}: sha256 {digest[:16]}... ({len(data_bytes)} bytes), "
                f"manifest says {entry['sha256'][:16]}... ({entry['size']} bytes)",
            )
    extra = sorted(set(files) - set(entries))
    if extra:
        raise BundleError("extra_file", f"{extra[0]!r} is in the bundle but not the manifest")
    policy, version = data["policy"], data["version"]
    if now > data["expires_at"]:
        raise BundleError(
            "expired", f"policy {policy} version {version} expired at {data['expires_at']}"
        )
    if installed is not None and installed[0] == policy and version <= installed[1]:
        raise BundleError(
            "downgrade",
            f"policy {policy} version {version} is not newer than the installed {installed[1]}",
        )
    have, need = _pad(version_tuple(agent_version), version_tuple(data["min_agent_version"]))
    if have < need:
        raise BundleError(
            "agent_too_old",
            f"policy {policy} version {version} needs agent {data['min_agent_version']}, "
            f"this is {agent_version}",
        )
    return VerifiedBundle(
        policy=policy,
        version=version,
        created_at=float(data["created_at"]),
        expires_at=float(data["expires_at"]),
        target=data["target"],
        config=data["config"],
        files=files,
        manifest_bytes=manifest,
        key_id=signer,
    )


def matches_target(target: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """True when a host with ``labels`` is in ``target`` (``{}`` matches every host;
    ``{"labels": {k: v}}`` needs every pair present with an equal value)."""
    wanted = target.get("labels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())
