"""What one collector process keeps in memory for the policy exchange, so a report's
acknowledgement costs no storage query: the :class:`~collector.policy.service.Snapshot`
(rollouts, halts, open run-now requests; reloaded every ``policy.refresh`` and at once
after a write through this process), the version each host said it runs (written to the
storage in one transaction per refresh, only what changed), and recently served bundle
documents (immutable once stored).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from vigil.collector.policy import rollout as core
from vigil.collector.policy.release import release_offer
from vigil.collector.policy.service import Snapshot
from vigil.policy_bundle import parse_policy_tag

AGENT_POLICY_URL = "/api/v1/agent/policy"
POLICY_HEADER = "X-Vigil-Policy"
_DOCUMENTS_KEPT = 16  # bundle documents cached (each up to 32 MiB, usually a few KiB)
_LABELS_KEPT = 200_000  # hosts whose last labels are remembered for GET agent/policy

Running = tuple[str | None, int | None]


class PolicyRuntime:
    """Thread-safe: the event loop reads and notes, the storage thread flushes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.snapshot = Snapshot()
        self._known: dict[str, Running] = {}
        self._dirty: dict[str, tuple[str | None, int | None, float]] = {}
        self._labels: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._documents: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        # Fleet view of agent versions: each host's last reported agent_version and the
        # count per version, kept in step on every report (read at scrape time).
        self._agent_version: dict[str, str] = {}
        self._by_version: dict[str, int] = {}
        # The leader's guard pass: when each waiting ring's evidence was last read
        # (service.guard_pass spaces those reads; only the storage thread touches it).
        self.evidence_checked: dict[tuple[str, int, int], float] = {}

    @staticmethod
    def parse_header(value: str) -> Running:
        """``X-Vigil-Policy`` (``<policy>@<version>`` or ``none``); ValueError when bad."""
        parsed = parse_policy_tag(value)
        return (None, None) if parsed is None else parsed

    def note(
        self,
        agent_id: str,
        running: Running,
        labels: Mapping[str, str],
        now: float,
        agent_version: str | None = None,
    ) -> None:
        """Remember what ``agent_id`` runs (stored at the next flush when it changed),
        its labels (for its next policy fetch) and its agent version (fleet view)."""
        with self._lock:
            if agent_version is not None:
                self._set_version(agent_id, agent_version)
            if self._known.get(agent_id) != running:
                self._known[agent_id] = running
                self._dirty[agent_id] = (*running, now)
            self._labels[agent_id] = dict(labels)
            self._labels.move_to_end(agent_id)
            if len(self._labels) > _LABELS_KEPT:
                self._labels.popitem(last=False)

    def _set_version(self, agent_id: str, version: str) -> None:
        old = self._agent_version.get(agent_id)
        if old == version:
            return
        if old is not None:
            left = self._by_version[old] - 1
            if left:
                self._by_version[old] = left
            else:
                del self._by_version[old]
        self._agent_version[agent_id] = version
        self._by_version[version] = self._by_version.get(version, 0) + 1

    def replace_versions(self, hosts: Mapping[str, str]) -> None:
        """Take every host's agent version from storage (``agent_id -> version``), at
        start and every few minutes: what other collector processes heard shows up; what
        this one hears in between updates it at once (:meth:`note`)."""
        counts: dict[str, int] = {}
        for version in hosts.values():
            counts[version] = counts.get(version, 0) + 1
        with self._lock:
            self._agent_version = dict(hosts)
            self._by_version = counts

    def replace_running(self, stored: Mapping[str, Running]) -> None:
        """Take what storage says each host runs (``agent_id -> (policy, version)``), at
        start and every few minutes, as what this process knows.

        Why: a report is stored only when what its host runs differs from the known
        value, and a process that started knowing nothing wrote one row for every host's
        first report (50,000 rows in the minute after a restart; in ``bench/delivery.py``,
        whose agents each report about once a phase, ~6 % of a report's instructions).
        Reading it also takes in what hosts told other collector processes. Changes noted
        here and not stored yet stay pending, and are what this process knows for them.
        """
        shared: dict[Running, Running] = {}  # one tuple per distinct value, not per host
        known = {agent_id: shared.setdefault(value, value) for agent_id, value in stored.items()}
        with self._lock:
            for agent_id, (policy, version, _at) in self._dirty.items():
                known[agent_id] = (policy, version)
            self._known = known

    def agents_by_version(self) -> dict[str, int]:
        """Hosts per agent version (a copy; cost O(distinct versions))."""
        with self._lock:
            return dict(self._by_version)

    def release_offer(self, agent_id: str, labels: Mapping[str, str]) -> dict[str, Any] | None:
        """The ack's ``"release"`` key for this host (see ``release.release_offer``)."""
        snap = self.snapshot
        return release_offer(snap.rollouts, snap.releases, agent_id, labels)

    def take_changes(self) -> list[tuple[str, str | None, int | None, float]]:
        """The running versions that changed since the last call (to store)."""
        with self._lock:
            rows = [(a, p, v, t) for a, (p, v, t) in self._dirty.items()]
            self._dirty.clear()
        return rows

    def give_back(self, rows: list[tuple[str, str | None, int | None, float]]) -> None:
        """Changes whose flush failed: kept for the next one (unless newer ones came)."""
        with self._lock:
            for agent_id, policy, version, at in rows:
                self._dirty.setdefault(agent_id, (policy, version, at))

    def labels_of(self, agent_id: str) -> dict[str, str] | None:
        with self._lock:
            return self._labels.get(agent_id)

    def offer(self, agent_id: str, labels: Mapping[str, str]) -> dict[str, Any]:
        """The ack's ``"policy"`` key for this host (see ``rollout.offer``)."""
        snap = self.snapshot  # one consistent snapshot (replaced whole, never mutated)
        return core.offer(
            snap.rollouts, snap.halts, snap.run_now, agent_id, labels, AGENT_POLICY_URL
        )

    def document(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            return self._documents.get(key)

    def keep_document(self, key: tuple[str, int], document: bytes) -> None:
        with self._lock:
            self._documents[key] = document
            self._documents.move_to_end(key)
            while len(self._documents) > _DOCUMENTS_KEPT:
                self._documents.popitem(last=False)
