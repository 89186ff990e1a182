"""``vigil-agent``: run the agent, or show what it sees.

Exit status: 0 success; 1 ``check`` found a check that is not ok; 2 bad config or usage.
``--config`` and ``--log-level`` go before or after the command. ``run`` and ``check``
validate the config through the same :func:`~vigil.agent.preflight.preflight`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import difflib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vigil import __version__
from vigil.agent import enroll_cli, remediation_cli, service_cli
from vigil.agent.checks import classify
from vigil.agent.config import AgentConfig
from vigil.agent.preflight import Preflight, preflight
from vigil.agent.update.launch import launch, state_dir_of
from vigil.configio import CONFIG_EXIT_CODE, ConfigError, setup_logging

log = logging.getLogger("vigil.agent")

_LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def default_config_path() -> Path:
    """``$VIGIL_AGENT_CONFIG``, else the platform's system config location."""
    if env := os.environ.get("VIGIL_AGENT_CONFIG"):
        return Path(env)
    if sys.platform == "win32":
        return Path(os.environ.get("PROGRAMDATA", r"C:\ProgramData")) / "Vigil" / "agent.yaml"
    return Path("/etc/vigil/agent.yaml")


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """``--config`` and ``--log-level``. Subcommands get them with defaults suppressed, so
    one given after the command wins and one given before it is not reset."""
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS if suppress else None,
        help="agent config file (default: $VIGIL_AGENT_CONFIG or /etc/vigil/agent.yaml)",
    )
    parser.add_argument(
        "--log-level", default=argparse.SUPPRESS if suppress else "INFO", choices=_LOG_LEVELS
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigil-agent",
        description="Vigil workstation agent: samples health, runs checks and remediations, "
        "and reports to the collector.",
    )
    parser.add_argument("--version", action="version", version=f"vigil-agent {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run", parents=[common], help="run the agent until SIGINT/SIGTERM (the default)"
    )
    run.add_argument("--collector-url", help="override collector.url from the config")
    check = sub.add_parser(
        "check", parents=[common], help="run every configured check once and print the result"
    )
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    remediation_cli.add_parser(sub, parents=[common])
    enroll_cli.add_parser(sub, parents=[common])
    service_cli.add_parser(sub, parents=[common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    path = args.config or default_config_path()
    if args.command == "remediation":
        return remediation_cli.main(args, path)
    if args.command == "enroll":
        return enroll_cli.main(args, path)
    if args.command == "service":
        return service_cli.main(args, path)
    if args.command != "check":
        # Self-update: replaces this process with the current release, if there is one
        # (see vigil/agent/update/launch.py); returns to run the base install.
        launch(state_dir_of(path), list(sys.argv[1:] if argv is None else argv))
    try:
        checked = preflight(path, create_state=args.command != "check")
        if args.command == "check":
            return check_once(checked.config, as_json=args.json)
        if getattr(args, "collector_url", None):
            config = checked.config
            config = dataclasses.replace(
                config, collector=dataclasses.replace(config.collector, url=args.collector_url)
            )
            checked = dataclasses.replace(checked, config=config)
        return asyncio.run(_run(checked))
    except ConfigError as exc:
        print(f"vigil-agent: {exc}", file=sys.stderr)
        return CONFIG_EXIT_CODE


async def _run(checked: Preflight) -> int:
    from vigil.agent.crashguard import CrashRecord
    from vigil.agent.service import build_service  # heavy imports only when running
    from vigil.agent.svc.notify import backoff_sleep

    config = checked.config
    backoff = config.crash_backoff
    # Recorded before anything that could crash, cleared by a clean stop or a run that
    # lasted: a start that finds a run of crashed starts waits (crashguard) instead of
    # looping hot.
    record = CrashRecord(config.state_dir)
    crashed, delay = record.begin(time.time(), backoff)
    if delay > 0:
        reason = f"crash-loop back-off: {crashed} unclean starts, waiting {delay:.1f} s"
        log.warning("%s before starting", reason)
        await backoff_sleep(delay, reason)
    service = build_service(config, library=checked.library, broken=checked.broken, policy=True)
    # A run that lasted is no crash loop, however it ends later (a Windows service stop
    # is a hard kill, a watchdog abort after days is a new fault, not a loop).
    stable = asyncio.get_running_loop().call_later(backoff.stable_s, record.clean_stop)
    try:
        await service.run_until_signalled()
    finally:
        stable.cancel()
    record.clean_stop()
    return 0


def check_once(config: AgentConfig, *, as_json: bool = False) -> int:
    """Run every configured check once and print a table or JSON.

    Samples twice, 0.5 s apart (CPU and I/O rates need a delta), and runs every command
    check (plugin) once, all at the same time. The for-duration, hysteresis and flapping
    are ignored here: this shows what each check would say *now*. An ``unknown`` row
    says why in its ``detail``, and a closing line counts the unknown checks (a running
    agent reports the same per check as ``agent.unknown_total[<check>]``). Byte values
    read in binary units (``78.5 GiB``); ``--json`` keeps raw numbers.
    """
    from vigil.agent.plugins import run_plugin
    from vigil.agent.sampling.sampler import Sampler

    async def plugins() -> list[Any]:
        specs = [s for s in config.checks if s.is_command]
        return list(
            await asyncio.gather(*(run_plugin(s.command, timeout_s=s.timeout_s) for s in specs))
        )

    sampler = Sampler(config.sampler)
    sampler.sample()
    time.sleep(0.5)
    values = sampler.sample()
    results = iter(asyncio.run(plugins()))
    rows = []
    for spec in config.checks:
        if spec.is_command:
            result = next(results)
            values.update(result.series(spec.id))
            value = next(iter(result.series(spec.id).values()), None)
            state, detail = result.state, result.text
        else:
            value = values.get(spec.metric)
            state = classify(spec, value)
            detail = "" if value is not None else _why_unknown(spec.metric, sampler, values)
        rows.append(
            {
                "check": spec.id,
                "metric": spec.metric or " ".join(spec.command),
                "value": value,
                "state": state,
                "warning": spec.warning,
                "critical": spec.critical,
                "op": spec.op if not spec.is_command else "plugin",
                "remediation": spec.remediation.id if spec.remediation else None,
                "detail": detail,
            }
        )
    if as_json:
        print(json.dumps({"checks": rows, "values": values}, indent=2, sort_keys=True))
    else:
        print(_table(rows))
        unknown = [str(r["check"]) for r in rows if r["state"] == "unknown"]
        if unknown:
            print(f"\n{len(unknown)} of {len(rows)} checks unknown: {', '.join(unknown)}")
    return 0 if all(r["state"] == "ok" for r in rows) else 1


def _why_unknown(metric: str, sampler: Any, values: dict[str, float]) -> str:
    """The sampler's reason for a missing ``metric``, plus the closest sampled series name
    when there is one (a typo in ``metric`` keeps a check unknown for ever)."""
    reason = str(sampler.reason_for(metric))
    close = difflib.get_close_matches(metric, list(values), n=1, cutoff=0.8)
    return f"{reason}; did you mean {close[0]}?" if close else reason


def _fmt(value: float | None, metric: object = "") -> str:
    """A value for the table: bytes (a ``*_bytes`` series) in binary units, other large
    numbers without an exponent, small ones with up to six significant digits."""
    if value is None:
        return "-"
    if "_bytes" in str(metric):
        return human_bytes(value)
    if abs(value) >= 1e6:
        return f"{value:,.0f}"
    return f"{value:.6g}"


def human_bytes(value: float) -> str:
    """``value`` bytes in binary units: ``512 B``, ``1.5 KiB``, ``78.5 GiB``."""
    size = float(value)
    for unit in _BYTE_UNITS:
        if abs(size) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _table(rows: list[dict[str, object]]) -> str:
    header = ("CHECK", "STATE", "VALUE", "OP", "WARN", "CRIT", "METRIC", "REMEDIATION", "DETAIL")
    lines = [header] + [
        (
            str(r["check"]),
            str(r["state"]).upper(),
            _fmt(r["value"], r["metric"]),  # type: ignore[arg-type]
            str(r["op"]),
            _fmt(r["warning"], r["metric"]),  # type: ignore[arg-type]
            _fmt(r["critical"], r["metric"]),  # type: ignore[arg-type]
            str(r["metric"]),
            str(r["remediation"] or "-"),
            str(r["detail"] or "-"),
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


if __name__ == "__main__":
    sys.exit(main())
