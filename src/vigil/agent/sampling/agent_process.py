"""The agent's own footprint: its CPU time and resident memory."""

from __future__ import annotations

from typing import Any

from vigil.agent.sampling.series import FailureLog, Item


class AgentProcess:
    """``agent.cpu_seconds_total`` (user + system) and ``agent.rss_bytes``.

    One ``Process`` object for the agent's lifetime: creating it costs a ``/proc`` read.
    When it cannot be created, the failure is logged once and :meth:`read` raises.
    """

    def __init__(self, *, ps: Any, failures: FailureLog) -> None:
        self._proc: Any = None
        try:
            self._proc = ps.Process()
        except Exception as exc:
            failures.failed("agent", exc)

    def read(self) -> list[Item]:
        """One reading; raises ``LookupError`` when the process was unavailable at start."""
        if self._proc is None:
            raise LookupError("psutil.Process() was unavailable at start")
        times = self._proc.cpu_times()
        return [
            ("agent.cpu_seconds_total", times.user + times.system),
            ("agent.rss_bytes", self._proc.memory_info().rss),
        ]
