"""``vigil-agent remediation list | validate DIR | test DIR``: the admin's remediation tools.

- ``list [FOLDER ...]`` shows every remediation in the given library folders (default:
  ``remediation.folders`` of the agent config), and every manifest that failed to load as
  a ``NOT LOADED`` row with the reason.
- ``validate DIR`` loads one remediation folder strictly and checks what the agent would
  refuse at run time (a script writable by group or others, a non-executable script
  without a known suffix); it runs nothing.
- ``test DIR`` runs detection, remediation and verification on this machine exactly as the
  agent would (same runner, limits, environment and outcome rules) and prints the
  corrective-action record the agent would send, as a readable summary (``--json``: the
  whole report as JSON). ``--dry-run`` passes ``VIGIL_DRY_RUN=1``; a script that exits
  non-zero in a dry run (refuses) is an ``error``, as it would be for real.

Exit status: 0 success (``test``: outcome ``fixed``, ``dry_run``, or no issue detected);
1 ``test`` gave another outcome; 2 a bad manifest, config or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vigil import wire
from vigil.agent.config import RemediationSettings
from vigil.agent.exec import vetting
from vigil.agent.exec.script import ScriptResult, run_script
from vigil.agent.remediation.manifest import (
    Remediation,
    broken_bundle,
    current_platform,
    load_library,
    load_manifest,
)
from vigil.agent.remediation.outcome import run_outcome, verified_outcome
from vigil.configio import CONFIG_EXIT_CODE, ConfigError, parse_duration, shown

_OK_OUTCOMES = ("fixed", "dry_run")


def add_parser(sub: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> None:
    """Register ``remediation`` and its subcommands on the ``vigil-agent`` subparsers;
    ``parents`` carry the global options, accepted after each command too."""
    parents = list(parents)
    rem = sub.add_parser("remediation", parents=parents, help="list, validate or test remediations")
    cmds = rem.add_subparsers(dest="remediation_command", metavar="SUBCOMMAND", required=True)
    ls = cmds.add_parser(
        "list", parents=parents, help="list the remediations in the library folders"
    )
    ls.add_argument(
        "folders", nargs="*", type=Path, help="library folders (default: remediation.folders)"
    )
    val = cmds.add_parser(
        "validate", parents=parents, help="load one remediation folder strictly; run nothing"
    )
    val.add_argument("dir", type=Path, help="the remediation's folder (holds remediation.yaml)")
    test = cmds.add_parser(
        "test", parents=parents, help="run detection, remediation and verification here"
    )
    test.add_argument("dir", type=Path, help="the remediation's folder (holds remediation.yaml)")
    test.add_argument("--dry-run", action="store_true", help="pass VIGIL_DRY_RUN=1")
    test.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter value (repeatable); declared defaults apply otherwise",
    )
    test.add_argument(
        "--force", action="store_true", help="run the remediation even if detection finds no issue"
    )
    test.add_argument(
        "--verify-delay",
        type=_seconds,
        default=None,
        help="seconds before verifying (default: the manifest's verify.delay, else "
        f"{RemediationSettings().verify_delay_s:g}, the agent's default)",
    )
    test.add_argument("--json", action="store_true", help="print the whole report as JSON")


def _seconds(raw: str) -> float:
    """A command-line duration (``2``, ``500ms``, ``1m``): finite and not negative."""
    try:
        return parse_duration(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (got {shown(raw)})") from None


def main(args: argparse.Namespace, config_path: Path) -> int:
    """Run the ``remediation`` subcommand in ``args``; returns the exit status."""
    try:
        if args.remediation_command == "list":
            return list_remediations(args.folders or _configured_folders(config_path))
        if args.remediation_command == "validate":
            return validate(args.dir)
        params = _parse_params(args.param)
        report, status = asyncio.run(
            try_remediation(
                args.dir,
                params=params,
                dry_run=args.dry_run,
                force=args.force,
                verify_delay_s=args.verify_delay,
            )
        )
        print(json.dumps(report, indent=2) if args.json else summary(report))
        return status
    except ConfigError as exc:
        print(f"vigil-agent: {exc}", file=sys.stderr)
        return CONFIG_EXIT_CODE


def _configured_folders(config_path: Path) -> list[Path]:
    from vigil.agent.config import load_agent_config

    folders = list(load_agent_config(config_path).remediation.folders)
    if not folders:
        raise ConfigError(str(config_path), "remediation.folders", [], "no folders configured")
    return folders


def _parse_params(raw: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in raw:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError("--param", name or item, item, "expected NAME=VALUE")
        params[name] = value
    return params


# --------------------------------------------------------------------------- list


def describe_trigger(rem: Remediation) -> str:
    """One line saying when ``rem`` runs on its own (its manifest trigger)."""
    if rem.detection:
        return f"detection every {rem.detect_every_s:g}s"
    if rem.trigger_checks:
        return ", ".join(f"{t.check} {'/'.join(t.states)}" for t in rem.trigger_checks)
    return "named by a check"


def list_remediations(folders: list[Path]) -> int:
    """Print a table of the remediations in ``folders``, a broken bundle as a ``NOT LOADED``
    row; every error also goes to stderr in full (exit 2)."""
    library, errors = load_library(folders)
    rows = [("ID", "PLATFORMS", "TRIGGER", "RUN AS", "TITLE")]
    for rem_id in sorted(library):
        rem = library[rem_id]
        rows.append(
            (
                rem.id,
                ",".join(rem.platforms),
                describe_trigger(rem),
                rem.run_as or "agent",
                rem.title,
            )
        )
    for err in errors:
        bundle = broken_bundle(err)
        if bundle is not None:
            rows.append((bundle, "-", "NOT LOADED", "-", err.message))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        print("  ".join(cells).rstrip())
    for err in errors:
        print(f"vigil-agent: not loaded: {err}", file=sys.stderr)
    return CONFIG_EXIT_CODE if errors else 0


# --------------------------------------------------------------------------- validate


def lint(rem: Remediation) -> list[str]:
    """What the agent's vetting would refuse at run time, for every script of every platform.

    A script writable by group or others is refused when the agent runs as root (anyone
    who can write it could run code as root); an unknown suffix needs the executable bit.
    """
    problems = []
    scripts = {
        *rem.scripts.values(),
        *rem.detection.values(),
        *rem.verify_scripts.values(),
    }
    for script in sorted(scripts):
        mode = script.stat().st_mode
        if vetting.writable_by_others(mode):
            problems.append(f"{script}: writable by group or others (refused when run as root)")
        if vetting.lacks_exec_bit(script, mode):
            problems.append(f"{script}: not executable and not .sh, .py or .ps1")
    return problems


def validate(folder: Path) -> int:
    """Load ``folder`` strictly and lint its scripts; print ``ok`` or every problem."""
    rem = load_manifest(folder, _library_of(folder))
    problems = lint(rem)
    for p in problems:
        print(f"vigil-agent: {p}", file=sys.stderr)
    if problems:
        return CONFIG_EXIT_CODE
    print(f"ok: {rem.id} ({', '.join(rem.platforms)}; {describe_trigger(rem)})")
    return 0


# --------------------------------------------------------------------------- test


def _library_of(folder: Path) -> list[Path]:
    """The library a bundle named on the command line belongs to: its parent folder as
    given (not as resolved), so a bundle that is a symlink to elsewhere is refused."""
    return [Path(folder).absolute().parent]


async def try_remediation(
    folder: Path,
    *,
    params: dict[str, str],
    dry_run: bool = False,
    force: bool = False,
    verify_delay_s: float | None = None,
) -> tuple[dict[str, Any], int]:
    """Detection → remediation → verification on this machine: (the report, exit status).

    Scripts run with the library folder the bundle sits in as the only allowed folder
    (the agent's rule, symlinks resolved), and with the manifest's timeout, output cap
    and ``run_as``. Verification waits ``verify_delay_s`` (default: the manifest's
    ``verify.delay``, else the agent's default), then uses the verification script, else
    the detection script; a remediation triggered only by checks cannot be verified here
    (the agent re-samples its check), which the report says.
    """
    roots = _library_of(folder)
    rem = load_manifest(folder, roots)
    try:
        rem.script_env(params)
    except ValueError as exc:
        raise ConfigError("--param", "", params, str(exc)) from None
    platform = current_platform()
    script = rem.script_for(platform)
    if script is None:
        raise ConfigError(str(folder), "platforms", list(rem.platforms), f"no {platform} script")
    dry_run = dry_run or rem.dry_run
    env = rem.script_env(params, dry_run=dry_run)
    report: dict[str, Any] = {"remediation": rem.id, "platform": platform}

    async def run(path: Path, phase: str) -> ScriptResult:
        return await run_script(
            path,
            allowed_roots=roots,
            env={**env, "VIGIL_PHASE": phase},
            timeout_s=rem.timeout_s,
            output_cap_bytes=rem.output_cap_bytes,
            cwd=rem.folder,
            run_as=rem.run_as,
        )

    detection = rem.detection_for(platform)
    before: float | None = None
    check = rem.trigger_checks[0].check if rem.trigger_checks else None
    if detection is not None:
        check = f"detect.{rem.id}"
        found = await run(detection, "detect")
        report["detection"] = _phase(found)
        before = float(found.exit_code) if found.exit_code in (0, 1) else None
        if before != 1.0 and not force:
            why = "no issue detected" if before == 0.0 else "detection failed"
            report["result"] = f"{why}: the agent would not run the remediation (--force runs it)"
            return report, (0 if before == 0.0 else 1)

    started = time.time()
    result = await run(script, "remediate")
    report["remediation_run"] = _phase(result)
    early = run_outcome(rem, result, dry_run=dry_run)
    after = before
    if early is not None:
        outcome, reason = early
    else:
        if verify_delay_s is None:
            verify_delay_s = rem.verify_delay_s
        if verify_delay_s is None:  # no verify.delay in the manifest: the agent's default
            verify_delay_s = RemediationSettings().verify_delay_s
        await asyncio.sleep(verify_delay_s)
        verify = rem.verify_for(platform)
        if verify is not None or detection is not None:
            how = "verify" if verify is not None else "detect"
            checked = await run(verify if verify is not None else detection, how)  # type: ignore[arg-type]
            report["verification"] = _phase(checked)
            if detection is not None and verify is None and checked.exit_code in (0, 1):
                after = float(checked.exit_code)  # type: ignore[arg-type]
            ran = checked.error is None and not checked.timed_out
            outcome, reason = verified_outcome(
                ran and checked.exit_code == 0, f"{how} exit {checked.exit_code}"
            )
        else:
            triggers = ", ".join(t.check for t in rem.trigger_checks) or "the triggering check"
            report["verification"] = f"none here: the agent re-samples {triggers}"
            outcome, reason = verified_outcome(True, "not verified locally")
    report["reason"] = reason
    now = time.time()
    record = wire.RemediationEvent(
        event_id=uuid.uuid4().hex,
        seq=0,
        time=now,
        remediation=rem.id,
        check=check,
        outcome=outcome,  # type: ignore[arg-type]
        exit_code=result.exit_code,
        started_at=started,
        duration_s=round(now - started, 3),
        value_before=before,
        value_after=after,
        output=(result.output or reason)[: wire.MAX_OUTPUT],
        output_truncated=result.truncated,
        script_sha256=result.script_sha256,
        dry_run=dry_run,
    )
    report["record"] = wire.to_dict(record)
    return report, (0 if outcome in _OK_OUTCOMES else 1)


def summary(report: dict[str, Any]) -> str:
    """``report`` (from :func:`try_remediation`) as a few readable lines: each phase's exit
    status and output, then the outcome and why."""
    lines = [f"remediation {report['remediation']} on {report['platform']}"]
    for key, title in (
        ("detection", "detection"),
        ("remediation_run", "remediation"),
        ("verification", "verification"),
    ):
        phase = report.get(key)
        if phase is None:
            continue
        if isinstance(phase, str):
            lines.append(f"  {title}: {phase}")
            continue
        if phase["error"]:
            status = f"could not run: {phase['error']}"
        elif phase["timed_out"]:
            status = "timed out"
        else:
            status = f"exit {phase['exit_code']}"
        lines.append(f"  {title}: {status} after {phase['duration_s']:g}s")
        lines.extend(f"    | {line}" for line in (phase["output"] or "").splitlines())
    if "result" in report:
        lines.append(f"result: {report['result']}")
        return "\n".join(lines)
    record = report["record"]
    dry = " (dry run)" if record["dry_run"] and record["outcome"] != "dry_run" else ""
    lines.append(f"outcome: {record['outcome']}{dry}: {report['reason']}")
    if record["value_before"] is not None or record["value_after"] is not None:
        lines.append(f"value: before {record['value_before']}, after {record['value_after']}")
    lines.append("(--json prints the whole report and the record the agent would send)")
    return "\n".join(lines)


def _phase(r: ScriptResult) -> dict[str, Any]:
    return {
        "exit_code": r.exit_code,
        "timed_out": r.timed_out,
        "error": r.error,
        "duration_s": round(r.duration_s, 3),
        "output": r.output,
    }
