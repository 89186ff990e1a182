"""The survey flow over storage: queue a survey when an incident resolves, hand it to the
host's agent, record what the agent did with it, take the one answer, sum the answers up.

The decisions are in :mod:`collector.desk.satisfaction` (pure) and the link signature in
:mod:`collector.desk.survey_links`; this module runs them inside units of work. Every
method blocks on the storage: call them on the storage thread, like the rest of the desk.
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vigil.collector.desk import satisfaction
from vigil.collector.desk.satisfaction import SatisfactionPolicy, should_ask
from vigil.collector.desk.survey_links import KEY_BYTES, check_token, make_token
from vigil.collector.desk.work import Work
from vigil.collector.storage.protocols import Storage

log = logging.getLogger("vigil.collector.desk")

# What an agent may report about a survey it was handed (``Vigil-Surveys`` header).
DELIVERY_STATES = ("shown", "unavailable")
MAX_TITLE_CHARS = 120
# Acks that carry one survey at most: an agent that never confirms it (an older agent
# that ignores the key) stops being handed it after this many, and costs no more writes.
MAX_OFFERS = 20
# Surveys deleted per tick at most by retention (one short transaction); retention is
# looked at once per PRUNE_INTERVAL_S, and again at the next tick while chunks come full.
PRUNE_CHUNK = 1000
PRUNE_INTERVAL_S = 3600.0
# Seconds between recounts of the /metrics figures (a GROUP BY over every survey): the
# hosts waiting for a survey are reloaded every tick, the counts only this often; this
# collector's own answers are added at once in between.
FIGURES_INTERVAL_S = 60.0


class SurveyUsed(Exception):
    """The survey was answered already (its link is single-use): HTTP 410."""


class SurveyUnknown(Exception):
    """A correctly signed link whose survey is not stored (a database restored from an
    older backup) or does not belong to the incident it names: HTTP 410."""


def queue_after_resolve(work: Work, incident_id: int, now: float) -> int | None:
    """Queue a survey for the person at the host of ``incident_id``, which resolved at
    ``now``, when :func:`~collector.desk.satisfaction.should_ask` says so; inside the
    caller's transaction. Returns the survey id, or None."""
    policy = work.satisfaction
    if not policy.enabled:
        return None
    uow = work.uow
    incident = uow.incidents.get(incident_id)
    if incident is None:
        return None
    host = incident["host"]
    ask, why = should_ask(
        policy,
        # resolve() is only reached for an open incident: a raised one. Asking the stored
        # row keeps the rule in one place should that change.
        state="prevented" if incident.get("state") == "prevented" else "open",
        check=incident["check"],
        last_asked_at=uow.surveys.last_asked(host),
        now=now,
    )
    if not ask:
        log.debug("no survey for incident %d: %s", incident_id, why)
        return None
    labels = work.host_info(host)[1]
    title = (incident.get("message") or incident["check"])[:MAX_TITLE_CHARS]
    survey_id = uow.surveys.add(
        {
            "incident_id": incident_id,
            "host": host,
            "hostname": incident["hostname"],
            "department": labels.get(policy.department_label, ""),
            "service": incident.get("service") or "",
            "check_id": incident["check"],
            "title": title,
            "created_at": now,
            "expires_at": now + policy.link_lifetime_s,
        }
    )
    uow.incidents.add_timeline(incident_id, now, f"satisfaction survey {survey_id} queued")
    return survey_id


@dataclass(slots=True)
class SurveyFigures:
    """What ``/metrics`` shows of surveys, counted at the last refresh (no I/O to read)."""

    scores: list[tuple[str, str, int, int]] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)


class SurveyDesk:
    """Survey operations over ``storage`` for ``policy`` (the storage is the desk's)."""

    def __init__(self, storage: Storage, policy: SatisfactionPolicy) -> None:
        self._storage = storage
        self.policy = policy
        self._key = b""
        if policy.enabled:
            self._key = self._load_key()
        # Hosts with a survey to hand over, refreshed with the metrics figures: the ack
        # path asks this set, without I/O, before it asks the storage.
        self._lock = threading.Lock()
        self._waiting: set[str] = set()
        self._figures = SurveyFigures()
        self._figures_at: float | None = None
        self._pruned_at: float | None = None

    def _load_key(self) -> bytes:
        if self.policy.secret is not None:
            return self.policy.secret.encode()
        candidate = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
        with self._storage.session() as uow, uow.transaction():
            return base64.b64decode(uow.surveys.link_key(candidate))

    # ----------------------------------------------------------- delivery

    def has_waiting(self, host: str) -> bool:
        """Whether ``host`` may have a survey to hand over (no I/O; see :meth:`refresh`)."""
        return host in self._waiting

    def note_waiting(self, host: str) -> None:
        """``host`` may have a survey queued since the last :meth:`refresh` (an incident
        of it resolved): the next :meth:`offer` looks, instead of waiting for a tick."""
        with self._lock:
            self._waiting.add(host)

    def offer(self, host: str, now: float, utc_offset_s: float | None) -> list[dict[str, Any]]:
        """The surveys to hand to ``host``'s agent in this ack, each ``{id, token,
        incident, title}``, counted as offered; none inside the agent's quiet hours
        (``utc_offset_s``: its clock's offset east of UTC, None if unknown). A survey is
        offered again on later acks until the agent says it was shown or could not be."""
        if not self.policy.enabled or not satisfaction.may_deliver(
            self.policy.quiet_hours, now, utc_offset_s
        ):
            return []
        with self._storage.session() as uow:
            rows = uow.surveys.undelivered(host, now, MAX_OFFERS)
            if rows:
                with uow.transaction():
                    uow.surveys.mark_offered([r["id"] for r in rows], now)
        if not rows:
            with self._lock:
                self._waiting.discard(host)
        return [
            {
                "id": r["id"],
                "token": make_token(self._key, r["id"], r["incident_id"], r["expires_at"]),
                "incident": r["incident_id"],
                "title": r["title"],
            }
            for r in rows
        ]

    def record_delivery(
        self, host: str, reports: Sequence[tuple[int, str, str]], now: float
    ) -> int:
        """Record ``(survey_id, state, note)`` reported by ``host``'s agent (state in
        :data:`DELIVERY_STATES`); a survey of another host, or one already answered or
        reported, is left alone. Returns how many changed."""
        changed = 0
        with self._storage.session() as uow, uow.transaction():
            for survey_id, state, note in reports:
                if state in DELIVERY_STATES:
                    changed += uow.surveys.mark_delivery(survey_id, host, state, note, now)
        return changed

    # ----------------------------------------------------------- the link

    def open_link(self, token: str, now: float) -> dict[str, Any]:
        """The survey a link names. Raises :class:`~collector.desk.survey_links.LinkError`
        (forged 403, expired 410), :class:`SurveyUnknown` or :class:`SurveyUsed`."""
        survey_id, incident_id = check_token(self._key, token, now)
        with self._storage.session() as uow:
            row = uow.surveys.get(survey_id)
        if row is None or row["incident_id"] != incident_id:
            raise SurveyUnknown("this survey no longer exists")
        if row["answered_at"] is not None:
            raise SurveyUsed("this survey was answered already; thank you")
        return row

    def answer(self, token: str, score: int, comment: str, now: float) -> dict[str, Any]:
        """Record the answer the link's holder gave; raises what :meth:`open_link`
        raises, and :class:`SurveyUsed` when another answer won the race."""
        row = self.open_link(token, now)
        text = comment.strip()[: satisfaction.MAX_COMMENT_CHARS]
        with self._storage.session() as uow, uow.transaction():
            if not uow.surveys.answer(row["id"], score, text, now):
                raise SurveyUsed("this survey was answered already; thank you")
            uow.incidents.add_timeline(
                row["incident_id"], now, f"satisfaction survey {row['id']} answered: {score}/10"
            )
        with self._lock:  # counted at once here; the next recount includes it anyway
            figures = self._figures
            figures.scores.append((row["department"], row["service"], score, 1))
            if figures.states.get(row["state"], 0) > 0:
                figures.states[row["state"]] -= 1
            figures.states["answered"] = figures.states.get("answered", 0) + 1
        return row | {"score": score, "comment": text, "answered_at": now}

    # ----------------------------------------------------------- reads

    def summary(
        self,
        *,
        department: str | None = None,
        service: str | None = None,
        since: float | None = None,
    ) -> dict[str, Any]:
        """NPS and CSAT overall, per department and per service, of answers given at or
        after ``since`` (Unix seconds; None: all), optionally for one department or
        service (see :func:`~collector.desk.satisfaction.summarize`)."""
        with self._storage.session() as uow:
            rows = uow.surveys.score_counts(since)
        return satisfaction.summarize(rows, department=department, service=service)

    def of_incident(self, incident_id: int) -> list[dict[str, Any]]:
        """The incident's surveys: delivery and answer, without the link (not kept)."""
        with self._storage.session() as uow:
            return uow.surveys.of_incident(incident_id)

    def prune(self, now: float, *, limit: int = PRUNE_CHUNK) -> int:
        """Delete at most ``limit`` surveys queued more than ``retention_s`` before
        ``now``, with their answers and comments (privacy: kept no longer than needed).
        Runs whether or not surveys are enabled now: surveys once taken still expire."""
        if self._pruned_at is not None and 0 <= now - self._pruned_at < PRUNE_INTERVAL_S:
            return 0
        with self._storage.session() as uow, uow.transaction():
            pruned = uow.surveys.prune(now - self.policy.retention_s, limit)
        # A full chunk: more may be due, so look again at the next tick.
        self._pruned_at = None if pruned >= limit else now
        return pruned

    # ----------------------------------------------------------- figures

    def refresh(self, now: float) -> None:
        """Reload the hosts with surveys waiting, and every :data:`FIGURES_INTERVAL_S`
        recount the figures ``/metrics`` reads (the app calls this with the other
        figures after every tick; other collectors' answers show within the interval)."""
        if not self.policy.enabled:
            return
        recount = self._figures_at is None or not 0 <= now - self._figures_at < FIGURES_INTERVAL_S
        with self._storage.session() as uow:
            waiting = uow.surveys.hosts_undelivered(now, MAX_OFFERS)
            if recount:
                figures = SurveyFigures(uow.surveys.score_counts(None), uow.surveys.state_counts())
        with self._lock:
            self._waiting = waiting
            if recount:
                self._figures = figures
                self._figures_at = now

    def figures(self) -> SurveyFigures:
        """A copy of the figures counted at the last recount, plus this collector's
        answers since (no I/O)."""
        with self._lock:
            return SurveyFigures(list(self._figures.scores), dict(self._figures.states))
