"""Rebuilding the running agent's checks and remediations for a new config (a policy
applied without a restart; :meth:`AgentService._swap_policy` does the swap itself)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from vigil.agent.config import AgentConfig
from vigil.agent.cycle import CheckCycle
from vigil.agent.events import EventSink
from vigil.agent.remediation.flow import RemediationFlow
from vigil.agent.remediation.manifest import Remediation, with_schedule


def rebuilt(
    config: AgentConfig,
    library: Mapping[str, Remediation],
    old_flow: RemediationFlow,
    old_checks: CheckCycle,
    *,
    sink: EventSink,
    clock: Callable[[], float],
    deliver_now: Callable[[], None],
) -> tuple[RemediationFlow, CheckCycle]:
    """A new flow and check cycle for ``config``, carrying over what must not reset: the
    checks' statuses (no spurious transitions for checks that stayed), the kill switch,
    the latest values and the unknown counts. The sampler (and its rate baselines) and
    the measurer are shared. Runs in flight stay with ``old_flow`` and finish there."""
    flow = RemediationFlow(
        config.remediation,
        with_schedule(config, library),
        sink,
        measure=old_flow.measure,
        clock=clock,
        deliver_now=deliver_now,
    )
    flow.statuses = old_flow.statuses
    flow.halted, flow.halt_all = old_flow.halted, old_flow.halt_all
    checks = CheckCycle(
        config.checks,
        sample_s=config.intervals.sample_s,
        measurer=old_checks.measurer,
        flow=flow,
        clock=clock,
    )
    checks.latest = old_checks.latest
    checks.unknown_counts = old_checks.unknown_counts
    return flow, checks
