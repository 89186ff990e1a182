"""``vigil-agent enroll``: exchange an enrollment secret for this agent's own credential.

``vigil-agent [--config F] enroll --collector URL --secret-file FILE [--replace | --new-id]``
posts the secret, this agent's id and hostname to ``URL/api/v1/enroll`` and stores the
credential in ``<state_dir>/credential.json`` (mode 0600); a running agent picks it up on
its next report. ``--replace``: this machine was re-imaged and keeps its id, so its old
credential is replaced. ``--new-id``: this machine is a clone carrying another's id; it
gets a fresh id first (stop the agent before, since it reports under the old id).

Over ``https://`` the collector is verified exactly as the running agent verifies it:
``collector.ca_file`` (else the system's CAs), and ``collector.client_cert_file`` /
``client_key_file`` are presented to a collector that requires mutual TLS.

Exit status: 0 enrolled; 1 refused by the collector or unreachable; 2 bad usage/config.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vigil.agent.config import AgentConfig, load_agent_config
from vigil.agent.delivery.credential import CREDENTIAL_FILE, Credential, write_credential
from vigil.agent.delivery.tls import client_context
from vigil.agent.identity import load_identity, renew_agent_id, write_atomically
from vigil.agent.policy.settings import ENROLLED_KEYS_FILE
from vigil.configio import CONFIG_EXIT_CODE, ConfigError
from vigil.policy_bundle import check_public_key

ENROLL_PATH = "/api/v1/enroll"
# Bytes of the collector's answer read at most (a credential answer is ~200 bytes).
MAX_ANSWER_BYTES = 64 * 1024


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Add ``enroll`` to the agent's subcommands; ``parents`` carry the global options,
    accepted after the command too."""
    p = sub.add_parser(
        "enroll",
        parents=list(parents),
        help="exchange an enrollment secret for this agent's credential",
    )
    p.add_argument("--collector", help="collector base URL (default: collector.url)")
    p.add_argument("--secret-file", type=Path, required=True, help="file holding the secret")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--replace", action="store_true", help="re-imaged machine: replace its old credential"
    )
    mode.add_argument(
        "--new-id", action="store_true", help="cloned machine: take a new agent id first"
    )


def main(args: argparse.Namespace, config_path: Path) -> int:
    """Run ``vigil-agent enroll``; the exit status."""
    try:
        config = load_agent_config(config_path)
    except ConfigError as exc:
        print(f"vigil-agent: {exc}", file=sys.stderr)
        return CONFIG_EXIT_CODE
    try:
        secret = args.secret_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        print(f"vigil-agent: --secret-file {args.secret_file}: {exc.strerror}", file=sys.stderr)
        return CONFIG_EXIT_CODE
    if not secret or any(ch.isspace() for ch in secret):
        print(f"vigil-agent: --secret-file {args.secret_file}: no secret in it", file=sys.stderr)
        return CONFIG_EXIT_CODE
    url = (args.collector or config.collector.url).rstrip("/")
    if not url.startswith(("http://", "https://")):
        print(f"vigil-agent: --collector must be http(s)://..., got {url!r}", file=sys.stderr)
        return CONFIG_EXIT_CODE
    try:
        context = _tls_context(config, url)
    except (OSError, ssl.SSLError) as exc:
        print(f"vigil-agent: {config_path}: collector TLS files: {exc}", file=sys.stderr)
        return CONFIG_EXIT_CODE
    if args.new_id:
        renew_agent_id(config.state_dir)
    identity = load_identity(config.state_dir, hostname=config.hostname)
    request = {
        "secret": secret,
        "agent_id": identity.agent_id,
        "hostname": identity.hostname,
        "replace": bool(args.replace),
    }
    status, answer = _post(url + ENROLL_PATH, request, config.collector.timeout_s, context)
    if status != 201:
        print(
            f"vigil-agent: enrollment refused (HTTP {status}): {answer.get('error')}",
            file=sys.stderr,
        )
        if status == 409:
            print(
                "vigil-agent: if this machine was re-imaged, run again with --replace; "
                "if it is a clone of another machine, with --new-id",
                file=sys.stderr,
            )
        return 1
    try:
        credential = Credential(
            agent_id=identity.agent_id,
            token=str(answer["credential"]),
            issued_at=time.time(),
            expires_at=float(answer["expires_at"]),
        )
    except (KeyError, TypeError, ValueError):
        print(f"vigil-agent: unexpected answer from {url}: {answer!r:.200}", file=sys.stderr)
        return 1
    path = config.state_dir / CREDENTIAL_FILE
    write_credential(path, credential)
    keys = store_policy_keys(config.state_dir, answer.get("policy_keys"))
    print(
        f"enrolled agent {identity.agent_id} with labels {answer.get('labels', {})}; "
        f"credential stored in {path}" + (f"; {keys} policy key(s) trusted" if keys else "")
    )
    return 0


def store_policy_keys(state_dir: Path, offered: Any) -> int:
    """Store the policy keys the collector offered at enrollment (``policy_keys``) in
    ``<state_dir>/policy_keys.json``, so the agent trusts bundles they signed (besides
    ``policy.trusted_keys``); malformed keys are left out with a warning. Returns how
    many were stored; an answer without the field leaves any earlier file alone."""
    if not isinstance(offered, list):
        return 0
    keys: list[str] = []
    for text in offered:
        try:
            keys.append(check_public_key(str(text)))
        except ValueError as exc:
            print(f"vigil-agent: ignoring a malformed policy key: {exc}", file=sys.stderr)
    write_atomically(state_dir / ENROLLED_KEYS_FILE, json.dumps({"policy_keys": keys}))
    return len(keys)


def _tls_context(config: AgentConfig, url: str) -> ssl.SSLContext | None:
    """The running agent's TLS client context for an ``https://`` url (None for http)."""
    if not url.startswith("https://"):
        return None
    col = config.collector
    return client_context(col.ca_file, col.client_cert_file, col.client_key_file)


def _post(
    url: str, body: dict[str, Any], timeout_s: float, context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, Any]]:
    """POST JSON; ``(status, decoded answer)``, status 0 when the collector is unreachable
    (or cannot be verified: the answer's error says why)."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp:
            return resp.status, _decode(resp.read(MAX_ANSWER_BYTES))
    except urllib.error.HTTPError as exc:
        return exc.code, _decode(exc.read(MAX_ANSWER_BYTES))
    except (urllib.error.URLError, OSError) as exc:
        return 0, {"error": f"cannot reach {url}: {exc}"}


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError:
        return {"error": raw[:200].decode("utf-8", "replace")}
    return answer if isinstance(answer, dict) else {"error": str(answer)[:200]}
