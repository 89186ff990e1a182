"""remediation.outcome: the pure rules that turn one script run into an outcome."""

from __future__ import annotations

from typing import Any

import pytest

from vigil.agent.remediation.outcome import declared_outcome, early_outcome, verified_outcome


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("rebooting needed\nvigil-outcome: needs_reboot\n", "needs_reboot"),
        ("vigil-outcome: needs_user\n\n  \n", "needs_user"),
        ("VIGIL-OUTCOME:  needs_user", "needs_user"),
        ("vigil-outcome: needs_reboot\nbut then more output\n", None),
        ("vigil-outcome: fixed\n", None),
        ("", None),
    ],
    ids=[
        "last-line-declares-reboot",
        "trailing-blank-lines-ignored",
        "marker-case-and-spaces-tolerated",
        "only-the-last-line-counts",
        "only-reboot-or-user-can-be-declared",
        "no-output",
    ],
)
def test_declared_outcome(output: str, expected: str | None) -> None:
    assert declared_outcome(output) == expected


def _early(**overrides: Any) -> tuple[str, str] | None:
    args: dict[str, Any] = {
        "error": None,
        "timed_out": False,
        "timeout_s": 30.0,
        "exit_code": 0,
        "dry_run": False,
        "declared": None,
    }
    args.update(overrides)
    return early_outcome(**args)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, None),
        ({"error": "script not found: x"}, ("error", "script not found: x")),
        (
            {"timed_out": True, "exit_code": None},
            ("timeout", "timed out after 30s; process tree killed"),
        ),
        ({"dry_run": True, "exit_code": 0}, ("dry_run", "dry run (exit 0)")),
        ({"dry_run": True, "exit_code": 3}, ("error", "dry run failed: exit 3")),
        ({"exit_code": 1}, ("error", "exit 1")),
        ({"exit_code": 137}, ("error", "exit 137 (likely killed by signal 9)")),
        ({"exit_code": -15}, ("error", "killed by signal 15")),
        ({"declared": "needs_reboot"}, ("needs_reboot", "script declared needs_reboot")),
        ({"declared": "needs_user", "exit_code": 1}, ("error", "exit 1")),
        ({"error": "refused", "dry_run": True}, ("error", "refused")),
    ],
    ids=[
        "clean-exit-needs-verification",
        "could-not-run",
        "timeout",
        "dry-run-is-never-verified",
        "a-refusal-in-a-dry-run-is-an-error",
        "non-zero-exit",
        "exit-137-explained",
        "killed-by-someone-else",
        "declared-reboot",
        "a-failed-script-cannot-declare",
        "refusal-beats-dry-run",
    ],
)
def test_early_outcome(overrides: dict[str, Any], expected: tuple[str, str] | None) -> None:
    assert _early(**overrides) == expected


@pytest.mark.parametrize(
    ("cleared", "expected"), [(True, "fixed"), (False, "not_fixed")], ids=["cleared", "still-bad"]
)
def test_verified_outcome(cleared: bool, expected: str) -> None:
    assert verified_outcome(cleared, "after: ok") == (expected, "after: ok")
