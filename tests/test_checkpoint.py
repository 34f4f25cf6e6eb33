"""Checkpoints: the document, both stores, the watermark, clean stops and a real SIGKILL."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import rowstream
import rowstream.sync
from rowstream._checkpoint import Checkpoint, Watermark

from .test_process import ROWS, fill, fill_sync, proc_items

KINDS = ("file", "table")


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = rowstream.create_engine(db_url)
    try:
        await fill(engine)
        yield engine
    finally:
        await engine.dispose()


def make_store(kind: str, tmp_path: Path, url: str, name: str) -> rowstream.CheckpointStore:
    if kind == "file":
        return rowstream.FileCheckpoint(tmp_path / f"{name}.json")
    use_wal(url)
    return rowstream.TableCheckpoint(url, name, table="proc_checkpoints")


def use_wal(url: str) -> None:
    """A SQLite checkpoint table is written while the stream reads the file: WAL allows it."""
    if url.startswith("sqlite"):
        engine = rowstream.sync.create_engine(url)
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        engine.dispose()


def covered(checkpoint: Checkpoint, ident: int) -> bool:
    """Whether the checkpoint says the row with this id is done."""
    if checkpoint.after is not None and ident <= checkpoint.after[0]:
        return True
    return any(first[0] <= ident <= last[0] for first, last in checkpoint.done)


# -- the document ----------------------------------------------------------------------------


def test_a_checkpoint_survives_json_with_every_key_type() -> None:
    key = (
        7,
        "text",
        Decimal("12.50"),
        datetime(2026, 11, 23, 13, 0, tzinfo=UTC),
        date(2026, 11, 23),
        timedelta(days=1, seconds=5),
        UUID("12345678-1234-5678-1234-567812345678"),
        b"\x00\xff",
        None,
        True,
    )
    checkpoint = Checkpoint(
        key_columns=("a", "b"), after=key, done=[((1,), (2,))], rows=5, batches=2
    )
    again = Checkpoint.from_json(checkpoint.to_json(), where="test")
    assert again == checkpoint
    assert type(again.after[2]) is Decimal  # type: ignore[index]


def test_an_unreadable_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    path.write_text("{not json")
    with pytest.raises(rowstream.ResumeError, match="delete it to start over"):
        rowstream.FileCheckpoint(path).load()


def test_a_key_of_an_unknown_type_is_refused() -> None:
    checkpoint = Checkpoint(key_columns=("a",), after=(object(),))
    with pytest.raises(rowstream.ConfigurationError, match="cannot checkpoint a key value"):
        checkpoint.to_json()


# -- the stores ------------------------------------------------------------------------------


def test_file_checkpoint_replaces_the_file_atomically(tmp_path: Path) -> None:
    store = rowstream.FileCheckpoint(tmp_path / "cp.json")
    assert store.load() is None
    for n in range(1, 4):
        store.save(Checkpoint(key_columns=("id",), after=(n,), rows=n, batches=n))
    loaded = store.load()
    assert loaded is not None and loaded.after == (3,)
    # No temporary file is left behind, only the checkpoint.
    assert [p.name for p in tmp_path.iterdir()] == ["cp.json"]
    store.clear()
    assert store.load() is None


def test_file_checkpoint_in_a_missing_directory_says_so(tmp_path: Path) -> None:
    store = rowstream.FileCheckpoint(tmp_path / "nowhere" / "cp.json")
    with pytest.raises(rowstream.SinkError, match="check that the directory exists"):
        store.save(Checkpoint(key_columns=("id",)))


def test_table_checkpoint_on_every_database(db_url: str) -> None:
    use_wal(db_url)
    store = rowstream.TableCheckpoint(db_url, "proc-table-test", table="proc_checkpoints")
    try:
        store.clear()
        assert store.load() is None
        store.save(Checkpoint(key_columns=("id",), after=(10,), rows=10, batches=1))
        store.save(Checkpoint(key_columns=("id",), after=(20,), rows=20, batches=2))
        loaded = store.load()
        assert loaded is not None and loaded.after == (20,) and loaded.batches == 2
        other = rowstream.TableCheckpoint(db_url, "proc-other", table="proc_checkpoints")
        try:
            assert other.load() is None  # one row per name
        finally:
            other.close()
        store.clear()
        assert store.load() is None
    finally:
        store.close()


def test_a_sqlite_checkpoint_table_needs_wal(sqlite_url: str) -> None:
    store = rowstream.TableCheckpoint(sqlite_url, "proc-wal", table="proc_checkpoints")
    with pytest.raises(rowstream.ConfigurationError, match="run PRAGMA journal_mode=WAL"):
        store.load()
    store.close()


# -- the watermark ---------------------------------------------------------------------------


def test_the_watermark_moves_over_done_batches_and_keeps_ranges_beyond() -> None:
    mark = Watermark(("id",), None)
    seqs = [mark.read((i * 10 + 1,), (i * 10 + 10,), 10) for i in range(5)]
    mark.done(seqs[1])
    mark.done(seqs[3])
    snap = mark.snapshot()
    assert snap.after is None
    assert snap.done == [((11,), (20,)), ((31,), (40,))]
    mark.done(seqs[0])
    snap = mark.snapshot()
    assert snap.after == (20,)
    assert snap.done == [((31,), (40,))]
    mark.done(seqs[2])
    mark.done(seqs[4])
    mark.finish()
    snap = mark.snapshot()
    assert (snap.after, snap.done, snap.rows, snap.batches, snap.complete) == (
        (50,),
        [],
        50,
        5,
        True,
    )


def test_a_restart_skips_ranges_done_beyond_the_watermark() -> None:
    loaded = Checkpoint(key_columns=("id",), after=(20,), done=[((31,), (40,))])
    mark = Watermark(("id",), loaded)
    assert not mark.skips((30,))
    assert mark.skips((31,)) and mark.skips((40,))
    assert not mark.skips((41,))
    with pytest.raises(rowstream.ResumeError, match="taken with key"):
        Watermark.check(loaded, ("other",), "test")


def test_text_keys_keep_only_the_watermark() -> None:
    mark = Watermark(("code",), None)
    first = mark.read(("a",), ("b",), 2)
    second = mark.read(("c",), ("d",), 2)
    mark.done(second)
    assert mark.snapshot().done == []  # Python's text order is not the database's collation
    mark.done(first)
    assert mark.snapshot().after == ("d",)


# -- process() with a checkpoint --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "handler_kind"), [*((k, "async") for k in KINDS), ("file", "thread")]
)
async def test_a_clean_stop_then_a_restart_handles_every_row_exactly_once(
    engine: AsyncEngine, db_url: str, tmp_path: Path, kind: str, handler_kind: str
) -> None:
    store = make_store(kind, tmp_path, db_url, "proc-clean-stop")
    store.clear()
    handled: Counter[int] = Counter()
    fail = True

    async def async_handler(batch: list[Any]) -> None:
        first = batch[0].id
        # Uneven latencies: batches finish out of order, so some finish beyond the watermark.
        await asyncio.sleep(((first * 7919) % 20) / 1000)
        if fail and first == 301:
            raise RuntimeError("stop at batch 30")
        handled.update(r.id for r in batch)

    def thread_handler(batch: list[Any]) -> None:
        # Threads cannot be cancelled: those in flight at the failure finish within the grace
        # period, and must be counted, not handed out again.
        first = batch[0].id
        time.sleep(((first * 7919) % 20) / 1000)
        if fail and first == 301:
            raise RuntimeError("stop at batch 30")
        with lock:
            handled.update(r.id for r in batch)

    lock = threading.Lock()
    handler: Any = async_handler if handler_kind == "async" else thread_handler

    with pytest.raises(RuntimeError, match="stop at batch 30"):
        await rowstream.process(
            engine, sa.select(proc_items), handler, batch_rows=10, concurrency=4, checkpoint=store
        )
    first_run = set(handled)
    saved = store.load()
    assert saved is not None and not saved.complete
    # The checkpoint claims exactly what the handlers finished, no less and no more.
    assert {i for i in range(1, ROWS + 1) if covered(saved, i)} == first_run

    fail = False
    report = await rowstream.process(
        engine, sa.select(proc_items), handler, batch_rows=10, concurrency=4, checkpoint=store
    )

    assert handled == Counter(range(1, ROWS + 1))  # at most once across the clean stop
    assert report.rows == ROWS - len(first_run)
    final = store.load()
    assert final is not None and final.complete and final.after == (ROWS,)
    assert final.rows == ROWS
    assert engine.pool.checkedout() == 0
    if isinstance(store, rowstream.TableCheckpoint):
        store.close()


async def test_a_finished_run_handles_only_rows_added_since(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    store = rowstream.FileCheckpoint(tmp_path / "cp.json")
    handled: list[int] = []

    async def handler(batch: list[Any]) -> None:
        handled.extend(r.id for r in batch)

    await rowstream.process(engine, sa.select(proc_items), handler, checkpoint=store)
    async with engine.begin() as conn:
        await conn.execute(proc_items.insert(), [{"id": ROWS + 1, "grp": 0, "payload": "late"}])
    report = await rowstream.process(engine, sa.select(proc_items), handler, checkpoint=store)
    assert report.rows == 1
    assert sorted(handled) == list(range(1, ROWS + 2))


async def test_a_checkpoint_of_another_key_is_refused(engine: AsyncEngine, tmp_path: Path) -> None:
    store = rowstream.FileCheckpoint(tmp_path / "cp.json")
    store.save(Checkpoint(key_columns=("payload",), after=("x",)))

    async def handler(batch: list[Any]) -> None:
        return None

    with pytest.raises(rowstream.ResumeError, match="taken with key"):
        await rowstream.process(engine, sa.select(proc_items), handler, checkpoint=store)
    assert engine.pool.checkedout() == 0


# -- a real crash ----------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, json, os, sys, threading, time

    import sqlalchemy as sa

    import rowstream
    import rowstream.sync

    api, url, kind, where, log = sys.argv[1:6]
    items = sa.Table(
        "proc_items", sa.MetaData(),
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("grp", sa.Integer, nullable=False),
        sa.Column("payload", sa.String(100), nullable=False),
    )
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    lock = threading.Lock()


    def record(batch):
        # The side effect, durable before the handler returns.
        with lock:
            os.write(fd, f"{batch[0].id} {batch[-1].id}\\n".encode())
            os.fsync(fd)


    def latency(batch):
        return ((batch[0].id * 7919) % 21) / 1000


    async def run_async():
        engine = rowstream.create_engine(url)
        if kind == "file":
            store = rowstream.FileCheckpoint(where)
        else:
            store = rowstream.TableCheckpoint(engine, where, table="proc_checkpoints")

        async def handler(batch):
            await asyncio.sleep(latency(batch))
            record(batch)

        report = await rowstream.process(
            engine, sa.select(items), handler, batch_rows=10, concurrency=4, checkpoint=store
        )
        await engine.dispose()
        return report


    def run_sync():
        engine = rowstream.sync.create_engine(url)
        if kind == "file":
            store = rowstream.FileCheckpoint(where)
        else:
            store = rowstream.TableCheckpoint(engine, where, table="proc_checkpoints")

        def handler(batch):
            time.sleep(latency(batch))
            record(batch)

        report = rowstream.sync.process(
            engine, sa.select(items), handler, batch_rows=10, concurrency=4, checkpoint=store
        )
        engine.dispose()
        return report


    report = asyncio.run(run_async()) if api == "async" else run_sync()
    print(json.dumps({"rows": report.rows, "skipped": report.skipped_rows}))
    """
)


def read_lines(path: Path) -> list[str]:
    # Only complete lines: the child may be killed in the middle of writing one.
    return path.read_text().split("\n")[:-1] if path.exists() else []


def read_log(path: Path) -> Counter[int]:
    handled: Counter[int] = Counter()
    for line in read_lines(path):
        first, last = map(int, line.split())
        handled.update(range(first, last + 1))
    return handled


@pytest.mark.parametrize(("api", "kind"), [("async", "file"), ("async", "table"), ("sync", "file")])
def test_a_run_killed_with_sigkill_resumes_from_its_checkpoint(
    db_url: str, tmp_path: Path, api: str, kind: str
) -> None:
    fill_sync(db_url)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    where = str(tmp_path / "cp.json") if kind == "file" else "proc-sigkill"
    store = make_store(kind, tmp_path, db_url, "cp" if kind == "file" else "proc-sigkill")
    store.clear()
    first_log, second_log = tmp_path / "run1.log", tmp_path / "run2.log"

    with subprocess.Popen(
        [sys.executable, str(script), api, db_url, kind, where, str(first_log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        # Kill it once about 60 of its 200 batches are done: mid-run, with batches in flight.
        deadline = time.monotonic() + 60
        while len(read_lines(first_log)) < 60:
            assert child.poll() is None, child.stderr.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the child never got going"
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    at_kill = store.load()
    assert at_kill is not None and not at_kill.complete
    run1 = read_log(first_log)
    done_at_kill = {i for i in range(1, ROWS + 1) if covered(at_kill, i)}
    assert done_at_kill, "the checkpoint was saved while the run went on"
    # At least once: the checkpoint never claims a row its handler had not finished.
    assert done_at_kill <= set(run1)

    second = subprocess.run(
        [sys.executable, str(script), api, db_url, kind, where, str(second_log)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert second.returncode == 0, second.stderr.decode()
    run2 = read_log(second_log)

    # Every row handled; those completed (and checkpointed) before the kill are skipped.
    assert set(run1) | set(run2) == set(range(1, ROWS + 1))
    assert not done_at_kill & set(run2)
    assert max(run1.values()) == 1 and max(run2.values()) == 1
    # What runs twice is what was in flight or finished since the last save: a few batches.
    twice = set(run1) & set(run2)
    assert len(twice) <= 10 * 12, sorted(twice)
    summary = json.loads(second.stdout.decode().splitlines()[-1])
    assert summary["rows"] == len(run2)
    final = store.load()
    assert final is not None and final.complete
    if isinstance(store, rowstream.TableCheckpoint):
        store.close()


async def test_an_empty_stream_leaves_a_complete_checkpoint_with_no_key(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    store = rowstream.FileCheckpoint(tmp_path / "cp.json")

    async def handler(batch: list[Any]) -> None:
        raise AssertionError("no batch expected")

    report = await rowstream.process(
        engine, sa.select(proc_items).where(proc_items.c.id < 0), handler, checkpoint=store
    )
    assert report.rows == report.batches == 0
    saved = store.load()
    assert saved is not None and saved.complete and saved.after is None
