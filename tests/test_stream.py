"""Behaviour of ``rowstream.stream``, on PostgreSQL, MariaDB and SQLite alike.

Each test runs once per database through the ``shop`` fixture (the seeds' users, orders and
invoices, see :mod:`tests.models`), except where a behaviour belongs to one database.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncmy
import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Row, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    joinedload,
    mapped_column,
    selectinload,
    subqueryload,
)
from sqlalchemy.pool import QueuePool

import rowstream
from rowstream import (
    ConfigurationError,
    ConnectionLostError,
    QueryError,
    RowstreamError,
    SourceError,
    UnsupportedQueryError,
)
from rowstream._sizing import FIRST_BATCH_ROWS, GROWTH
from tests import models
from tests.models import Invoice, Order, User
from tests.plugins._bringup import free_port, let_aiosqlite_stop
from tests.plugins.shop import Shop

PASSWORD = "s3cret-Pw-481"


# Checks on the server side ------------------------------------------------------------------
async def busy_backends(url: str) -> list[dict[str, Any]]:
    """Our connections (rowstream's application_name, this session's database) that are in a
    transaction or running a query, as the server sees them."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        conn = await asyncpg.connect(
            host=parsed.host,
            port=parsed.port,
            user=parsed.username,
            database=parsed.database,
            server_settings={"application_name": "rowstream-tests"},
        )
        try:
            rows = await conn.fetch(
                "SELECT pid, state, query FROM pg_stat_activity "
                "WHERE application_name = 'rowstream' AND datname = current_database() "
                "AND (state = 'active' OR state LIKE 'idle in transaction%')"
            )
            return [dict(r) for r in rows]
        finally:
            await conn.close()
    conn = await asyncmy.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, database=parsed.database
    )
    try:
        async with conn.cursor() as cursor:
            await cursor.execute(
                "SELECT p.ID, p.COMMAND, p.INFO, t.trx_state "
                "FROM information_schema.PROCESSLIST p "
                "LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID "
                "WHERE p.DB = DATABASE() AND p.ID <> CONNECTION_ID() "
                "AND (p.COMMAND = 'Query' OR t.trx_id IS NOT NULL)"
            )
            return [
                {"id": r[0], "command": r[1], "info": r[2], "trx": r[3]}
                for r in await cursor.fetchall()
            ]
    finally:
        await conn.ensure_closed()


def checked_out(engine: AsyncEngine) -> int:
    pool = engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


async def assert_released(engine: AsyncEngine, url: str) -> None:
    """Nothing of the stream's is left: no connection checked out of the pool and, on the
    servers, no transaction open and no query running for us."""
    assert checked_out(engine) == 0
    if make_url(url).get_backend_name() == "sqlite":
        return
    # A cancelled query stops on the server a moment after the client gives up on it.
    busy: list[dict[str, Any]] = []
    for _ in range(50):
        busy = await busy_backends(url)
        if not busy:
            break
        await asyncio.sleep(0.1)
    assert busy == []
    # And the pool's connections still work.
    async with engine.connect() as conn:
        assert (await conn.execute(sa.text("SELECT 1"))).scalar() == 1


def with_password(url: str, **changes: Any) -> str:
    return make_url(url).set(password=PASSWORD, **changes).render_as_string(hide_password=False)


def assert_no_password(exc: BaseException) -> None:
    assert PASSWORD not in str(exc)
    assert PASSWORD not in repr(exc)


async def collect(rows: rowstream.RowStream) -> list[Any]:
    return [item async for item in rows]


# What comes out -----------------------------------------------------------------------------
async def test_core_select_yields_rows(shop: Shop) -> None:
    orders = Order.__table__
    statement = sa.select(orders.c.id, orders.c.status, orders.c.note).order_by(orders.c.id)
    async with rowstream.stream(shop.url, statement) as rows:
        assert rows.keys() == ["id", "status", "note"]
        assert not rows.orm
        items = await collect(rows)
    assert all(isinstance(item, Row) for item in items)
    assert [item.id for item in items] == list(range(1, models.ORDERS + 1))
    expected = models.order_row(40)
    assert items[39]._mapping == {k: expected[k] for k in ("id", "status", "note")}


@pytest.mark.parametrize("form", ["text", "string"])
async def test_text_and_sql_strings_yield_rows(shop: Shop, form: str) -> None:
    sql = "SELECT id, user_id, total_cents FROM orders WHERE id <= 500 ORDER BY id"
    statement = sa.text(sql) if form == "text" else sql
    async with rowstream.stream(shop.url, statement) as rows:
        assert rows.keys() == ["id", "user_id", "total_cents"]
        items = await collect(rows)
    assert all(isinstance(item, Row) for item in items)
    assert [tuple(item) for item in items] == [
        (r["id"], r["user_id"], r["total_cents"]) for r in map(models.order_row, range(1, 501))
    ]


async def test_orm_single_entity_yields_instances(shop: Shop) -> None:
    async with rowstream.stream(shop.url, sa.select(Order).order_by(Order.id)) as rows:
        assert rows.orm
        items = await collect(rows)
    assert len(items) == models.ORDERS
    assert all(type(item) is Order for item in items)
    for order in (items[0], items[9], items[-1]):
        expected = models.order_row(order.id)
        assert (order.user_id, order.total_cents, order.status, order.note) == (
            expected["user_id"],
            expected["total_cents"],
            expected["status"],
            expected["note"],
        )


async def test_orm_multi_column_selects_yield_rows(shop: Shop) -> None:
    async with rowstream.stream(
        shop.url, sa.select(Invoice.id, Invoice.amount_cents).order_by(Invoice.id)
    ) as rows:
        assert not rows.orm
        assert rows.keys() == ["id", "amount_cents"]
        summaries = await collect(rows)
    assert all(isinstance(item, Row) for item in summaries)
    assert [(r.id, r.amount_cents) for r in summaries] == [
        (i, models.invoice_row(i)["amount_cents"]) for i in range(1, models.INVOICES + 1)
    ]

    both = sa.select(Order, User).join(Order.user).where(Order.id <= 100).order_by(Order.id)
    async with rowstream.stream(shop.url, both) as rows:
        pairs = await collect(rows)
    assert len(pairs) == 100
    for row in pairs:
        assert isinstance(row, Row)
        order, user = row
        assert isinstance(order, Order) and isinstance(user, User)
        assert user.id == order.user_id


# Sources --------------------------------------------------------------------------------------
async def test_url_string_source(shop: Shop) -> None:
    async with rowstream.stream(shop.url, sa.select(User.id).order_by(User.id)) as rows:
        assert [r.id async for r in rows] == list(range(1, models.USERS + 1))


async def test_engine_source_returns_its_connection(shop: Shop, engine: AsyncEngine) -> None:
    async with rowstream.stream(engine, sa.select(User).order_by(User.id)) as rows:
        assert checked_out(engine) == 1
        users = await collect(rows)
    assert [u.email for u in users] == [f"user{i}@example.com" for i in range(1, 21)]
    await assert_released(engine, shop.url)


async def test_connection_source_stays_usable(shop: Shop, engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        async with rowstream.stream(conn, sa.select(Order.id).order_by(Order.id)) as rows:
            ids = [r.id async for r in rows]
        assert ids == list(range(1, models.ORDERS + 1))
        # The caller's connection was borrowed, not closed: it still answers.
        count = await conn.scalar(sa.select(sa.func.count()).select_from(User))
        assert count == models.USERS

        # Inside the caller's own transaction the stream sees its uncommitted rows and
        # leaves the transaction open for the caller to finish.
        await conn.rollback()
        transaction = await conn.begin()
        await conn.execute(sa.insert(User), [models.user_row(1000)])
        async with rowstream.stream(conn, sa.select(User.id).order_by(User.id)) as rows:
            seen = [r.id async for r in rows]
        assert seen[-1] == 1000
        assert transaction.is_active
        await transaction.rollback()
    await assert_released(engine, shop.url)


async def test_session_source_leaves_the_session_usable(shop: Shop, engine: AsyncEngine) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as session:
        first = await session.get(User, 1)
        assert first is not None
        async with rowstream.stream(session, sa.select(Order).where(Order.user_id == 1)) as rows:
            orders = await collect(rows)
        assert len(orders) == models.ORDERS // models.USERS
        # The session still works: reads, the identity map, a write in its transaction.
        assert await session.get(User, 1) is first
        session.add(User(id=2000, email="new@example.com"))
        await session.flush()
        assert await session.scalar(sa.select(sa.func.count()).select_from(User)) == 21
        await session.rollback()
        assert await session.scalar(sa.select(sa.func.count()).select_from(User)) == 20
    await assert_released(engine, shop.url)


# Batches ---------------------------------------------------------------------------------------
# MariaDB stops a recursive CTE at 1,000 iterations (max_recursive_iterations): it has a
# sequence engine instead.
NUMBERS = {
    "postgresql": "SELECT i, i * 2 AS twice FROM generate_series(1, {rows}) AS i",
    "mariadb": "SELECT seq AS i, seq * 2 AS twice FROM seq_1_to_{rows}",
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) "
    "SELECT i, i * 2 AS twice FROM n",
}


async def test_narrow_rows_reach_big_batches(shop: Shop) -> None:
    async with rowstream.stream(shop.url, NUMBERS[shop.dialect].format(rows=30_000)) as rows:
        sizes = [len(batch) async for batch in rows.batches()]
    assert sum(sizes) == 30_000
    # One measuring row, then batches grow geometrically; every later full batch is big.
    assert sizes[:5] == [FIRST_BATCH_ROWS * GROWTH**n for n in range(5)]
    assert all(size >= 5_000 for size in sizes[5:-1]), sizes


class _WideBase(DeclarativeBase):
    pass


class WideDoc(_WideBase):
    __tablename__ = "wide_docs"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    doc: Mapped[dict[str, Any]] = mapped_column(sa.JSON)


def wide_document(i: int) -> dict[str, Any]:
    """About 10 KB of JSON: an order document with 110 line items."""
    return {
        "id": i,
        "customer": {"name": f"Customer {i}", "tier": "gold"},
        "items": [
            {
                "sku": f"SKU-{i}-{j}",
                "qty": j % 7 + 1,
                "price_cents": 100 + j * 37,
                "title": f"Item number {j} of order {i}",
            }
            for j in range(110)
        ],
    }


async def test_wide_json_rows_land_at_50_to_200_per_batch(shop: Shop) -> None:
    docs = [{"id": i, "doc": wide_document(i)} for i in range(1, 1201)]
    assert 9_000 < len(json.dumps(docs[0]["doc"])) < 11_000
    engine = rowstream.create_engine(shop.url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_WideBase.metadata.drop_all)
            await conn.run_sync(_WideBase.metadata.create_all)
            await conn.execute(sa.insert(WideDoc), docs)
        async with rowstream.stream(engine, sa.select(WideDoc.__table__)) as rows:
            sizes = []
            async for batch in rows.batches():
                sizes.append(len(batch))
                assert batch[0].doc["id"] == batch[0].id
        assert sum(sizes) == len(docs)
        # 1, 8 and 64 rows while they grow, then what 4 MiB holds.
        assert sizes[:3] == [1, GROWTH, GROWTH**2]
        assert all(50 <= size <= 200 for size in sizes[3:-1]), sizes
        # About batch_bytes per batch: 4 MiB by default, estimated from the rows' Python size.
        average = rows.stats.bytes / rows.stats.batches
        assert 1_000_000 < average < 6_000_000
    finally:
        await engine.dispose()


async def test_batch_rows_is_honoured(shop: Shop) -> None:
    async with rowstream.stream(shop.url, sa.select(Order.id), batch_rows=7) as rows:
        sizes = [len(batch) async for batch in rows.batches()]
    assert sizes == [7] * (models.ORDERS // 7) + [models.ORDERS % 7]


async def test_small_batch_bytes_makes_small_batches(shop: Shop) -> None:
    async with rowstream.stream(
        shop.url, sa.select(Order.__table__), batch_bytes=16 * 1024
    ) as rows:
        sizes = [len(batch) async for batch in rows.batches()]
    assert sum(sizes) == models.ORDERS
    # 16 KiB hold a few dozen orders (4 MiB would hold thousands).
    assert max(sizes) < 100


async def test_stats(shop: Shop) -> None:
    async with rowstream.stream(shop.url, sa.select(Order), batch_rows=400) as rows:
        assert rows.stats.rows == 0
        count = 0
        async for _ in rows:
            count += 1
        assert rows.stats.elapsed > 0
    stats = rows.stats
    assert count == stats.rows == models.ORDERS
    assert stats.batches == 4
    assert stats.strategy == "cursor"
    assert stats.reconnects == 0
    # Python size of 1,500 Order instances: hundreds of bytes each.
    assert 100 * models.ORDERS < stats.bytes < 10_000 * models.ORDERS
    assert stats.rows_per_second > 0
    # Once closed, the clock stops.
    elapsed = stats.elapsed
    await asyncio.sleep(0.05)
    assert stats.elapsed == elapsed


# Every way out releases everything --------------------------------------------------------------
async def test_early_break_releases_everything(shop: Shop, engine: AsyncEngine) -> None:
    for statement in (sa.select(Order.__table__), sa.select(Order)):
        async with rowstream.stream(engine, statement, batch_rows=100) as rows:
            seen = 0
            async for _ in rows:
                seen += 1
                if seen == 150:
                    break
        assert seen == 150
        await assert_released(engine, shop.url)


async def test_exception_in_the_loop_releases_everything(shop: Shop, engine: AsyncEngine) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with rowstream.stream(engine, sa.select(Order), batch_rows=100) as rows:
            async for order in rows:
                if order.id == 250:
                    raise Boom
    await assert_released(engine, shop.url)


async def _cancel_mid_stream(
    consume: Callable[[asyncio.Event], Coroutine[Any, Any, None]], settle: float = 0.0
) -> None:
    started = asyncio.Event()
    task = asyncio.create_task(consume(started))
    await asyncio.wait_for(started.wait(), 60)
    await asyncio.sleep(settle)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancellation_in_the_loop_releases_everything(
    shop: Shop, engine: AsyncEngine
) -> None:
    async def consume(started: asyncio.Event) -> None:
        async with rowstream.stream(engine, sa.select(Order), batch_rows=100) as rows:
            async for _ in rows:
                started.set()
                # A slow consumer: the cancellation lands here, inside the loop.
                await asyncio.sleep(0.01)

    await _cancel_mid_stream(consume)
    await assert_released(engine, shop.url)


# Rows that take the server time to produce: 50 of them take about a second. The padding
# makes MariaDB send rows as they come rather than hold them in its 16 KB network buffer.
SLOW_ROWS = {
    "postgresql": "SELECT g AS i, pg_sleep(0.02) AS s, repeat('x', 2000) AS pad "
    "FROM generate_series(1, 1000) AS g",
    "mariadb": "SELECT seq AS i, SLEEP(0.02) AS s, REPEAT('x', 2000) AS pad FROM seq_1_to_1000",
}


@pytest.mark.parametrize("dialect", sorted(SLOW_ROWS))
async def test_cancellation_while_waiting_for_the_server_releases_everything(
    dialect: str, pg_url: str, mysql_url: str
) -> None:
    url = pg_url if dialect == "postgresql" else mysql_url
    engine = rowstream.create_engine(url)
    try:
        # The cancellation arrives while the stream awaits its second batch.
        async def consume(started: asyncio.Event) -> None:
            async with rowstream.stream(engine, SLOW_ROWS[dialect], batch_rows=50) as rows:
                async for _ in rows:
                    started.set()

        await _cancel_mid_stream(consume, settle=0.3)
        await assert_released(engine, url)
    finally:
        await engine.dispose()


# ORM loading ----------------------------------------------------------------------------------
async def test_selectinload(shop: Shop) -> None:
    statement = sa.select(Order).options(selectinload(Order.user)).order_by(Order.id)
    if shop.dialect == "mariadb":
        # An unbuffered MySQL cursor cannot share its connection with selectinload's queries.
        with pytest.raises(UnsupportedQueryError, match="selectinload"):
            async with rowstream.stream(shop.url, statement, strategy="cursor") as rows:
                await collect(rows)
        return
    async with rowstream.stream(shop.url, statement, batch_rows=300) as rows:
        orders = await collect(rows)
    assert len(orders) == models.ORDERS
    # Loaded while streaming: reading them afterwards sends no query (there is no session).
    assert all(o.user.email == f"user{o.user_id}@example.com" for o in orders)

    collections = sa.select(User).options(selectinload(User.orders)).order_by(User.id)
    async with rowstream.stream(shop.url, collections) as rows:
        users = await collect(rows)
    assert [len(u.orders) for u in users] == [models.ORDERS // models.USERS] * models.USERS
    assert all(o.user_id == u.id for u in users for o in u.orders)


@pytest.mark.parametrize("loader", [joinedload, subqueryload], ids=["joinedload", "subqueryload"])
async def test_collection_eager_loads_name_the_fix(
    shop: Shop, engine: AsyncEngine, loader: Callable[[Any], Any]
) -> None:
    statement = sa.select(User).options(loader(User.orders))
    with pytest.raises(UnsupportedQueryError, match="selectinload") as caught:
        async with rowstream.stream(engine, statement) as rows:
            await collect(rows)
    assert isinstance(caught.value, ConfigurationError)
    await assert_released(engine, shop.url)


async def test_many_to_one_joinedload_streams(shop: Shop) -> None:
    statement = sa.select(Order).options(joinedload(Order.user)).order_by(Order.id)
    async with rowstream.stream(shop.url, statement, batch_rows=500) as rows:
        orders = await collect(rows)
    assert len(orders) == models.ORDERS
    assert all(o.user.id == o.user_id for o in orders)


class _MemBase(DeclarativeBase):
    pass


class MemOrder(_MemBase):
    __tablename__ = "mem_orders"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int]
    total_cents: Mapped[int] = mapped_column(sa.BigInteger)
    status: Mapped[str] = mapped_column(sa.String(20))


MEM_ROWS = 200_000
MEM_FILL = {
    "postgresql": "INSERT INTO mem_orders SELECT g, g % 5000, g * 3, 'paid' "
    "FROM generate_series(1, {rows}) AS g",
    "mariadb": "INSERT INTO mem_orders SELECT seq, seq % 5000, seq * 3, 'paid' "
    "FROM seq_1_to_{rows}",
    "sqlite": "WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < {rows}) "
    "INSERT INTO mem_orders SELECT g, g % 5000, g * 3, 'paid' FROM n",
}


@pytest.fixture
async def mem_orders(shop: Shop, _seeded: set[str]) -> AsyncIterator[str]:
    key = f"mem_orders {shop.url}"
    if key not in _seeded:
        engine = rowstream.create_engine(shop.url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_MemBase.metadata.drop_all)
                await conn.run_sync(_MemBase.metadata.create_all)
                await conn.execute(sa.text(MEM_FILL[shop.dialect].format(rows=MEM_ROWS)))
        finally:
            await engine.dispose()
        _seeded.add(key)
    yield shop.url


async def test_orm_memory_stays_flat(mem_orders: str) -> None:
    batch_rows = 2_000
    live: weakref.WeakSet[MemOrder] = weakref.WeakSet()
    peak = total = checksum = 0
    async with rowstream.stream(mem_orders, sa.select(MemOrder), batch_rows=batch_rows) as rows:
        async for order in rows:
            live.add(order)
            total += 1
            checksum += order.total_cents
            if total % 500 == 0:
                peak = max(peak, len(live))
    assert total == MEM_ROWS
    assert checksum == 3 * MEM_ROWS * (MEM_ROWS + 1) // 2
    # Instances the caller dropped are freed: at most the batch being read and the one
    # before it are alive, never the 200,000 streamed.
    assert 0 < peak <= 2 * batch_rows, peak


async def test_early_break_on_a_big_result_stops_the_query(mem_orders: str) -> None:
    # 200,000 rows: the server is still sending when the caller stops after 100. On
    # MariaDB the unbuffered result is abandoned by closing the socket, never read to its end.
    engine = rowstream.create_engine(mem_orders)
    try:
        for _ in range(2):
            async with rowstream.stream(engine, sa.select(MemOrder), batch_rows=100) as rows:
                seen = 0
                async for _ in rows:
                    seen += 1
                    if seen == 100:
                        break
            await assert_released(engine, mem_orders)
            assert rows.stats.rows == 100
    finally:
        await engine.dispose()


# Misuse and failures ---------------------------------------------------------------------------
async def test_using_the_stream_outside_async_with(shop: Shop) -> None:
    rows = rowstream.stream(shop.url, "SELECT id FROM users")
    with pytest.raises(RowstreamError, match="async with"):
        rows.keys()
    with pytest.raises(RowstreamError, match="async with"):
        await collect(rows)
    with pytest.raises(RowstreamError, match="async with"):
        async for _ in rows.batches():
            pass
    async with rows:
        assert len(await collect(rows)) == models.USERS
    with pytest.raises(RowstreamError, match="closed"):
        await collect(rows)
    with pytest.raises(RowstreamError, match="once"):
        async with rows:
            pass


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"strategy": "fastest"}, "unknown strategy"),
        ({"batch_rows": 0}, "batch_rows"),
        ({"batch_bytes": -1}, "batch_bytes"),
    ],
)
async def test_bad_options_are_configuration_errors(
    shop: Shop, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        rowstream.stream(shop.url, "SELECT 1", **arguments)


def test_not_a_select_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="SELECT"):
        rowstream.stream("sqlite:///x.db", sa.insert(User))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        f"oracle://scott:{PASSWORD}@db.example/orcl",
        f"postgresql://app:{PASSWORD}@db.example:notaport/shop",
        f"postgresql+psycopg2://app:{PASSWORD}@db.example/shop",
        "not a url",
    ],
)
async def test_bad_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        async with rowstream.stream(url, "SELECT 1"):
            pass
    assert_no_password(caught.value)


async def test_unreachable_server_is_a_source_error(db_url: str) -> None:
    parsed = make_url(db_url)
    if parsed.get_backend_name() == "sqlite":
        url = f"sqlite:////nonexistent-{free_port()}/dir/orders.db"
    else:
        url = with_password(db_url, port=free_port())
    # A SQLite file has no server to reach: its advice is about the file.
    says = "cannot open the SQLite database" if url.startswith("sqlite") else "cannot connect"
    with pytest.raises(SourceError, match=says) as caught:
        async with rowstream.stream(url, "SELECT 1"):
            pass
    await let_aiosqlite_stop()
    assert not isinstance(caught.value, ConnectionLostError)
    assert_no_password(caught.value)


async def test_missing_database_is_a_source_error(db_url: str) -> None:
    parsed = make_url(db_url)
    if parsed.get_backend_name() == "sqlite":
        # aiosqlite creates a missing file; a missing directory is what it cannot open.
        with pytest.raises(SourceError, match="the directory '/no-such-dir' does not exist"):
            async with rowstream.stream("sqlite:////no-such-dir/orders.db", "SELECT 1"):
                pass
        await let_aiosqlite_stop()
        return
    missing = parsed.set(database="rowstream_no_such_db").render_as_string(hide_password=False)
    with pytest.raises(SourceError, match="create the database") as caught:
        async with rowstream.stream(missing, "SELECT 1"):
            pass
    assert "rowstream_no_such_db" in str(caught.value)
    # With a password in the URL: PostgreSQL (trust) still reports the missing database,
    # MariaDB refuses the log-in first; neither message shows the password.
    with pytest.raises(SourceError) as caught:
        async with rowstream.stream(with_password(missing), "SELECT 1"):
            pass
    assert_no_password(caught.value)
    assert "***" in str(caught.value)


async def test_unknown_table_is_a_query_error(shop: Shop) -> None:
    with pytest.raises(QueryError) as caught:
        async with rowstream.stream(shop.url, "SELECT id FROM no_such_table") as rows:
            await collect(rows)
    assert "no_such_table" in str(caught.value)


async def test_stats_repr_shows_elapsed_and_rate(shop: Shop) -> None:
    async with rowstream.stream(shop.url, sa.select(Order)) as rows:
        await collect(rows)
    stats = rows.stats
    # Closed: the duration is fixed, so the repr can be compared exactly.
    assert (
        repr(stats)
        == str(stats)
        == (
            f"Stats(rows={models.ORDERS}, batches={stats.batches}, bytes={stats.bytes}, "
            f"elapsed={stats.elapsed:.3f}, rows_per_second={stats.rows_per_second:.0f}, "
            f"reconnects=0, strategy={stats.strategy!r})"
        )
    )
    assert stats.elapsed > 0 and stats.rows_per_second == models.ORDERS / stats.elapsed
