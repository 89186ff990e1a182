"""Reading checks' values on the event loop: the sampler one sample at a time, plugins.

Both the agent's cycle and the remediation flow (re-measuring a check after a fix) read
through one :class:`Measurer`, so a blocking sample on a worker thread never stalls the
loop on the sampler's own lock: samples are serialised here instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

from vigil.agent.config import CheckSpec
from vigil.agent.plugins import PluginResult, run_plugin
from vigil.agent.sampling.series import source_of
from vigil.wire import CheckState


class SampleSource(Protocol):
    """What the agent needs of a sampler (the real one is ``Sampler``).

    A sampler may also offer ``blocking(sources) -> bool`` (whether sampling those sources
    may block; without it every sample runs on a worker thread) and
    ``reason_for(metric) -> str`` (why a series is missing) and ``refresh(sources)``
    (read cached sources anew at the next sample, for a verification).
    """

    def sample(self, sources: Iterable[str] | None = None) -> dict[str, float]:
        """The current values of ``sources`` (``None``: every source)."""
        ...

    def sample_paths(self) -> dict[str, float]:
        """The current values of the path series (a walk that may take a while)."""
        ...


PluginRunner = Callable[..., Awaitable[PluginResult]]


class Measurer:
    """Samples through ``sampler`` one call at a time, and runs command checks' plugins
    with ``run_plugin`` (default: the real :func:`vigil.agent.plugins.run_plugin`)."""

    def __init__(self, sampler: SampleSource, *, run_plugin: PluginRunner = run_plugin) -> None:
        self.sampler = sampler
        self.run_plugin = run_plugin
        # One sample at a time, so a blocking one on a worker never stalls the loop on the
        # sampler's own lock.
        self._sampling = asyncio.Lock()

    async def sample(self, sources: Iterable[str] | None) -> dict[str, float]:
        """``sampler.sample(sources)``: on the loop when the sampler says it will not block
        (a few ``/proc`` reads cost less than handing them to a thread and back), else on
        a worker thread. A sampler without ``blocking()`` always runs on a worker."""
        async with self._sampling:
            blocking = getattr(self.sampler, "blocking", None)
            if blocking is not None and not blocking(sources):
                return self.sampler.sample(sources)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, self.sampler.sample, sources)

    def reason_for(self, metric: str) -> str | None:
        """Why ``metric`` is missing, when the sampler can say."""
        reason_for = getattr(self.sampler, "reason_for", None)
        return reason_for(metric) if reason_for else None

    async def plugin(self, spec: CheckSpec) -> PluginResult:
        """Run the plugin of the command check ``spec`` once."""
        return await self.run_plugin(spec.command, timeout_s=spec.timeout_s)

    async def measure(self, spec: CheckSpec) -> tuple[float | None, CheckState | None]:
        """Measure ``spec`` again: (value, level). The level is set for a command check
        (its plugin's state); otherwise it is None and the value decides."""
        if spec.is_command:
            result = await self.plugin(spec)
            return next(iter(result.series(spec.id).values()), None), result.state
        return await self._resample(spec.metric), None

    async def _resample(self, metric: str) -> float | None:
        if metric.startswith("path."):
            async with self._sampling:
                loop = asyncio.get_running_loop()
                values = await loop.run_in_executor(None, self.sampler.sample_paths)
        else:
            # Only the source this series comes from: a verification should not cost a
            # full sample (and must not disturb rates more than needed).
            source = source_of(metric)
            refresh = getattr(self.sampler, "refresh", None)
            if refresh is not None and source is not None:
                refresh({source})  # a reading cached for an interval would be the stale one
            values = await self.sample(None if source is None else {source})
        return values.get(metric)
