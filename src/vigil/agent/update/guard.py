"""The running agent's side of self-update: confirm a new release, or give up on it.

A release that has just been switched to is *pending*. It confirms itself once
:data:`CONFIRM_DELIVERIES` reports (each carries a heartbeat) reached the collector since it
started; if it has not within ``confirm_within_s`` of the switch, it rolls itself back and
re-executes the launcher, which then runs the previous release. A release that crashes
before either is rolled back by the launcher's start count
(:data:`~vigil.agent.update.state.MAX_UNCONFIRMED_STARTS`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from vigil.agent.update.launch import RELEASE_ENV
from vigil.agent.update.settings import CONFIRM_WITHIN_S
from vigil.agent.update.state import UpdateState, confirm, load_state, roll_back, save_state

log = logging.getLogger("vigil.agent.update")

__all__ = ["CONFIRM_DELIVERIES", "CONFIRM_WITHIN_S", "UpdateGuard"]

CONFIRM_DELIVERIES = 2


class UpdateGuard:
    """Counts deliveries of this run and decides about the pending release.

    ``clock`` is wall time (the switch time in the state file is wall time too; a clock
    step can only make the decision earlier or later, never skip it).
    """

    def __init__(
        self,
        state_dir: Path,
        clock: Callable[[], float],
        *,
        confirm_within_s: float = CONFIRM_WITHIN_S,
        running_serial: int | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.clock = clock
        self.confirm_within_s = confirm_within_s
        self.state = load_state(state_dir)
        env = os.environ.get(RELEASE_ENV, "")
        self.running_serial = (
            running_serial if running_serial is not None else int(env) if env.isdigit() else 0
        )
        self._deliveries = 0

    @property
    def pending(self) -> bool:
        """True while the release this process runs has not confirmed."""
        return self.state.pending is not None and self.state.serial == self.running_serial

    def delivered(self) -> bool:
        """One report reached the collector; True when that confirmed the release."""
        if not self.pending:
            return False
        self._deliveries += 1
        if self._deliveries < CONFIRM_DELIVERIES:
            return False
        self._save(confirm(self.state))
        log.info(
            "agent release %s confirmed (%d reports delivered)",
            self.running_serial,
            self._deliveries,
        )
        return True

    def overdue(self) -> bool:
        """True when the pending release missed its confirmation deadline; the state then
        already names the previous release and the caller re-executes the launcher."""
        if not self.pending or self.state.pending is None:
            return False
        if self.clock() - self.state.pending.since < self.confirm_within_s:
            return False
        reason = (
            f"{self._deliveries} of {CONFIRM_DELIVERIES} reports delivered within "
            f"{self.confirm_within_s:.0f} s of the switch"
        )
        self._save(roll_back(self.state, reason, self.clock()))
        log.error("giving up on agent release %s: %s", self.running_serial, reason)
        return True

    def _save(self, state: UpdateState) -> None:
        save_state(self.state_dir, state)
        self.state = state
