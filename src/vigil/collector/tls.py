"""Native TLS on the collector's listener: the server context, mutual TLS, and reloading
the certificate on SIGHUP without closing the listening socket.

``listen.tls.cert_file`` / ``key_file`` (PEM; the certificate file may hold the chain)
turn TLS on. ``client_ca_file`` additionally requires every client to present a
certificate signed by that CA (mutual TLS): agents then authenticate with their client
certificate on top of their token, and operators' tools need a client certificate too.

A reload (:func:`reload_context`) loads the files again into the *same* context, so the
listener stays open and connections already established keep their session; every new
handshake gets the new certificate. A reload that fails (a half-written file, a key that
does not match) keeps the previous certificate and says why.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``listen.tls``: PEM files, already resolved against the config file's folder."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


def create_server_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context for ``tls``: TLS 1.2 or later, the certificate and key loaded, and
    client certificates required when ``client_ca_file`` is set.

    Raises ``OSError`` (a missing or unreadable file) or ``ssl.SSLError`` (not PEM, key
    does not match the certificate).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, tls)
    return context


def reload_context(context: ssl.SSLContext, tls: TlsConfig) -> bool:
    """Load ``tls``'s files again into ``context`` (new handshakes use them); True if it
    worked. On failure the context keeps what it had, and the error is logged.

    Loading into a scratch context first means a bad file never leaves ``context``
    half-changed. A reloaded client CA is added to the CAs already trusted (OpenSSL
    cannot remove one from a live context): to stop trusting a CA, restart.
    """
    try:
        create_server_context(tls)  # validate first
        _load(context, tls)
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS reload failed, keeping the previous certificate: %s", exc)
        return False
    log.info("TLS certificate reloaded from %s", tls.cert_file)
    return True


def _load(context: ssl.SSLContext, tls: TlsConfig) -> None:
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
