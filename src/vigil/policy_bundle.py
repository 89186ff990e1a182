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
runs); it imports only the standard library (``json``: the agent never loads orjson) and,
lazily, inside the functions that need them, ``cryptography`` (Ed25519) and
:mod:`vigil.policy_build` (only :func:`build` reads YAML), so ``import vigil.policy_bundle``
stays cheap on a laptop.

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
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vigil.policy_format import (
    _CONFIG_KEYS,
    _KEY_ID,
    _LEADING_VERSION,
    _MANIFEST_KEYS,
    _REMEDIATION_KEYS,
    _SHA256,
    _VERSION,
    EXTENSION,
    FORMAT,
    MAX_DOCUMENT,
    MAX_FILES,
    MAX_PATH,
    MAX_SIGNATURES,
    MEDIA_TYPE,
    NO_POLICY,
    POLICY_FILE,
    REASONS,
    REMEDIATIONS_DIR,
    BundleError,
    PolicySourceError,
    VerifiedBundle,
    _check_path,
    _check_target,
    _finite_time,
    is_policy_name,
    parse_policy_tag,
    policy_tag,
)
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

__all__ = [  # the public API, including what it re-exports from policy_format/policy_keys
    "EXTENSION",
    "FORMAT",
    "KEY_PREFIX",
    "MAX_DOCUMENT",
    "MAX_FILES",
    "MAX_PATH",
    "MAX_SIGNATURES",
    "MEDIA_TYPE",
    "NO_POLICY",
    "POLICY_FILE",
    "REASONS",
    "REMEDIATIONS_DIR",
    "BundleError",
    "PolicySourceError",
    "VerifiedBundle",
    "build",
    "check_public_key",
    "generate_keypair",
    "is_policy_name",
    "key_id",
    "matches_target",
    "pack",
    "parse_policy_tag",
    "policy_tag",
    "public_key_text",
    "sign",
    "trusted_key_map",
    "verify",
    "version_tuple",
    "write_private_key",
]


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
    """Build a manifest from a policy source folder: ``(manifest bytes, files)``. The
    facade of :func:`vigil.policy_build.build_manifest`, which documents the folder and
    the errors; loaded on first use, as it imports YAML (an admin's offline step)."""
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
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


# --------------------------------------------------------------------------- verify


def trusted_key_map(trusted: Mapping[str, str] | Iterable[str]) -> dict[str, bytes]:
    """key id -> raw public key, from a mapping (id -> text) or texts; malformed keys are
    :class:`ValueError` (a config error, not a bundle error)."""
    texts = trusted.values() if isinstance(trusted, Mapping) else trusted
    return {key_id(text): _raw_public(text.strip()) for text in texts}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads(raw: bytes) -> Any:
    """Strict JSON: the standard library's parser (the agent never imports orjson: it
    keeps the agent's footprint small), refusing NaN and Infinity."""
    return json.loads(raw, parse_constant=_no_constant)


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
        doc = _loads(document)
    except ValueError as exc:  # JSONDecodeError, a bad encoding, NaN/Infinity
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
        data = _loads(manifest)
    except ValueError as exc:
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
