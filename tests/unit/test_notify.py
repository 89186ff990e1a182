"""Notifications: the webhook (HMAC, retries), the Alertmanager payload, the notifier's
decisions over a hand-written fake store, and the ``notifications:`` config."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from vigil.collector.config import load_collector_config
from vigil.collector.notify import alertmanager, webhook
from vigil.collector.notify.config import AlertmanagerTarget, NotifyConfig, WebhookTarget
from vigil.collector.notify.health import NotifyHealth, target_name
from vigil.collector.notify.service import Notifier
from vigil.configio import ConfigError

T0 = 1_704_067_200.0


class Receiver:
    """An aiohttp server on 127.0.0.1 answering with the scripted statuses, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


async def serving(receiver: Receiver, body: Callable[[str], Awaitable[Any]]) -> Any:
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        return await body(f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


def hook(url: str, **kw: Any) -> WebhookTarget:
    return WebhookTarget(url=url + "/hook", **{"secret": "s3cret", "backoff_s": 0.01, **kw})


# --------------------------------------------------------------------------- webhook


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    target = WebhookTarget(url="http://x", secret="s3cret")
    body, headers = webhook.build_request(target, [{"event": "firing"}], T0)
    expected = hmac.new(b"s3cret", f"{T0:.0f}.".encode() + body, hashlib.sha256).hexdigest()
    assert headers["X-Vigil-Signature"] == f"sha256={expected}"
    assert headers["X-Vigil-Timestamp"] == f"{T0:.0f}"


def test_without_a_secret_nothing_is_signed() -> None:
    _, headers = webhook.build_request(WebhookTarget(url="http://x"), [], T0)
    assert "X-Vigil-Signature" not in headers


@pytest.mark.parametrize(
    ("statuses", "attempts", "delivered"),
    [
        ([], 1, True),
        ([500, 503], 3, True),
        ([429], 2, True),
        ([400], 1, False),
        ([500, 500, 500], 3, False),
    ],
    ids=[
        "delivered at once",
        "retried past server errors",
        "retried after 429",
        "a 400 is final",
        "gives up after max_attempts",
    ],
)
def test_webhook_retries(statuses, attempts, delivered) -> None:
    receiver = Receiver(statuses)

    async def body(url: str) -> Any:
        async with aiohttp.ClientSession() as http:
            try:
                return await webhook.send(http, hook(url, max_attempts=3), [{"e": 1}], T0)
            except webhook.WebhookFailed:
                return None

    result = asyncio.run(serving(receiver, body))
    assert len(receiver.requests) == attempts
    assert (result is not None) is delivered
    bodies = {raw for _, raw in receiver.requests}
    assert len(bodies) == 1, "every retry sends the same body (receivers can deduplicate)"


def test_an_unreachable_webhook_fails_after_its_attempts() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            target = WebhookTarget(url="http://127.0.0.1:9/x", max_attempts=2, backoff_s=0.01)
            await webhook.send(http, target, [], T0)

    with pytest.raises(webhook.WebhookFailed, match="gave up after 2 attempts"):
        asyncio.run(main())


# --------------------------------------------------------------------------- alertmanager


def item(**kw: Any) -> dict[str, Any]:
    base = {
        "ref": "incident:7", "kind": "incident", "id": 7, "active": True, "held": False,
        "notified": False, "resolve_notified": False, "opened_at": T0, "resolved_at": None,
        "check": "mail.imap", "host": "a1", "hostname": "ws-1", "service": "email",
        "priority": "P1", "summary": "mail.imap failing on ws-1", "description": "timeout",
        "remediation": "restart-mail: not_fixed", "resolution": None,
    }  # fmt: skip
    return {**base, **kw}


def test_an_alert_carries_the_documented_labels_and_annotations() -> None:
    alert = alertmanager.to_alert(item(), now=T0 + 60, resend_s=60, public_url="https://v.test")
    assert alert["labels"] == {
        "alertname": "mail.imap",
        "host": "ws-1",
        "service": "email",
        "priority": "P1",
        "severity": "critical",
        "vigil_kind": "incident",
        "vigil_ref": "incident:7",
    }
    assert alert["annotations"] == {
        "summary": "mail.imap failing on ws-1",
        "description": "timeout",
        "remediation": "restart-mail: not_fixed",
        # The console page (issue #19), not the JSON API.
        "incident_url": "https://v.test/console/incidents/7",
    }
    assert alert["startsAt"] == "2024-01-01T00:00:00Z"
    assert alert["endsAt"] == "2024-01-01T00:05:00Z"  # now + 4 re-post intervals


def test_a_resolved_alert_ends_when_it_was_resolved() -> None:
    alert = alertmanager.to_alert(
        item(active=False, resolved_at=T0 + 30), now=T0 + 60, resend_s=60, public_url=None
    )
    assert alert["endsAt"] == "2024-01-01T00:00:30Z"
    assert "generatorURL" not in alert


# --------------------------------------------------------------------------- notifier


class FakeDesk:
    """The two store methods the notifier calls, over a list of alertable dicts."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.marked: list[tuple[list[str], list[str], str]] = []

    def alertables(self, now: float) -> list[dict[str, Any]]:
        return [dict(i) for i in self.items]

    def mark_notified(
        self, fired: list[str], resolved: list[str], targets: str, now: float
    ) -> None:
        self.marked.append((fired, resolved, targets))
        for i in self.items:
            i["notified"] = i["notified"] or i["ref"] in fired
            i["resolve_notified"] = i["resolve_notified"] or i["ref"] in resolved


async def run_here(fn: Any, *args: Any) -> Any:
    """The notifier's ``run``: here, in the test, instead of on the storage thread."""
    return fn(*args)


def run_notifier(items, passes: list[float], receiver: Receiver, **config: Any) -> FakeDesk:
    store = FakeDesk(items)

    async def body(url: str) -> None:
        cfg = NotifyConfig(
            alertmanagers=(AlertmanagerTarget(url=url + "/am"),),
            webhooks=(hook(url),),
            **{"delay_s": 30.0, "resend_s": 60.0, **config},
        )
        async with aiohttp.ClientSession() as http:
            notifier = Notifier(cfg, http, store, run_here, public_url=None)
            for now in passes:
                await notifier.run_once(now)

    asyncio.run(serving(receiver, body))
    return store


def test_an_incident_notifies_once_after_the_group_wait() -> None:
    receiver = Receiver()
    store = run_notifier([item()], [T0 + 10, T0 + 31, T0 + 40], receiver)
    assert store.marked == [(["incident:7"], [], "alertmanager, webhook")]
    hooks = [json.loads(raw) for _, raw in receiver.requests if b'"events"' in raw]
    assert [e["event"] for h in hooks for e in h["events"]] == ["firing"]


def test_a_held_incident_never_notifies() -> None:
    receiver = Receiver()
    store = run_notifier([item(held=True)], [T0 + 100], receiver)
    assert (store.marked, receiver.requests) == ([], [])


def test_a_resolution_is_sent_once() -> None:
    receiver = Receiver()
    resolved = item(active=False, notified=True, resolved_at=T0 + 50)
    store = run_notifier([resolved], [T0 + 60, T0 + 70], receiver)
    assert store.marked == [([], ["incident:7"], "alertmanager, webhook")]


def test_active_alerts_are_reposted_each_resend_interval() -> None:
    receiver = Receiver()
    run_notifier([item(notified=True)], [T0 + 100, T0 + 130, T0 + 161], receiver, resend_s=60)
    am_posts = [raw for headers, raw in receiver.requests if raw.startswith(b"[")]
    assert len(am_posts) == 2


def test_nothing_is_marked_when_every_target_fails() -> None:
    receiver = Receiver([500] * 20)
    store = run_notifier([item()], [T0 + 100], receiver)
    assert store.marked == []


# --------------------------------------------------------------------------- config


TOKEN = "t-0123456789abcdef0123456789abcdef"
HOOK_SECRET = "k-0123456789abcdef0123456789abcdef"


def write_config(tmp_path: Path, notifications: str) -> Path:
    path = tmp_path / "collector.yaml"
    path.write_text(f"auth: {{agent_tokens: [{TOKEN}]}}\nnotifications:\n{notifications}")
    return path


def test_notification_targets_load(tmp_path: Path) -> None:
    config = load_collector_config(
        write_config(
            tmp_path,
            "  delay: 10s\n"
            "  alertmanager: [{url: 'http://127.0.0.1:9093/'}]\n"
            f"  webhooks: [{{url: 'https://hooks.test/x', secret: {HOOK_SECRET},"
            " max_attempts: 3}]\n",
        )
    )
    n = config.notifications
    assert n.delay_s == 10.0
    assert n.alertmanagers == (AlertmanagerTarget(url="http://127.0.0.1:9093"),)
    assert n.webhooks[0].max_attempts == 3
    assert n.webhooks[0].secret == HOOK_SECRET


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("change-me", "placeholder"),
        ("change-me-0123456789abcdef0123456789abcdef", "placeholder"),
        ("hook-secret", "11 characters long; at least 32"),
        ("'two words 0123456789abcdef0123456789'", "no whitespace"),
        ("12345678901234567890", "expected a string, got an integer"),
    ],
    ids=["placeholder", "long placeholder", "short", "whitespace", "a number"],
)
def test_a_guessable_webhook_secret_is_refused_saying_how_to_make_one(
    tmp_path: Path, secret: str, why: str
) -> None:
    """A webhook key anyone can guess lets them forge signed notifications: held to the
    same rule as the bearer tokens, and never echoed."""
    path = write_config(
        tmp_path, f"  webhooks: [{{url: 'https://hooks.test/x', secret: {secret}}}]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_collector_config(path)
    assert err.value.key == "notifications.webhooks[0].secret"
    assert why in str(err.value)
    assert "secrets.token_urlsafe(32)" in str(err.value)
    assert secret.strip("'") not in str(err.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("  alertmanager: [{url: 'ftp://x'}]\n", "notifications.alertmanager[0].url"),
        ("  webhooks: [{url: 'http://x', secret: ''}]\n", "notifications.webhooks[0].secret"),
        ("  webhooks: [{url: 'http://x', max_attempts: 0}]\n",
         "notifications.webhooks[0].max_attempts"),
        ("  resend_interval: 0s\n", "notifications.resend_interval"),
        ("  pager: true\n", "notifications.pager"),
    ],
    ids=["bad url", "empty secret", "zero attempts", "zero resend", "unknown key"],
)  # fmt: skip
def test_bad_notification_config_names_the_key(tmp_path: Path, text, key) -> None:
    with pytest.raises(ConfigError) as err:
        load_collector_config(write_config(tmp_path, text))
    assert err.value.key == key


# --------------------------------------------------------------------------- failing targets


def test_a_failing_target_backs_off_logs_once_each_way_and_is_counted(caplog) -> None:
    """Tried at T+0, +5, +15 (waits of 5 s, then 10 s), then 20 s later it accepts: the
    backoff resets and the next passes post again at the resend interval."""
    receiver = Receiver([500, 500, 500])
    store = FakeDesk([item()])
    passes = [T0 + 100 + 5 * n for n in range(10)]  # every 5 s, the notifier's interval
    tried_at: list[float] = []

    async def body(url: str) -> dict[tuple[str, str], int]:
        cfg = NotifyConfig(
            alertmanagers=(AlertmanagerTarget(url=url + "/am"),), interval_s=5.0, resend_s=60.0
        )
        async with aiohttp.ClientSession() as http:
            notifier = Notifier(cfg, http, store, run_here, public_url=None)
            for now in passes:
                before = len(receiver.requests)
                await notifier.run_once(now)
                if len(receiver.requests) > before:
                    tried_at.append(now - T0 - 100)
            return notifier.health.failed_totals()

    with caplog.at_level(logging.DEBUG):
        totals = asyncio.run(serving(receiver, body))
    assert tried_at == [0, 5, 15, 35]
    assert store.marked == [(["incident:7"], [], "alertmanager")]
    assert totals == {("alertmanager", receiver_url(receiver, "/am")): 3}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "failing" in warnings[0]
    assert sum("recovered after 3 failed attempt(s)" in r.getMessage() for r in caplog.records) == 1


def receiver_url(receiver: Receiver, path: str) -> str:
    """The target name the receiver was reached at (host and port from a request)."""
    host = receiver.requests[0][0]["Host"]
    return f"http://{host}{path}"


@pytest.mark.parametrize(
    ("failures", "wait"),
    [(1, 5.0), (2, 10.0), (3, 20.0), (6, 160.0), (7, 300.0), (200, 300.0)],
    ids=["first", "second", "third", "sixth", "capped", "far past the cap"],
)
def test_the_backoff_doubles_from_the_interval_up_to_the_cap(failures: int, wait: float) -> None:
    health = NotifyHealth([("webhook", "http://h/x")], base_s=5.0, max_backoff_s=300.0)
    key = ("webhook", "http://h/x")
    for _ in range(failures - 1):
        health.failed(key, 0.0, "boom")
    assert health.failed(key, 0.0, "boom") == wait
    assert not health.due(key, wait - 0.001) and health.due(key, wait)


def test_a_success_resets_the_backoff() -> None:
    key = ("alertmanager", "http://am:9093")
    health = NotifyHealth([key], base_s=5.0)
    for _ in range(4):
        health.failed(key, 0.0, "boom")
    health.succeeded(key, 1.0)
    assert health.due(key, 1.0)
    assert health.failed(key, 2.0, "boom") == 5.0
    assert health.failed_totals() == {key: 5}


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://user:pw@hooks.example:8443/x/y?token=abc#f", "https://hooks.example:8443/x/y"),
        ("http://127.0.0.1:9093", "http://127.0.0.1:9093"),
        ("http://[::1]:9093/am", "http://[::1]:9093/am"),
    ],
    ids=["credentials and query dropped", "plain", "ipv6"],
)
def test_a_target_is_named_without_secrets(url: str, name: str) -> None:
    assert target_name(url) == name
