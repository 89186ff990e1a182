"""The ingest queue: bounded admission plus group commit in front of the desk.

Why: with ``synchronous=FULL`` every transaction costs an fsync. Committing each report
alone caps throughput at the disk's fsync rate; committing the reports that arrived while
the previous commit was running in ONE transaction (group commit) shares that fsync among
them, so durability does not cost throughput. No timer is involved: a group is whatever
queued up during the previous commit, so a lone report is committed at once and a busy
collector commits in larger groups (up to ``max_group``).

Overload control: at most ``max_pending`` reports wait for a commit. Past that
:meth:`IngestQueue.submit` raises :class:`QueueFull` at once and the handler answers
``429`` with ``Retry-After`` (a jittered number of whole seconds, so shed agents do not
come back in step), rather than letting memory grow or requests time out.
:meth:`IngestQueue.full` lets the handler refuse before it even reads the body.

Acknowledgement: :meth:`IngestQueue.submit` returns only after the COMMIT that carried
the report succeeded, so the caller may acknowledge it. A client that gave up meanwhile
changes nothing: its report is committed anyway and its retry is a duplicate.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import random
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from vigil import wire
from vigil.collector.desk.apply import IngestResult, Items, Results
from vigil.wire_fast import ReportStruct

log = logging.getLogger(__name__)

IngestMany = Callable[[Items], Results]
BeginGroup = Callable[[Items], Callable[[], Results] | None]
# Called on the loop with a report's outcome once its group's COMMIT ended (see enqueue).
Deliver = Callable[[IngestResult | Exception], None]


class QueueFull(Exception):
    """The ingest queue is at its bound; try again after ``retry_after_s`` whole seconds."""

    def __init__(self, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"ingest queue full, retry after {retry_after_s} s")


@dataclass(frozen=True, slots=True)
class IngestStats:
    """Counts since start: ``reports`` committed (or failed) through the queue, ``groups``
    transactions used for them, ``shed`` reports refused as overload, ``pending`` waiting now."""

    reports: int
    groups: int
    shed: int
    pending: int


@dataclass(slots=True)
class _Item:
    report: wire.Report | ReportStruct
    received_at: float
    deliver: Deliver


class IngestQueue:
    """Admits reports up to a bound and commits them in groups on the storage thread.

    ``ingest_many`` is the desk's group-commit call (one transaction for a list of
    reports, one result or exception per report); it runs on ``executor``, the storage's
    single thread. ``begin_group``, if given, is the two-step form: called on the loop,
    it applies a group and returns the COMMIT step, which then runs on ``commit_executor``
    (required with it); when it returns None (storage busy, or a report failed) the group
    goes to ``ingest_many``. The COMMIT step must not share ``executor``: a read queued
    there before it would wait for the storage's lock, which only the COMMIT step releases.
    ``retry_after_s`` is the base of the Retry-After advice: each refusal says
    ``ceil(uniform(base, 2 * base))`` seconds, drawn from ``rng``.
    Use inside a running loop: :meth:`start`, then :meth:`close` (which commits what is
    already queued before it returns).
    """

    def __init__(
        self,
        ingest_many: IngestMany,
        executor: Executor | None,
        *,
        begin_group: BeginGroup | None = None,
        commit_executor: Executor | None = None,
        max_pending: int = 1000,
        max_group: int = 256,
        retry_after_s: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if max_pending < 1 or max_group < 1:
            raise ValueError(
                f"max_pending and max_group must be at least 1, got {max_pending}, {max_group}"
            )
        if begin_group is not None and (commit_executor is None or commit_executor is executor):
            raise ValueError("begin_group needs a commit_executor of its own")
        if not retry_after_s > 0:
            raise ValueError(f"retry_after_s: must be positive, got {retry_after_s!r}")
        self._ingest_many = ingest_many
        self._begin_group = begin_group
        self._commit_executor = commit_executor
        self._executor = executor
        self._max_pending = max_pending
        self._max_group = max_group
        self._retry_after_s = retry_after_s
        self._rng = rng if rng is not None else random.Random()
        self._pending: collections.deque[_Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._reports = self._groups = self._shed = 0

    def start(self) -> None:
        """Start the writer task (call from inside the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._writer(), name="vigil-ingest-writer")

    async def close(self) -> None:
        """Refuse new reports, commit those already queued, stop the writer."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    def full(self) -> bool:
        """Whether a report submitted now would be refused (cheap: check before reading)."""
        return self._closing or len(self._pending) >= self._max_pending

    def retry_after(self) -> int:
        """Whole seconds to advise in ``Retry-After`` (jittered, at least 1)."""
        base = self._retry_after_s
        return max(1, math.ceil(self._rng.uniform(base, 2 * base)))

    def stats(self) -> IngestStats:
        """See :class:`IngestStats`."""
        return IngestStats(self._reports, self._groups, self._shed, len(self._pending))

    async def submit(self, report: wire.Report, received_at: float) -> IngestResult:
        """Queue ``report`` and return once it is durably committed.

        Raises :class:`QueueFull` when the queue is at its bound (or closing), and
        whatever the desk raised for this report (nothing of it was then applied).
        """
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self.enqueue(report, received_at, functools.partial(_settle, future))
        # If the client gave up, nobody awaits the future: mark its outcome as seen.
        future.add_done_callback(_consume)
        # shield: a client that disconnects cancels its handler, not the commit it is in.
        return await asyncio.shield(future)

    def enqueue(
        self, report: wire.Report | ReportStruct, received_at: float, deliver: Deliver
    ) -> None:
        """Queue ``report``; ``deliver`` is called on the loop, exactly once, with its
        result (or the exception that kept it from being applied) after the COMMIT.

        The callback form of :meth:`submit`, for a caller that answers from a callback
        rather than a coroutine (the lean front's plain reports: no future or task per
        request). ``deliver`` must not raise (what it raises is logged and dropped).
        Raises :class:`QueueFull` at once when the queue is at its bound (or closing).
        """
        if self.full():
            self._shed += 1
            raise QueueFull(self.retry_after())
        self._pending.append(_Item(report, received_at, deliver))
        self._wakeup.set()

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                group = [self._pending.popleft() for _ in range(self._max_group) if self._pending]
                items = [(item.report, item.received_at) for item in group]
                try:
                    finish = self._begin_group(items) if self._begin_group else None
                    if finish is not None:
                        # No await between begin and submit: finish always runs, so the
                        # storage it holds is always released.
                        results = await loop.run_in_executor(self._commit_executor, finish)
                    else:
                        results = await loop.run_in_executor(
                            self._executor, self._ingest_many, items
                        )
                except Exception as exc:  # the COMMIT failed: none of the group is stored
                    log.error("group commit of %d reports failed: %r", len(group), exc)
                    results = [exc] * len(group)
                if len(results) != len(group):  # a desk bug; never leave a request hanging
                    error = RuntimeError(f"desk answered {len(results)} of {len(group)} reports")
                    results = [error] * len(group)
                self._groups += 1
                self._reports += len(group)
                for item, result in zip(group, results, strict=True):
                    try:
                        item.deliver(result)
                    except Exception:  # a caller's bug must not stop the writer
                        log.exception("delivering the result of %s failed", item.report.batch_id)
            if self._closing:
                return


def _settle(future: asyncio.Future[IngestResult], result: IngestResult | Exception) -> None:
    if future.done():  # cancelled: the client gave up (its report is committed anyway)
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def _consume(future: asyncio.Future[IngestResult]) -> None:
    if not future.cancelled():
        future.exception()
