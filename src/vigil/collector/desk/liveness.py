"""The periodic tick: liveness (a silent agent is the ``agent.heartbeat`` check failing),
overdue remediation results and flapping that settles.

Liveness needs no timer state: it is judged from each host's stored ``last_seen`` and TTL
(:func:`engine.is_silent`), so it survives a collector restart.

A stored row whose times are not finite numbers (written by an older version or a hand
edit; reports can no longer write one) is left out of the tick and logged once per
host: one such row must not fail the tick's transaction, which would stop liveness and
remediation deadlines for every host.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from vigil import wire
from vigil.collector.desk import engine
from vigil.collector.desk.actions import carry_out, flapping_now
from vigil.collector.desk.engine import KeyState
from vigil.collector.desk.work import Work, key_state

log = logging.getLogger("vigil.collector.desk")


class Budget:
    """How many state changes one tick step may still carry out, and for how long.

    A mass outage (a site's network down) silences thousands of hosts at once, and each
    incident opened costs several statements: carried out in one transaction, the tick
    held the storage for seconds while reads and reports queued (issue #17). Bounded, a
    step ends early and the next step, judged again from the stored state, carries on.

    ``changes``: at most this many (None: no bound). ``seconds``: no new change once the
    step has run this long (None: no bound; at least one change is always made, so a
    step never ends empty). The count alone let a step on PostgreSQL, a round trip per
    statement, hold the storage ~180 ms for 50 incidents (SQLite: ~22 ms); the time
    bounds what a request queued behind a step waits on either backend.
    ``clock``: seconds, monotonic (a fake in tests).
    """

    def __init__(
        self,
        changes: int | None,
        seconds: float | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.left = changes
        self.exhausted = False
        self._clock = clock
        self._until = None if seconds is None else clock() + seconds
        self._made = 0

    def take(self) -> bool:
        """Whether one more change may be carried out now (and count it)."""
        if self.exhausted:
            return False
        if (self.left is not None and self.left <= 0) or (
            self._until is not None and self._made and self._clock() >= self._until
        ):
            self.exhausted = True
            return False
        if self.left is not None:
            self.left -= 1
        self._made += 1
        return True


def tick(
    work: Work,
    now: float,
    remediation_wait_s: float,
    budget: Budget | None = None,
    *,
    full: bool = True,
) -> bool:
    """Run :func:`engine.on_tick` over every key awaiting a remediation or flapping, and
    :func:`engine.on_liveness` over every host, inside the caller's transaction.

    Keys of a silent host are skipped: per-check incidents are not opened for a host that
    cannot report. Opened incident ids land in ``work.changes``. With a ``budget``, at
    most that many changes are carried out; returns False when some were left for the
    next step (which finds them again: nothing is judged from memory). ``full``: see
    :func:`liveness_tick`.
    """
    budget = budget or Budget(None)
    liveness_tick(work, now, budget, full=full)
    # Only waits already past ``remediation_wait_s`` (engine.on_tick changes nothing for
    # a younger one), read through an index on awaiting_since: O(keys due), not
    # O(keys awaiting). Whether the key's host is silent comes with it.
    deadline_before = now - work.rules.heartbeat_grace_s
    for host, check, hostname, silent in work.uow.keys.pending(
        now - remediation_wait_s, deadline_before
    ):
        if budget.exhausted:
            break  # the next step reads these keys again
        if silent or check == wire.HEARTBEAT_CHECK:
            continue
        old = key_state(work.uow.keys.load(host, check))
        assert old is not None
        if not _time_or_none(old.awaiting_since):
            _skip(f"{host}/{check}", "check_state.awaiting_since", old.awaiting_since)
            continue
        flapping = flapping_now(work, host, check, now) if old.flapping else None
        new, actions = engine.on_tick(old, now, remediation_wait_s, flapping=flapping)
        if (old != new or actions) and budget.take():
            carry_out(work, host, hostname, check, old, new, actions, now)
    return not budget.exhausted


def liveness_tick(
    work: Work, now: float, budget: Budget | None = None, *, full: bool = True
) -> None:
    """Judge the liveness of the hosts whose verdict can change something.

    Reads only hosts whose heartbeat deadline passed or whose heartbeat key is not plainly
    ok (indexed, see :meth:`HostRepository.liveness`): O(due hosts) per tick, not
    O(hosts). A host left out is one that reported in time and has nothing to recover,
    for which :func:`engine.on_liveness` would change nothing. Unless ``full``, the
    silent hosts whose key already records their silence are left out too (their
    verdict depends only on their labels and the catalog, neither of which changes while
    a desk runs): the desk judges them all at its first tick, then only what changed,
    so thousands of laptops asleep overnight cost a tick nothing to ship and judge.
    """
    budget = budget or Budget(None)
    grace_s = work.rules.heartbeat_grace_s
    for row in work.uow.hosts.liveness(wire.HEARTBEAT_CHECK, now - grace_s, noted=full):
        host = row.agent_id
        if not isinstance(host, str):
            _skip(repr(host), "hosts.agent_id", host)
            continue
        if not (_time_or_none(row.last_seen) and row.last_seen is not None):
            _skip(host, "hosts.last_seen", row.last_seen)
            continue
        if not _time_or_none(row.heartbeat_ttl_s):
            _skip(host, "hosts.heartbeat_ttl_s", row.heartbeat_ttl_s)
            continue
        silent = engine.is_silent(row.last_seen, row.heartbeat_ttl_s, grace_s, now)
        if not silent:
            if row.key_state in (None, "ok") and row.incident_id is None:
                continue
            expected = False
        else:
            expected = work.catalog.silence_expected(row.labels)
            if expected and row.key_state == "unknown":
                # Asleep, already recorded as such (after an incident too: on_liveness
                # would only rewrite the key's "silent for N s" message every tick).
                continue
            if row.incident_id is not None and not expected:
                continue  # silent, incident already open
        if budget.exhausted:
            # This step is over; the next step judges the rest again from the stored
            # state (reading their keys now would be a round trip each on PostgreSQL).
            break
        old = key_state(work.uow.keys.load(host, wire.HEARTBEAT_CHECK))
        new, actions = engine.on_liveness(
            old or KeyState(), silent=silent, expected=expected, silent_for_s=now - row.last_seen
        )
        # Past the budget the host stays as it is (its keys wait: pending says silent).
        if ((old or KeyState()) != new or actions) and budget.take():
            carry_out(work, host, row.hostname, wire.HEARTBEAT_CHECK, old, new, actions, now)


# Keys already reported as skipped (bounded: a store full of bad rows logs at most this
# many lines over the process's life, not one per row per tick).
_REPORTED: set[str] = set()
_MAX_REPORTED = 100


def _time_or_none(value: object) -> bool:
    """Whether ``value`` is None or a finite real number (a usable stored time)."""
    if value is None:
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _skip(key: str, column: str, value: object) -> None:
    if key in _REPORTED or len(_REPORTED) >= _MAX_REPORTED:
        return
    _REPORTED.add(key)
    log.warning(
        "tick: skipping %s: %s is %s, not a finite time", key[:200], column, repr(value)[:80]
    )
