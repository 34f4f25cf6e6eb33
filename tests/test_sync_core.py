"""The sync face, generated from the async one (tools/unasync.py), does what the async face
does: strategies (auto, cursor, keyset), PgBouncer detection, resume after a terminated
backend, start_after and checkpoints, on PostgreSQL, PgBouncer, MariaDB and SQLite.

The same scenarios run on both faces where a scenario is face-neutral (``face`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import rowstream
import rowstream.sync
from tests import faults

from .test_process import ROWS, fill_sync, proc_items

BIG = 100_000
BIG_TABLE = sa.table("rs_sync_big", sa.column("id"), sa.column("v"))


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _read(face: str, url: str, **options: Any) -> tuple[list[int], str]:
    """Every id a stream of proc_items gives on ``face``, and the strategy it took."""
    statement = sa.select(proc_items.c.id)
    if face == "sync":
        with rowstream.sync.stream(url, statement, batch_rows=300, **options) as rows:
            ids = [row.id for row in rows]
        return ids, rows.stats.strategy

    async def read() -> tuple[list[int], str]:
        async with rowstream.stream(url, statement, batch_rows=300, **options) as rows:
            found = [row.id async for row in rows]
        return found, rows.stats.strategy

    return asyncio.run(read())


@pytest.fixture(params=["sync", "async"])
def face(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("strategy", ["auto", "cursor", "keyset"])
def test_each_strategy_reads_every_row_once_on_both_faces(
    db_url: str, face: str, strategy: str
) -> None:
    fill_sync(db_url)
    ids, taken = _read(face, db_url, strategy=strategy)
    assert ids == list(range(1, ROWS + 1))
    assert taken == ("cursor" if strategy == "auto" else strategy)


def test_start_after_on_both_faces(db_url: str, face: str) -> None:
    fill_sync(db_url)
    ids, _taken = _read(face, db_url, strategy="keyset", start_after=(1500,))
    assert ids == list(range(1501, ROWS + 1))
    ids, _taken = _read(face, db_url, strategy="cursor", start_after=(1999,))
    assert ids == [2000]


def test_auto_reads_keyset_pages_through_pgbouncer_on_both_faces(
    pg_url: str, pgbouncer_url: str, face: str
) -> None:
    fill_sync(pg_url)
    ids, taken = _read(face, pgbouncer_url)
    assert ids == list(range(1, ROWS + 1))
    assert taken == "keyset"


def test_a_sync_checkpoint_resumes_where_the_failed_run_stopped(
    db_url: str, tmp_path: Path
) -> None:
    fill_sync(db_url)
    store = rowstream.FileCheckpoint(tmp_path / "run.json")
    seen: list[int] = []
    lock = threading.Lock()

    def failing(batch: list[Any]) -> None:
        if batch[0].id > 1000:
            raise RuntimeError("the handler gives up half-way")
        with lock:
            seen.extend(row.id for row in batch)

    with pytest.raises(RuntimeError, match="half-way"):
        rowstream.sync.process(
            db_url, sa.select(proc_items), failing, checkpoint=store, batch_rows=100
        )
    first = store.load()
    assert first is not None and first.after is not None and first.after[0] >= 100

    def handler(batch: list[Any]) -> None:
        with lock:
            seen.extend(row.id for row in batch)

    report = rowstream.sync.process(
        db_url, sa.select(proc_items), handler, checkpoint=store, batch_rows=100, ordered=True
    )
    assert sorted(set(seen)) == list(range(1, ROWS + 1))
    assert len(seen) == ROWS  # no batch handled twice across the two runs
    assert report.checkpoint is not None and report.checkpoint.complete


# -- acceptance: PgBouncer under load, terminated backends -----------------------------------


@pytest.fixture(scope="module")
def big_table(servers: Any) -> Iterator[None]:
    with psycopg.connect(_libpq(servers.pg_url), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS rs_sync_big")
        conn.execute("CREATE TABLE rs_sync_big (id bigint PRIMARY KEY, v int NOT NULL)")
        conn.execute(f"INSERT INTO rs_sync_big SELECT g, g % 997 FROM generate_series(1, {BIG}) g")
        conn.execute("ANALYZE rs_sync_big")
    yield


def test_twelve_threads_through_pgbouncer_read_every_row_exactly(
    big_table: None, pgbouncer_url: str
) -> None:
    engine = rowstream.sync.create_engine(pgbouncer_url, pool_size=12, max_overflow=4)
    results: dict[int, tuple[int, int, str]] = {}
    errors: list[BaseException] = []

    def read(n: int) -> None:
        try:
            count = total = 0
            expected = 1
            with rowstream.sync.stream(engine, sa.select(BIG_TABLE), strategy="auto") as rows:
                for row in rows:
                    assert row.id == expected
                    expected += 1
                    count += 1
                    total += row.v
            results[n] = (count, total, rows.stats.strategy)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(n,)) for n in range(12)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    finally:
        engine.dispose()
    assert not errors, errors
    expected_total = sum(g % 997 for g in range(1, BIG + 1))
    assert results == {n: (BIG, expected_total, "keyset") for n in range(12)}


@pytest.fixture(scope="module")
def maria_faults(servers: Any) -> None:
    faults.make_table(servers.mysql_url, faults_rows)


faults_rows = 40_000


def _kill_all(engine: sa.Engine, admin_url: str, name: str, threads: set[int]) -> int:
    """Kill every server session of ``engine``'s stream (PostgreSQL: by application name)."""
    if faults.is_mysql(admin_url):
        admin = pymysql.connect(**faults._my_args(admin_url))
        try:
            with admin.cursor() as cur:
                for thread in list(threads):
                    with contextlib.suppress(pymysql.MySQLError):
                        cur.execute(f"KILL CONNECTION {int(thread)}")
        finally:
            admin.close()
        return len(threads)
    with psycopg.connect(_libpq(admin_url), autocommit=True) as admin:
        found = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        ).fetchall()
    return len(found)


@pytest.mark.parametrize("strategy", ["cursor", "keyset"])
@pytest.mark.parametrize("path", ["direct", "pgbouncer", "mariadb"])
def test_a_terminated_backend_is_resumed_exactly(
    big_table: None,
    maria_faults: None,
    pg_url: str,
    pgbouncer_url: str,
    mysql_url: str,
    path: str,
    strategy: str,
) -> None:
    name = f"rs-sync-{uuid.uuid4().hex[:8]}"
    url = {"direct": pg_url, "pgbouncer": pgbouncer_url, "mariadb": mysql_url}[path]
    admin_url = mysql_url if path == "mariadb" else pg_url
    options: dict[str, Any] = {}
    if path != "mariadb":
        options["connect_args"] = {"application_name": name}
    engine = rowstream.sync.create_engine(url, **options)
    threads: set[int] = set()

    @sa.event.listens_for(engine, "connect")
    def _note(dbapi_connection: Any, _record: Any) -> None:
        thread_id = getattr(dbapi_connection, "thread_id", None)
        if callable(thread_id):
            threads.add(int(thread_id()))

    table = BIG_TABLE if path != "mariadb" else sa.table(faults.TABLE, sa.column("id"))
    total = BIG if path != "mariadb" else faults_rows
    killed = 0
    expected = 1
    try:
        with rowstream.sync.stream(
            engine, sa.select(table.c.id), strategy=strategy, key="id", backoff=0.05, batch_rows=500
        ) as rows:
            for row in rows:
                assert row.id == expected
                expected += 1
                if row.id == total // 3 and not killed:
                    killed = _kill_all(engine, admin_url, name, threads)
    finally:
        engine.dispose()
    assert killed >= 1
    assert expected - 1 == total
    if strategy == "cursor" and path == "direct":
        assert rows.stats.reconnects >= 1
    # Keyset pages hold no connection between pages (and PgBouncer hands backends out per
    # transaction): a session killed then is replaced by the pool's pre-ping, with nothing to
    # resume; MariaDB's unbuffered rows may already sit in the client's socket buffer.
    assert rows.stats.strategy == strategy
