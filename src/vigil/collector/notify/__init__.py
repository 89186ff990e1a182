"""Notifications: forward incidents and problems to the alerting tools admins already run.

- :mod:`collector.notify.alertmanager`: Prometheus Alertmanager, v2 API
  (``POST /api/v2/alerts``); active alerts are re-posted before their ``endsAt``.
- :mod:`collector.notify.webhook`: a generic JSON webhook with retries and an HMAC-SHA256
  signature header.
- :mod:`collector.notify.service`: the background task that asks the desk what changed,
  decides with :func:`collector.desk.engine.plan_notifications`, sends, and records each
  notification on the incident's timeline.

- :mod:`collector.notify.config`: the ``notifications:`` section of the collector config.
"""
