"""``vigil-collector policy ...``: keys, signing, publishing and rollout control.

Offline (no collector config, no database: the signing key can stay off the collector):

* ``keygen --out DIR``: writes ``DIR/policy-key.pem`` (0600, PKCS#8; encrypted with the
  passphrase in ``$VIGIL_POLICY_PASSPHRASE`` when set) and ``DIR/policy-key.pub``;
* ``sign POLICY_DIR --key PRIV.pem --policy NAME --version N --expires 30d
  [--target K=V ...] [--min-agent-version V] --out FILE.vpol``.

On the storage named by ``--config`` (like ``operator``; a running collector picks the
change up within ``policy.refresh``; every write audited as ``cli:<login>``):
``publish FILE.vpol [--canary ID,...|--canary-share 0.05] [--rings 0.05,0.25,1.0]
[--soak 10m]``, ``list``, ``status NAME``, ``advance|pause|resume NAME``, ``halt
REMEDIATION|--all [--reason T]``, ``unhalt REMEDIATION|--all``, ``run-now REMEDIATION
--host ID|--labels K=V [--param K=V ...]``, ``run-now-status ID``.

Exit status: 0 done; 1 refused (unknown policy, a conflict, unusable storage); 2 bad
config, usage or bundle (the message names the reason).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vigil import policy_bundle
from vigil.collector.identity.audit import LOCAL_PEER, cli_actor
from vigil.collector.policy import rollout as core
from vigil.collector.policy import service
from vigil.collector.policy.service import PolicyError, Who
from vigil.configio import CONFIG_EXIT_CODE, ConfigError, parse_duration

PROG = "vigil-collector policy"
DEFAULT_CONFIG = Path("/etc/vigil/collector.yaml")
PASSPHRASE_ENV = "VIGIL_POLICY_PASSPHRASE"
DEFAULT_MIN_AGENT = "0.1.0"
OFFLINE = ("keygen", "sign")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Central policy: sign, publish, roll out."
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"collector config ({DEFAULT_CONFIG})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="create an Ed25519 signing key pair")
    keygen.add_argument("--out", type=Path, required=True, help="folder for policy-key.pem/.pub")
    sign = sub.add_parser("sign", help="build and sign a bundle from a policy folder (offline)")
    sign.add_argument("policy_dir", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="private key (PKCS#8 PEM)")
    sign.add_argument("--policy", required=True, help="policy name, e.g. finance")
    sign.add_argument("--version", type=_positive, required=True, help="integer, above the last")
    sign.add_argument("--expires", type=_duration, required=True, help="lifetime, e.g. 30d")
    sign.add_argument("--target", action="append", default=[], type=_pair, metavar="K=V")
    sign.add_argument("--min-agent-version", default=DEFAULT_MIN_AGENT)
    sign.add_argument("--out", type=Path, required=True, help="the .vpol file to write")
    pub = sub.add_parser("publish", help="verify, store and start rolling out a bundle")
    pub.add_argument("bundle", type=Path)
    canary = pub.add_mutually_exclusive_group()
    canary.add_argument("--canary", default="", help="agent ids in ring 0, comma-separated")
    canary.add_argument("--canary-share", type=float, help="share of hosts in ring 0, e.g. 0.05")
    pub.add_argument("--rings", help="cumulative ring shares, e.g. 0.05,0.25,1.0")
    pub.add_argument("--soak", type=_duration0, help="time per ring before auto-advance, e.g. 10m")
    sub.add_parser("list", help="rollouts, stored versions and halts as JSON")
    for name, text in (
        ("status", "a rollout with per-ring progress"),
        ("advance", "move a rollout to its next ring now"),
        ("pause", "stop auto-advancing a rollout"),
        ("resume", "resume a paused rollout (its ring soaks again)"),
    ):
        sub.add_parser(name, help=text).add_argument("name")
    for name, text in (
        ("halt", "kill switch: stop a remediation fleet-wide"),
        ("unhalt", "lift a halt"),
    ):
        cmd = sub.add_parser(name, help=text)
        which = cmd.add_mutually_exclusive_group(required=True)
        which.add_argument("remediation", nargs="?")
        which.add_argument("--all", action="store_true", help="every remediation")
        if name == "halt":
            cmd.add_argument("--reason", default="")
    run = sub.add_parser("run-now", help="ask hosts to run a remediation now")
    run.add_argument("remediation")
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="one agent id")
    where.add_argument("--labels", action="append", type=_pair, metavar="K=V")
    run.add_argument("--param", action="append", default=[], type=_pair, metavar="K=V")
    sub.add_parser("run-now-status", help="who asked and each host's outcome").add_argument(
        "request_id"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one policy command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "keygen":
            return _keygen(args.out)
        if args.command == "sign":
            return _sign(args)
        return _with_storage(args)
    except PolicyError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return CONFIG_EXIT_CODE if exc.status == 400 else 1


def _keygen(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    private, public = policy_bundle.generate_keypair(os.environ.get(PASSPHRASE_ENV))
    try:
        policy_bundle.write_private_key(out / "policy-key.pem", private)
    except FileExistsError:
        print(f"{PROG}: {out / 'policy-key.pem'} exists; not overwriting a key", file=sys.stderr)
        return 1
    (out / "policy-key.pub").write_text(public + "\n", encoding="utf-8")
    print(f"key {policy_bundle.key_id(public)}: {public}")
    print(f"add it to policy.trusted_keys in collector.yaml; keep {out / 'policy-key.pem'} offline")
    return 0


def _sign(args: argparse.Namespace) -> int:
    now = time.time()
    try:
        private = args.key.read_bytes()
        manifest, files = policy_bundle.build(
            args.policy_dir,
            policy=args.policy,
            version=args.version,
            expires_at=now + args.expires,
            min_agent_version=args.min_agent_version,
            target={"labels": dict(args.target)} if args.target else {},
            created_at=now,
        )
        signature = policy_bundle.sign(manifest, private, os.environ.get(PASSPHRASE_ENV))
    except (OSError, ValueError, policy_bundle.PolicySourceError, policy_bundle.BundleError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return CONFIG_EXIT_CODE
    document = policy_bundle.pack(manifest, [signature], files)
    args.out.write_bytes(document)
    key = signature["key_id"]
    print(f"signed {args.policy}@{args.version} ({len(files)} files, key {key}) -> {args.out}")
    return 0


def _with_storage(args: argparse.Namespace) -> int:
    from vigil.collector.config import load_collector_config
    from vigil.collector.storage.factory import create_storage
    from vigil.collector.storage.records import StorageError

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
        return _run(args, storage, config.policy)
    finally:
        storage.close()


def _run(args: argparse.Namespace, storage: Any, config: Any) -> int:
    who, now = Who(cli_actor(), LOCAL_PEER), time.time()
    command = args.command
    result: Any
    if command == "publish":
        try:
            document = args.bundle.read_bytes()
            rings = None if args.rings is None else [float(x) for x in args.rings.split(",")]
            canary = [h for h in args.canary.split(",") if h]
            shares = core.rings_for(config.rings, rings, canary, args.canary_share)
        except (OSError, ValueError) as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return CONFIG_EXIT_CODE
        result = service.publish(
            storage, document, config, who, now, rings=shares, canary=canary, soak_s=args.soak
        )
    elif command == "list":
        result = service.list_policies(storage)
    elif command == "status":
        result = service.status(storage, args.name, now, config.advance_share)
    elif command == "advance":
        result = service.advance(storage, args.name, who, now)
    elif command in ("pause", "resume"):
        result = service.set_paused(storage, args.name, command == "pause", who, now)
    elif command == "halt":
        target = core.HALT_ALL if args.all else args.remediation
        result = {
            "remediation": target,
            "new": service.halt(storage, target, who, now, args.reason),
        }
    elif command == "unhalt":
        target = core.HALT_ALL if args.all else args.remediation
        if not service.unhalt(storage, target, who, now, _resolver(storage, config)):
            print(f"{PROG}: {target!r} is not halted", file=sys.stderr)
            return 1
        result = {"remediation": target, "halted": False}
    elif command == "run-now":
        result = service.request_run_now(
            storage,
            args.remediation,
            who,
            now,
            host=args.host,
            labels=dict(args.labels or ()),
            params=dict(args.param),
            ttl_s=config.run_now_ttl_s,
        )
    else:
        result = service.get_run_now(storage, args.request_id)
        if result is None:
            print(f"{PROG}: no run-now request {args.request_id!r}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _resolver(storage: Any, config: Any) -> Any:
    """Resolve the guard's incident when a halt is lifted from the CLI: through a desk on
    the same storage (its incident engine), like the API does."""
    from vigil.collector.desk.service import Desk

    def resolve(check: str, now: float) -> None:
        Desk(storage).collector_check(check, "ok", "halt lifted", now)

    return resolve


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _duration(text: str) -> float:
    seconds = _duration0(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return seconds


def _duration0(text: str) -> float:
    try:
        return parse_duration(text)
    except (ConfigError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
