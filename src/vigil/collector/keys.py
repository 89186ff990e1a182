"""Typed application keys: everything the collector app holds, in one place.

Set by :func:`collector.app.create_app` (config, clock, registry, counters, notification
targets' health) and by its
``cleanup_ctx`` generators once the resources exist (executor, desk, ingest queue).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from prometheus_client import CollectorRegistry

from vigil.collector.config import CollectorConfig
from vigil.collector.console.quality import QualityCache
from vigil.collector.console.session import Signer
from vigil.collector.desk.service import Desk
from vigil.collector.identity.audit import AuditCounts
from vigil.collector.identity.roles import Directory
from vigil.collector.identity.service import AgentIdentity
from vigil.collector.ingest import IngestQueue
from vigil.collector.notify.health import NotifyHealth
from vigil.collector.policy.runtime import PolicyRuntime
from vigil.collector.telemetry.requests import RequestCounters

config_key = web.AppKey("config", CollectorConfig)
# Epoch seconds; the collector stamps receive times and judges liveness with it.
clock_key: web.AppKey[Callable[[], float]] = web.AppKey("clock")
# One thread: every desk call runs there (via ``loop.run_in_executor``) so an fsync never
# blocks the event loop and SQLite sees a single writer thread.
executor_key = web.AppKey("executor", ThreadPoolExecutor)
# The business layer over the configured storage backend.
desk_key = web.AppKey("desk", Desk)
registry_key = web.AppKey("registry", CollectorRegistry)
counters_key = web.AppKey("counters", RequestCounters)
# The bounded ingest queue in front of the desk (group commit, 429 when full).
ingest_key = web.AppKey("ingest", IngestQueue)
# Backoff and failure counts of the notification targets (the notifier and /metrics).
notify_health_key = web.AppKey("notify_health", NotifyHealth)
# Operator token hashes → principals, for authentication without a database round trip;
# and the audit records per action for /metrics. Both reloaded by the identity task.
directory_key = web.AppKey("directory", Directory)
audit_counts_key = web.AppKey("audit_counts", AuditCounts)
# Per-agent credentials and enrollment (collector/identity/), set once the desk is open.
identity_key = web.AppKey("identity", AgentIdentity)

# The console (collector/console/): the signer of its session cookies and CSRF tokens,
# and the cached service-quality figures (see console/quality.py).
console_signer_key = web.AppKey("console_signer", Signer)
quality_cache_key = web.AppKey("quality_cache", QualityCache)
# Central policy: the in-memory snapshot the report acks are built from (collector/policy/).
policy_key = web.AppKey("policy", PolicyRuntime)
