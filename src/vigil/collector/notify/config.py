"""The ``notifications:`` section of the collector config: targets, timing, signing."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from vigil.configio import Section


@dataclass(frozen=True, slots=True)
class AlertmanagerTarget:
    """One Alertmanager (base URL, e.g. ``http://127.0.0.1:9093``); ``timeout_s`` per POST."""

    url: str
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A JSON webhook. ``secret`` signs the body (``X-Vigil-Signature: sha256=<hex>``);
    ``max_attempts`` POSTs with exponential backoff from ``backoff_s``; ``timeout_s`` each."""

    url: str
    secret: str | None = None
    max_attempts: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class NotifyConfig:
    """Where and when to notify.

    ``delay_s``: an incident notifies only once it has been open this long (a group wait:
    a fleet problem can claim host incidents first, so a fleet outage is one notification,
    not a flood). ``resend_s``: active alerts are re-posted to Alertmanager this often (and
    expire after four missed re-posts if the collector dies). ``interval_s``: how often the
    notifier looks for changes.
    """

    alertmanagers: tuple[AlertmanagerTarget, ...] = ()
    webhooks: tuple[WebhookTarget, ...] = ()
    delay_s: float = 30.0
    resend_s: float = 60.0
    interval_s: float = 5.0

    @property
    def enabled(self) -> bool:
        return bool(self.alertmanagers or self.webhooks)


def parse_notifications(n: Section) -> NotifyConfig:
    """Read the ``notifications:`` section (already a :class:`Section`); calls ``done()``."""
    alertmanagers = []
    for a in n.sections("alertmanager"):
        alertmanagers.append(
            AlertmanagerTarget(url=_url(a), timeout_s=a.duration("timeout", 10.0, minimum=0.1))
        )
        a.done()
    webhooks = []
    for w in n.sections("webhooks"):
        # Same rule as the bearer tokens: a guessable key lets anyone forge notifications.
        secret = w.secret("secret", None)
        webhooks.append(
            WebhookTarget(
                url=_url(w),
                secret=secret,
                max_attempts=w.get("max_attempts", int, 5, minimum=1, maximum=20),
                backoff_s=w.duration("backoff", 1.0, minimum=0.01),
                timeout_s=w.duration("timeout", 10.0, minimum=0.1),
            )
        )
        w.done()
    config = NotifyConfig(
        alertmanagers=tuple(alertmanagers),
        webhooks=tuple(webhooks),
        delay_s=n.duration("delay", 30.0),
        resend_s=n.duration("resend_interval", 60.0, minimum=1.0),
        interval_s=n.duration("interval", 5.0, minimum=0.1),
    )
    n.done()
    return config


def _url(s: Section) -> str:
    url = s.get("url", str)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise s.error("url", "must be an http:// or https:// URL", url)
    return url.rstrip("/")
