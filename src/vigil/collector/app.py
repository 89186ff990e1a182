"""The collector's aiohttp application factory.

:func:`create_app` wires config, routes, the error middleware and the long-lived
resources; the resources live in ``cleanup_ctx`` generators, all of them here, so they
open on startup and close, in reverse order, on shutdown: the storage thread, the
storage and the desk over it (with the ``/metrics`` collector bound to it), the ingest
queue, the background task that ages incidents, and the notifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from vigil.collector.api import (
    enroll,
    enroll_admin,
    hosts,
    incidents,
    operators,
    policy,
    problems,
    remediations,
    reports,
    silences,
    surveys,
    system,
)
from vigil.collector.api.http import ITEM_ID, ApiError, error_response
from vigil.collector.config import CollectorConfig
from vigil.collector.console.routes import setup_console
from vigil.collector.console.session import Signer
from vigil.collector.desk.service import Desk
from vigil.collector.desk.surveys import derived_key
from vigil.collector.identity.audit import AuditCollector, AuditCounts
from vigil.collector.identity.operators import config_principals, load_directory
from vigil.collector.identity.roles import Directory
from vigil.collector.identity.service import REFRESH_INTERVAL_S, AgentIdentity, IdentityMetrics
from vigil.collector.ingest import IngestQueue
from vigil.collector.keys import (
    audit_counts_key,
    clock_key,
    config_key,
    console_signer_key,
    counters_key,
    desk_key,
    directory_key,
    executor_key,
    identity_key,
    ingest_key,
    leader_key,
    notify_health_key,
    policy_key,
    registry_key,
)
from vigil.collector.metrics import VigilCollector
from vigil.collector.notify.health import NotifyHealth
from vigil.collector.notify.service import Notifier, target_keys
from vigil.collector.policy import service as policy_service
from vigil.collector.policy.metrics import PolicyMetrics
from vigil.collector.policy.release import fleet_versions
from vigil.collector.policy.runtime import PolicyRuntime
from vigil.collector.storage.factory import create_storage
from vigil.collector.storage.url import is_postgres_url, redact
from vigil.collector.telemetry.requests import RequestCounters
from vigil.collector.telemetry.scope import LeaderFlag

log = logging.getLogger(__name__)

# Seconds between re-reads of every host's agent version from storage (the fleet view of
# self-update): other collector processes' reports show up within this.
FLEET_RESYNC_S = 300.0

# Seconds between desk.tick() calls: silent agents and overdue remediation results turn
# into incidents within this delay of their deadline.
TICK_INTERVAL_S = 5.0
# Dedup ids forgotten per tick at most: one short transaction each time, and 4,000 ids/s
# of capacity, well above what 100,000 agents on the shipped config add (~2,000/s).
PRUNE_CHUNK = 20_000
# State changes per tick step (one transaction): a mass outage opens its incidents a step
# at a time, the storage thread free for reads and reports in between; at most
# TICK_STEPS steps per tick, the rest at the next. A step makes no new change after
# TICK_STEP_S seconds: 50 changes took ~22 ms on SQLite but ~180 ms on PostgreSQL (a
# round trip per statement), which a request queued behind the step waited out.
TICK_CHANGES = 50
TICK_STEP_S = 0.03
TICK_STEPS = 200
# Seconds between reloads of the operators (token hashes) and the audit counts: an
# operator added, rotated or removed with the CLI or another collector process takes
# effect within this delay (through this process's API: at once).
IDENTITY_REFRESH_S = 5.0

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    config: CollectorConfig, *, clock: Callable[[], float] = time.time
) -> web.Application:
    """Build the collector app for ``config``; ``clock`` returns epoch seconds.

    Nothing is opened here: the storage opens when a runner starts the app. The request
    parser is told not to decompress bodies itself (``auto_decompress=False``) because
    the ingest handler does it with its own bound (``limits.max_decompressed_bytes``).
    """
    app = web.Application(
        middlewares=[error_middleware],
        client_max_size=config.limits.max_body_bytes,
        handler_args={"auto_decompress": False},
    )
    app[config_key] = config
    app[clock_key] = clock
    app[registry_key] = CollectorRegistry(auto_describe=False)
    app[counters_key] = RequestCounters()
    app[leader_key] = LeaderFlag()
    # The config's admin tokens authenticate from the start; stored operators once the
    # storage is open (_operators_ctx).
    app[directory_key] = Directory(config_principals(config.auth.admin_tokens))
    app[audit_counts_key] = AuditCounts()
    app[notify_health_key] = NotifyHealth(
        target_keys(config.notifications), base_s=config.notifications.interval_s
    )
    # ingest after the desk: on shutdown it commits what is queued before the storage closes.
    app.cleanup_ctx.extend(
        [
            _executor_ctx,
            _desk_ctx,
            _operators_ctx,
            _agents_ctx,
            _policy_ctx,
            _ingest_ctx,
            _tick_ctx,
            _notify_ctx,
        ]
    )
    setup_routes(app)
    return app


def setup_routes(app: web.Application) -> None:
    """Register every route of the collector: this is the whole URL table.

    The handlers live in ``collector/api/``, one module per resource; ``docs/api.md``
    documents what each route takes and answers.
    """
    r = app.router
    item = ITEM_ID  # the path segment ``api.http.item_id`` reads
    r.add_post("/api/v1/reports", reports.post_report)
    r.add_post("/api/v1/enroll", enroll.post_enroll)
    r.add_get("/api/v1/enroll-secrets", enroll_admin.list_secrets)
    r.add_post("/api/v1/enroll-secrets", enroll_admin.create_secret)
    r.add_post(
        f"/api/v1/enroll-secrets/{enroll_admin.SECRET_ID}/revoke", enroll_admin.revoke_secret
    )
    r.add_get("/api/v1/agent-credentials", enroll_admin.list_credentials)
    r.add_post(f"/api/v1/agents/{enroll_admin.AGENT_ID}/revoke", enroll_admin.revoke_agent)
    r.add_get("/api/v1/incidents", incidents.list_incidents)
    r.add_get(f"/api/v1/incidents/{item}", incidents.get_incident)
    r.add_get(f"/api/v1/incidents/{item}/report", incidents.get_incident_report)
    r.add_post(f"/api/v1/incidents/{item}/acknowledge", incidents.acknowledge_incident)
    r.add_post(f"/api/v1/incidents/{item}/resolve", incidents.resolve_incident)
    r.add_get("/api/v1/problems", problems.list_problems)
    r.add_get(f"/api/v1/problems/{item}", problems.get_problem)
    r.add_get(f"/api/v1/problems/{item}/report", problems.get_problem_report)
    r.add_post(f"/api/v1/problems/{item}/acknowledge", problems.acknowledge_problem)
    r.add_post(f"/api/v1/problems/{item}/resolve", problems.resolve_problem)
    r.add_get("/api/v1/silences", silences.list_silences)
    r.add_post("/api/v1/silences", silences.create_silence)
    r.add_get(f"/api/v1/silences/{item}", silences.get_silence)
    r.add_patch(f"/api/v1/silences/{item}", silences.update_silence)
    r.add_delete(f"/api/v1/silences/{item}", silences.delete_silence)
    r.add_get("/api/v1/hosts", hosts.list_hosts)
    r.add_get("/api/v1/remediations/stats", remediations.remediation_stats)
    r.add_get("/api/v1/remediations/runs", remediations.list_remediation_runs)
    r.add_get("/api/v1/operators", operators.list_operators)
    r.add_post("/api/v1/operators", operators.add_operator)
    r.add_post(f"/api/v1/operators/{operators.OPERATOR_NAME}/rotate", operators.rotate_operator)
    r.add_delete(f"/api/v1/operators/{operators.OPERATOR_NAME}", operators.remove_operator)
    r.add_get("/api/v1/audit", operators.list_audit)
    r.add_get(f"/api/v1/incidents/{item}/surveys", surveys.get_incident_surveys)
    r.add_get("/api/v1/satisfaction", surveys.get_satisfaction)
    r.add_get(f"/survey/{surveys.TOKEN}", surveys.get_survey)
    r.add_post(f"/survey/{surveys.TOKEN}", surveys.post_survey)
    r.add_get("/api/v1/agent/policy", policy.get_agent_policy)
    r.add_get("/api/v1/agent/release", policy.get_agent_release)
    r.add_get("/api/v1/agent-versions", policy.get_agent_versions)
    r.add_get("/api/v1/policies", policy.list_policies)
    r.add_post("/api/v1/policies", policy.publish_policy)
    name = policy.POLICY_NAME
    r.add_get(f"/api/v1/policies/{name}", policy.get_policy)
    r.add_post(f"/api/v1/policies/{name}/advance", policy.advance_policy)
    r.add_post(f"/api/v1/policies/{name}/pause", policy.pause_policy)
    r.add_post(f"/api/v1/policies/{name}/resume", policy.resume_policy)
    r.add_post("/api/v1/policy-halts", policy.create_halt)
    r.add_delete(f"/api/v1/policy-halts/{policy.REMEDIATION}", policy.delete_halt)
    r.add_post("/api/v1/run-now", policy.create_run_now)
    r.add_get(f"/api/v1/run-now/{policy.REQUEST_ID}", policy.get_run_now)
    r.add_get("/metrics", system.get_metrics)
    r.add_get("/healthz", system.get_healthz)
    # The service-desk console (``/`` redirects there): its own templates, hooks, routes.
    setup_console(app)


@web.middleware
async def error_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Render every failure as the JSON error body; log the unexpected ones."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.field, headers=exc.headers)
    except web.HTTPException as exc:
        # The router's 404/405 and aiohttp's own limits: keep the status and useful headers
        # (Allow on 405), replace the text/plain body.
        if exc.status < 400:
            raise
        default_text = f"{exc.status}: {exc.reason}"
        message = exc.reason.lower() if exc.text in (None, default_text) else exc.text
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, message, headers=kept)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal server error")


async def _executor_ctx(app: web.Application) -> AsyncIterator[None]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-storage")
    app[executor_key] = executor
    yield
    executor.shutdown(wait=True)


def open_desk(config: CollectorConfig) -> Desk:
    """Open the configured storage and the desk over it (blocking: call on the storage
    thread). Raises :class:`~collector.storage.records.StorageError`."""
    storage = create_storage(config.storage_url)
    try:
        return Desk(
            storage,
            remediation_wait_s=config.remediation_wait_s,
            catalog=config.catalog,
            rules=config.rules,
            satisfaction=config.satisfaction,
            record_event_ids=config.record_event_ids,
        )
    except BaseException:
        storage.close()
        raise


async def _desk_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[config_key]
    executor = app[executor_key]
    loop = asyncio.get_running_loop()
    # Opened on the storage thread: an SQLite connection belongs to the thread that made it.
    desk = await loop.run_in_executor(executor, open_desk, config)
    app[desk_key] = desk
    # Console sessions signed with a key every collector on this database shares: a
    # restart logs nobody out and a load balancer needs no sticky sessions.
    key = await loop.run_in_executor(executor, derived_key, desk.storage, "console-session")
    app[console_signer_key] = Signer(key)
    collector = VigilCollector(
        desk.metrics_snapshot,
        app[counters_key],
        heartbeat_grace_s=config.heartbeat_grace_s,
        clock=app[clock_key],
        per_host_series=config.metrics.per_host_series,
        max_host_series=config.metrics.max_host_series,
        service_of=lambda check: getattr(config.catalog.service_for(check), "name", None),
        notify_failures=app[notify_health_key].failed_totals,
        surveys=desk.surveys.figures if config.satisfaction.enabled else None,
    )
    await loop.run_in_executor(executor, desk.refresh_metrics_figures, app[clock_key]())
    # Just loaded from the database: fresh fleet figures if this process leads already.
    await leads(app)
    app[leader_key].rebuilt(time.monotonic())
    registry = app[registry_key]
    registry.register(collector)
    log.info("storage open: %s", redact(config.storage_url))
    yield
    registry.unregister(collector)
    await loop.run_in_executor(executor, desk.close)
    log.info("storage closed")


async def _operators_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load the stored operators and the audit counts now, then every
    :data:`IDENTITY_REFRESH_S` (a failed reload keeps the previous directory and is
    logged); ``vigil_audit_records_total`` is served from the counts."""
    loop = asyncio.get_running_loop()
    storage, executor = app[desk_key].storage, app[executor_key]
    reload = functools.partial(
        load_directory, storage, app[directory_key], app[config_key].auth.admin_tokens
    )
    counts = app[audit_counts_key]
    counts.set(await loop.run_in_executor(executor, reload))
    collector = AuditCollector(counts)
    app[registry_key].register(collector)

    async def forever() -> None:
        while True:
            await asyncio.sleep(IDENTITY_REFRESH_S)
            try:
                counts.set(await loop.run_in_executor(executor, reload))
            except Exception:
                log.exception("reloading operators failed; keeping the previous ones")

    task = asyncio.create_task(forever(), name="vigil-operators-refresh")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    app[registry_key].unregister(collector)


async def _agents_ctx(app: web.Application) -> AsyncIterator[None]:
    """Per-agent credentials: the cache loaded before the first request, then reloaded
    every :data:`REFRESH_INTERVAL_S` when the storage says something changed (a
    revocation by the CLI or another collector process)."""
    config = app[config_key]
    loop = asyncio.get_running_loop()
    identity = AgentIdentity(
        app[desk_key].storage,
        functools.partial(loop.run_in_executor, app[executor_key]),
        legacy_tokens=config.auth.agent_tokens,
        credential_ttl_s=config.credential_ttl_s,
        enroll_rate_per_minute=config.enroll_rate_per_minute,
    )
    await identity.refresh()
    app[identity_key] = identity
    metrics = IdentityMetrics(identity)
    app[registry_key].register(metrics)

    async def forever() -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL_S)
            try:
                await identity.refresh()
            except Exception:
                log.exception("credential cache refresh failed")  # the next one tries again

    task = asyncio.create_task(forever(), name="vigil-identity-refresh")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    app[registry_key].unregister(metrics)


async def _policy_ctx(app: web.Application) -> AsyncIterator[None]:
    """Central policy: the in-memory snapshot the acks are built from, loaded now and
    then every ``policy.refresh``; each pass also stores the running versions hosts
    reported, and (leader only) runs the blast-radius guard and auto-advance."""
    runtime = PolicyRuntime()
    app[policy_key] = runtime
    await policy.reload_snapshot(app)
    loop = asyncio.get_running_loop()

    async def resync_versions() -> None:
        # The fleet's agent versions and the policy each host runs, from storage (every
        # host's last report, whichever collector process took it); reports to this
        # process keep them current between.
        storage = app[desk_key].storage
        hosts = await loop.run_in_executor(app[executor_key], fleet_versions, storage)
        runtime.replace_versions(hosts)
        running = await loop.run_in_executor(
            app[executor_key], policy_service.stored_running, storage
        )
        runtime.replace_running(running)

    await resync_versions()
    metrics = PolicyMetrics(runtime)
    app[registry_key].register(metrics)
    resynced = time.monotonic()

    async def forever() -> None:
        nonlocal resynced
        while True:
            await asyncio.sleep(app[config_key].policy.refresh_s)
            if time.monotonic() - resynced >= FLEET_RESYNC_S:
                resynced = time.monotonic()
                try:
                    await resync_versions()
                except Exception:
                    log.exception("reading the fleet's agent versions failed")
            try:
                await policy_pass(app)
            except Exception:
                log.exception("policy pass failed")  # the next one tries again

    task = asyncio.create_task(forever(), name="vigil-policy")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    app[registry_key].unregister(metrics)
    await policy_pass(app, guard=False)  # store the last running versions


async def policy_pass(app: web.Application, *, guard: bool = True) -> None:
    """One policy pass: store what hosts said they run, then (when this process leads)
    trip the guard and auto-advance rollouts, then reload the snapshot."""
    loop = asyncio.get_running_loop()
    desk, executor, clock = app[desk_key], app[executor_key], app[clock_key]
    runtime = app[policy_key]
    rows = runtime.take_changes()
    try:
        await loop.run_in_executor(executor, policy_service.record_running, desk.storage, rows)
    except BaseException:
        runtime.give_back(rows)
        raise
    if guard and await leads(app):

        def raise_check(check: str, message: str, now: float, also: Callable[..., None]) -> None:
            desk.collector_check(check, "critical", message, now, also)

        config = app[config_key].policy
        call = functools.partial(
            policy_service.guard_pass,
            desk.storage,
            config.guard,
            clock(),
            raise_check,
            min_share=config.advance_share,
            checked=runtime.evidence_checked,
        )
        did = await loop.run_in_executor(executor, call)
        for line in did:
            log.warning("%s", line)
    await policy.reload_snapshot(app)


async def _ingest_ctx(app: web.Application) -> AsyncIterator[None]:
    """The queue in front of the desk, on the storage thread (COMMITs on a thread of
    their own). Comes after the desk's context, so it is closed first, committing what
    is queued."""
    config = app[config_key].ingest
    desk = app[desk_key]
    commits = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-commit")
    queue = IngestQueue(
        desk.ingest_many,
        app[executor_key],
        begin_group=desk.begin_group,
        commit_executor=commits,
        max_pending=config.max_pending,
        max_group=config.max_group,
        retry_after_s=config.retry_after_s,
    )
    queue.start()
    app[ingest_key] = queue
    yield
    await queue.close()
    commits.shutdown(wait=True)


async def _tick_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_tick_forever(app), name="vigil-desk-tick")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _tick_forever(app: web.Application) -> None:
    """Call :func:`tick_once` every :data:`TICK_INTERVAL_S`; a failure is logged, and the
    next tick tries again (one bad tick must not stop incident aging for good)."""
    while True:
        await asyncio.sleep(TICK_INTERVAL_S)
        try:
            await tick_once(app)
        except Exception:
            log.exception("desk tick failed")


async def tick_once(app: web.Application) -> None:
    """One tick, on the storage thread: age incidents (silent hosts, overdue remediation
    results, flapping), refresh the figures /metrics reads from memory (off the scrape
    path), and forget at most :data:`PRUNE_CHUNK` dedup ids older than
    ``storage.dedup_retention``. Only the refresh when this process does not lead
    (``Storage.leads``: another collector on the same database does the rest)."""
    loop = asyncio.get_running_loop()
    desk, executor, clock = app[desk_key], app[executor_key], app[clock_key]
    # Aging and pruning once per database: with several collectors on one (PostgreSQL),
    # only the one holding the leader lock; another takes over when it dies.
    leader = await leads(app)
    config, flag = app[config_key], app[leader_key]
    shared = is_postgres_url(config.storage_url)
    if shared and flag.rebuild_due(time.monotonic(), config.metrics.fleet_refresh_s):
        # Several collectors on one database: the leader serves the fleet figures
        # (telemetry/scope.py), so they must include what the others applied.
        await loop.run_in_executor(executor, desk.reload_aggregates)
        flag.rebuilt(time.monotonic())
    if leader:
        now = clock()
        for _ in range(TICK_STEPS):
            opened, done = await loop.run_in_executor(
                executor, functools.partial(desk.tick_step, now, TICK_CHANGES, TICK_STEP_S)
            )
            if opened:
                log.info("tick opened incidents %s", list(opened))
            if done:
                break
    await loop.run_in_executor(executor, desk.refresh_metrics_figures, clock())
    if not leader:
        return
    before = clock() - app[config_key].dedup_retention_s
    pruned = await loop.run_in_executor(
        executor, functools.partial(desk.prune_seen, before, limit=PRUNE_CHUNK)
    )
    if pruned:
        log.debug("forgot %d dedup ids received before %.0f", pruned, before)


async def leads(app: web.Application) -> bool:
    """Whether this process leads (``Storage.leads``, on the storage thread); the answer
    is also kept for ``/metrics`` (:class:`~collector.telemetry.scope.LeaderFlag`)."""
    loop = asyncio.get_running_loop()
    leader = await loop.run_in_executor(app[executor_key], app[desk_key].storage.leads)
    app[leader_key].set(leader)
    return leader


async def _notify_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the notifier while the app runs, when any notification target is set."""
    config = app[config_key]
    if not config.notifications.enabled:
        yield
        return
    loop = asyncio.get_running_loop()
    desk, executor, clock = app[desk_key], app[executor_key], app[clock_key]

    session = aiohttp.ClientSession()
    notifier = Notifier(
        config.notifications,
        session,
        desk,
        functools.partial(loop.run_in_executor, executor),
        public_url=config.public_url,
        health=app[notify_health_key],
    )

    async def forever() -> None:
        while True:
            try:
                # One notifier per database (see tick_once): a follower stays quiet.
                if await leads(app):
                    await notifier.run_once(clock())
            except Exception:
                log.exception("notifier pass failed")  # the next pass tries again
            await asyncio.sleep(config.notifications.interval_s)

    task = asyncio.create_task(forever(), name="vigil-notifier")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await session.close()
