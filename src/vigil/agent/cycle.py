"""The checks' side of the agent's jobs: what each job samples, and where results go.

The agent's checks run in three kinds of jobs (see :mod:`~vigil.agent.service`): the
main sample cycle (the checks without an interval of their own), one job per distinct
per-check ``interval``, and one job per command check (a Nagios plugin). Each samples
only the sources its checks read, through the :class:`~vigil.agent.measure.Measurer`,
and hands every result to the :class:`~vigil.agent.remediation.flow.RemediationFlow`,
which records transitions and runs remediations; a check whose remediation is in
flight is left to the flow. :attr:`CheckCycle.latest` keeps the latest value of every
series (plugin perfdata included) for the metrics summary, and
:attr:`CheckCycle.unknown_counts` how many readings of each check were ``unknown``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from vigil.agent.config import CheckSpec
from vigil.agent.measure import Measurer
from vigil.agent.remediation.flow import RemediationFlow
from vigil.agent.sampling.series import source_of


class CheckCycle:
    """Samples for the checks in ``checks`` and evaluates them through ``flow``.

    ``sample_s`` is the main cycle's interval: a check whose own interval is ``None`` or
    equal to it runs in the main cycle. ``clock`` gives wall seconds for the results.
    Each job method returns whether what it recorded is urgent (ship at once).
    """

    def __init__(
        self,
        checks: Sequence[CheckSpec],
        *,
        sample_s: float,
        measurer: Measurer,
        flow: RemediationFlow,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.measurer = measurer
        self.flow = flow
        self.clock = clock
        # Per-check intervals: the main cycle evaluates the checks without their own
        # interval; the others run in one job per distinct interval (command checks alone).
        self.main_checks: tuple[CheckSpec, ...] = tuple(
            c for c in checks if not c.is_command and c.interval_s in (None, sample_s)
        )
        self.interval_groups: dict[float, list[CheckSpec]] = {}
        for c in checks:
            if not c.is_command and c.interval_s not in (None, sample_s):
                self.interval_groups.setdefault(c.interval_s, []).append(c)  # type: ignore[arg-type]
        self.command_checks: tuple[CheckSpec, ...] = tuple(c for c in checks if c.is_command)
        # The sources the main cycle's checks read; all are sampled for a metrics summary.
        self.main_sources: frozenset[str] = frozenset(
            source for c in self.main_checks if (source := source_of(c.metric)) is not None
        )
        self.latest: dict[str, float] = {}
        self.plugin_values: dict[str, float] = {}
        # Check id -> readings that came out unknown since start. A metric-name typo keeps
        # a check unknown for ever; the metrics summary carries these counts (as
        # agent.unknown_total[<check>]) so that is visible rather than silent.
        self.unknown_counts: dict[str, int] = {}
        self._sampled_all = False

    async def main(self, *, everything: bool) -> bool:
        """The main cycle: sample :attr:`main_sources` (every source when ``everything``,
        and on the first call), evaluate the main checks."""
        every = everything or not self._sampled_all
        values = await self.measurer.sample(None if every else self.main_sources)
        if every:
            self._sampled_all = True
            # Plugin perfdata arrives on the command checks' own schedule; keep the latest.
            self.latest = {**self.plugin_values, **values}
        else:
            self.latest.update(values)
        return self._evaluate_all(self.main_checks, values)

    async def group(self, specs: Sequence[CheckSpec]) -> bool:
        """A per-check-interval job: sample only the sources ``specs`` need, evaluate them."""
        sources = {source_of(spec.metric) or "" for spec in specs}
        values = await self.measurer.sample(sources)
        self.latest = {**self.latest, **values}
        return self._evaluate_all(specs, values)

    async def command(self, spec: CheckSpec) -> bool:
        """Run one Nagios-plugin check; its exit status is the level, perfdata the values."""
        if self.flow.owns(spec.id):
            return False
        result = await self.measurer.plugin(spec)
        perf = result.series(spec.id)
        for key in [k for k in self.plugin_values if k.endswith(f"[{spec.id}]")]:
            del self.plugin_values[key]
        self.plugin_values.update(perf)
        value = next(iter(perf.values()), None)
        if result.state == "unknown":
            self._count_unknown(spec.id)
        return self.flow.evaluate(spec, value, self.clock(), level=result.state, text=result.text)

    def _evaluate_all(self, specs: Sequence[CheckSpec], values: Mapping[str, float]) -> bool:
        now = self.clock()
        urgent = False
        for spec in specs:
            if self.flow.owns(spec.id):
                continue  # the remediation task owns this check until it has verified
            value = values.get(spec.metric)
            reason = self.measurer.reason_for(spec.metric) if value is None else None
            if value is None:
                self._count_unknown(spec.id)
            urgent |= self.flow.evaluate(spec, value, now, reason=reason)
        return urgent

    def _count_unknown(self, check_id: str) -> None:
        self.unknown_counts[check_id] = self.unknown_counts.get(check_id, 0) + 1
