"""Throwaway certificate authorities for TLS tests, made with the ``openssl`` command.

:func:`make_pki` writes, into one folder: a CA, a second unrelated CA, a server
certificate for 127.0.0.1/localhost (valid, and one that expired yesterday), and a
client certificate, each signed by the first CA. EC P-256 keys: fast to make.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_SERVER_EXT = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
_CLIENT_EXT = "extendedKeyUsage=clientAuth\n"


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files :func:`make_pki` wrote."""

    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    expired_cert: Path
    expired_key: Path
    client_cert: Path
    client_key: Path
    folder: Path

    def server_pair(self, name: str) -> tuple[Path, Path]:
        """A further server certificate and key (``name.pem``/``name.key``) from the CA."""
        return _leaf(self.folder, name, self.folder / "ca", _SERVER_EXT, days=1)

    def client_context(self, *, client: bool = False) -> ssl.SSLContext:
        """A client context trusting :attr:`ca` (with the client certificate if asked)."""
        context = ssl.create_default_context(cafile=self.ca)
        if client:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


def _openssl(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run(
        ["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def _ca(folder: Path, name: str) -> Path:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=vigil test {name}",
        "-days", "2", cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.pem"


def _leaf(folder: Path, name: str, ca: Path, ext: str, *, days: int) -> tuple[Path, Path]:
    """Key and certificate ``name`` signed by CA ``ca`` (its .pem/.key); ``days`` may be
    negative (``-1``: expired since yesterday)."""
    (folder / f"{name}.ext").write_text(ext)
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", ca.with_suffix(".pem"),
        "-CAkey", ca.with_suffix(".key"), "-CAcreateserial", "-out", f"{name}.pem",
        "-days", str(days), "-extfile", f"{name}.ext", cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.pem", folder / f"{name}.key"


def make_pki(folder: Path) -> Pki:
    """Write the test PKI into ``folder`` (skips the test when ``openssl`` is missing)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca")
    other = _ca(folder, "other-ca")
    server_cert, server_key = _leaf(folder, "server", folder / "ca", _SERVER_EXT, days=1)
    expired, expired_key = _leaf(folder, "expired", folder / "ca", _SERVER_EXT, days=-1)
    client_cert, client_key = _leaf(folder, "client", folder / "ca", _CLIENT_EXT, days=1)
    return Pki(
        ca, other, server_cert, server_key, expired, expired_key, client_cert, client_key, folder
    )
