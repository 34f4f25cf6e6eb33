"""rowstream.sync: the synchronous stream and process(), on PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

import rowstream
import rowstream.sync
from rowstream._pipeline import BUFFER_BATCHES
from rowstream._sizing import FIRST_BATCH_ROWS

from .test_process import ROWS, ProcItem, fill_sync, proc_items


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    fill_sync(db_url)
    engine = rowstream.sync.create_engine(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def ids_of(batch: list[Any]) -> list[int]:
    return [row.id for row in batch]


# -- the stream ------------------------------------------------------------------------------


def test_the_stream_reads_every_row_in_key_order(engine: sa.Engine) -> None:
    with rowstream.sync.stream(engine, sa.select(proc_items), batch_rows=300) as rows:
        assert rows.keys() == ["id", "grp", "payload"]
        assert rows.key_columns == ("id",)
        batches = list(rows.batches())
    assert [r.id for b in batches for r in b] == list(range(1, ROWS + 1))
    assert [len(b) for b in batches] == [300] * 6 + [200]
    assert rows.stats.rows == ROWS and rows.stats.batches == 7
    assert rows.last_key == (ROWS,)
    assert engine.pool.checkedout() == 0


def test_the_stream_uses_the_server_side_cursor_of_each_driver(engine: sa.Engine) -> None:
    with rowstream.sync.stream(
        engine, sa.select(proc_items), batch_rows=10, strategy="cursor"
    ) as rows:
        next(iter(rows))
        cursor = rows._strategy._result.cursor  # type: ignore[union-attr]
        name = engine.dialect.name
        if name == "postgresql":
            # psycopg's named cursor: DECLARE ... CURSOR / FETCH FORWARD n (the stream's
            # subclass of it reads bytea results in binary).
            assert "psycopg.ServerCursor" in {
                f"{k.__module__.split('.')[0]}.{k.__name__}" for k in type(cursor).__mro__
            }
        elif name in {"mysql", "mariadb"}:
            # PyMySQL's unbuffered SSCursor (the stream's subclass of it checks zero dates).
            assert "pymysql.cursors.SSCursor" in {
                f"{k.__module__}.{k.__name__}" for k in type(cursor).__mro__
            }
        else:
            assert type(cursor).__name__ == "Cursor"  # sqlite3 steps its statement lazily


def test_orm_instances_start_after_a_key_and_stop_early(engine: sa.Engine) -> None:
    with rowstream.sync.stream(
        Session(engine), sa.select(ProcItem), batch_rows=100, start_after=(1500,)
    ) as items:
        first = next(iter(items))
        assert isinstance(first, ProcItem) and first.id == 1501
        assert items.key_of(first) == (1501,)
    # Leaving early (MySQL: the unbuffered result is dropped with its connection).
    assert engine.pool.checkedout() == 0
    with sa.orm.Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(proc_items)) == ROWS


def test_a_url_and_errors_come_out_translated(db_url: str) -> None:
    fill_sync(db_url)
    with rowstream.sync.stream(db_url, "SELECT id FROM proc_items ORDER BY id") as rows:
        assert sum(1 for _ in rows) == ROWS
        assert rows.key_columns is None
    with (
        pytest.raises(rowstream.QueryError),
        rowstream.sync.stream(db_url, "SELECT * FROM proc_no_such_table"),
    ):
        pass


def test_an_async_engine_is_refused_with_the_way_out(db_url: str) -> None:
    engine = rowstream.create_engine(db_url)
    with (
        pytest.raises(rowstream.ConfigurationError, match=r"use rowstream\.stream\(\) with it"),
        rowstream.sync.stream(engine, "SELECT 1"),  # type: ignore[arg-type]
    ):
        pass


@pytest.mark.parametrize("server", ["pg_url", "mysql_url"])
def test_a_password_never_shows(request: pytest.FixtureRequest, server: str) -> None:
    url: str = request.getfixturevalue(server)
    bad = sa.make_url(url).set(password="s3cr3t-pw", port=1)
    with (
        pytest.raises(rowstream.SourceError) as caught,
        rowstream.sync.stream(bad.render_as_string(hide_password=False), "SELECT 1"),
    ):
        pass
    assert "s3cr3t-pw" not in str(caught.value)


# -- process ---------------------------------------------------------------------------------


def test_every_row_is_handled_exactly_once(engine: sa.Engine) -> None:
    seen: Counter[int] = Counter()
    lock = threading.Lock()
    threads: set[int] = set()

    def handler(batch: list[Any]) -> None:
        time.sleep(0.001 * (batch[0].id % 5))
        with lock:
            seen.update(ids_of(batch))
            threads.add(threading.get_ident())

    report = rowstream.sync.process(
        engine, sa.select(proc_items), handler, concurrency=4, batch_rows=37
    )
    assert seen == Counter(range(1, ROWS + 1))
    assert report.rows == ROWS and report.batches == -(-ROWS // 37)
    assert threading.get_ident() not in threads
    assert engine.pool.checkedout() == 0


def test_memory_stays_bounded(engine: sa.Engine) -> None:
    alive: weakref.WeakSet[ProcItem] = weakref.WeakSet()
    lock = threading.Lock()
    most_alive = 0

    def track(target: ProcItem, _context: Any) -> None:
        alive.add(target)

    # The first handlers wait at a gate: whatever the machine's load, the stream is then the
    # faster side, and the read-ahead must stop at its bound.
    gate = threading.Event()
    timer = threading.Timer(0.3, gate.set)
    timer.start()

    def slow_handler(batch: list[ProcItem]) -> None:
        nonlocal most_alive
        gate.wait(timeout=30)
        with lock:
            most_alive = max(most_alive, len(alive))
        time.sleep(0.005)

    event.listen(ProcItem, "load", track)
    try:
        report = rowstream.sync.process(
            engine, sa.select(ProcItem), slow_handler, concurrency=3, batch_rows=20
        )
    finally:
        event.remove(ProcItem, "load", track)
    bound = 3 + BUFFER_BATCHES + 1
    assert report.rows == ROWS
    assert report.peak_batches == report.max_batches_held == bound
    assert report.peak_running == 3
    # Plus the rows the ORM result itself buffers (it loads yield_per rows at a time).
    assert most_alive <= bound * 20 + FIRST_BATCH_ROWS


def test_a_handler_failing_at_batch_50_stops_the_run_within_two_seconds(
    engine: sa.Engine,
) -> None:
    failed_at: float | None = None
    started_after_failure = 0
    lock = threading.Lock()

    class BillingError(Exception):
        pass

    def handler(batch: list[Any]) -> None:
        nonlocal failed_at, started_after_failure
        with lock:
            if failed_at is not None:
                started_after_failure += 1
            if batch[0].id == 501:
                failed_at = time.monotonic()
                raise BillingError("the billing API refused batch 50")
        time.sleep(0.02)

    with pytest.raises(BillingError, match="refused batch 50"):
        rowstream.sync.process(engine, sa.select(proc_items), handler, concurrency=4, batch_rows=10)
    assert failed_at is not None
    assert time.monotonic() - failed_at < 2.0
    assert engine.pool.checkedout() == 0
    assert started_after_failure <= 4


def test_collect_mode_reports_failed_batches_with_their_keys(engine: sa.Engine) -> None:
    handled: Counter[int] = Counter()
    lock = threading.Lock()

    def handler(batch: list[Any]) -> None:
        if batch[0].id % 3 == 1:
            raise ValueError(f"cannot handle {batch[0].id}")
        with lock:
            handled.update(ids_of(batch))

    report = rowstream.sync.process(
        engine, sa.select(proc_items), handler, batch_rows=100, on_error="collect"
    )
    assert report.failures
    failed = {
        i
        for f in report.failures
        for i in range(f.first_key[0], f.last_key[0] + 1)  # type: ignore[index]
    }
    assert set(handled) | failed == set(range(1, ROWS + 1))
    assert not set(handled) & failed
    assert report.rows + report.failed_rows == ROWS


def test_ordered_settles_in_stream_order(engine: sa.Engine) -> None:
    settled: list[int] = []

    def handler(batch: list[Any]) -> None:
        time.sleep(0.02 if (batch[0].id // 40) % 3 == 0 else 0.001)

    def progress(report: rowstream.ProcessReport) -> None:
        settled.append(report.batches)

    report = rowstream.sync.process(
        engine,
        sa.select(proc_items),
        handler,
        concurrency=3,
        batch_rows=40,
        ordered=True,
        progress=progress,
    )
    assert report.rows == ROWS
    assert settled == list(range(1, 51))


@pytest.mark.parametrize("kind", ["file", "table"])
def test_a_clean_stop_then_a_restart_handles_every_row_exactly_once(
    engine: sa.Engine, db_url: str, tmp_path: Path, kind: str
) -> None:
    if kind == "file":
        store: rowstream.CheckpointStore = rowstream.FileCheckpoint(tmp_path / "cp.json")
    else:
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        store = rowstream.TableCheckpoint(engine, "proc-sync", table="proc_checkpoints")
    store.clear()
    handled: Counter[int] = Counter()
    lock = threading.Lock()
    fail = True

    def handler(batch: list[Any]) -> None:
        first = batch[0].id
        time.sleep(((first * 7919) % 20) / 1000)
        if fail and first == 301:
            raise RuntimeError("stop at batch 30")
        with lock:
            handled.update(ids_of(batch))

    with pytest.raises(RuntimeError, match="stop at batch 30"):
        rowstream.sync.process(
            engine, sa.select(proc_items), handler, batch_rows=10, checkpoint=store
        )
    fail = False
    # No pause here: handlers in flight at the failure finished within the grace period and
    # were counted, so none is handed out again.
    report = rowstream.sync.process(
        engine, sa.select(proc_items), handler, batch_rows=10, checkpoint=store
    )
    assert handled == Counter(range(1, ROWS + 1))
    assert report.rows < ROWS
    final = store.load()
    assert final is not None and final.complete and final.rows == ROWS
    assert engine.pool.checkedout() == 0


def test_handlers_open_their_own_sessions(engine: sa.Engine) -> None:
    # The seeds' invoice run, synchronously: mark each batch with a bulk UPDATE in a session
    # of the handler's own, while the stream still reads.
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    make_session = sessionmaker(engine)

    def mark(batch: list[Any]) -> None:
        with make_session() as session, session.begin():
            session.execute(
                sa.update(proc_items)
                .where(proc_items.c.id.in_(ids_of(batch)))
                .values(payload="sent")
            )

    report = rowstream.sync.process(
        engine, sa.select(proc_items.c.id), mark, concurrency=3, batch_rows=250
    )
    assert report.rows == ROWS
    with make_session() as session:
        sent = session.scalar(sa.select(sa.func.count()).where(proc_items.c.payload == "sent"))
    assert sent == ROWS
    assert engine.pool.checkedout() == 0


def test_process_through_a_transaction_pooling_pgbouncer(pgbouncer_url: str, pg_url: str) -> None:
    fill_sync(pg_url)
    seen: Counter[int] = Counter()
    lock = threading.Lock()

    def handler(batch: list[Any]) -> None:
        with lock:
            seen.update(ids_of(batch))

    # psycopg's named cursor lives in the stream's transaction, which PgBouncer keeps on one
    # server connection; no prepared statements (prepare_threshold=None) to lose in between.
    report = rowstream.sync.process(
        pgbouncer_url, sa.select(proc_items), handler, concurrency=4, batch_rows=100
    )
    assert seen == Counter(range(1, ROWS + 1))
    assert report.rows == ROWS


def test_a_handler_calling_sys_exit_stops_even_a_collecting_run(engine: sa.Engine) -> None:
    def handler(batch: list[Any]) -> None:
        if batch[0].id == 101:
            raise SystemExit(3)

    with pytest.raises(SystemExit):
        rowstream.sync.process(
            engine, sa.select(proc_items), handler, batch_rows=100, on_error="collect"
        )
    assert engine.pool.checkedout() == 0


def test_asyncpg_ssl_spelling_becomes_libpq_sslmode_on_the_sync_face() -> None:
    # One URL serves both faces: asyncpg's ?ssl=require is psycopg's ?sslmode=require.
    url = rowstream.sync.resolve_url("postgresql://app@db/shop?ssl=require")
    assert url.drivername == "postgresql+psycopg" and dict(url.query) == {"sslmode": "require"}
    kept = rowstream.sync.resolve_url("postgresql://app@db/shop?sslmode=verify-full")
    assert dict(kept.query) == {"sslmode": "verify-full"}
