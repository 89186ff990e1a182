"""The heartbeat and the agent's self-health, recorded together at every heartbeat.

The heartbeat is the ``agent.heartbeat`` check result whose ``ttl_s`` promises the next
(liveness). It also carries the agent's self-health: its ``value`` is the largest
event-loop lag since the previous heartbeat (seconds) and its message the figures of
:mod:`~vigil.agent.selfhealth`; then the ``agent.self_health`` check is evaluated from
them through the remediation flow's ordinary check machinery, so the collector raises
and resolves its incident like any other check's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from vigil import __version__, wire
from vigil.agent.checks import CheckStatus
from vigil.agent.config import AgentConfig, CheckSpec
from vigil.agent.delivery.outbox import Outbox
from vigil.agent.delivery.shipper import Shipper
from vigil.agent.events import new_event_id
from vigil.agent.remediation.flow import RemediationFlow
from vigil.agent.selfhealth import (
    SELF_HEALTH_CHECK,
    SelfHealthMonitor,
    SelfHealthReading,
    describe,
    take_reading,
)
from vigil.agent.timers import Timers

log = logging.getLogger("vigil.agent")

# A heartbeat promises the next one within this many intervals (the collector adds grace).
HEARTBEAT_TTL_INTERVALS = 2.5
# The agent.self_health check: its level comes from selfhealth.assess, so the spec only
# names it for the check machinery (transitions, flapping, events).
SELF_HEALTH_SPEC = CheckSpec(
    id=SELF_HEALTH_CHECK,
    metric="",
    description="the agent's own health: event loop lag, outbox fill, delivery",
)


class HeartbeatRecorder:
    """Records heartbeats and ``agent.self_health`` results for one agent run.

    ``outbox`` takes the heartbeat; ``clock`` gives wall seconds. The remediation flow
    and the shipper come with each call: a central policy replaces the flow while the
    agent runs, and tests replace the shipper.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        outbox: Outbox,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.clock = clock
        self.monitor = SelfHealthMonitor(config.self_health)
        self.started = time.monotonic()

    def start(self) -> None:
        """The agent's jobs start now (delivery age counts from here until a success)."""
        self.started = time.monotonic()

    def record(self, timers: Timers | None, shipper: Shipper, flow: RemediationFlow) -> bool:
        """Record one heartbeat and evaluate ``agent.self_health`` from ``timers`` (the
        agent's, ``None`` before they run: no figures then) and ``shipper`` (how delivery
        goes) through ``flow``'s check machinery. True when what was recorded is urgent
        (the self-health check went critical): ship at once."""
        ttl = self.config.intervals.heartbeat_s * HEARTBEAT_TTL_INTERVALS
        reading = self.read(timers, shipper)
        self.outbox.put(
            wire.CheckEvent(
                event_id=new_event_id(),
                seq=0,
                time=self.clock(),
                check=wire.HEARTBEAT_CHECK,
                state="ok",
                previous_state=None,
                value=None if reading is None else round(reading.loop_lag_s, 3),  # ms: enough
                message=f"agent {__version__} alive"
                + ("" if reading is None else f"; {describe(reading)}"),
                ttl_s=ttl,
            )
        )
        urgent = False
        if reading is not None and self.config.self_health.enabled:
            verdict = self.monitor.observe(reading)
            urgent = flow.evaluate(
                SELF_HEALTH_SPEC,
                reading.loop_lag_s,
                self.clock(),
                level=verdict.level,  # type: ignore[arg-type]
                text=verdict.message[: wire.MAX_STR],
            )
        statuses = flow.statuses
        if not statuses.get(wire.HEARTBEAT_CHECK):
            # The first heartbeat goes out with the (jittered) first delivery, so a new host
            # appears within one report interval.
            statuses[wire.HEARTBEAT_CHECK] = CheckStatus("ok", self.clock(), None)
        return urgent

    def read(self, timers: Timers | None, shipper: Shipper) -> SelfHealthReading | None:
        """The self-health figures now (takes the timers' largest lag, resetting it);
        ``None`` without timers or when the outbox cannot be read."""
        if timers is None:
            return None
        try:
            ob = self.outbox.stats()
        except Exception:  # a broken outbox is reported by the failures it causes
            log.exception("cannot read the outbox's figures")
            return None
        return take_reading(
            timers,
            outbox_events=ob.depth,
            outbox_bytes=ob.payload_bytes,
            outbox_max_bytes=self.config.outbox.max_bytes,
            last_delivery=shipper.last_delivery,
            delivery_failures=shipper.failures_in_a_row,
            started=self.started,
            now=time.monotonic(),
        )
