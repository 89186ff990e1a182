"""``vigil-collector enroll-secret ...`` and ``vigil-collector agent ...``: manage
enrollment secrets and per-agent credentials on the configured storage.

These commands open the database themselves (they may run while the collector runs;
a running collector picks the change up within ``REFRESH_INTERVAL_S``):

* ``enroll-secret create --label K=V ... [--uses N] [--expires 7d] [--comment T]
  [--out FILE]``: prints the secret once (or writes it to FILE, mode 0600) and its id;
* ``enroll-secret list``; ``enroll-secret revoke ID`` (also revokes every credential
  issued through it);
* ``agent list``; ``agent revoke AGENT_ID``.

Exit status: 0 done; 1 no such secret or agent, or the storage cannot be opened;
2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from vigil.collector.config import CollectorConfig
from vigil.collector.identity import enrollment
from vigil.collector.identity.audit import LOCAL_PEER, cli_actor
from vigil.collector.storage.factory import create_storage
from vigil.collector.storage.protocols import Storage
from vigil.collector.storage.records import StorageError
from vigil.configio import ConfigError, parse_duration

DEFAULT_SECRET_TTL_S = 7 * 86400.0
DEFAULT_SECRET_USES = 1
_LABEL = re.compile(r"([A-Za-z0-9_.\-]{1,64})=(.{1,256})")
COMMANDS = ("enroll-secret", "agent")


def add_parsers(parser: argparse.ArgumentParser) -> None:
    """Add the ``enroll-secret`` and ``agent`` subcommands to the collector's parser."""
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    secret = sub.add_parser("enroll-secret", help="create, list or revoke enrollment secrets")
    secret_sub = secret.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = secret_sub.add_parser("create", help="create a secret (printed once)")
    create.add_argument(
        "--label",
        action="append",
        default=[],
        type=_label,
        metavar="KEY=VALUE",
        help="a routing label the enrolled agents get (group, department...); repeatable",
    )
    create.add_argument(
        "--uses", type=_positive, default=DEFAULT_SECRET_USES, help="enrollments allowed"
    )
    create.add_argument(
        "--expires", type=_duration, default=DEFAULT_SECRET_TTL_S, help="lifetime, e.g. 7d"
    )
    create.add_argument("--comment", default="", help="free text shown by list")
    create.add_argument("--out", type=Path, help="write the secret to this file (mode 0600)")
    secret_sub.add_parser("list", help="list secrets as JSON (never the secret itself)")
    revoke = secret_sub.add_parser("revoke", help="revoke a secret and its credentials")
    revoke.add_argument("secret_id")
    agent = sub.add_parser("agent", help="list or revoke per-agent credentials")
    agent_sub = agent.add_subparsers(dest="action", metavar="ACTION", required=True)
    agent_sub.add_parser("list", help="list credentials as JSON (never the credential)")
    agent_revoke = agent_sub.add_parser("revoke", help="revoke every credential of an agent")
    agent_revoke.add_argument("agent_id")


def main(args: argparse.Namespace, config: CollectorConfig) -> int:
    """Run the ``enroll-secret``/``agent`` command in ``args``; the exit status."""
    try:
        storage = create_storage(config.storage_url)
    except StorageError as exc:
        print(f"vigil-collector: cannot open storage: {exc}", file=sys.stderr)
        return 1
    try:
        return _run(args, storage)
    finally:
        storage.close()


def _run(args: argparse.Namespace, storage: Storage) -> int:
    now = time.time()
    # Every change is audited as the login running the command, like ``operator``.
    who = {"actor": cli_actor(), "peer": LOCAL_PEER}
    if args.command == "enroll-secret" and args.action == "create":
        labels = dict(args.label)
        secret_id, secret = enrollment.create_secret(
            storage,
            labels=labels,
            ttl_s=args.expires,
            max_uses=args.uses,
            comment=args.comment,
            now=now,
            **who,
        )
        if args.out is not None:
            _write_private(args.out, secret + "\n")
            print(f"secret {secret_id} written to {args.out}")
        else:
            print(f"secret {secret_id}: {secret}")
        return 0
    if args.action == "list":
        rows = (
            enrollment.list_secrets(storage)
            if args.command == "enroll-secret"
            else enrollment.list_agents(storage)
        )
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if args.command == "enroll-secret":
        deleted = enrollment.revoke_secret(storage, args.secret_id, now, **who)
        if deleted is None:
            print(f"vigil-collector: no enrollment secret {args.secret_id!r}", file=sys.stderr)
            return 1
        print(f"revoked secret {args.secret_id} and {deleted} credential(s) issued through it")
        return 0
    deleted = enrollment.revoke_agent(storage, args.agent_id, now=now, **who)
    if not deleted:
        print(f"vigil-collector: agent {args.agent_id!r} holds no credential", file=sys.stderr)
        return 1
    print(f"revoked {deleted} credential(s) of agent {args.agent_id}")
    return 0


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a new file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode on O_CREAT


def _label(text: str) -> tuple[str, str]:
    match = _LABEL.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (KEY: letters, digits, _.-), got {text!r}"
        )
    return match.group(1), match.group(2)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except (ConfigError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return seconds
