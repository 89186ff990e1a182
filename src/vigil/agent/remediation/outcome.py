"""How one remediation run is judged: pure rules over what the script did.

The agent and ``vigil-agent remediation test`` both turn a run into an outcome here, so
the test command always judges a run exactly as the agent would. In order: the script
could not run, ran out of time, exited non-zero, was a dry run, or declared an outcome
it cannot verify (``vigil-outcome: needs_reboot``); otherwise verification decides
(``fixed`` or ``not_fixed``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vigil.agent.exec.script import ScriptResult
from vigil.agent.remediation.manifest import Remediation
from vigil.wire import CheckState

# A script declares an outcome the agent cannot verify by printing this as its last line.
DECLARE_PREFIX = "vigil-outcome:"
DECLARED_OUTCOMES: tuple[str, ...] = ("needs_reboot", "needs_user")


@dataclass(frozen=True, slots=True)
class RemediationOutcome:
    """What one remediation attempt achieved (also the basis of the wire record)."""

    outcome: str
    value_before: float | None
    value_after: float | None
    result: ScriptResult | None
    reason: str = ""
    # The check's level after the run when it is not a threshold over value_after (a
    # command check's plugin state); None for threshold and detection checks.
    level_after: CheckState | None = None


def declared_outcome(output: str) -> str | None:
    """The outcome a script declared on its last non-empty output line, else ``None``.

    The line is ``vigil-outcome: needs_reboot`` or ``vigil-outcome: needs_user``. Only the
    last line counts, so a script that merely mentions the marker earlier is not misread,
    and the head-and-tail output excerpt always keeps it.
    """
    for line in reversed(output.splitlines()):
        line = line.strip()
        if not line:
            continue
        if line.lower().startswith(DECLARE_PREFIX):
            value = line[len(DECLARE_PREFIX) :].strip()
            return value if value in DECLARED_OUTCOMES else None
        return None
    return None


def early_outcome(
    *,
    error: str | None,
    timed_out: bool,
    timeout_s: float,
    exit_code: int | None,
    dry_run: bool,
    declared: str | None,
    skipped: bool = False,
) -> tuple[str, str] | None:
    """``(outcome, reason)`` when the script run alone decides it, ``None`` when the result
    must be verified.

    In order: the script was not run on purpose (``skipped``: nobody logged on for a
    ``logged_on_user`` run) → ``skipped``; the script could not run → ``error``; it ran
    out of time → ``timeout``; a non-zero exit → ``error`` (in a dry run too: a script
    that refuses, say exit 3 for a missing folder, would refuse for real, and a dry run
    must say so); a clean dry run →
    ``dry_run`` (nothing was meant to change, so nothing is verified); a declared
    ``needs_reboot``/``needs_user`` → that outcome (the fix
    cannot be verified until the reboot or the person acts).
    """
    if skipped:
        return "skipped", error or "skipped"
    if error:
        return "error", error
    if timed_out:
        return "timeout", f"timed out after {timeout_s:g}s; process tree killed"
    if exit_code != 0:
        reason = _exit_reason(exit_code)
        return "error", f"dry run failed: {reason}" if dry_run else reason
    if dry_run:
        return "dry_run", f"dry run (exit {exit_code})"
    if declared in DECLARED_OUTCOMES:
        return declared, f"script declared {declared}"
    return None


def run_outcome(rem: Remediation, result: ScriptResult, *, dry_run: bool) -> tuple[str, str] | None:
    """:func:`early_outcome` for one finished run of ``rem``'s script: the single place the
    agent and ``vigil-agent remediation test`` turn a run into an outcome, so the test
    command always judges a run exactly as the agent would."""
    return early_outcome(
        error=result.error,
        timed_out=result.timed_out,
        timeout_s=rem.timeout_s,
        exit_code=result.exit_code,
        dry_run=dry_run,
        declared=declared_outcome(result.output),
        skipped=result.skipped,
    )


def verified_outcome(cleared: bool, detail: str) -> tuple[str, str]:
    """``fixed`` when verification showed the trigger cleared, else ``not_fixed``."""
    return ("fixed" if cleared else "not_fixed"), detail


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        return f"killed by signal {-code}"
    if code > 128:
        # A shell reports a child killed by signal N as 128+N (137 = SIGKILL, often the OOM
        # killer); say so, because "exit 137" alone sends admins looking in the wrong place.
        return f"exit {code} (likely killed by signal {code - 128})"
    return f"exit {code}"
