"""The ingest queue: group commit, bounded admission (429 + Retry-After), durable acks."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.desk import open_desk
from vigil import wire
from vigil.collector.app import create_app
from vigil.collector.config import CollectorConfig, IngestConfig
from vigil.collector.desk.apply import IngestResult
from vigil.collector.desk.service import Desk
from vigil.collector.ingest import IngestQueue, QueueFull
from vigil.collector.keys import counters_key, desk_key, executor_key

AGENT_TOKEN = (
    "test-agent-token-0123456789abcdef0123456789abcdef"  # the collector_config fixture's tokens
)
ADMIN_TOKEN = "test-admin-token-0123456789abcdef0123456789abcdef"


class FakeStore:
    """``ingest_many`` that records each group; the first call waits for ``gate``."""

    def __init__(self, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.groups: list[list[str]] = []
        self.gate = threading.Event()
        self.fail = fail

    def ingest_many(
        self, items: Sequence[tuple[wire.Report, float]]
    ) -> list[IngestResult | Exception]:
        if not self.groups:
            self.gate.wait(timeout=10)
        self.groups.append([r.batch_id for r, _ in items])
        return [
            RuntimeError(f"bad {r.batch_id}")
            if r.batch_id in self.fail
            else IngestResult(False, len(r.events), (), (), ())
            for r, _ in items
        ]


class FakeRng:
    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


def run_queue(store: FakeStore, body: Callable[[IngestQueue], Any], **kwargs: Any) -> Any:
    async def main() -> Any:
        with ThreadPoolExecutor(max_workers=1) as executor:
            queue = IngestQueue(store.ingest_many, executor, **kwargs)
            queue.start()
            try:
                return await body(queue)
            finally:
                store.gate.set()
                await queue.close()

    return asyncio.run(main())


def test_reports_that_arrive_during_a_commit_share_the_next_one(make_report) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore()
    reports = [make_report(batch_id=f"b{i}") for i in range(6)]

    async def body(queue: IngestQueue) -> list[IngestResult]:
        first = asyncio.ensure_future(queue.submit(reports[0], 1.0))
        await asyncio.sleep(0.05)  # the first commit is now running (held at the gate)
        rest = [asyncio.ensure_future(queue.submit(r, 1.0)) for r in reports[1:]]
        await asyncio.sleep(0.05)
        store.gate.set()
        return await asyncio.gather(first, *rest)

    results = run_queue(store, body)

    assert store.groups == [["b0"], ["b1", "b2", "b3", "b4", "b5"]]
    assert len(results) == 6


def test_a_group_is_capped_at_max_group(make_report) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore()
    store.gate.set()
    reports = [make_report(batch_id=f"b{i}") for i in range(5)]

    async def body(queue: IngestQueue) -> None:
        await asyncio.gather(*(queue.submit(r, 1.0) for r in reports))

    run_queue(store, body, max_group=2)

    assert [len(g) for g in store.groups] == [2, 2, 1]


def test_past_max_pending_a_report_is_refused_at_once_with_a_jittered_retry_after(
    make_report,  # type: ignore[no-untyped-def]
) -> None:
    store = FakeStore()

    async def body(queue: IngestQueue) -> tuple[QueueFull, int]:
        held = asyncio.ensure_future(queue.submit(make_report(), 1.0))  # in the held commit
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(queue.submit(make_report(), 1.0))  # now it is full
        await asyncio.sleep(0)
        with pytest.raises(QueueFull) as refused:
            await queue.submit(make_report(), 1.0)
        store.gate.set()
        await asyncio.gather(held, waiting)
        return refused.value, queue.stats().shed

    refused, shed = run_queue(store, body, max_pending=1, retry_after_s=4.0, rng=FakeRng(0.5))

    assert refused.retry_after_s == 6  # ceil(uniform(4, 8)) at the midpoint
    assert shed == 1


def test_a_failing_report_fails_alone(make_report) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore(fail={"bad"})
    store.gate.set()

    async def body(queue: IngestQueue) -> list[Any]:
        return await asyncio.gather(
            queue.submit(make_report(batch_id="good"), 1.0),
            queue.submit(make_report(batch_id="bad"), 1.0),
            return_exceptions=True,
        )

    good, bad = run_queue(store, body)

    assert isinstance(good, IngestResult)
    assert isinstance(bad, RuntimeError)


def test_close_commits_what_is_queued_and_then_refuses(make_report) -> None:  # type: ignore[no-untyped-def]
    store = FakeStore()

    async def body(queue: IngestQueue) -> bool:
        pending = [asyncio.ensure_future(queue.submit(make_report(), 1.0)) for _ in range(3)]
        await asyncio.sleep(0.05)
        store.gate.set()
        await queue.close()
        results = await asyncio.wait_for(asyncio.gather(*pending), timeout=1)
        assert all(isinstance(r, IngestResult) for r in results)
        return queue.full()

    assert run_queue(store, body) is True
    assert sum(len(g) for g in store.groups) == 3


def test_begin_group_needs_a_commit_thread_of_its_own() -> None:
    store = FakeStore()
    with ThreadPoolExecutor(max_workers=1) as executor:
        for commits in (None, executor):
            with pytest.raises(ValueError, match="commit_executor"):
                IngestQueue(
                    store.ingest_many,
                    executor,
                    begin_group=lambda items: None,
                    commit_executor=commits,
                )


# ------------------------------------------------------------------ the store's group commit


def test_ingest_many_applies_every_report_of_a_group(
    tmp_path: Path,
    make_report,
    make_check_event,  # type: ignore[no-untyped-def]
) -> None:
    store = open_desk(tmp_path / "c.db")
    reports = [make_report(make_check_event(), agent_id=f"agent-{i}") for i in range(3)]

    results = store.ingest_many([(r, 100.0) for r in reports])

    assert [r.events for r in results] == [1, 1, 1]  # type: ignore[union-attr]
    assert len(store.list_hosts()) == 3


def test_a_batch_repeated_inside_one_group_is_applied_once(
    tmp_path: Path,
    make_report,
    make_check_event,  # type: ignore[no-untyped-def]
) -> None:
    store = open_desk(tmp_path / "c.db")
    report = make_report(make_check_event())

    first, again = store.ingest_many([(report, 100.0), (report, 100.5)])

    assert (first.duplicate, again.duplicate) == (False, True)  # type: ignore[union-attr]
    assert len(store.list_incidents()) == 1


def test_one_bad_report_in_a_group_does_not_stop_the_others(
    tmp_path: Path,
    make_report,
    make_check_event,  # type: ignore[no-untyped-def]
) -> None:
    store = open_desk(tmp_path / "c.db")
    good = make_report(make_check_event(), agent_id="good")
    bad = make_report(make_check_event(), agent_id="bad")

    ok, failed = store.ingest_many([(good, 100.0), (bad, float("nan"))])

    assert isinstance(ok, IngestResult)
    assert isinstance(failed, ValueError)
    assert [h["agent_id"] for h in store.list_hosts()] == ["good"]


# ------------------------------------------------------------------ over HTTP


@contextlib.asynccontextmanager
async def running_app(config: CollectorConfig) -> AsyncIterator[tuple[web.Application, str]]:
    """A real collector app on an ephemeral 127.0.0.1 port: ``(app, base_url)``."""
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield app, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def test_an_overloaded_collector_answers_429_with_retry_after(
    collector_config: CollectorConfig,
    make_report,
    make_check_event,  # type: ignore[no-untyped-def]
) -> None:
    config = dataclasses.replace(collector_config, ingest=IngestConfig(max_pending=1))
    release = threading.Event()

    async def main() -> tuple[list[tuple[int, str | None]], int]:
        async with running_app(config) as (app, base):
            url = base + "/api/v1/reports"
            # Hold the store (its lock, from its thread) so reports pile up behind it: the
            # loop cannot apply them inline and their fallback waits on the store's thread.
            store = app[desk_key]

            def hold() -> None:
                with store.storage.lock:
                    release.wait(10)

            held = asyncio.get_running_loop().run_in_executor(app[executor_key], hold)
            async with aiohttp.ClientSession() as session:

                async def post() -> tuple[int, str | None]:
                    body = gzip.compress(wire.encode_report(make_report(make_check_event())))
                    headers = {
                        "Authorization": f"Bearer {AGENT_TOKEN}",
                        "Content-Type": "application/json",
                        "Content-Encoding": "gzip",
                    }
                    async with session.post(url, data=body, headers=headers) as resp:
                        return resp.status, resp.headers.get("Retry-After")

                tasks = [asyncio.ensure_future(post()) for _ in range(6)]
                await asyncio.sleep(0.5)
                release.set()
                await held
                answers = await asyncio.gather(*tasks)
                shed = app[counters_key].rejected["overloaded"]
                return answers, shed

    answers, shed = asyncio.run(main())

    refused = [retry for status, retry in answers if status == 429]
    assert refused and all(retry is not None and int(retry) >= 2 for retry in refused)
    assert all(status in (200, 429) for status, _ in answers)
    assert shed == len(refused)  # exported as vigil_reports_rejected_total{reason="overloaded"}


def test_a_read_queued_on_the_store_thread_does_not_block_a_commit(
    collector_config: CollectorConfig,
    make_report,
    make_check_event,  # type: ignore[no-untyped-def]
) -> None:
    """Reports are applied on the loop (holding the store) and committed on a thread of
    their own. A read already queued on the store's thread waits for the store; if the
    COMMIT were queued behind it, neither would ever run."""
    release = threading.Event()

    async def main() -> tuple[list[int], list[int], int]:
        async with running_app(collector_config) as (app, base):
            agent = {
                "Authorization": f"Bearer {AGENT_TOKEN}",
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
            }
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            loop = asyncio.get_running_loop()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

                async def post(i: int) -> int:
                    report = make_report(make_check_event(), agent_id=f"agent-{i}")
                    body = gzip.compress(wire.encode_report(report))
                    async with session.post(
                        base + "/api/v1/reports", data=body, headers=agent
                    ) as resp:
                        return resp.status

                async def read() -> int:
                    async with session.get(base + "/api/v1/hosts", headers=admin) as resp:
                        await resp.read()
                        return resp.status

                # Keep the store's thread busy (not holding the store), queue reads behind
                # it, then let reports be applied inline before the thread is free again.
                busy = loop.run_in_executor(app[executor_key], release.wait, 10)
                reads = [asyncio.ensure_future(read()) for _ in range(5)]
                await asyncio.sleep(0.2)
                posts = [asyncio.ensure_future(post(i)) for i in range(10)]
                await asyncio.sleep(0.3)
                release.set()
                await busy
                read_statuses = await asyncio.gather(*reads)
                post_statuses = await asyncio.gather(*posts)
                hosts = len(app[desk_key].list_hosts())
                return post_statuses, read_statuses, hosts

    posted, reads, hosts = asyncio.run(asyncio.wait_for(main(), timeout=30))

    assert set(posted) == {200} and set(reads) == {200}
    assert hosts == 10


# ------------------------------------------------------------------ clock jumps, config


def test_a_reported_clock_jump_is_history_and_never_an_incident(
    tmp_path: Path,
    make_report,
    make_check_event,  # type: ignore[no-untyped-def]
) -> None:
    store = open_desk(tmp_path / "c.db")
    jump = make_check_event(wire.CLOCK_CHECK, "ok", previous_state=None, value=3600.0)

    store.ingest(make_report(jump), 100.0)

    assert store.list_incidents() == []
    assert wire.CLOCK_CHECK not in store.list_hosts()[0]["checks"]


def test_ingest_knobs_are_read_and_checked(tmp_path: Path) -> None:
    from vigil.collector.config import load_collector_config
    from vigil.configio import ConfigError

    path = tmp_path / "collector.yaml"
    base = "auth: {agent_tokens: [t-0123456789abcdef0123456789abcdef]}\n"
    path.write_text(base + "ingest: {max_pending: 50, max_group: 8, retry_after: 3s}\n")
    assert load_collector_config(path).ingest == IngestConfig(50, 8, 3.0)

    path.write_text(base + "ingest: {max_pending: 0}\n")
    with pytest.raises(ConfigError, match=r"ingest\.max_pending"):
        load_collector_config(path)


# ------------------------------------------------------------------ forgetting dedup ids


def test_dedup_retention_is_read_and_checked(tmp_path: Path) -> None:
    from vigil.collector.config import load_collector_config
    from vigil.configio import ConfigError

    path = tmp_path / "collector.yaml"
    base = "auth: {agent_tokens: [t-0123456789abcdef0123456789abcdef]}\n"
    path.write_text(base)
    assert load_collector_config(path).dedup_retention_s == 14 * 86400.0
    path.write_text(base + "storage: {dedup_retention: 30d}\n")
    assert load_collector_config(path).dedup_retention_s == 30 * 86400.0
    path.write_text(base + "storage: {dedup_retention: 10m}\n")
    with pytest.raises(ConfigError, match=r"storage\.dedup_retention") as exc:
        load_collector_config(path)
    assert str(path) in str(exc.value) and "10m" in str(exc.value)


def test_every_tick_forgets_a_bounded_chunk_of_expired_dedup_ids(
    collector_config: CollectorConfig,
    make_report,
    make_check_event,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from vigil.collector import app as app_module

    day = 86400.0
    now = 1_800_000_000.0
    config = dataclasses.replace(collector_config, dedup_retention_s=7 * day)
    monkeypatch.setattr(app_module, "PRUNE_CHUNK", 3)

    async def main() -> list[int]:
        app = create_app(config, clock=lambda: now)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            store = app[desk_key]
            old = [make_report(make_check_event()) for _ in range(2)]  # 2 ids each
            for r in old:
                store.ingest(r, now - 8 * day)
            store.ingest(make_report(make_check_event()), now - 1 * day)
            left = []
            for _ in range(3):
                await app_module.tick_once(app)
                left.append(count_seen(store))
            again = store.ingest(old[0], now)  # forgotten: a very late retry applies again
            left.append(int(again.duplicate))
            return left
        finally:
            await runner.cleanup()

    # 6 ids (3 reports x batch + event): the 4 expired go 3 then 1; the recent 2 stay.
    assert asyncio.run(main()) == [3, 2, 2, 0]


def count_seen(store: Desk) -> int:
    with contextlib.closing(sqlite3.connect(store.storage.path)) as db:
        return db.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
