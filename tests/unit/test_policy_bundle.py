"""policy_bundle: keys, build, sign, pack and every verification failure, one reason each.

Tampering tests flip one byte of a script, of the manifest and of the signature, and
check that the bundle is refused with the right reason."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest

from vigil import policy_bundle as pb

NOW = 1_800_000_000.0
DAY = 86400.0
POLICY_YAML = """\
checks:
  - id: disk.root
    metric: disk.used_percent
    warning: 80
    critical: 90
remediation:
  enabled:
    disk-cleanup: {max_age_days: 7}
  schedule:
    disk-cleanup: {every: 15m}
"""


@pytest.fixture(scope="module")
def keypair() -> tuple[bytes, str]:
    return pb.generate_keypair()


@pytest.fixture(scope="module")
def other_keypair() -> tuple[bytes, str]:
    return pb.generate_keypair()


def make_source(root: Path) -> Path:
    (root / "remediations" / "disk-cleanup").mkdir(parents=True)
    (root / "policy.yaml").write_text(POLICY_YAML)
    (root / "remediations" / "disk-cleanup" / "remediation.yaml").write_text("id: disk-cleanup\n")
    (root / "remediations" / "disk-cleanup" / "fix.sh").write_bytes(b"#!/bin/sh\nexit 0\n")
    return root


def build(root: Path, **overrides: Any) -> tuple[bytes, dict[str, bytes]]:
    args: dict[str, Any] = {
        "policy": "finance",
        "version": 3,
        "expires_at": NOW + 30 * DAY,
        "min_agent_version": "0.1.0",
        "target": {"labels": {"department": "finance"}},
        "created_at": NOW - DAY,
    }
    args.update(overrides)
    return pb.build(root, **args)


@pytest.fixture
def signed(tmp_path: Path, keypair: tuple[bytes, str]) -> tuple[bytes, dict[str, bytes], dict]:
    manifest, files = build(make_source(tmp_path / "src"))
    return manifest, files, pb.sign(manifest, keypair[0])


def verify(document: bytes, public: str, **kw: Any) -> pb.VerifiedBundle:
    args: dict[str, Any] = {"now": NOW, "installed": None, "agent_version": "0.1.0"}
    args.update(kw)
    return pb.verify(document, [public], **args)


def reason_of(document: bytes, public: str, **kw: Any) -> str:
    with pytest.raises(pb.BundleError) as info:
        verify(document, public, **kw)
    assert info.value.reason in pb.REASONS
    return info.value.reason


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --------------------------------------------------------------------------- keys


def test_key_text_form_and_id(keypair: tuple[bytes, str]) -> None:
    pem, public = keypair
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.startswith("ed25519:")
    raw = base64.b64decode(public.removeprefix("ed25519:"))
    assert len(raw) == 32
    assert pb.key_id(public) == hashlib.sha256(raw).hexdigest()[:16]
    assert pb.public_key_text(pem) == public


def test_passphrase_protected_key_needs_its_passphrase() -> None:
    pem, public = pb.generate_keypair(passphrase="s3cret")
    assert b"ENCRYPTED" in pem
    assert pb.public_key_text(pem, "s3cret") == public
    with pytest.raises(ValueError, match="cannot load"):
        pb.public_key_text(pem)
    with pytest.raises(ValueError, match="cannot load"):
        pb.public_key_text(pem, "wrong")


@pytest.mark.parametrize(
    "text",
    ["ed25519:", "rsa:AAAA", "ed25519:!!!", "ed25519:" + base64.b64encode(b"x" * 31).decode()],
    ids=["empty", "wrong-prefix", "not-base64", "31-bytes"],
)
def test_malformed_public_key_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        pb.key_id(text)


def test_private_key_file_is_0600_and_never_overwritten(tmp_path: Path) -> None:
    pem, _ = pb.generate_keypair()
    path = tmp_path / "policy.key"
    pb.write_private_key(path, pem)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes() == pem
    with pytest.raises(FileExistsError):
        pb.write_private_key(path, b"other")
    assert path.read_bytes() == pem


# --------------------------------------------------------------------------- tags


@pytest.mark.parametrize(
    ("text", "expected"),
    [("finance@7", ("finance", 7)), ('"finance@7"', ("finance", 7)), ("none", None)],
)
def test_policy_tag_round_trip(text: str, expected: tuple[str, int] | None) -> None:
    assert pb.parse_policy_tag(text) == expected
    if expected:
        assert pb.policy_tag(*expected) == "finance@7"


@pytest.mark.parametrize("text", ["finance", "finance@0", "Finance@1", "@1", "x@1.5", "x@-1"])
def test_bad_policy_tag_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="bad policy tag"):
        pb.parse_policy_tag(text)


# --------------------------------------------------------------------------- build


def test_build_lists_every_remediation_file_with_hash_and_size(tmp_path: Path) -> None:
    manifest, files = build(make_source(tmp_path))
    data = orjson.loads(manifest)
    assert sorted(files) == [
        "remediations/disk-cleanup/fix.sh",
        "remediations/disk-cleanup/remediation.yaml",
    ]
    for path, content in files.items():
        assert data["files"][path] == {
            "sha256": hashlib.sha256(content).hexdigest(),
            "size": len(content),
        }
    assert data["config"]["remediation"]["schedule"] == {"disk-cleanup": {"every": "15m"}}
    assert data["config"]["checks"][0]["id"] == "disk.root"
    assert data["target"] == {"labels": {"department": "finance"}}
    assert list(data) == sorted(data)  # keys sorted when produced


def test_build_refuses_a_symlink(tmp_path: Path) -> None:
    root = make_source(tmp_path / "src")
    (tmp_path / "secret").write_text("x")
    (root / "remediations" / "disk-cleanup" / "link.sh").symlink_to(tmp_path / "secret")
    with pytest.raises(pb.PolicySourceError, match="symlink"):
        build(root)


def test_build_refuses_unknown_policy_yaml_key(tmp_path: Path) -> None:
    root = make_source(tmp_path)
    (root / "policy.yaml").write_text("checks: []\nsampler: {}\n")
    with pytest.raises(pb.PolicySourceError, match=r"policy\.yaml: unknown key 'sampler'"):
        build(root)


@pytest.mark.parametrize(
    "override",
    [
        {"policy": "Finance"},
        {"version": 0},
        {"min_agent_version": "1.x"},
        {"expires_at": NOW - 2 * DAY},
    ],
    ids=["bad-name", "version-0", "bad-min-version", "expires-before-created"],
)
def test_build_refuses_bad_arguments(tmp_path: Path, override: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build(make_source(tmp_path), **override)


# --------------------------------------------------------------------------- verify


def test_a_good_bundle_verifies(signed: tuple, keypair: tuple[bytes, str]) -> None:
    manifest, files, sig = signed
    bundle = verify(pb.pack(manifest, [sig], files), keypair[1])
    assert (bundle.policy, bundle.version, bundle.tag) == ("finance", 3, "finance@3")
    assert bundle.files == files
    assert bundle.manifest_bytes == manifest
    assert bundle.key_id == pb.key_id(keypair[1])
    assert bundle.config["remediation"]["enabled"] == {"disk-cleanup": {"max_age_days": 7}}
    assert bundle.expires_at == NOW + 30 * DAY


def test_trusted_keys_as_a_mapping(signed: tuple, keypair: tuple[bytes, str]) -> None:
    manifest, files, sig = signed
    doc = pb.pack(manifest, [sig], files)
    trusted = {pb.key_id(keypair[1]): keypair[1]}
    assert pb.verify(doc, trusted, now=NOW, installed=None, agent_version="1").version == 3


def test_one_byte_flipped_in_a_script_is_a_hash_mismatch(
    signed: tuple, keypair: tuple[bytes, str]
) -> None:
    manifest, files, sig = signed
    path = "remediations/disk-cleanup/fix.sh"
    tampered = dict(files, **{path: flip(files[path], 10)})
    assert reason_of(pb.pack(manifest, [sig], tampered), keypair[1]) == "hash_mismatch"


def test_one_byte_flipped_in_the_manifest_is_a_bad_signature(
    signed: tuple, keypair: tuple[bytes, str]
) -> None:
    manifest, files, sig = signed
    index = manifest.index(b'"version":3') + len(b'"version":')
    tampered = flip(manifest, index)  # "3" -> "2": still valid JSON, different bytes
    assert tampered != manifest
    assert reason_of(pb.pack(tampered, [sig], files), keypair[1]) == "bad_signature"


def test_one_byte_flipped_in_the_signature_is_a_bad_signature(
    signed: tuple, keypair: tuple[bytes, str]
) -> None:
    manifest, files, sig = signed
    raw = base64.b64decode(sig["sig"])
    bad = {"key_id": sig["key_id"], "sig": base64.b64encode(flip(raw, 5)).decode()}
    assert reason_of(pb.pack(manifest, [bad], files), keypair[1]) == "bad_signature"


def test_signed_by_another_key_is_unknown_key(
    signed: tuple, keypair: tuple[bytes, str], other_keypair: tuple[bytes, str]
) -> None:
    manifest, files, _ = signed
    doc = pb.pack(manifest, [pb.sign(manifest, other_keypair[0])], files)
    assert reason_of(doc, keypair[1]) == "unknown_key"


def test_claiming_a_trusted_key_id_with_another_key_is_a_bad_signature(
    signed: tuple, keypair: tuple[bytes, str], other_keypair: tuple[bytes, str]
) -> None:
    manifest, files, _ = signed
    forged = dict(pb.sign(manifest, other_keypair[0]), key_id=pb.key_id(keypair[1]))
    assert reason_of(pb.pack(manifest, [forged], files), keypair[1]) == "bad_signature"


def test_one_bad_trusted_signature_fails_even_beside_a_good_one(
    signed: tuple, keypair: tuple[bytes, str], other_keypair: tuple[bytes, str]
) -> None:
    manifest, files, sig = signed
    forged = dict(pb.sign(manifest, keypair[0]), sig=pb.sign(b"other", keypair[0])["sig"])
    doc = pb.pack(manifest, [sig, forged], files)
    assert reason_of(doc, keypair[1]) == "bad_signature"


def test_an_untrusted_extra_signature_is_ignored(
    signed: tuple, keypair: tuple[bytes, str], other_keypair: tuple[bytes, str]
) -> None:
    manifest, files, sig = signed
    doc = pb.pack(manifest, [pb.sign(manifest, other_keypair[0]), sig], files)
    assert verify(doc, keypair[1]).key_id == pb.key_id(keypair[1])


def test_unsigned(signed: tuple, keypair: tuple[bytes, str]) -> None:
    manifest, files, _ = signed
    assert reason_of(pb.pack(manifest, [], files), keypair[1]) == "unsigned"


def test_expired(signed: tuple, keypair: tuple[bytes, str]) -> None:
    manifest, files, sig = signed
    doc = pb.pack(manifest, [sig], files)
    assert reason_of(doc, keypair[1], now=NOW + 31 * DAY) == "expired"


@pytest.mark.parametrize("installed", [3, 4], ids=["same-version", "older-version"])
def test_downgrade(signed: tuple, keypair: tuple[bytes, str], installed: int) -> None:
    manifest, files, sig = signed
    doc = pb.pack(manifest, [sig], files)
    assert reason_of(doc, keypair[1], installed=("finance", installed)) == "downgrade"


def test_another_policy_installed_is_not_a_downgrade(
    signed: tuple, keypair: tuple[bytes, str]
) -> None:
    manifest, files, sig = signed
    doc = pb.pack(manifest, [sig], files)
    assert verify(doc, keypair[1], installed=("engineering", 9)).version == 3
    assert verify(doc, keypair[1], installed=("finance", 2)).version == 3


@pytest.mark.parametrize(
    ("agent", "ok"),
    [("0.9.9", False), ("1.2", True), ("1.2.0", True), ("1.10.0", True), ("1.2.0rc1", True)],
)
def test_agent_version_compared_numerically(
    tmp_path: Path, keypair: tuple[bytes, str], agent: str, ok: bool
) -> None:
    manifest, files = build(make_source(tmp_path), min_agent_version="1.2.0")
    doc = pb.pack(manifest, [pb.sign(manifest, keypair[0])], files)
    if ok:
        assert verify(doc, keypair[1], agent_version=agent).version == 3
    else:
        assert reason_of(doc, keypair[1], agent_version=agent) == "agent_too_old"


def _resign(manifest_obj: dict, files: dict[str, bytes], pem: bytes) -> bytes:
    manifest = orjson.dumps(manifest_obj, option=orjson.OPT_SORT_KEYS)
    return pb.pack(manifest, [pb.sign(manifest, pem)], files)


def test_file_missing_from_the_bundle(signed: tuple, keypair: tuple[bytes, str]) -> None:
    manifest, files, sig = signed
    partial = {k: v for k, v in files.items() if not k.endswith("fix.sh")}
    assert reason_of(pb.pack(manifest, [sig], partial), keypair[1]) == "missing_file"


def test_file_not_in_the_manifest(signed: tuple, keypair: tuple[bytes, str]) -> None:
    manifest, files, sig = signed
    more = dict(files, **{"remediations/disk-cleanup/evil.sh": b"rm -rf /"})
    assert reason_of(pb.pack(manifest, [sig], more), keypair[1]) == "extra_file"


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "remediations/../../x", "remediations\\x", "remediations//x", "a\x00b", "C:/x"],
    ids=["absolute", "dotdot", "backslash", "empty-part", "nul", "drive"],
)
def test_unsafe_path_even_when_signed(signed: tuple, keypair: tuple[bytes, str], path: str) -> None:
    """A signed manifest naming an unsafe path is still refused (the signer is not trusted
    to be careful about paths)."""
    manifest, files, _ = signed
    data = orjson.loads(manifest)
    content = b"x"
    data["files"][path] = {"sha256": hashlib.sha256(content).hexdigest(), "size": 1}
    doc = _resign(data, dict(files, **{path: content}), keypair[0])
    assert reason_of(doc, keypair[1]) == "unsafe_path"


@pytest.mark.parametrize(
    "document",
    [
        b"not json",
        b"[]",
        orjson.dumps({"format": "vigil-policy/2", "manifest": "{}", "signatures": [], "files": {}}),
        orjson.dumps({"format": "vigil-policy/1", "manifest": "{}", "signatures": []}),
        orjson.dumps(
            {"format": "vigil-policy/1", "manifest": "{}", "signatures": [], "files": {"a": "!"}}
        ),
        orjson.dumps(
            {
                "format": "vigil-policy/1",
                "manifest": "{}",
                "signatures": [{"key_id": "xyz", "sig": ""}],
                "files": {},
            }
        ),
    ],
    ids=["not-json", "array", "format-2", "no-files", "bad-base64", "bad-key-id"],
)
def test_malformed_documents(document: bytes, keypair: tuple[bytes, str]) -> None:
    assert reason_of(document, keypair[1]) == "malformed"


def test_too_many_files_is_malformed(keypair: tuple[bytes, str]) -> None:
    files = {f"remediations/x/{i}": b"" for i in range(pb.MAX_FILES + 1)}
    assert reason_of(pb.pack(b"{}", [], files), keypair[1]) == "malformed"


def test_oversized_document_is_malformed_before_parsing(keypair: tuple[bytes, str]) -> None:
    assert reason_of(b" " * (pb.MAX_DOCUMENT + 1), keypair[1]) == "malformed"


def test_signed_but_invalid_manifest_is_malformed(
    signed: tuple, keypair: tuple[bytes, str]
) -> None:
    manifest, files, _ = signed
    data = orjson.loads(manifest)
    data["surprise"] = 1
    with pytest.raises(pb.BundleError, match="unknown keys \\['surprise'\\]") as info:
        verify(_resign(data, files, keypair[0]), keypair[1])
    assert info.value.reason == "malformed"


def test_a_bad_trusted_key_is_a_config_error(signed: tuple) -> None:
    manifest, files, sig = signed
    with pytest.raises(ValueError, match="ed25519"):
        verify(pb.pack(manifest, [sig], files), "rsa:nope")


@pytest.mark.parametrize(
    ("target", "labels", "expected"),
    [
        ({}, {}, True),
        ({"labels": {"department": "finance"}}, {"department": "finance", "site": "x"}, True),
        ({"labels": {"department": "finance"}}, {"department": "sales"}, False),
        ({"labels": {"department": "finance"}}, {}, False),
    ],
)
def test_matches_target(target: dict, labels: dict, expected: bool) -> None:
    assert pb.matches_target(target, labels) is expected


def test_import_does_not_load_cryptography_orjson_or_yaml() -> None:
    """The agent imports the module at start; cryptography loads only when verifying, and
    neither orjson nor YAML ever for verifying."""
    import subprocess
    import sys

    code = (
        "import sys, vigil.policy_bundle\n"
        "print(sorted(m for m in ('cryptography', 'orjson', 'yaml') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_nan_in_a_signed_manifest_is_malformed(signed: tuple, keypair: tuple[bytes, str]) -> None:
    manifest, files, _ = signed
    bad = manifest.replace(b'"version":3', b'"version":NaN')
    doc = pb.pack(bad, [pb.sign(bad, keypair[0])], files)
    assert reason_of(doc, keypair[1]) == "malformed"
