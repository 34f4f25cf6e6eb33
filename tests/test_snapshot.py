"""The shared snapshot: readers that join later still see the table as it was, on real servers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import rowstream
from rowstream._snapshot import Snapshot, SnapshotError


async def _ids(conn: AsyncConnection, table: str) -> list[int]:
    return list((await conn.execute(sa.text(f"SELECT id FROM {table} ORDER BY id"))).scalars())


async def _fill(engine: AsyncEngine, table: str, rows: int) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        await conn.exec_driver_sql(f"CREATE TABLE {table} (id int PRIMARY KEY, v int)")
        await conn.execute(
            sa.text(f"INSERT INTO {table} VALUES (:id, :v)"),
            [{"id": i, "v": i} for i in range(1, rows + 1)],
        )


async def _write(engine: AsyncEngine, table: str) -> None:
    """An insert, an update and a delete, committed."""
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f"INSERT INTO {table} VALUES (1000, 1000)")
        await conn.exec_driver_sql(f"UPDATE {table} SET v = -v WHERE id = 2")
        await conn.exec_driver_sql(f"DELETE FROM {table} WHERE id = 3")


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = rowstream.create_engine(pg_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def maria(mysql_url: str) -> AsyncIterator[AsyncEngine]:
    engine = rowstream.create_engine(mysql_url)
    yield engine
    await engine.dispose()


async def test_pg_readers_that_join_after_writes_see_the_snapshot(pg: AsyncEngine) -> None:
    await _fill(pg, "snap_pg", 10)
    async with Snapshot(pg, sessions=2) as snap:
        assert snap.info.method == "pg_export_snapshot" and snap.info.consistent
        assert snap.info.id and snap.info.point
        first = await snap.join()
        await _write(pg, "snap_pg")
        late = await snap.join()
        for conn in (first, late):
            assert await _ids(conn, "snap_pg") == list(range(1, 11))
            assert await conn.scalar(sa.text("SELECT v FROM snap_pg WHERE id = 2")) == 2
            # The import is verified; and the transaction cannot write.
            assert await conn.scalar(sa.text("SELECT pg_current_snapshot()::text")) == (
                snap.info.point
            )
            assert await conn.scalar(sa.text("SHOW transaction_read_only")) == "on"
            assert await conn.scalar(sa.text("SHOW transaction_isolation")) == "repeatable read"
        await snap.leave(first)
        await snap.leave(late)
        held = snap.info.id
        # While it is held, a second run joins it (resume in exact mode).
        async with Snapshot(pg, sessions=1, existing=held) as again:
            assert again.reused and again.info.id == held
            conn = await again.join()
            assert 1000 not in await _ids(conn, "snap_pg")
    async with pg.connect() as conn:
        assert 1000 in await _ids(conn, "snap_pg")
    # Once released it cannot be joined: a new snapshot is taken, and says so.
    async with Snapshot(pg, sessions=1, existing=held) as fresh:
        assert not fresh.reused and fresh.info.id != held
        conn = await fresh.join()
        assert 1000 in await _ids(conn, "snap_pg")


async def test_pg_a_bad_or_released_snapshot_id_is_refused(pg: AsyncEngine) -> None:
    async with Snapshot(pg, sessions=1) as snap:
        gone = snap.info.id
    snap = Snapshot(pg, sessions=1)
    async with snap:
        assert gone is not None
        with pytest.raises(SnapshotError, match="cannot join snapshot"):
            await snap._import_pg(gone)
        with pytest.raises(SnapshotError, match="malformed snapshot id"):
            await snap._import_pg("1'; DROP TABLE x; --")


async def test_pg_behind_transaction_pooling_is_refused_in_one_line(pgbouncer_url: str) -> None:
    engine = rowstream.create_engine(pgbouncer_url)
    try:
        with pytest.raises(SnapshotError, match="transaction-pooling pooler") as info:
            async with Snapshot(engine, sessions=2):
                pass
    finally:
        await engine.dispose()
    assert "\n" not in str(info.value)


async def test_mariadb_sessions_start_together_under_a_brief_read_lock(maria: AsyncEngine) -> None:
    await _fill(maria, "snap_my", 10)
    async with Snapshot(maria, sessions=3) as snap:
        assert snap.info.method == "flush_tables_with_read_lock" and snap.info.consistent
        readers = [await snap.join() for _ in range(3)]
        with pytest.raises(SnapshotError, match="cannot be joined later"):
            await snap.join()
        # The lock is gone: a writer gets through at once.
        await _write(maria, "snap_my")
        for conn in readers:
            assert await _ids(conn, "snap_my") == list(range(1, 11))
            assert await conn.scalar(sa.text("SELECT v FROM snap_my WHERE id = 2")) == 2
        with pytest.raises(rowstream.RowstreamError):
            try:
                await readers[0].exec_driver_sql("DELETE FROM snap_my WHERE id = 1")
            except Exception as exc:  # the driver's error: the transaction is read-only
                assert "READ ONLY" in str(exc).upper()
                raise rowstream.RowstreamError("refused") from exc
    async with maria.connect() as conn:
        assert 1000 in await _ids(conn, "snap_my")


async def test_mariadb_without_reload_or_binlog_says_it_is_not_consistent(
    maria: AsyncEngine, mysql_url: str
) -> None:
    await _fill(maria, "snap_my2", 5)
    user = f"rs_nolock_{uuid.uuid4().hex[:8]}"
    database = make_url(mysql_url).database
    async with maria.begin() as conn:
        await conn.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY 'pw-{user}'")
        await conn.exec_driver_sql(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%%'")
    limited = rowstream.create_engine(make_url(mysql_url).set(username=user, password=f"pw-{user}"))
    try:
        async with Snapshot(limited, sessions=2) as snap:
            assert snap.info.method == "none" and not snap.info.consistent
            assert "RELOAD" in snap.info.note
            conn = await snap.join()
            assert await _ids(conn, "snap_my2") == [1, 2, 3, 4, 5]
    finally:
        await limited.dispose()
        async with maria.begin() as conn:
            await conn.exec_driver_sql(f"DROP USER '{user}'@'%%'")


async def test_sqlite_is_its_own_snapshot(sqlite_url: str) -> None:
    engine = rowstream.create_engine(sqlite_url)
    try:
        async with Snapshot(engine, sessions=1) as snap:
            assert snap.info.consistent and snap.info.method == "none"
    finally:
        await engine.dispose()


@pytest.mark.slow
async def test_mariadb_without_reload_starts_every_session_at_one_binlog_position(
    mariadb_binlog_url: str,
) -> None:
    root = rowstream.create_engine(mariadb_binlog_url)
    user = f"rs_binlog_{uuid.uuid4().hex[:8]}"
    database = make_url(mariadb_binlog_url).database
    await _fill(root, "snap_bl", 10)
    async with root.begin() as conn:
        await conn.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY 'pw-{user}'")
        await conn.exec_driver_sql(f"GRANT SELECT ON `{database}`.* TO '{user}'@'%%'")
    limited = rowstream.create_engine(
        make_url(mariadb_binlog_url).set(username=user, password=f"pw-{user}")
    )
    stop = asyncio.Event()

    async def commit_all_the_time() -> int:
        n = 0
        while not stop.is_set():
            async with root.begin() as conn:
                await conn.execute(sa.text("INSERT INTO snap_bl VALUES (:id, 0)"), {"id": 100 + n})
            n += 1
        return n

    writer = asyncio.create_task(commit_all_the_time())
    try:
        await asyncio.sleep(0.2)
        async with Snapshot(limited, sessions=4) as snap:
            assert snap.info.method == "binlog_position", snap.info.note
            assert snap.info.consistent and snap.info.point
            readers = [await snap.join() for _ in range(4)]
            await asyncio.sleep(0.2)  # more commits, unseen by all four
            counts = {
                await conn.scalar(sa.text("SELECT count(*) FROM snap_bl")) for conn in readers
            }
        assert len(counts) == 1
    finally:
        stop.set()
        committed = await asyncio.wait_for(writer, 30)
        await limited.dispose()
        await root.dispose()
    assert committed > 10
