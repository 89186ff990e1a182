"""Print source: CUPS queues that hold jobs or that CUPS disabled, through ``lpstat``.

Series (only when ``sampler.print`` is configured):

- ``print.queue_jobs``: jobs not yet completed, over every queue;
- ``print.oldest_job_age_s``: seconds since the oldest of them was submitted (0: none);
- ``print.queues_disabled``: queues CUPS has disabled (after a backend error, or by hand);
- ``print.queue_jobs[<queue>]``, ``print.oldest_job_age_s[<queue>]`` and
  ``print.queue_disabled[<queue>]`` (1/0) per queue ``lpstat -p`` lists, so a queue that
  empties reads 0 rather than disappearing.

``lpstat -o`` and ``lpstat -p`` run with ``LC_ALL=C`` (fixed date format), the scheduler
of ``sampler.print.server`` as ``CUPS_SERVER``, and a timeout; the read happens at most
once per ``sampler.print.interval``. No ``lpstat``, a scheduler that does not answer, or
output we cannot read leaves every ``print.*`` series out with the reason, so a check on
them reads ``unknown``, never ok. Parsing is pure (:func:`parse_jobs`, :func:`parse_queues`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from vigil.agent.sampler_config import PrintSpec
from vigil.agent.sampling.series import Item
from vigil.agent.sampling.slow import SlowReads

MAX_OUTPUT = 256 * 1024
_DATE_FORMAT = "%a %b %d %H:%M:%S %Y"  # lpstat's C-locale "%c"


class PrintError(Exception):
    """The queues could not be read; the message is the reason shown for the series."""


@dataclass(frozen=True, slots=True)
class Job:
    """One pending job: its queue and submission time (epoch seconds, ``None``: unreadable)."""

    queue: str
    submitted: float | None


def parse_jobs(text: str) -> list[Job]:
    """Jobs from ``lpstat -o`` (C locale): ``<queue>-<id> <user> <size> <date>`` per line.

    The date is the last five fields, in local time; a line whose date cannot be read
    still counts as a job (with no submission time).
    """
    jobs: list[Job] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        queue, dash, number = fields[0].rpartition("-")
        if not dash or not queue or not number.isdigit():
            continue  # a continuation line ("queued for ...", "Status: ...")
        submitted: float | None = None
        if len(fields) >= 7:
            try:
                submitted = time.mktime(time.strptime(" ".join(fields[-5:]), _DATE_FORMAT))
            except (ValueError, OverflowError):
                submitted = None
        jobs.append(Job(queue, submitted))
    return jobs


def parse_queues(text: str) -> dict[str, bool]:
    """``{queue: disabled}`` from ``lpstat -p`` (C locale): ``printer <q> is idle.
    enabled since ...`` or ``printer <q> disabled since ...``; indented lines are the
    reason text and are skipped."""
    queues: dict[str, bool] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "printer" and not line[:1].isspace():
            queues[fields[1]] = "disabled" in fields[2:4]
    return queues


def queue_items(jobs: list[Job], queues: dict[str, bool], now: float) -> list[Item]:
    """The series for ``jobs`` and ``queues`` at epoch ``now`` (ages clamped at 0)."""

    def oldest(selected: list[Job]) -> float:
        ages = [max(0.0, now - j.submitted) for j in selected if j.submitted is not None]
        return max(ages, default=0.0)

    items: list[Item] = [
        ("print.queue_jobs", len(jobs)),
        ("print.oldest_job_age_s", oldest(jobs)),
        ("print.queues_disabled", sum(queues.values())),
    ]
    for queue in sorted(set(queues) | {j.queue for j in jobs}):
        mine = [j for j in jobs if j.queue == queue]
        items += [
            (f"print.queue_jobs[{queue}]", len(mine)),
            (f"print.oldest_job_age_s[{queue}]", oldest(mine)),
            (f"print.queue_disabled[{queue}]", 1.0 if queues.get(queue) else 0.0),
        ]
    return items


class PrintQueues:
    """The ``print`` source; ``wall_clock``, ``which`` and ``run`` are seams for tests."""

    def __init__(
        self,
        spec: PrintSpec | None,
        *,
        slow: SlowReads,
        reasons: dict[str, str],
        wall_clock: Callable[[], float] = time.time,
        which: Callable[[str], str | None] = shutil.which,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> None:
        self._spec = spec
        self._slow = slow
        self._reasons = reasons
        self._wall_clock = wall_clock
        self._which = which
        self._run = run

    def read(self) -> list[Item]:
        """The ``print.*`` series, read at most once per interval."""
        if self._spec is None:
            return []
        return self._slow.every("print", self._read, self._spec.interval_s)

    def due(self, now: float) -> bool:
        """Whether the next :meth:`read` runs ``lpstat`` (blocking up to the timeout)."""
        return self._spec is not None and self._slow.due("print", now, self._spec.interval_s)

    def _read(self) -> list[Item]:
        try:
            lpstat = self._which("lpstat")
            if lpstat is None:
                raise PrintError("lpstat not found (the CUPS client is not installed)")
            jobs = parse_jobs(self._lpstat(lpstat, "-o"))
            queues = parse_queues(self._lpstat(lpstat, "-p"))
        except PrintError as exc:
            self._reasons["print"] = str(exc)
            return []
        self._reasons.pop("print", None)
        return queue_items(jobs, queues, self._wall_clock())

    def _lpstat(self, lpstat: str, flag: str) -> str:
        assert self._spec is not None
        env = {**os.environ, "LC_ALL": "C"}
        if self._spec.server is not None:
            env["CUPS_SERVER"] = self._spec.server
        try:
            done = self._run(
                [lpstat, flag],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self._spec.timeout_s,
                check=False,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise PrintError(f"lpstat {flag} timed out after {self._spec.timeout_s:g}s") from None
        except OSError as exc:
            raise PrintError(f"cannot run lpstat: {exc.strerror}") from None
        if done.returncode != 0:
            why = " ".join((done.stderr or done.stdout or "").split())
            if flag == "-p" and "No destinations added" in why:
                return ""  # a scheduler with no queues: nothing is stuck
            raise PrintError(f"lpstat {flag} exited {done.returncode}: {why[:200]}")
        return done.stdout[:MAX_OUTPUT]
