"""The agent's half of the policy exchange with the collector (``docs/policy.md``).

Every report carries ``X-Vigil-Policy: <policy>@<version>`` (or ``none``); the
acknowledgement's ``"policy"`` object says what this host should run, the kill switch
(``halted``, ``halt_all``) and run-now requests. :class:`PolicySync` reads each ack
(:meth:`PolicySync.on_ack`, on the event loop, never blocking):

- the kill switch applies at once to the running remediation flow and is persisted, so
  it holds across restarts (also for cached and local bundles) until the collector lifts
  it;
- each run-now request not yet done is remembered as done (persisted *before* it runs,
  so a repeated ack or a crash never runs it twice) and run through the normal gate and
  record path, its record carrying the request id;
- an offered ``(policy, version)`` other than the running one starts one conditional
  ``GET /api/v1/agent/policy`` (``If-None-Match``); an unchanged offer costs nothing.

A fetched document is verified (:func:`vigil.policy_bundle.verify`, downgrades refused),
cached, merged over the local config and checked like a start-up config
(:mod:`~vigil.agent.policy.compose`); only then is it handed to the service, which swaps
checks and remediations between cycles. Any failure keeps the last good policy and is
reported as the ``agent.policy`` check (``critical``, ``"<reason>: <message> (policy X
version N)"``); a policy that verified and applied reports ``ok``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from vigil.agent.config import AgentConfig
from vigil.agent.events import EventSink, status_event
from vigil.agent.policy.cache import CachedBundle, PolicyCache
from vigil.agent.policy.compose import compose
from vigil.agent.policy.settings import trusted_keys
from vigil.agent.remediation.flow import RemediationFlow
from vigil.agent.remediation.manifest import Remediation
from vigil.agent.remediation.requested import run_requested
from vigil.configio import ConfigError
from vigil.policy_bundle import MAX_DOCUMENT, BundleError, is_policy_name, policy_tag, verify

# Sent on every report: the policy bundle this agent runs, "<policy>@<version>" or "none"
# (the collector records it as the host's running version; see docs/policy.md).
POLICY_HEADER = "X-Vigil-Policy"

log = logging.getLogger("vigil.agent")

POLICY_CHECK = "agent.policy"
POLICY_PATH = "/api/v1/agent/policy"
# A refused offer is fetched again only after this long (seconds, monotonic): the same
# bytes would be refused again, and a bundle can be up to 32 MiB.
REFETCH_REFUSED_S = 3600.0

Composed = tuple[AgentConfig, dict[str, Remediation], dict[str, str]]
Apply = Callable[[AgentConfig, dict[str, Remediation], dict[str, str]], None]


class Fetcher(Protocol):
    """What :class:`PolicySync` needs of the shipper (:meth:`Shipper.get`): an
    authenticated GET whose reply has ``status``, ``body``, ``text``."""

    async def get(self, path: str, headers: dict[str, str], max_body: int) -> Any: ...


@dataclass(frozen=True, slots=True)
class Offer:
    """The ``policy`` object of one acknowledgement, validated."""

    policy: str | None
    version: int | None
    halted: frozenset[str] | None  # None: the ack says nothing about halts (keep them)
    halt_all: bool
    run_now: tuple[dict[str, Any], ...]
    url: str = POLICY_PATH


def _log_failure(task: asyncio.Task[Any]) -> None:
    """A fetch or run-now task that failed unexpectedly is logged, never silent."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("policy task failed", exc_info=exc)


def parse_offer(ack_text: str) -> Offer | None:
    """The ack's ``policy`` object; ``None`` when absent (an older collector) or malformed
    (logged): a bad ack never changes what the agent runs."""
    try:
        ack = json.loads(ack_text) if ack_text else {}
    except ValueError:
        return None
    raw = ack.get("policy") if isinstance(ack, dict) else None
    if not isinstance(raw, dict):
        return None
    policy, version = raw.get("policy"), raw.get("version")
    halted, halt_all, run_now = (
        raw.get("halted", []),
        raw.get("halt_all", False),
        raw.get("run_now", []),
    )
    if (
        (policy is not None and not is_policy_name(policy))
        or (policy is not None and (not isinstance(version, int) or isinstance(version, bool)))
        or not isinstance(halted, list)
        or not all(isinstance(h, str) for h in halted)
        or not isinstance(halt_all, bool)
        or not isinstance(run_now, list)
    ):
        log.error("malformed policy section in the collector's ack: %.300s", raw)
        return None
    requests = tuple(
        r
        for r in run_now
        if isinstance(r, dict)
        and isinstance(r.get("id"), str)
        and r["id"]
        and isinstance(r.get("remediation"), str)
        and isinstance(r.get("params", {}), dict)
    )
    # The fetch path (it names the agent on a shared token: ?agent_id=...); only ever a
    # path below the policy endpoint of the same collector.
    url = raw.get("url")
    if not isinstance(url, str) or not (url == POLICY_PATH or url.startswith(POLICY_PATH + "?")):
        url = POLICY_PATH
    # Halts are lifted only by an ack that carries the kill switch, never by one that
    # happens to lack it.
    says_halts = "halted" in raw or "halt_all" in raw
    return Offer(
        policy if policy is not None else None,
        version if policy is not None else None,
        frozenset(halted) if says_halts else None,
        halt_all,
        requests,
        url,
    )


class PolicySync:
    """Runs the agent's side of the exchange (see the module doc).

    ``local`` is the agent config as loaded from disk (what a policy merges over);
    ``trusted`` the public key texts; ``fetcher`` the shipper (:meth:`Shipper.get`);
    ``sink`` the outbox; ``flow`` returns the running remediation flow (it changes when a
    policy applies); ``apply`` hands a composed config to the service; ``clock`` gives wall
    seconds (expiry, records); ``monotonic`` paces refetches.
    """

    def __init__(
        self,
        local: AgentConfig,
        *,
        cache: PolicyCache,
        trusted: tuple[str, ...],
        fetcher: Fetcher,
        sink: EventSink,
        flow: Callable[[], RemediationFlow],
        apply: Apply,
        agent_version: str,
        running: CachedBundle | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = local
        self.cache = cache
        self.trusted = trusted
        self.fetcher = fetcher
        self.sink = sink
        self.flow = flow
        self.apply = apply
        self.agent_version = agent_version
        self.running = running
        self.clock = clock
        self.monotonic = monotonic
        self.halted, self.halt_all = cache.load_halts()
        self._done = cache.load_done()
        self._done_set = set(self._done)
        self._fetching: asyncio.Task[None] | None = None
        self._refused: dict[str, float] = {}  # tag -> monotonic time it was refused
        self._last_report: tuple[str, str] | None = None
        self._said_no_keys = False
        self._applied: str | None = None  # the ok message once the service swapped it in
        # What X-Vigil-Policy says: the bundle in use, which changes when the service has
        # swapped a verified bundle in (applied()), not when it was verified.
        self._announced = self.header
        self.tasks: set[asyncio.Task[Any]] = set()
        # Cached bundles skipped at start (see initial_policy), reported by report_start.
        self.start_problems: list[str] = []

    @property
    def header(self) -> str:
        """The ``X-Vigil-Policy`` value: the running bundle's tag, or ``none``."""
        return self.running.tag if self.running is not None else "none"

    def report_start(self) -> None:
        """Report ``agent.policy`` at start: the cached bundles that were refused (they
        fell back to an older good one, or to the local config), else the running one."""
        if self.start_problems:
            kept = f"; running {self.header}" if self.running else "; running the local config"
            self.report("critical", "; ".join(self.start_problems) + kept)
        elif self.running is not None:
            bundle = self.running.bundle
            self.report("ok", f"running policy {bundle.policy} version {bundle.version}")

    def enforce_halts(self, flow: RemediationFlow) -> None:
        """Give ``flow`` the current kill switch (at start, and after a policy swap)."""
        flow.halted, flow.halt_all = self.halted, self.halt_all

    # ------------------------------------------------------------------ the ack

    @property
    def announced(self) -> str:
        """The ``X-Vigil-Policy`` value sent now: the policy the agent runs."""
        return self._announced

    def headers(self) -> dict[str, str]:
        """The exchange's headers for the next report (:class:`AckExchange`)."""
        return {POLICY_HEADER: self._announced}

    def take_ack(self, text: str, sent: Mapping[str, str]) -> None:
        """Read a report's ack (:class:`AckExchange`): :meth:`on_ack`."""
        self.on_ack(text)

    def on_ack(self, ack_text: str) -> None:
        """Handle one acknowledgement (through :meth:`take_ack`); never raises."""
        self.check_expiry()
        offer = parse_offer(ack_text)
        if offer is None:
            return
        if offer.halted is not None and (offer.halted, offer.halt_all) != (
            self.halted,
            self.halt_all,
        ):
            self.halted, self.halt_all = offer.halted, offer.halt_all
            self.enforce_halts(self.flow())
            log.warning(
                "kill switch: %s",
                "every remediation halted"
                if offer.halt_all
                else f"halted {', '.join(sorted(offer.halted)) or 'nothing'}",
            )
            try:
                self.cache.save_halts(offer.halted, offer.halt_all)
            except OSError as exc:
                log.error("cannot persist the kill switch: %s", exc)
        for request in offer.run_now:
            self._run_now(request)
        if offer.policy is None or offer.version is None:
            return
        tag = policy_tag(offer.policy, offer.version)
        if tag == self.header:
            # The collector offers what runs (again, e.g. a paused rollout after a refused
            # version): the earlier refusal no longer applies.
            if self.running is not None and self._last_report and self._last_report[0] != "ok":
                bundle = self.running.bundle
                self.report("ok", f"running policy {bundle.policy} version {bundle.version}")
            return
        if self._fetching is not None and not self._fetching.done():
            return
        refused_at = self._refused.get(tag)
        if refused_at is not None and self.monotonic() - refused_at < REFETCH_REFUSED_S:
            return
        self._fetching = self._spawn(self.fetch(offer.policy, offer.version, offer.url))

    def _run_now(self, request: dict[str, Any]) -> None:
        request_id = str(request["id"])
        if request_id in self._done_set:
            return
        self._done.append(request_id)
        self._done_set.add(request_id)
        try:
            self.cache.save_done(self._done)
        except OSError as exc:
            log.error("cannot persist run-now id %s: %s", request_id, exc)
        params = {str(k): str(v) for k, v in request.get("params", {}).items()}
        log.info(
            "run-now %s: %s requested by %s",
            request_id,
            request["remediation"],
            request.get("requested_by", "?"),
        )
        self._spawn(
            run_requested(self.flow(), request["remediation"], params, request_id=request_id)
        )

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    # ------------------------------------------------------------------ fetch and apply

    async def fetch(self, policy: str, version: int, url: str = POLICY_PATH) -> None:
        """Fetch the offered bundle (conditional GET), verify, cache, compose, apply.
        Failures are reported as ``agent.policy``; network errors only logged (retried at
        a later ack)."""
        tag = policy_tag(policy, version)
        # Enrolling a running agent stores the collector's keys: pick them up (one small
        # file read per fetch; fetches happen only when the offered version changes).
        self.trusted = tuple(
            dict.fromkeys((*self.trusted, *trusted_keys(self.local.policy, self.local.state_dir)))
        )
        if not self.trusted:
            if not self._said_no_keys:
                log.warning(
                    "the collector offers policy %s but no policy key is trusted "
                    "(policy.trusted_keys, or enroll again): no bundle is applied",
                    tag,
                )
                self._said_no_keys = True
            self._refuse(tag, "unknown_key", "no trusted policy key on this agent")
            return
        headers = {"If-None-Match": f'"{self.header}"'}
        try:
            reply = await self.fetcher.get(url, headers, MAX_DOCUMENT)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("cannot fetch policy %s: %s", tag, exc)
            return
        if reply.status == 304:
            return
        if reply.status != 200:
            log.warning(
                "policy fetch for %s answered HTTP %d: %.200s", tag, reply.status, reply.text
            )
            return
        self.accept(reply.body, offered=tag)

    def accept(self, document: bytes, *, offered: str) -> bool:
        """Verify, cache, compose and apply one bundle document; report the result as
        ``agent.policy``. Returns whether it is now the running policy."""
        installed = (
            (self.running.bundle.policy, self.running.bundle.version) if self.running else None
        )
        try:
            bundle = verify(
                document,
                self.trusted,
                now=self.clock(),
                installed=installed,
                agent_version=self.agent_version,
            )
        except BundleError as exc:
            self._refuse(offered, exc.reason, exc.message)
            return False
        except ValueError as exc:  # a malformed trusted key
            self._refuse(offered, "unknown_key", str(exc))
            return False
        # verify() compares with the running bundle only: the highest version of this
        # name ever accepted also holds after running another policy for a while.
        top = self.cache.highest(bundle.policy)
        if top is not None and bundle.version < top:
            message = (
                f"policy {bundle.policy} version {bundle.version} is older than version"
                f" {top}, accepted before"
            )
            self._refuse(bundle.tag, "downgrade", message)
            return False
        try:
            cached = self.cache.store(bundle, document)
        except OSError as exc:
            self._refuse(bundle.tag, "malformed", f"cannot cache it: {exc}")
            return False
        try:
            composed = compose(self.local, cached)
        except ConfigError as exc:
            self.cache.forget(bundle.tag)
            self._refuse(bundle.tag, "config", str(exc))
            return False
        self.running = cached
        log.info("policy %s verified (key %s); applying it", bundle.tag, bundle.key_id)
        self._applied = f"running policy {bundle.policy} version {bundle.version}"
        self.apply(*composed)
        return True

    def check_expiry(self) -> bool:
        """Stop running the bundle once it expired (called at every exchange and every
        sample cycle; expiry was checked at fetch and at start only before). Falls back
        like a refused bundle: to the newest cached good bundle that still verifies and
        composes, else to the local config alone (none of the policy's remediations),
        reported as ``agent.policy`` critical. Returns whether it fell back."""
        running = self.running
        now = self.clock()
        if running is None or now <= running.bundle.expires_at:
            return False
        bundle = running.bundle
        log.error("policy %s expired at %s; no longer running it", bundle.tag, bundle.expires_at)
        # Offered again, the same bytes would be refused again (see REFETCH_REFUSED_S).
        self._refused[bundle.tag] = self.monotonic()
        # Blocks for a moment, once per expiry: the fallback is verified again (files
        # hashed, signature checked) before it runs, like at start.
        try:
            self.cache.forget(bundle.tag)
            composed, fallback, _skipped = first_good(
                self.local, self.cache, self.trusted, now=now, agent_version=self.agent_version
            )
        except (ConfigError, OSError) as exc:  # the local config started, so unlikely
            log.error("cannot fall back from expired policy %s: %s", bundle.tag, exc)
            composed, fallback = compose(self.local, None), None
        self.running = fallback
        self._applied = None  # the swap must not report ok: the expiry stands
        kept = f"; running {fallback.tag}" if fallback else "; running the local config"
        self.report(
            "critical",
            f"expired: policy {bundle.policy} version {bundle.version} expired at"
            f" {bundle.expires_at:.0f}{kept}",
        )
        self.apply(*composed)
        return True

    def applied(self) -> None:
        """Called by the service once the accepted policy runs (swapped in): reports
        ``agent.policy`` ok and ships it at once, so the report carrying the new
        ``X-Vigil-Policy`` reaches the collector without waiting for a report interval."""
        self._announced = self.header
        message, self._applied = self._applied, None
        if message is not None:
            self.report("ok", message, urgent=True)

    def _refuse(self, tag: str, reason: str, message: str) -> None:
        self._refused[tag] = self.monotonic()
        policy, _, version = tag.rpartition("@")
        log.error("policy %s refused: %s: %s", tag, reason, message)
        kept = f"; still running {self.header}" if self.running else ""
        self.report("critical", f"{reason}: {message} (policy {policy} version {version}){kept}")

    def report(self, state: str, message: str, *, urgent: bool | None = None) -> None:
        """Record the ``agent.policy`` check result (only when it changed); ``urgent``
        (default: when critical) ships it at once."""
        if self._last_report == (state, message):
            return
        self._last_report = (state, message)
        self.sink.put(
            status_event(POLICY_CHECK, state, message, time=self.clock()),  # type: ignore[arg-type]
            urgent=state == "critical" if urgent is None else urgent,
        )

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def initial_policy(
    local: AgentConfig,
    cache: PolicyCache,
    trusted: tuple[str, ...],
    *,
    now: float,
    agent_version: str,
) -> tuple[Composed, CachedBundle | None, list[str]]:
    """What the agent starts with: the newest cached (or ``policy.local_bundle``) bundle
    that verifies again and composes with ``local``, else ``local`` alone; plus a message
    per bundle skipped (reported as ``agent.policy``). Raises :class:`ConfigError` only
    for the local config itself."""
    problems: list[str] = []
    if not trusted:
        return compose(local, None), None, problems
    if local.policy.local_bundle is not None:
        problems += _take_local_bundle(local, cache, trusted, now=now, version=agent_version)
    composed, cached, skipped = first_good(
        local, cache, trusted, now=now, agent_version=agent_version
    )
    return composed, cached, problems + skipped


def first_good(
    local: AgentConfig,
    cache: PolicyCache,
    trusted: tuple[str, ...],
    *,
    now: float,
    agent_version: str,
) -> tuple[Composed, CachedBundle | None, list[str]]:
    """The newest cached bundle that verifies again (expiry included, at ``now``) and
    composes with ``local``, else ``local`` alone; plus a message per bundle skipped
    (each dropped from the good list). Raises :class:`ConfigError` only for ``local``."""
    problems: list[str] = []
    while True:
        cached, skipped = cache.load_good(trusted, now=now, agent_version=agent_version)
        problems += skipped
        if cached is None:
            return compose(local, None), None, problems
        try:
            return compose(local, cached), cached, problems
        except ConfigError as exc:
            problems.append(f"cached {cached.tag}: config: {exc}")
            log.error("cached policy %s does not apply: %s", cached.tag, exc)
            cache.forget(cached.tag)


def _take_local_bundle(
    local: AgentConfig, cache: PolicyCache, trusted: tuple[str, ...], *, now: float, version: str
) -> list[str]:
    """Verify ``policy.local_bundle`` and cache it when newer than what is cached."""
    path = local.policy.local_bundle
    assert path is not None
    try:
        document = path.read_bytes()
        good = cache.good_tags()
        bundle = verify(document, trusted, now=now, installed=None, agent_version=version)
    except OSError as exc:
        return [f"local bundle {path}: cannot read it: {exc}"]
    except BundleError as exc:
        log.error("local bundle %s refused: %s", path, exc)
        return [f"local bundle {path}: {exc.reason}: {exc.message}"]
    if bundle.tag in good:
        return []
    top = cache.highest(bundle.policy)
    if top is not None and top > bundle.version:
        return []  # the collector already delivered a newer version of the same policy
    cache.store(bundle, document)
    return []


@dataclass
class PolicyStart:
    """What :func:`open_policy` found: the composed start (``running`` is the cached
    bundle in it, ``None`` when the local config runs alone) and what it skipped."""

    local: AgentConfig
    cache: PolicyCache
    trusted: tuple[str, ...]
    composed: Composed
    running: CachedBundle | None
    problems: list[str]
    agent_version: str

    def sync(self, *, fetcher: Fetcher, sink: EventSink, clock: Callable[[], float]) -> PolicySync:
        """The :class:`PolicySync` for the running agent; its ``flow`` and ``apply`` are
        set by the service that owns them."""
        sync = PolicySync(
            self.local,
            cache=self.cache,
            trusted=self.trusted,
            fetcher=fetcher,
            sink=sink,
            flow=_no_flow,
            apply=lambda *composed: None,
            agent_version=self.agent_version,
            running=self.running,
            clock=clock,
        )
        sync.start_problems = self.problems
        return sync


def _no_flow() -> RemediationFlow:
    raise RuntimeError("PolicySync.flow is set by the agent service")


def open_policy(local: AgentConfig, *, now: float, agent_version: str) -> PolicyStart:
    """The agent's policy state at start: trusted keys (config + enrolled), and the
    newest cached or local bundle that still verifies, merged over ``local`` (see
    :func:`initial_policy`)."""
    cache = PolicyCache(local.state_dir)
    keys = trusted_keys(local.policy, local.state_dir)
    composed, running, problems = initial_policy(
        local, cache, keys, now=now, agent_version=agent_version
    )
    return PolicyStart(local, cache, keys, composed, running, problems, agent_version)
