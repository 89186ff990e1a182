"""The periodic tick: liveness (a silent agent is the ``agent.heartbeat`` check failing),
overdue remediation results and flapping that settles.

Liveness needs no timer state: it is judged from each host's stored ``last_seen`` and TTL
(:func:`engine.is_silent`), so it survives a collector restart.
"""

from __future__ import annotations

from vigil import wire
from vigil.collector.desk import engine
from vigil.collector.desk.actions import carry_out, flapping_now
from vigil.collector.desk.engine import KeyState
from vigil.collector.desk.work import Work, key_state


def tick(work: Work, now: float, remediation_wait_s: float) -> None:
    """Run :func:`engine.on_tick` over every key awaiting a remediation or flapping, and
    :func:`engine.on_liveness` over every host, inside the caller's transaction.

    Keys of a silent host are skipped: per-check incidents are not opened for a host that
    cannot report. Opened incident ids land in ``work.changes``.
    """
    silent = liveness_tick(work, now)
    for host, check, hostname in work.uow.keys.pending():
        if host in silent or check == wire.HEARTBEAT_CHECK:
            continue
        old = key_state(work.uow.keys.load(host, check))
        assert old is not None
        flapping = flapping_now(work, host, check, now) if old.flapping else None
        new, actions = engine.on_tick(old, now, remediation_wait_s, flapping=flapping)
        if old != new or actions:
            carry_out(work, host, hostname, check, old, new, actions, now)


def liveness_tick(work: Work, now: float) -> set[str]:
    """Judge every host's liveness; returns the agent_ids that are silent.

    One query for every host and its heartbeat key; the engine runs only for a host whose
    verdict could change something (O(hosts) cheap comparisons per tick).
    """
    silent_hosts: set[str] = set()
    grace_s = work.rules.heartbeat_grace_s
    for row in work.uow.hosts.liveness(wire.HEARTBEAT_CHECK):
        host = row.agent_id
        silent = engine.is_silent(row.last_seen, row.heartbeat_ttl_s, grace_s, now)
        if not silent:
            if row.key_state in (None, "ok") and row.incident_id is None:
                continue
            expected = False
        else:
            silent_hosts.add(host)
            expected = work.catalog.silence_expected(row.labels)
            if row.incident_id is None and expected and row.key_state == "unknown":
                continue  # asleep, already recorded as such
            if row.incident_id is not None and not expected:
                continue  # silent, incident already open
        old = key_state(work.uow.keys.load(host, wire.HEARTBEAT_CHECK))
        new, actions = engine.on_liveness(
            old or KeyState(), silent=silent, expected=expected, silent_for_s=now - row.last_seen
        )
        if (old or KeyState()) != new or actions:
            carry_out(work, host, row.hostname, wire.HEARTBEAT_CHECK, old, new, actions, now)
    return silent_hosts
