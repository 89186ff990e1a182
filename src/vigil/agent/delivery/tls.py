"""The agent's TLS client context for an ``https://`` collector.

Certificate chain and host name are always verified. The trusted CAs are the system's
(and ``SSL_CERT_FILE``), or only ``collector.ca_file`` when it is set: a private CA then
needs no change to the machine's trust store, and no public CA can impersonate the
collector. ``collector.client_cert_file`` / ``client_key_file`` present a client
certificate, for a collector that requires mutual TLS (``listen.tls.client_ca_file``).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path


def client_context(
    ca_file: Path | None = None,
    client_cert_file: Path | None = None,
    client_key_file: Path | None = None,
) -> ssl.SSLContext:
    """A verifying client context (TLS 1.2 or later) for the collector.

    Raises ``OSError`` (a missing or unreadable file) or ``ssl.SSLError`` (not PEM, a key
    that does not match its certificate).
    """
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_cert_file is not None:
        context.load_cert_chain(client_cert_file, client_key_file)
    return context


def tls_problem(url: str, files: Mapping[str, Path | None]) -> tuple[str, str] | None:
    """What is wrong with the collector's TLS files, as ``(key, message)`` for the config
    error, or None. ``files`` maps ``ca_file``, ``client_cert_file`` and
    ``client_key_file`` to their paths (None when not set): each must exist and load, a
    client key needs its certificate, and they only make sense for an ``https://`` url."""
    given = [name for name, path in files.items() if path is not None]
    if not given:
        return None
    if not url.startswith("https://"):
        return given[0], "needs an https:// collector url"
    ca_file = files.get("ca_file")
    cert_file, key_file = files.get("client_cert_file"), files.get("client_key_file")
    if key_file is not None and cert_file is None:
        return "client_key_file", "needs client_cert_file as well"
    for name in given:
        path = files[name]
        if path is not None and not path.is_file():
            return name, "no such file"
    try:
        client_context(ca_file, cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        return given[0], f"cannot load: {exc}"
    return None
