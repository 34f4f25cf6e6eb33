"""Sources: URL mapping to async drivers, masking, engines with safe defaults, what is refused."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import NullPool

import rowstream
from rowstream import ConfigurationError
from rowstream._source import mask_url, resolve_source, resolve_url


@pytest.mark.parametrize(
    ("url", "drivername"),
    [
        ("postgresql://app@db/shop", "postgresql+asyncpg"),
        ("postgres://app@db/shop", "postgresql+asyncpg"),
        ("mysql://app@db/shop", "mysql+asyncmy"),
        ("mariadb://app@db/shop", "mariadb+asyncmy"),
        ("sqlite:///orders.db", "sqlite+aiosqlite"),
        # An explicit async driver is honoured.
        ("postgresql+psycopg://app@db/shop", "postgresql+psycopg"),
        ("postgresql+asyncpg://app@db/shop", "postgresql+asyncpg"),
        ("mysql+aiomysql://app@db/shop", "mysql+aiomysql"),
        ("mariadb+aiomysql://app@db/shop", "mariadb+aiomysql"),
    ],
)
def test_urls_map_to_async_drivers(url: str, drivername: str) -> None:
    resolved = resolve_url(url)
    assert resolved.drivername == drivername
    assert resolved.database == make_url(url).database
    assert resolve_url(make_url(url)).drivername == drivername


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://app:pw@db/shop",
        "mysql+pymysql://app:pw@db/shop",
        "mysql+mysqldb://app:pw@db/shop",
        "sqlite+pysqlite:///orders.db",
    ],
)
def test_sync_drivers_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="not an async driver") as caught:
        resolve_url(url)
    assert "pw" not in str(caught.value).replace("pymysql", "")


@pytest.mark.parametrize(
    "url", ["oracle://scott:tiger@db/orcl", "mssql+aioodbc://sa:pw@db/shop", "://nothing"]
)
def test_unsupported_or_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_url(url)
    assert "tiger" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://app:s3cret@db:5432/shop", "postgresql://app:***@db:5432/shop"),
        ("mysql://root@db/shop", "mysql://root@db/shop"),
        ("sqlite:///orders.db", "sqlite:///orders.db"),
        # Not parseable by SQLAlchemy (a bad port), still masked.
        ("postgresql://app:s3cret@db:port/shop", "postgresql://app:***@db:port/shop"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    if "port" not in url:
        assert mask_url(make_url(url)) == masked


async def test_create_engine_defaults_on_postgresql(pg_url: str) -> None:
    engine = rowstream.create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            name = await conn.scalar(sa.text("SELECT current_setting('application_name')"))
            zone = await conn.scalar(sa.text("SELECT current_setting('TimeZone')"))
        assert (name, zone) == ("rowstream", "UTC")
        assert engine.pool.size() == 10  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


async def test_create_engine_defaults_on_mariadb(mysql_url: str) -> None:
    engine = rowstream.create_engine(mysql_url)
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT @@session.time_zone")) == "+00:00"
    finally:
        await engine.dispose()


async def test_create_engine_keyword_arguments_win(pg_url: str) -> None:
    engine = rowstream.create_engine(
        pg_url,
        poolclass=NullPool,
        connect_args={"server_settings": {"application_name": "billing"}},
    )
    try:
        assert isinstance(engine.pool, NullPool)
        async with engine.connect() as conn:
            name = await conn.scalar(sa.text("SELECT current_setting('application_name')"))
        assert name == "billing"
    finally:
        await engine.dispose()


async def test_create_engine_survives_a_transaction_pooler(pgbouncer_url: str) -> None:
    # Statement caches are off, so concurrent connections through PgBouncer in transaction
    # mode never ask a backend for a statement that another backend prepared (ERRATA 5).
    engine = rowstream.create_engine(pgbouncer_url, poolclass=NullPool)
    add = sa.text("SELECT CAST(:a AS int) + CAST(:b AS int)")

    async def worker(n: int) -> int:
        total = 0
        async with engine.connect() as conn:
            for i in range(10):
                total += await conn.scalar(add, {"a": n, "b": i})
                await conn.commit()
        return total

    try:
        totals = await asyncio.gather(*(worker(n) for n in range(8)))
        assert totals == [10 * n + 45 for n in range(8)]
    finally:
        await engine.dispose()


def test_url_sources_get_a_private_engine_with_a_small_pool() -> None:
    source = resolve_source("sqlite:///orders.db")
    assert source.owns_engine and source.borrowed is None
    assert source.dialect == "sqlite"
    # Keyset pages and the pooler probe reuse a couple of connections; the stream disposes it.
    server = resolve_source("postgresql://app@db.invalid/shop")
    assert server.owns_engine
    assert server.engine.pool.size() == 2  # type: ignore[attr-defined]


async def test_engine_connection_and_session_sources(sqlite_url: str) -> None:
    engine = rowstream.create_engine(sqlite_url)
    try:
        assert resolve_source(engine).engine is engine
        assert not resolve_source(engine).owns_engine
        async with engine.connect() as conn:
            borrowed = resolve_source(conn)
            assert borrowed.borrowed is conn and borrowed.engine is engine
            # A session bound to a connection lends that connection.
            assert resolve_source(AsyncSession(bind=conn)).borrowed is conn
        session_source = resolve_source(AsyncSession(engine))
        assert session_source.engine is engine and session_source.borrowed is None
    finally:
        await engine.dispose()


def test_sync_sources_are_refused(tmp_path: object) -> None:
    engine = sa.create_engine("sqlite://")
    try:
        for source in (engine, sa.orm.Session(engine)):
            with pytest.raises(ConfigurationError, match="synchronous"):
                resolve_source(source)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def test_a_session_without_bind_and_other_objects_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="no bind"):
        resolve_source(AsyncSession())
    with pytest.raises(ConfigurationError, match="cannot stream from a int"):
        resolve_source(42)  # type: ignore[arg-type]
