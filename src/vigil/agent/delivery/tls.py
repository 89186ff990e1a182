"""The agent's TLS client context for an ``https://`` collector.

Certificate chain and host name are always verified. The trusted CAs are the system's
(and ``SSL_CERT_FILE``), or only ``collector.ca_file`` when it is set: a private CA then
needs no change to the machine's trust store, and no public CA can impersonate the
collector. ``collector.client_cert_file`` / ``client_key_file`` present a client
certificate, for a collector that requires mutual TLS (``listen.tls.client_ca_file``).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vigil.agent.config import CollectorTarget


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


def tls_problem(target: CollectorTarget) -> tuple[str, str] | None:
    """What is wrong with ``target``'s TLS files, as ``(key, message)`` for the config
    error, or None: each must exist and load, a client key needs its certificate, and
    they only make sense for an ``https://`` URL."""
    names = ("ca_file", "client_cert_file", "client_key_file")
    given = [n for n in names if getattr(target, n) is not None]
    if not given:
        return None
    if not target.url.startswith("https://"):
        return given[0], "needs an https:// collector url"
    if target.client_key_file is not None and target.client_cert_file is None:
        return "client_key_file", "needs client_cert_file as well"
    for name in given:
        if not getattr(target, name).is_file():
            return name, "no such file"
    try:
        client_context(target.ca_file, target.client_cert_file, target.client_key_file)
    except (OSError, ssl.SSLError) as exc:
        return given[0], f"cannot load: {exc}"
    return None
