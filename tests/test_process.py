"""rowstream.process: every row once, bounded memory, clean stops, collect mode, threads, order."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase

import rowstream
import rowstream.sync
from rowstream._pipeline import BUFFER_BATCHES
from rowstream._sizing import FIRST_BATCH_ROWS

ROWS = 2_000

metadata = sa.MetaData()
proc_items = sa.Table(
    "proc_items",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("grp", sa.Integer, nullable=False),
    sa.Column("payload", sa.String(100), nullable=False),
)


class Base(DeclarativeBase):
    metadata = metadata


class ProcItem(Base):
    __table__ = proc_items


def item_rows(count: int) -> list[dict[str, Any]]:
    return [{"id": i, "grp": i % 7, "payload": f"item {i:06d}"} for i in range(1, count + 1)]


async def fill(engine: AsyncEngine, count: int = ROWS) -> None:
    """(Re)create proc_items with ids 1..count."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
        await conn.execute(proc_items.insert(), item_rows(count))


def fill_sync(url: str, count: int = ROWS) -> None:
    """(Re)create proc_items with ids 1..count, from synchronous code."""
    engine = rowstream.sync.create_engine(url)
    try:
        with engine.begin() as conn:
            metadata.drop_all(conn)
            metadata.create_all(conn)
            conn.execute(proc_items.insert(), item_rows(count))
    finally:
        engine.dispose()


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = rowstream.create_engine(db_url)
    try:
        await fill(engine)
        yield engine
    finally:
        await engine.dispose()


def ids_of(batch: list[Any]) -> list[int]:
    return [row.id for row in batch]


async def test_every_row_is_handled_exactly_once(engine: AsyncEngine) -> None:
    seen: Counter[int] = Counter()

    async def handler(batch: list[Any]) -> None:
        await asyncio.sleep(0.001 * (batch[0].id % 5))
        seen.update(ids_of(batch))

    report = await rowstream.process(
        engine, sa.select(proc_items), handler, concurrency=4, batch_rows=37
    )

    assert seen == Counter(range(1, ROWS + 1))
    assert report.rows == ROWS
    assert report.batches == -(-ROWS // 37)
    assert report.failures == []
    assert report.elapsed > 0
    assert engine.pool.checkedout() == 0


async def test_memory_stays_bounded_whichever_side_is_faster(engine: AsyncEngine) -> None:
    # Every ORM instance the stream loads is tracked weakly: those alive at any moment are the
    # batches held by the queue, the producer and the handlers, and nothing else.
    alive: weakref.WeakSet[ProcItem] = weakref.WeakSet()

    def track(target: ProcItem, _context: Any) -> None:
        alive.add(target)

    event.listen(ProcItem, "load", track)
    most_alive = 0
    running = 0
    most_running = 0
    batch_rows = 20
    concurrency = 3

    # The first handlers wait at a gate for a while: whatever the machine's load, the stream
    # is then the faster side, and the read-ahead must stop at its bound.
    gate = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, gate.set)

    async def slow_handler(batch: list[ProcItem]) -> None:
        nonlocal most_alive, running, most_running
        running += 1
        most_running = max(most_running, running)
        await gate.wait()
        most_alive = max(most_alive, len(alive))
        await asyncio.sleep(0.005)
        running -= 1

    try:
        report = await rowstream.process(
            engine,
            sa.select(ProcItem),
            slow_handler,
            concurrency=concurrency,
            batch_rows=batch_rows,
        )
    finally:
        event.remove(ProcItem, "load", track)

    bound = concurrency + BUFFER_BATCHES + 1
    assert report.rows == ROWS
    assert report.max_batches_held == bound
    # The handlers were the slow side: the read-ahead filled up to its bound and no further.
    assert report.peak_batches == bound
    assert report.peak_queue == BUFFER_BATCHES
    assert report.peak_running == most_running == concurrency
    # Independent of the pipeline's own count: the instances alive in memory.
    # Plus the rows the ORM result itself buffers (it loads yield_per rows at a time).
    assert most_alive <= bound * batch_rows + FIRST_BATCH_ROWS


async def test_a_fast_handler_keeps_the_queue_short(engine: AsyncEngine) -> None:
    async def fast_handler(batch: list[Any]) -> None:
        return None

    report = await rowstream.process(
        engine, sa.select(proc_items), fast_handler, concurrency=4, batch_rows=50
    )
    assert report.rows == ROWS
    assert report.peak_batches <= report.max_batches_held


async def test_a_handler_failing_at_batch_50_stops_the_run_within_two_seconds(
    engine: AsyncEngine,
) -> None:
    failed_at: float | None = None
    started_after_failure = 0
    cancelled = 0

    class BillingError(Exception):
        pass

    async def handler(batch: list[Any]) -> None:
        nonlocal failed_at, started_after_failure, cancelled
        if failed_at is not None:
            started_after_failure += 1
        if batch[0].id == 50 * 10 + 1:  # the 51st batch: index 50
            failed_at = time.monotonic()
            raise BillingError("the billing API refused batch 50")
        try:
            await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            cancelled += 1
            raise

    with pytest.raises(BillingError, match="refused batch 50") as caught:
        await rowstream.process(
            engine, sa.select(proc_items), handler, concurrency=4, batch_rows=10
        )
    raised_at = time.monotonic()

    assert failed_at is not None
    assert raised_at - failed_at < 2.0
    assert engine.pool.checkedout() == 0
    assert started_after_failure <= 4
    assert cancelled >= 1  # the handlers in flight were cancelled, not waited for
    assert any("rowstream.process stopped" in note for note in caught.value.__notes__)


async def test_collect_mode_reports_failed_batches_with_their_keys(engine: AsyncEngine) -> None:
    handled: Counter[int] = Counter()

    async def handler(batch: list[Any]) -> None:
        if batch[0].id % 3 == 1:
            raise ValueError(f"cannot handle {batch[0].id}")
        handled.update(ids_of(batch))

    report = await rowstream.process(
        engine,
        sa.select(proc_items),
        handler,
        batch_rows=100,
        on_error="collect",
    )

    failed_ids = {i for f in report.failures for i in range(f.first_key[0], f.last_key[0] + 1)}  # type: ignore[index]
    assert report.failures, "some batches start at an id of the form 3k + 1"
    assert all(isinstance(f.error, ValueError) for f in report.failures)
    assert all(f.rows == 100 for f in report.failures)
    assert set(handled) | failed_ids == set(range(1, ROWS + 1))
    assert not set(handled) & failed_ids
    assert report.rows + report.failed_rows == ROWS
    assert engine.pool.checkedout() == 0


async def test_a_plain_function_runs_in_threads(engine: AsyncEngine) -> None:
    threads: set[int] = set()
    lock = threading.Lock()
    running = 0
    most_running = 0
    seen: Counter[int] = Counter()

    # The first six batches meet at a barrier: it only opens if six threads run at once.
    barrier = threading.Barrier(6)
    first_six = iter(range(6))

    def blocking_handler(batch: list[Any]) -> None:
        nonlocal running, most_running
        with lock:
            running += 1
            most_running = max(most_running, running)
            threads.add(threading.get_ident())
            meets = next(first_six, None) is not None
        if meets:
            barrier.wait(timeout=30)
        time.sleep(0.005)  # blocking I/O: it must not block the event loop
        with lock:
            seen.update(ids_of(batch))
            running -= 1

    report = await rowstream.process(
        engine, sa.select(proc_items), blocking_handler, concurrency=6, batch_rows=25
    )

    assert seen == Counter(range(1, ROWS + 1))
    assert threading.get_ident() not in threads
    # Six slots, six threads: more than the default executor's min(32, cores + 4) on 2 cores.
    assert most_running == report.peak_running == 6
    assert len(threads) == 6


async def test_ordered_settles_in_stream_order_within_a_window(engine: AsyncEngine) -> None:
    settled: list[int] = []
    started: list[int] = []
    concurrency = 3

    async def handler(batch: list[Any]) -> None:
        started.append(batch[0].id)
        unfinished_before_me = [s for s in started if s not in settled and s < batch[0].id]
        # Batch n starts only when the oldest unfinished one is fewer than `concurrency` back.
        assert len(unfinished_before_me) < concurrency
        # Later batches are quicker: without ordering they would finish first.
        await asyncio.sleep(0.03 if (batch[0].id // 40) % 3 == 0 else 0.001)

    def progress(report: rowstream.ProcessReport) -> None:
        settled.append(report.batches * 40 - 39)

    report = await rowstream.process(
        engine,
        sa.select(proc_items),
        handler,
        concurrency=concurrency,
        batch_rows=40,
        ordered=True,
        progress=progress,
    )
    assert report.rows == ROWS
    assert settled == sorted(settled) == started


async def test_unordered_progress_sees_completions_as_they_come(engine: AsyncEngine) -> None:
    order: list[int] = []

    async def handler(batch: list[Any]) -> None:
        await asyncio.sleep(0.3 if batch[0].id == 1 else 0.001)
        order.append(batch[0].id)

    report = await rowstream.process(
        engine, sa.select(proc_items), handler, concurrency=4, batch_rows=100
    )
    assert report.rows == ROWS
    assert order[0] != 1  # the slow first batch did not hold the others back
    assert sorted(order) == list(range(1, ROWS + 1, 100))


async def test_a_stream_error_stops_the_handlers(engine: AsyncEngine) -> None:
    calls = 0

    async def handler(batch: list[Any]) -> None:
        nonlocal calls
        calls += 1

    with pytest.raises(rowstream.QueryError):
        await rowstream.process(engine, "SELECT * FROM proc_no_such_table", handler)
    assert calls == 0
    assert engine.pool.checkedout() == 0


async def test_cancelling_the_run_returns_the_connection(engine: AsyncEngine) -> None:
    started = asyncio.Event()

    async def handler(batch: list[Any]) -> None:
        started.set()
        await asyncio.sleep(10)

    run = asyncio.create_task(
        rowstream.process(engine, sa.select(proc_items), handler, batch_rows=10)
    )
    await started.wait()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert engine.pool.checkedout() == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency must be between 1 and"),
        ({"concurrency": 2.5}, "concurrency must be an integer"),
        ({"on_error": "ignore"}, "unknown on_error 'ignore'"),
        ({"checkpoint": "progress.json"}, "checkpoint must be a store"),
        ({"progress": 3}, "progress must be a function"),
    ],
)
async def test_bad_options_are_refused_before_reading(
    sqlite_url: str, options: dict[str, Any], message: str
) -> None:
    async def handler(batch: list[Any]) -> None:
        return None

    with pytest.raises(rowstream.ConfigurationError, match=message):
        await rowstream.process(sqlite_url, "SELECT 1", handler, **options)


async def test_a_checkpoint_needs_a_key(engine: AsyncEngine, tmp_path: Any) -> None:
    async def handler(batch: list[Any]) -> None:
        return None

    store = rowstream.FileCheckpoint(tmp_path / "cp.json")
    with pytest.raises(rowstream.ConfigurationError, match="checkpoint= needs a stream key"):
        await rowstream.process(engine, "SELECT id FROM proc_items", handler, checkpoint=store)
    assert engine.pool.checkedout() == 0


async def test_the_invoice_run_marks_each_batch_sent_in_a_session_of_its_own(
    engine: AsyncEngine,
) -> None:
    # The README's example: handlers never touch the streaming connection; each opens a
    # session of its own and marks its batch with one bulk UPDATE while the stream reads on.
    if engine.dialect.name == "sqlite":
        async with engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    make_session = async_sessionmaker(engine, expire_on_commit=False)
    sent_batches: list[int] = []

    async def send_invoice_batch(items: list[ProcItem]) -> None:
        ids = [item.id for item in items]
        async with make_session() as session, session.begin():
            await session.execute(
                sa.update(ProcItem).where(ProcItem.id.in_(ids)).values(payload="sent")
            )
        sent_batches.append(len(ids))

    report = await rowstream.process(
        engine,
        sa.select(ProcItem).where(ProcItem.payload != "sent"),
        send_invoice_batch,
        concurrency=4,
        batch_rows=150,
    )

    assert report.rows == sum(sent_batches) == ROWS
    async with make_session() as session:
        sent = await session.scalar(
            sa.select(sa.func.count()).where(proc_items.c.payload == "sent")
        )
    assert sent == ROWS
    assert engine.pool.checkedout() == 0


async def test_process_through_a_transaction_pooling_pgbouncer(
    pgbouncer_url: str, pg_url: str
) -> None:
    fill_sync(pg_url)
    seen: Counter[int] = Counter()

    async def handler(batch: list[Any]) -> None:
        await asyncio.sleep(0.001)
        seen.update(ids_of(batch))

    report = await rowstream.process(
        pgbouncer_url, sa.select(proc_items), handler, concurrency=4, batch_rows=100
    )
    assert seen == Counter(range(1, ROWS + 1))
    assert report.rows == ROWS


async def test_a_session_lends_its_engine_and_stays_usable(engine: AsyncEngine) -> None:
    seen: Counter[int] = Counter()

    async def handler(batch: list[ProcItem]) -> None:
        seen.update(item.id for item in batch)

    async with async_sessionmaker(engine)() as session:
        report = await rowstream.process(session, sa.select(ProcItem), handler, batch_rows=500)
        # The session never served the stream: it still answers.
        assert await session.scalar(sa.select(sa.func.count()).select_from(proc_items)) == ROWS
    assert report.rows == ROWS
    assert seen == Counter(range(1, ROWS + 1))
    assert engine.pool.checkedout() == 0
