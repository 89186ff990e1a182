"""Runs no check triggered: an admin's run-now request, or a remediation's schedule.

Such a run goes through the same gate, limits and record path as a triggered one
(:class:`~vigil.agent.remediation.flow.RemediationFlow`): it is refused while the
remediation is halted or already running, holds a global slot while it runs, and its
corrective-action record carries ``check: null`` and, for run-now, the request's id
(``request_id``), so the collector links the record to who asked. The cooldown and the
attempt budget do not apply to an admin's explicit request (they protect a laptop from a
fix looping on its own); a repeated request is not run twice (``agent/policy/sync.py``
remembers the ids it has run).

This module is part of the flow, kept apart to keep ``flow.py`` small: it uses the flow's
own script, environment, verification and record helpers (the ``_``-prefixed ones) so a
requested run can never differ from a triggered one in how it runs or is recorded.

Verification without a check: the manifest's verification script if it has one (exit 0
is fixed), else its detection script (exit 0 = issue gone), else the script's own clean
exit is recorded as ``fixed`` with that reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from vigil import wire
from vigil.agent.events import new_event_id
from vigil.agent.remediation.flow import RemediationFlow
from vigil.agent.remediation.manifest import Remediation
from vigil.agent.remediation.outcome import RemediationOutcome, run_outcome

log = logging.getLogger("vigil.agent")


def refusal(flow: RemediationFlow, rem_id: str) -> str | None:
    """Why ``rem_id`` cannot run on request now (unknown, halted, running), else None."""
    if rem_id not in flow.library:
        return f"remediation {rem_id} is not loaded on this host"
    if flow.is_halted(rem_id):
        return "halted by the collector (kill switch)"
    if rem_id in flow._busy:
        return "already running"
    return None


async def run_requested(
    flow: RemediationFlow,
    rem_id: str,
    params: Mapping[str, str],
    *,
    request_id: str | None,
    why: str = "run-now",
) -> str:
    """Run ``rem_id`` once with ``params`` (over the host's ``remediation.params``),
    verify it, record it (with ``request_id``), and return the outcome. A refusal (see
    :func:`refusal`) is recorded as ``skipped`` with the reason when the remediation
    exists, and so is a parameter its manifest does not declare; an unknown id gets a
    ``skipped`` record naming it when the run answers a request."""
    now = flow.clock()
    reason = refusal(flow, rem_id)
    rem = flow.library.get(rem_id)
    if rem is None:
        log.warning("%s %s: %s", why, request_id or "", reason)
        if request_id is not None:
            # Still answer the request, so the admin sees why this host did nothing.
            _record_unknown(flow, rem_id, request_id, f"{why}: {reason}", now)
        return "skipped"
    if reason is not None:
        skipped = RemediationOutcome("skipped", None, None, None, f"{why}: {reason}")
        flow._record_remediation(None, rem, skipped, now, now, request_id=request_id)
        flow.deliver_now()
        return "skipped"
    try:
        rem.script_env(params)
    except ValueError as exc:  # a parameter the manifest does not declare: nothing runs
        refused = RemediationOutcome("skipped", None, None, None, f"{why}: {exc}")
        flow._record_remediation(None, rem, refused, now, now, request_id=request_id)
        flow.deliver_now()
        return "skipped"
    flow._busy.add(rem_id)
    try:
        started = flow.clock()
        result = await _attempt(flow, rem, params, why)
        flow._record_remediation(None, rem, result, started, flow.clock(), request_id=request_id)
        flow.deliver_now()
        return result.outcome
    finally:
        flow._busy.discard(rem_id)


async def _attempt(
    flow: RemediationFlow, rem: Remediation, params: Mapping[str, str], why: str
) -> RemediationOutcome:
    script = rem.script_for()
    if script is None:
        return RemediationOutcome("error", None, None, None, "no script for this platform")
    dry_run = flow._dry_run(rem)
    values = {**flow._params(None, rem), **params}
    env = flow._env(rem, values, "remediate", dry_run=dry_run)
    env["VIGIL_TRIGGER"] = why
    async with flow.gate.slot(f"{rem.id}:{why}"):
        log.info("remediation %s (%s): running %s", rem.id, why, script)
        result = await flow._run(rem, script, env)
    early = run_outcome(rem, result, dry_run=dry_run)
    if early is not None:
        return RemediationOutcome(early[0], None, None, result, early[1])
    verify = rem.verify_for()
    if verify is not None:
        cleared, detail = await flow._verify_script(rem, verify, env)
        return RemediationOutcome("fixed" if cleared else "not_fixed", None, None, result, detail)
    if rem.detection_for() is not None:
        value = await flow._detect_value(rem)
        if value is None:
            return RemediationOutcome("not_fixed", None, None, result, "detection did not run")
        fixed = value == 0.0
        detail = "detection: issue gone" if fixed else "detection: issue still present"
        return RemediationOutcome("fixed" if fixed else "not_fixed", None, None, result, detail)
    return RemediationOutcome("fixed", None, None, result, "exit 0 (nothing to verify against)")


def _record_unknown(
    flow: RemediationFlow, rem_id: str, request_id: str, why: str, now: float
) -> None:
    """A ``skipped`` record for a request naming a remediation this host does not have."""
    flow.sink.put(
        wire.RemediationEvent(
            event_id=new_event_id(),
            seq=0,
            time=now,
            remediation=rem_id[: wire.MAX_STR] or "?",
            check=None,
            outcome="skipped",
            exit_code=None,
            started_at=now,
            duration_s=0.0,
            value_before=None,
            value_after=None,
            output=why[: wire.MAX_OUTPUT],
            output_truncated=False,
            script_sha256="",
            dry_run=False,
            request_id=request_id,
        ),
        urgent=True,
    )
    flow.deliver_now()
