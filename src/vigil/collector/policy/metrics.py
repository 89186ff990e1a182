"""``/metrics`` for central policy, rendered from this process's in-memory snapshot at
scrape time (no storage query on the scrape path): which remediations are paused
fleet-wide (the kill switch and the blast-radius guard) and how many rollouts are
paused; and the fleet's agent versions from the hosts' reports (self-update). Label
cardinality: the halts an admin (or the guard) set; at most 21 versions."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vigil.collector.policy.release import top_versions
from vigil.collector.policy.runtime import PolicyRuntime


class PolicyMetrics(Collector):
    """``vigil_remediations_paused{remediation}`` (1 per halted remediation; ``*`` is
    the halt of every one), ``vigil_policy_rollouts_paused`` and
    ``vigil_agents_by_version{version}``."""

    def __init__(self, runtime: PolicyRuntime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._runtime.snapshot
        paused = GaugeMetricFamily(
            "vigil_remediations_paused",
            "Remediations halted fleet-wide (kill switch or blast-radius guard); '*' is all.",
            labels=["remediation"],
        )
        for remediation in sorted(snap.halts):
            paused.add_metric([remediation], 1.0)
        yield paused
        yield GaugeMetricFamily(
            "vigil_policy_rollouts_paused",
            "Policy rollouts paused (by an admin or the blast-radius guard).",
            value=float(sum(r.paused for r in snap.rollouts)),
        )
        versions = GaugeMetricFamily(
            "vigil_agents_by_version",
            "Hosts per reported agent version (top 20 versions, the rest as 'other').",
            labels=["version"],
        )
        for version, hosts in top_versions(self._runtime.agents_by_version()):
            versions.add_metric([version], float(hosts))
        yield versions
