"""Simulated agents for multi-collector tests and ``bench/multicollector.py``.

A :class:`SimAgent` numbers its events as a real agent's outbox does (one epoch, a seq
that only grows) and builds sequenced reports; :func:`deliver` posts one on a fresh
connection each try (so ``SO_REUSEPORT`` spreads them over the collector processes) and
retries the same batch until a ``200``, as the shipper does: delivery at-least-once,
effect exactly-once. Only ``127.0.0.1``; every retry loop is bounded in time.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from dataclasses import dataclass, field

from vigil import wire


@dataclass
class SimAgent:
    """One agent's identity and sequence; :attr:`sent` lists the event ids of every
    report built (what must be applied exactly once)."""

    agent_id: str
    epoch: str = field(default_factory=lambda: uuid.uuid4().hex)
    next_seq: int = 1
    batches: int = 0
    sent: list[str] = field(default_factory=list)

    def report(
        self,
        *,
        check: str | None = None,
        state: wire.CheckState = "ok",
        heartbeat_ttl_s: float = 60.0,
    ) -> wire.Report:
        """The next report: a heartbeat (``heartbeat_ttl_s``) and, when ``check`` is
        given, that check's result in ``state`` (from ``ok``)."""
        now = time.time()
        self.batches += 1
        batch = f"{self.agent_id}-b{self.batches}"
        events: list[wire.CheckEvent] = [
            self._event(batch, now, "agent.heartbeat", "ok", None, ttl_s=heartbeat_ttl_s)
        ]
        if check is not None:
            events.append(self._event(batch, now, check, state, "ok"))
        self.sent.extend(e.event_id for e in events)
        return wire.Report(
            schema_version=wire.SCHEMA_VERSION, agent_id=self.agent_id,
            hostname=f"{self.agent_id}.example.test", labels={}, batch_id=batch, sent_at=now,
            agent_version="0.1.0", events=tuple(events), epoch=self.epoch,
            seq_first=events[0].seq, seq_last=events[-1].seq,
        )  # fmt: skip

    def _event(
        self,
        batch: str,
        now: float,
        check: str,
        state: wire.CheckState,
        previous: wire.CheckState | None,
        ttl_s: float | None = None,
    ) -> wire.CheckEvent:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return wire.CheckEvent(
            event_id=f"{batch}-e{seq}", seq=seq, time=now, check=check, state=state,
            previous_state=previous, value=None, message=f"{check} {state}", ttl_s=ttl_s,
        )  # fmt: skip


def post(port: int, report: wire.Report, token: str, timeout_s: float = 10.0) -> int | None:
    """POST ``report`` to ``127.0.0.1:port`` on a new connection; the status, or None when
    the connection failed (refused, reset: e.g. the process that took it was killed)."""
    body = json.dumps(report.to_dict()).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request(
            "POST",
            "/api/v1/reports",
            body=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def deliver(
    port: int, report: wire.Report, token: str, *, deadline_s: float = 30.0
) -> tuple[bool, int]:
    """Post ``report`` until a ``200`` or ``deadline_s`` seconds pass (0.2 s between
    tries); ``(acknowledged, tries)``. Anything but 200 is retried, the batch unchanged."""
    end = time.monotonic() + deadline_s
    tries = 0
    while True:
        tries += 1
        if post(port, report, token) == 200:
            return True, tries
        if time.monotonic() >= end:
            return False, tries
        time.sleep(0.2)
