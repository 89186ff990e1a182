"""The running agent's side of the release channel (``docs/install.md``, "Self-update").

Each report's acknowledgement may carry ``"release": {"serial", "version", "url"}``: the
agent release this host's rollout ring has reached. :class:`ReleaseSync` reads it
(:meth:`ReleaseSync.on_ack`, on the event loop, never blocking):

- every ack is one delivered report: the :class:`~vigil.agent.update.guard.UpdateGuard`
  counts it, and the second one confirms a pending release (check ``agent.update`` ok);
- a serial above the running one, not rolled back here before and not refused within
  the last hour, starts one conditional ``GET`` (the policy sync's fetcher, the shipper);
- the document is verified like a policy bundle, with the release name and the running
  serial as the downgrade floor, then installed (:func:`~vigil.agent.update.release.install`,
  on a worker thread: it unpacks and smoke-tests the wheel in a child interpreter), and
  ``restart`` is called: the service stops cleanly and the CLI re-executes the launcher;
- a refused release (signature, hash, downgrade, not a vigil wheel, dependencies, smoke
  test) changes nothing and is reported as ``agent.update`` critical naming the reason.

:meth:`ReleaseSync.report_start` reports a rollback the launcher or a guard did (the
release that failed, and why) as ``agent.update`` critical.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil.agent.config import AgentConfig
from vigil.agent.events import EventSink, status_event
from vigil.agent.policy.settings import trusted_keys
from vigil.agent.policy.sync import REFETCH_REFUSED_S, Fetcher
from vigil.agent.update.guard import UpdateGuard
from vigil.agent.update.release import ReleaseError, install
from vigil.policy_bundle import MAX_DOCUMENT, BundleError, policy_tag, verify
from vigil.release_bundle import RELEASE_POLICY, UPDATE_CHECK, NotARelease, release_wheel

__all__ = ["RELEASE_PATH", "UPDATE_CHECK", "ReleaseSync", "parse_release", "release_sync_for"]

log = logging.getLogger("vigil.agent.update")

RELEASE_PATH = "/api/v1/agent/release"


@dataclass(frozen=True, slots=True)
class ReleaseOffer:
    """The ack's ``release`` object, validated."""

    serial: int
    version: str
    url: str = RELEASE_PATH


def parse_release(ack_text: str) -> ReleaseOffer | None:
    """The ack's ``release`` object; None when absent or malformed (a bad ack never
    starts an update). The fetch URL is only ever the release endpoint of the same
    collector (optionally ``?agent_id=`` for a shared token)."""
    try:
        ack = json.loads(ack_text) if ack_text else {}
    except ValueError:
        return None
    raw = ack.get("release") if isinstance(ack, dict) else None
    if not isinstance(raw, dict):
        return None
    serial, version, url = raw.get("serial"), raw.get("version", ""), raw.get("url")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 1:
        log.error("malformed release section in the collector's ack: %.200s", raw)
        return None
    if not isinstance(url, str) or not (url == RELEASE_PATH or url.startswith(RELEASE_PATH + "?")):
        url = RELEASE_PATH
    return ReleaseOffer(serial, version if isinstance(version, str) else "", url)


Installer = Callable[..., Any]


class ReleaseSync:
    """See the module doc. ``trusted`` returns the policy keys (config + enrolled, read
    at each fetch); ``restart`` stops the service so the CLI re-executes the launcher;
    ``installer`` is :func:`install` (its ``python`` may be overridden in tests)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        guard: UpdateGuard,
        trusted: Callable[[], tuple[str, ...]],
        fetcher: Fetcher,
        sink: EventSink,
        restart: Callable[[], None],
        agent_version: str,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        installer: Installer = install,
        offers: bool = True,
    ) -> None:
        self.state_dir = state_dir
        self.guard = guard
        self.trusted = trusted
        self.fetcher = fetcher
        self.sink = sink
        self.restart = restart
        self.agent_version = agent_version
        self.clock = clock
        self.monotonic = monotonic
        self.installer = installer
        self.offers = offers  # False: update disabled, only the guard's duties remain
        self._fetching: asyncio.Task[None] | None = None
        self._refused: dict[int, float] = {}  # serial -> monotonic time it was refused
        self._last_report: tuple[str, str] | None = None
        self.restarting = False

    @property
    def running(self) -> str:
        """What runs, for messages: ``release N (vigil V)`` or ``the base install``."""
        current = self.guard.state.current
        if current is None or current.serial != self.guard.running_serial:
            return f"the base install (vigil {self.agent_version})"
        return f"release {current.serial} (vigil {current.version})"

    def report_start(self) -> None:
        """At start: a rollback not yet followed by a confirmed release is critical."""
        rolled = self.guard.state.rolled_back
        if rolled is not None:
            self.report(
                "critical",
                f"rolled back release {rolled.get('serial')} (vigil {rolled.get('version')}):"
                f" {rolled.get('reason')}; running {self.running}",
            )

    def on_ack(self, ack_text: str) -> None:
        """One report was delivered (through :meth:`take_ack`); never raises."""
        if self.guard.delivered():
            self.report("ok", f"running {self.running}, confirmed", urgent=True)
        offer = parse_release(ack_text) if self.offers else None
        if offer is None or self.restarting:
            return
        state = self.guard.state
        if offer.serial <= max(state.serial, self.guard.running_serial):
            return
        if offer.serial in state.failed:
            return  # rolled back here before: never again (reported at the rollback)
        if self._fetching is not None and not self._fetching.done():
            return
        refused_at = self._refused.get(offer.serial)
        if refused_at is not None and self.monotonic() - refused_at < REFETCH_REFUSED_S:
            return
        self._fetching = asyncio.ensure_future(self.fetch(offer))
        self._fetching.add_done_callback(_log_failure)

    def headers(self) -> dict[str, str]:
        """Nothing to add to a report (:class:`AckExchange`): the running release is the
        report's ``agent_version``."""
        return {}

    def take_ack(self, text: str, sent: Mapping[str, str]) -> None:
        """Read a report's ack (:class:`AckExchange`): :meth:`on_ack`."""
        self.on_ack(text)

    async def tick(self) -> None:
        """The guard's timer job (only while a release is pending)."""
        self.check_overdue()

    def check_overdue(self) -> bool:
        """The guard's timer: True (and ``restart`` called) when the pending release
        missed its deadline and was rolled back."""
        if self.restarting or not self.guard.overdue():
            return False
        self.restarting = True
        self.restart()
        return True

    async def fetch(self, offer: ReleaseOffer) -> None:
        """Fetch, verify, install the offered release, then restart into it."""
        state = self.guard.state
        trusted = self.trusted()
        if not trusted:
            self._refuse(offer, "unknown_key", "no trusted policy key on this agent")
            return
        # The base install holds no release: nothing to match (serials start at 1).
        headers = (
            {"If-None-Match": f'"{policy_tag(RELEASE_POLICY, state.serial)}"'}
            if state.serial
            else {}
        )
        try:
            reply = await self.fetcher.get(offer.url, headers, MAX_DOCUMENT)
        except (OSError, ValueError, TimeoutError) as exc:
            log.warning("cannot fetch agent release %d: %s", offer.serial, exc)
            return
        if reply.status != 200:
            if reply.status != 304:
                log.warning(
                    "release fetch %d answered HTTP %d: %.200s",
                    offer.serial,
                    reply.status,
                    reply.text,
                )
            return
        try:
            bundle = verify(
                reply.body,
                trusted,
                now=self.clock(),
                installed=(RELEASE_POLICY, state.serial),
                agent_version=self.agent_version,
            )
            if bundle.policy != RELEASE_POLICY:
                raise ReleaseError("not_a_release", f"bundle {bundle.tag} is not an agent release")
            try:  # the shape, before anything is unpacked (a signed non-zip, say)
                release_wheel(bundle.files)
            except NotARelease as exc:
                raise ReleaseError("bad_wheel", str(exc)) from None
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: self.installer(bundle, self.state_dir))
        except BundleError as exc:
            self._refuse(offer, exc.reason, exc.message)
            return
        except ReleaseError as exc:
            self._refuse(offer, exc.reason, exc.message)
            return
        except ValueError as exc:  # a malformed trusted key
            self._refuse(offer, "unknown_key", str(exc))
            return
        except OSError as exc:
            self._refuse(offer, "install", f"cannot write the release: {exc}")
            return
        self.restarting = True
        log.warning("agent release %d installed; restarting into it", bundle.version)
        self.restart()

    def _refuse(self, offer: ReleaseOffer, reason: str, message: str) -> None:
        self._refused[offer.serial] = self.monotonic()
        log.error("agent release %d refused: %s: %s", offer.serial, reason, message)
        self.report(
            "critical",
            f"refused release {offer.serial} (vigil {offer.version or '?'}): {reason}: "
            f"{message}; still running {self.running}",
        )

    def report(self, state: str, message: str, *, urgent: bool | None = None) -> None:
        """Record the ``agent.update`` check result (only when it changed)."""
        if self._last_report == (state, message):
            return
        self._last_report = (state, message)
        self.sink.put(
            status_event(UPDATE_CHECK, state, message, time=self.clock()),  # type: ignore[arg-type]
            urgent=state == "critical" if urgent is None else urgent,
        )

    async def close(self) -> None:
        """Cancel a fetch in flight (an install in its thread finishes on its own; the
        state switches only after the release is complete)."""
        if self._fetching is not None and not self._fetching.done():
            self._fetching.cancel()
            await asyncio.gather(self._fetching, return_exceptions=True)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("release fetch failed", exc_info=exc)


def release_sync_for(
    config: AgentConfig, *, fetcher: Fetcher, sink: EventSink, agent_version: str
) -> ReleaseSync | None:
    """The release sync of a running agent, None when ``update`` is off (explicitly, or
    by default without a trusted policy key) and no release is pending. Its ``restart``
    is set by the service."""
    active = config.update.active(trusted_keys(config.policy, config.state_dir))
    guard = UpdateGuard(
        config.state_dir, time.time, confirm_within_s=config.update.confirm_within_s
    )
    if not active and not guard.pending:
        return None
    # Turned off while a release still has to prove itself: it still confirms or rolls
    # back (else the launcher would roll it back after a few restarts anyway), but no new
    # release is fetched.
    return ReleaseSync(
        config.state_dir,
        guard=guard,
        trusted=lambda: trusted_keys(config.policy, config.state_dir),
        fetcher=fetcher,
        sink=sink,
        restart=lambda: None,
        agent_version=agent_version,
        offers=active,
    )
