"""Ed25519 keys for signed policy bundles (:mod:`vigil.policy_bundle`).

Public keys travel as text, ``"ed25519:<base64 of the 32 raw bytes>"``; a key's id is the
first 16 hex characters of sha256(raw public key). Private keys are PKCS#8 PEM, plain or
encrypted with a passphrase, written 0600. ``cryptography`` is imported lazily, inside the
functions that need it, so importing this module stays cheap for the agent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Any

KEY_PREFIX = "ed25519:"


def _raw_public(text: str) -> bytes:
    """The 32 raw bytes of a public key in text form; ValueError when malformed."""
    if not isinstance(text, str) or not text.startswith(KEY_PREFIX):
        raise ValueError(f"public key must start with {KEY_PREFIX!r}, got {str(text)[:40]!r}")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX) :].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"public key {text[:60]!r} is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"public key {text[:60]!r} is {len(raw)} bytes, expected 32")
    return raw


def check_public_key(text: str) -> str:
    """Validate a public key text (``ed25519:<base64 of 32 bytes>``) and return it
    normalised (no surrounding whitespace); :class:`ValueError` names the problem."""
    raw = _raw_public(text.strip() if isinstance(text, str) else text)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def key_id(public_text: str) -> str:
    """Key id: the first 16 hex characters of sha256(raw public key bytes)."""
    return hashlib.sha256(_raw_public(public_text.strip())).hexdigest()[:16]


def _passphrase(passphrase: bytes | str | None) -> bytes | None:
    if passphrase is None or passphrase == b"" or passphrase == "":
        return None
    return passphrase.encode() if isinstance(passphrase, str) else passphrase


def generate_keypair(passphrase: bytes | str | None = None) -> tuple[bytes, str]:
    """A new Ed25519 key pair: (private key as PKCS#8 PEM, public key text form).

    With ``passphrase`` the PEM is encrypted (best available PKCS#8 encryption).
    Write the private key with :func:`write_private_key` (mode 0600).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    secret = _passphrase(passphrase)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return pem, _public_text_of(key)


def _public_text_of(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def _load_private(private_pem: bytes, passphrase: bytes | str | None) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(private_pem, password=_passphrase(passphrase))
    except (ValueError, TypeError) as exc:
        # TypeError: encrypted without a passphrase, or a passphrase for a plain key.
        raise ValueError(f"cannot load the private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"the private key is {type(key).__name__}, expected Ed25519")
    return key


def public_key_text(private_pem: bytes, passphrase: bytes | str | None = None) -> str:
    """The public key text form (``ed25519:<base64>``) of a PKCS#8 PEM private key.
    :class:`ValueError` when the PEM is not an Ed25519 key or the passphrase is wrong."""
    return _public_text_of(_load_private(private_pem, passphrase))


def write_private_key(path: Path, private_pem: bytes) -> None:
    """Write a private key file created with mode 0600; refuses to overwrite an existing
    file (:class:`FileExistsError`), so a keygen never destroys a key in use."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
        handle.flush()
        os.fsync(handle.fileno())
