"""Satisfaction surveys on the agent: take them from the collector's ack, show them to the
person at the machine outside quiet hours, tell the collector what happened.

The exchange rides on report delivery (no extra connection): :meth:`SurveyInbox.headers`
adds ``Vigil-UTC-Offset`` (this machine's offset east of UTC, so the collector can judge
its own quiet hours on local time) and ``Vigil-Surveys`` (``<id>=shown`` or
``<id>=unavailable:<why>``) to each report; :meth:`SurveyInbox.take_ack` reads the ack's
``"surveys"`` list. The collector offers a survey again on later acks until the agent has
reported it. What was shown, and the outcomes not yet reported, are kept in
``state_dir/surveys.json``, so a restart between showing a survey and reporting it
neither shows it twice nor loses the report.

Who is at the console goes with every report too (``Report.console_user``, set by the
shipper from :meth:`SurveyInbox.console_user_id`): the collector asks a person at most
once per rate limit, whichever machine they use. It is :func:`console_user_id` of the
name, a hash the same on every machine, never the name itself; it is read off the event
loop (:meth:`SurveyInbox.refresh_console_user`: ``loginctl`` may take a moment) and not
sent at all while surveys are off here.

A survey is shown once. When nothing can show it (no notifier, no graphical session, the
notifier failed), that is reported as ``unavailable`` and not retried: the person is not
pestered by a machine that cannot reach them properly, and the collector stops offering.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vigil.agent.exec.console import console_user
from vigil.agent.exec.logons import ConsoleUser
from vigil.agent.identity import write_atomically
from vigil.agent.notify_user import Notification, Notifier
from vigil.quiet_hours import QuietHours, local_seconds

log = logging.getLogger("vigil.agent.surveys")

OFFSET_HEADER = "Vigil-UTC-Offset"
SURVEYS_HEADER = "Vigil-Surveys"
TITLE = "IT support: how did we do?"
# Surveys taken from one ack at most, and survey ids remembered as done (bounded memory).
MAX_PER_ACK = 5
MAX_REMEMBERED = 1000
# Seconds between looks at who is at the console (a look runs loginctl on Linux; logging
# on and off is rare, and a report a minute late in saying so costs nothing).
CONSOLE_REFRESH_S = 60.0
# Domain separation for console_user_id: the same name hashes differently in any other
# use of SHA-256.
_USER_ID_PREFIX = b"vigil/console-user/v1\n"
_NOTE = re.compile(r"[^A-Za-z0-9_.-]+")
_OUTCOME = re.compile(r"shown|unavailable:[A-Za-z0-9_.-]{0,60}")


@dataclass(frozen=True, slots=True)
class SurveySettings:
    """The ``surveys:`` section of the agent config: ``enabled`` (show surveys at all),
    ``quiet_hours`` (local time in which none is shown; it waits), ``notifier`` (a
    program run with title, body and URL appended; empty: the platform's own)."""

    enabled: bool = True
    quiet_hours: QuietHours | None = None
    notifier: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Survey:
    """One survey handed over by the collector."""

    id: int
    url: str
    incident: int
    title: str


def console_user_id(name: str) -> str:
    """The opaque id of the person logged on as ``name``: SHA-256 (lowercase hex) of the
    case-folded name under a fixed prefix, the same on every machine and platform, so a
    person moving between laptops keeps one id (and two people named alike on different
    machines, such as two local ``admin`` accounts, share one).

    Pseudonymous, not secret: whoever has a list of user names can hash them and match
    (the prefix is public). It keeps names out of the collector's survey table and
    logs; it is no protection against an operator who sets out to identify someone."""
    return hashlib.sha256(_USER_ID_PREFIX + name.casefold().encode("utf-8")).hexdigest()


def local_utc_offset(now: float) -> int:
    """This machine's offset east of UTC at ``now`` (seconds; follows daylight saving)."""
    return time.localtime(now).tm_gmtoff


class SurveyInbox:
    """Surveys waiting to be shown, and what to report about shown ones.

    ``notifier`` shows them; ``clock`` gives wall seconds; ``utc_offset(now)`` this
    machine's offset east of UTC; ``console`` says who is at the console (blocking: run
    on a thread), ``monotonic`` paces those looks. Thread-compatible with the shipper:
    :meth:`headers`, :meth:`take_ack` and :meth:`console_user_id` are called on the
    event loop, between requests.
    """

    def __init__(
        self,
        settings: SurveySettings,
        notifier: Notifier,
        *,
        clock: Callable[[], float] = time.time,
        utc_offset: Callable[[float], int] = local_utc_offset,
        state_file: Path | None = None,
        console: Callable[[], ConsoleUser | None] = console_user,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._console = console
        self._monotonic = monotonic
        self._user_id: str | None = None
        self._user_looked_at: float | None = None
        self._looking = False
        self._notifier = notifier
        self._clock = clock
        self._utc_offset = utc_offset
        self._pending: dict[int, Survey] = {}
        self._to_report: dict[int, str] = {}  # id -> "shown" | "unavailable:why"
        self._done: OrderedDict[int, None] = OrderedDict()
        self._lock = asyncio.Lock()
        self._state_file = state_file
        self._load()

    @property
    def pending(self) -> int:
        """Surveys waiting to be shown."""
        return len(self._pending)

    def console_user_id(self) -> str | None:
        """The id (:func:`console_user_id`) of who was at the console at the last look;
        None when nobody was, before the first look, or while surveys are off here (no
        reason then to say who is logged on). No I/O."""
        return self._user_id if self._settings.enabled else None

    def console_look_due(self) -> bool:
        """Whether :meth:`refresh_console_user` would look now: surveys on here, no look
        running, and the last one :data:`CONSOLE_REFRESH_S` old or more (no I/O; the
        caller starts a look only then, not a task per report)."""
        if not self._settings.enabled or self._looking:
            return False
        last = self._user_looked_at
        return last is None or not 0 <= self._monotonic() - last < CONSOLE_REFRESH_S

    async def refresh_console_user(self) -> None:
        """Look again who is at the console, on a thread, when :meth:`console_look_due`.
        A failed look is logged and leaves the previous answer (the collector then limits
        as it last knew)."""
        if not self.console_look_due():
            return
        now = self._monotonic()
        self._looking = True
        try:
            found = await asyncio.to_thread(self._console)
        except Exception:
            log.exception("cannot tell who is at the console")
            return
        finally:
            self._looking = False
            self._user_looked_at = now
        self._user_id = None if found is None else console_user_id(found.name)

    def headers(self) -> dict[str, str]:
        """Headers for the next report: the UTC offset, and the outcomes not yet sent."""
        out = {OFFSET_HEADER: str(self._utc_offset(self._clock()))}
        if self._to_report:
            out[SURVEYS_HEADER] = ",".join(f"{i}={s}" for i, s in self._to_report.items())
        return out

    def take_ack(self, text: str, sent: Mapping[str, str]) -> None:
        """After a 2xx: the outcomes in ``sent`` reached the collector (forget them), and
        the ack's ``"surveys"`` wait to be shown. A malformed entry is logged, skipped."""
        for part in sent.get(SURVEYS_HEADER, "").split(","):
            survey_id, _, _ = part.partition("=")
            if survey_id.isdigit() and int(survey_id) in self._to_report:
                del self._to_report[int(survey_id)]
                self._dirty = True
        if self._dirty:
            self._save()
        if not self._settings.enabled:
            return
        try:
            ack = json.loads(text)
        except ValueError:
            return  # the shipper already judged the ack; nothing of ours in it
        offered = ack.get("surveys") if isinstance(ack, dict) else None
        if not isinstance(offered, list):
            return
        for entry in offered[:MAX_PER_ACK]:
            survey = _survey(entry)
            if survey is None:
                log.warning("ignoring a malformed survey in the ack: %.200r", entry)
            elif survey.id not in self._done and survey.id not in self._pending:
                self._pending[survey.id] = survey

    async def show_due(self) -> int:
        """Show the waiting surveys unless it is quiet hours here; returns how many were
        shown. Each outcome is reported with the next report."""
        if not self._pending:
            return 0
        now = self._clock()
        quiet = self._settings.quiet_hours
        if quiet is not None and quiet.contains(local_seconds(now, self._utc_offset(now))):
            return 0
        shown = 0
        async with self._lock:
            for survey in list(self._pending.values()):
                note = Notification(
                    TITLE,
                    f"Your IT issue ({survey.title}) was resolved. Tell us how it went:",
                    survey.url,
                )
                why = await self._notifier.show(note)
                self._pending.pop(survey.id, None)
                self._remember(survey.id)
                if why is None:
                    shown += 1
                    self._to_report[survey.id] = "shown"
                    log.info(
                        "showed satisfaction survey %d (incident %d)", survey.id, survey.incident
                    )
                else:
                    slug = _NOTE.sub("-", why).strip("-")[:60]
                    self._to_report[survey.id] = f"unavailable:{slug}"
                    log.warning("could not show satisfaction survey %d: %s", survey.id, why)
                self._save()
        return shown

    def _load(self) -> None:
        self._dirty = False
        if self._state_file is None or not self._state_file.exists():
            return
        try:
            saved = json.loads(self._state_file.read_text(encoding="ascii"))
            done = [int(i) for i in saved["done"]][-MAX_REMEMBERED:]
            report = {int(i): str(v) for i, v in saved["report"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", self._state_file, exc)
            return
        self._done = OrderedDict.fromkeys(done)
        self._to_report = {i: v for i, v in report.items() if _OUTCOME.fullmatch(v)}

    def _save(self) -> None:
        self._dirty = False
        if self._state_file is None:
            return
        text = json.dumps({"done": list(self._done), "report": self._to_report})
        try:
            write_atomically(self._state_file, text)
        except OSError as exc:  # the collector offers it again; at worst shown twice
            log.warning("cannot save %s: %s", self._state_file, exc)

    def _remember(self, survey_id: int) -> None:
        self._done[survey_id] = None
        while len(self._done) > MAX_REMEMBERED:
            self._done.popitem(last=False)


def _survey(entry: Any) -> Survey | None:
    """A valid survey entry of the ack, or None."""
    if not isinstance(entry, dict):
        return None
    sid, url, incident, title = (entry.get(k) for k in ("id", "url", "incident", "title"))
    if not (isinstance(sid, int) and isinstance(incident, int) and not isinstance(sid, bool)):
        return None
    if not (isinstance(url, str) and isinstance(title, str) and len(url) <= 2000):
        return None
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.hostname:
        return None  # only ever a web page: never a file:, javascript: or app link
    return Survey(sid, url, incident, title[:120])
