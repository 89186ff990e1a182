"""``vigil-collector release ...``: sign and roll out a new agent version.

* ``sign --wheel vigil-0.2.0-py3-none-any.whl --serial N --key PRIV.pem --expires 90d
  [--min-agent-version V] --out FILE.vpol`` (offline: no config, no database) builds the
  release bundle (:mod:`vigil.release_bundle`: the one wheel, checked to be a Vigil agent
  at the version its name says) and signs it with the policy key.
* ``publish FILE.vpol [--rings 0.05,0.25,1.0] [--canary ID,...|--canary-share S]
  [--soak 10m]``, ``status``, ``advance``, ``pause``, ``resume``: the policy commands
  (``vigil-collector policy``, same storage, rings, audit) on the reserved policy name
  ``vigil-agent``.

Exit status as ``vigil-collector policy``: 0 done; 1 refused; 2 bad usage, wheel or bundle.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vigil import policy_bundle
from vigil.collector.policy import cli as policy_cli
from vigil.configio import CONFIG_EXIT_CODE
from vigil.policy_build import manifest_for
from vigil.release_bundle import RELEASE_POLICY, NotARelease, release_wheel

PROG = "vigil-collector release"
# A release carries no config: its manifest's config is the empty policy.
_EMPTY_CONFIG = {"checks": [], "remediation": {"enabled": {}, "schedule": {}}}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="agent releases (self-update)")
    parser.add_argument("--config", type=Path, default=policy_cli.DEFAULT_CONFIG)
    sub = parser.add_subparsers(dest="command", required=True)
    sign = sub.add_parser("sign", help="sign an agent wheel as a release bundle (offline)")
    sign.add_argument("--wheel", type=Path, required=True, help="vigil-<ver>-py3-none-any.whl")
    sign.add_argument("--serial", type=policy_cli._positive, required=True, help="above the last")
    sign.add_argument("--key", type=Path, required=True, help="private key (PKCS#8 PEM)")
    sign.add_argument("--expires", type=policy_cli._duration, required=True, help="e.g. 90d")
    sign.add_argument("--min-agent-version", default=policy_cli.DEFAULT_MIN_AGENT)
    sign.add_argument("--out", type=Path, required=True, help="the .vpol file to write")
    pub = sub.add_parser("publish", help="verify, store and start rolling out a release")
    pub.add_argument("bundle", type=Path)
    canary = pub.add_mutually_exclusive_group()
    canary.add_argument("--canary", default="", help="agent ids in ring 0, comma-separated")
    canary.add_argument("--canary-share", type=float, help="share of hosts in ring 0")
    pub.add_argument("--rings", help="cumulative ring shares, e.g. 0.05,0.25,1.0")
    pub.add_argument("--soak", type=policy_cli._duration0, help="time per ring, e.g. 10m")
    for name in ("status", "advance", "pause", "resume"):
        sub.add_parser(name, help=f"{name} the agent release rollout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one release command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "sign":
        return _sign(args)
    forward = ["--config", str(args.config), args.command]
    if args.command == "publish":
        forward.append(str(args.bundle))
        if args.canary:
            forward += ["--canary", args.canary]
        if args.canary_share is not None:
            forward += ["--canary-share", str(args.canary_share)]
        if args.rings:
            forward += ["--rings", args.rings]
        if args.soak is not None:
            forward += ["--soak", f"{args.soak}s"]
    else:
        forward.append(RELEASE_POLICY)
    return policy_cli.main(forward)


def _sign(args: argparse.Namespace) -> int:
    now = time.time()
    try:
        files = {args.wheel.name: args.wheel.read_bytes()}
        _, version = release_wheel(files)
        manifest = manifest_for(
            files,
            policy=RELEASE_POLICY,
            version=args.serial,
            created_at=now,
            expires_at=now + args.expires,
            min_agent_version=args.min_agent_version,
            target={},
            config=_EMPTY_CONFIG,
        )
        signature = policy_bundle.sign(
            manifest, args.key.read_bytes(), os.environ.get(policy_cli.PASSPHRASE_ENV)
        )
    except (OSError, ValueError, NotARelease, policy_bundle.BundleError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return CONFIG_EXIT_CODE
    args.out.write_bytes(policy_bundle.pack(manifest, [signature], files))
    print(
        f"signed agent release {args.serial} (vigil {version}, key {signature['key_id']})"
        f" -> {args.out}"
    )
    return 0
