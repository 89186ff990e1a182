"""``vigil-collector operator add|list|rotate|remove``: operator accounts from the shell.

Works on the database named by the config (``storage.url``) directly, with or without a
collector running on it; a running collector picks the change up within
:data:`~collector.app.IDENTITY_REFRESH_S`. A new or rotated token is printed once, alone
on the last line of stdout (scripts can take it with ``tail -n1``); only its hash is
stored. Each change is in the audit log with the actor ``cli:<login>`` and the peer
``local``.

Exit status: 0 done; 1 no such operator, a taken name, or an unusable database; 2 bad
config, usage, name or role.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vigil.collector.config import load_collector_config
from vigil.collector.identity import operators as ops
from vigil.collector.identity.audit import LOCAL_PEER, cli_actor
from vigil.collector.identity.roles import ROLES
from vigil.collector.storage.factory import create_storage
from vigil.collector.storage.protocols import Storage
from vigil.collector.storage.records import StorageError
from vigil.configio import CONFIG_EXIT_CODE, ConfigError

PROG = "vigil-collector operator"
DEFAULT_CONFIG = Path("/etc/vigil/collector.yaml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Manage operator accounts.")
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"collector config ({DEFAULT_CONFIG})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create an operator and print its token once")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    sub.add_parser("list", help="operators and their roles (never tokens)").add_argument(
        "--json", action="store_true", help="one JSON document instead of a table"
    )
    sub.add_parser("rotate", help="replace an operator's token; print the new one").add_argument(
        "name"
    )
    sub.add_parser("remove", help="delete an operator; its token stops working").add_argument(
        "name"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one operator command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        config = load_collector_config(args.config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return CONFIG_EXIT_CODE
    try:
        storage = create_storage(config.storage_url)
    except StorageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    try:
        return _run(storage, args)
    except ops.OperatorError as exc:
        print(f"{PROG}: {exc.field}: {exc}", file=sys.stderr)
        return CONFIG_EXIT_CODE if exc.status == 400 else 1
    finally:
        storage.close()


def _run(storage: Storage, args: argparse.Namespace) -> int:
    who = {"actor": cli_actor(), "peer": LOCAL_PEER, "now": time.time()}
    if args.command == "list":
        rows = ops.list_operators(storage)
        if args.json:
            print(json.dumps({"operators": rows}, indent=2))
        else:
            for row in rows:
                print(f"{row['name']}\t{row['role']}\trotated {_iso(row['rotated_at'])}")
        return 0
    if args.command == "remove":
        ops.remove_operator(storage, args.name, **who)
        print(f"operator {args.name} removed")
        return 0
    if args.command == "add":
        token = ops.add_operator(storage, args.name, args.role, **who)
        print(f"operator {args.name} ({args.role}) added; its token, shown this once:")
    else:
        token = ops.rotate_operator(storage, args.name, **who)
        print(f"operator {args.name}: new token, shown this once (the old one no longer works):")
    print(token)
    return 0


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
