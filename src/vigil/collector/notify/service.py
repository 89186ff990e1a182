"""The notifier: a background task that turns incident changes into notifications.

Every ``notifications.interval`` it asks the desk for what could notify
(:meth:`~collector.desk.service.Desk.alertables`), decides with the pure
:func:`collector.desk.engine.plan_notifications`, sends to every Alertmanager and webhook,
and records what was sent on the incident's timeline (so a restart neither repeats nor
loses a firing/resolved notification: the state is in storage, not in memory).

Alertmanager additionally gets every active, notified alert re-posted each
``resend_interval`` (its ``endsAt`` is then pushed forward).

A failing target backs off on its own (:mod:`collector.notify.health`): the others are
still sent to, and the pass counts as delivered when any target accepted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import aiohttp

from vigil.collector.desk import engine as incidents
from vigil.collector.notify import alertmanager, webhook
from vigil.collector.notify.config import NotifyConfig
from vigil.collector.notify.health import NotifyHealth, TargetKey, target_name

log = logging.getLogger(__name__)
T = TypeVar("T")


class AlertDesk(Protocol):
    """The two desk methods the notifier needs (:class:`~collector.desk.service.Desk`)."""

    def alertables(self, now: float) -> list[dict[str, Any]]: ...

    def mark_notified(
        self, fired: list[str], resolved: list[str], targets: str, now: float
    ) -> None: ...


# ``run(fn, *args)`` calls ``fn(*args)`` where desk calls belong (the storage thread).
RunOnStorage = Callable[..., Awaitable[Any]]


class Notifier:
    """One notifier pass at a time; every desk call goes through ``run`` so it stays on
    the storage thread."""

    def __init__(
        self,
        config: NotifyConfig,
        session: aiohttp.ClientSession,
        desk: AlertDesk,
        run: RunOnStorage,
        *,
        public_url: str | None,
        health: NotifyHealth | None = None,
    ) -> None:
        self._config = config
        self.health = health or NotifyHealth(target_keys(config), base_s=config.interval_s)
        self._session = session
        self._desk = desk
        self._run = run
        self._public_url = public_url
        self._last_post: float | None = None

    async def run_once(self, now: float) -> tuple[list[str], list[str]]:
        """One pass at ``now``; returns the refs notified firing and resolved."""
        items: list[dict[str, Any]] = await self._run(self._desk.alertables, now)
        by_ref = {i["ref"]: i for i in items}
        plan = [
            incidents.Alertable(
                ref=i["ref"],
                active=i["active"],
                opened_at=i["opened_at"],
                held=i["held"],
                notified=i["notified"],
                resolve_notified=i["resolve_notified"],
            )
            for i in items
        ]
        fire, resolve = incidents.plan_notifications(plan, now, self._config.delay_s)
        fired = [a.ref for a in fire]
        resolved = [a.ref for a in resolve]
        sent_to: list[str] = []

        if self._config.alertmanagers:
            repost = [i for i in items if i["active"] and i["notified"] and not i["held"]]
            due = self._last_post is None or now - self._last_post >= self._config.resend_s
            batch = [by_ref[r] for r in fired + resolved] + (repost if due else [])
            if batch:
                alerts = [
                    alertmanager.to_alert(
                        i, now=now, resend_s=self._config.resend_s, public_url=self._public_url
                    )
                    for i in batch
                ]
                ok = await self._each(
                    [(("alertmanager", target_name(t.url)), t) for t in self._config.alertmanagers],
                    lambda t: alertmanager.post_alerts(self._session, t, alerts),
                    now,
                )
                if ok:
                    self._last_post = now
                    sent_to.append("alertmanager")

        if self._config.webhooks and (fired or resolved):
            events = [_event("firing", by_ref[r]) for r in fired] + [
                _event("resolved", by_ref[r]) for r in resolved
            ]
            ok = await self._each(
                [(("webhook", target_name(t.url)), t) for t in self._config.webhooks],
                lambda t: webhook.send(self._session, t, events, now),
                now,
            )
            if ok:
                sent_to.append("webhook")

        if sent_to and (fired or resolved):
            await self._run(self._desk.mark_notified, fired, resolved, ", ".join(sent_to), now)
            return fired, resolved
        return [], []

    async def _each(
        self,
        targets: list[tuple[TargetKey, T]],
        send: Callable[[T], Awaitable[Any]],
        now: float,
    ) -> bool:
        """``send`` to every target not backing off, concurrently; record each result
        in :attr:`health`. True if at least one target accepted."""
        due = [(key, t) for key, t in targets if self.health.due(key, now)]
        results = await asyncio.gather(*(send(t) for _, t in due), return_exceptions=True)
        for (key, _), result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                self.health.failed(key, now, f"{type(result).__name__}: {result}")
            else:
                self.health.succeeded(key, now)
        return any(not isinstance(r, BaseException) for r in results)


def target_keys(config: NotifyConfig) -> list[TargetKey]:
    """Every configured target as a ``(kind, name)`` key (the metric's labels)."""
    return [("alertmanager", target_name(t.url)) for t in config.alertmanagers] + [
        ("webhook", target_name(t.url)) for t in config.webhooks
    ]


def _event(what: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"event": what, **{k: item[k] for k in _EVENT_KEYS}}


_EVENT_KEYS = (
    "ref",
    "kind",
    "id",
    "check",
    "host",
    "hostname",
    "service",
    "priority",
    "summary",
    "description",
    "remediation",
    "opened_at",
    "resolved_at",
    "resolution",
)
