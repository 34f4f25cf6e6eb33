"""Driver errors, raised for real by each server, become the right rowstream error."""

from __future__ import annotations

import pickle
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, joinedload, mapped_column, relationship
from sqlalchemy.pool import NullPool

import rowstream
from rowstream import (
    ConnectionLostError,
    QueryError,
    RowstreamError,
    SourceError,
    UnsupportedQueryError,
)
from rowstream._translate import is_connection_lost, translate
from tests.plugins._bringup import free_port, let_aiosqlite_stop

PASSWORD = "pw-Zq81-secret"


async def raised(url: str, work: Callable[[AsyncConnection], Awaitable[Any]]) -> BaseException:
    """The exception that ``work`` raises on a connection to ``url`` (or on connecting)."""
    engine = create_async_engine(rowstream._source.resolve_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await work(conn)
    except Exception as exc:
        return exc
    finally:
        await engine.dispose()
    raise AssertionError("expected an error")


def _sql(statement: str) -> Callable[[AsyncConnection], Awaitable[Any]]:
    async def run(conn: AsyncConnection) -> Any:
        return await conn.execute(sa.text(statement))

    return run


async def test_unknown_table_and_bad_syntax_are_query_errors(db_url: str) -> None:
    url = make_url(db_url)
    for statement in ("SELECT * FROM no_such_table", "SELEC 1"):
        exc = await raised(db_url, _sql(statement))
        error = translate(exc, url=url)
        assert type(error) is QueryError, error
        assert "the server rejected the query" in str(error)
        assert not is_connection_lost(exc)


async def test_refused_connection_is_a_source_error(db_url: str) -> None:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        url = make_url("sqlite:////no-such-dir/test.db")
    else:
        url = url.set(port=free_port(), password=PASSWORD)
    exc = await raised(url.render_as_string(hide_password=False), _sql("SELECT 1"))
    await let_aiosqlite_stop()
    error = translate(exc, url=url, connecting=True)
    assert type(error) is SourceError
    assert "cannot connect" in str(error) and PASSWORD not in str(error)


async def test_missing_database_is_a_source_error(pg_url: str, mysql_url: str) -> None:
    for server in (pg_url, mysql_url):
        url = make_url(server).set(database="rowstream_no_such_db")
        exc = await raised(url.render_as_string(hide_password=False), _sql("SELECT 1"))
        error = translate(exc, url=url, connecting=True)
        assert type(error) is SourceError
        assert "create the database or fix the URL" in str(error)


async def test_bad_credentials_are_a_source_error(mysql_url: str) -> None:
    url = make_url(mysql_url).set(password=PASSWORD)
    exc = await raised(url.render_as_string(hide_password=False), _sql("SELECT 1"))
    error = translate(exc, url=url, connecting=True)
    assert type(error) is SourceError
    assert "check the user name and password" in str(error)
    assert PASSWORD not in str(error) and "***" in str(error)


async def test_a_password_in_the_driver_message_is_scrubbed(pg_url: str) -> None:
    # Trust authentication accepts any password, so the server echoes it back in an error.
    url = make_url(pg_url).set(password=PASSWORD)
    exc = await raised(
        url.render_as_string(hide_password=False), _sql(f"SELECT CAST('{PASSWORD}' AS int)")
    )
    assert PASSWORD in str(exc)
    error = translate(exc, url=url)
    assert type(error) is QueryError
    assert PASSWORD not in str(error) and "***" in str(error)


async def test_a_terminated_backend_is_a_lost_connection(pg_url: str) -> None:
    async def terminate_self(conn: AsyncConnection) -> None:
        await conn.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))

    exc = await raised(pg_url, terminate_self)
    assert is_connection_lost(exc)
    error = translate(exc, url=make_url(pg_url))
    assert type(error) is ConnectionLostError
    assert isinstance(error, SourceError)


async def test_a_killed_mariadb_connection_is_a_lost_connection(mysql_url: str) -> None:
    exc = await raised(mysql_url, _sql("KILL CONNECTION_ID()"))
    assert is_connection_lost(exc)
    assert type(translate(exc, url=make_url(mysql_url))) is ConnectionLostError


async def test_prepared_statements_through_pgbouncer_name_the_fix(
    pgbouncer_url: str,
) -> None:
    # SQLAlchemy's default asyncpg setup caches named prepared statements; in transaction
    # pooling the next transaction can land on a backend that never prepared them.
    url = make_url(pgbouncer_url).set(drivername="postgresql+asyncpg")
    cached = create_async_engine(url, poolclass=NullPool)
    uncached = create_async_engine(
        url,
        poolclass=NullPool,
        connect_args={"statement_cache_size": 0, "prepared_statement_cache_size": 0},
    )
    query = sa.text("SELECT 1 + CAST(:x AS int)")
    try:
        async with cached.connect() as a:
            await a.execute(query, {"x": 1})
            await a.commit()
            async with uncached.connect() as b:
                # b takes the backend a just released and holds it in a transaction.
                await b.execute(sa.text("SELECT 2"))
                with pytest.raises(sa.exc.DBAPIError) as caught:
                    await a.execute(query, {"x": 2})
    finally:
        await cached.dispose()
        await uncached.dispose()
    error = translate(caught.value, url=url)
    assert type(error) is SourceError
    assert "PgBouncer" in str(error) and "statement_cache_size" in str(error)


class _Base(DeclarativeBase):
    pass


class _Parent(_Base):
    __tablename__ = "translate_parents"
    id: Mapped[int] = mapped_column(primary_key=True)
    children: Mapped[list[_Child]] = relationship()


class _Child(_Base):
    __tablename__ = "translate_children"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("translate_parents.id"))


async def test_yield_per_with_collection_eager_loading_is_unsupported(sqlite_url: str) -> None:
    engine = rowstream.create_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_Base.metadata.create_all)
        statement = (
            sa.select(_Parent).options(joinedload(_Parent.children)).execution_options(yield_per=10)
        )
        async with AsyncSession(engine) as session:
            with pytest.raises(sa.exc.InvalidRequestError) as caught:
                await session.stream(statement)
    finally:
        await engine.dispose()
    error = translate(caught.value, url=None)
    assert type(error) is UnsupportedQueryError
    assert "selectinload" in str(error)


def test_rowstream_errors_pass_through_and_survive_pickling() -> None:
    original = ConnectionLostError("lost it; run the stream again", table="orders", last_key=41)
    assert translate(original, url=None) is original
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is ConnectionLostError
    assert copy.context == {"table": "orders", "last_key": 41}
    assert (
        str(copy) == str(original) == "lost it; run the stream again (table='orders', last_key=41)"
    )
    assert isinstance(copy, RowstreamError)
