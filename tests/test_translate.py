"""Driver errors, raised for real by each server, become the right rowstream error."""

from __future__ import annotations

import datetime
import pickle
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, joinedload, mapped_column, relationship
from sqlalchemy.pool import NullPool

import rowstream
import rowstream.sync
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
    assert PASSWORD not in str(error)
    if url.get_backend_name() == "sqlite":
        # A file has no server, host or port: the advice is about the path.
        assert "cannot open the SQLite database" in str(error)
        assert "the directory '/no-such-dir' does not exist" in str(error)
        assert "server" not in str(error) and "port" not in str(error)
    else:
        assert "cannot connect" in str(error)


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


async def test_several_statements_on_a_direct_postgresql_are_not_blamed_on_a_pooler(
    pg_url: str,
) -> None:
    # The driver's own error, straight from asyncpg through exec_driver_sql (the statement
    # guard, where present, would refuse this text before any driver sees it).
    exc = await raised(pg_url, lambda conn: conn.exec_driver_sql("SELECT 1; SELECT 2", {"x": 1}))
    assert "multiple commands" in str(exc)
    error = translate(exc, url=make_url(pg_url))
    assert type(error) is QueryError
    assert "the server rejected the query" in str(error)
    assert "send one statement at a time" in str(error)
    assert "pooler" not in str(error) and "PgBouncer" not in str(error)


async def test_a_full_pool_says_so_and_how_to_size_it(db_url: str) -> None:
    engine = rowstream.create_engine(db_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        async with engine.connect() as held:
            await held.execute(sa.text("SELECT 1"))
            with pytest.raises(SourceError) as caught:
                async with rowstream.stream(engine, sa.text("SELECT 1")) as rows:
                    [r async for r in rows]
    finally:
        await engine.dispose()
    sync_engine = rowstream.sync.create_engine(
        db_url, pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    try:
        with sync_engine.connect() as sync_held:
            sync_held.execute(sa.text("SELECT 1"))
            with (
                pytest.raises(SourceError) as sync_caught,
                rowstream.sync.stream(sync_engine, sa.text("SELECT 1")) as sync_rows,
            ):
                list(sync_rows)
    finally:
        sync_engine.dispose()
    for error in (caught.value, sync_caught.value):
        message = str(error)
        assert "connection pool" in message and "is full" in message
        assert "pool_size" in message and "max_overflow" in message
        assert "fewer streams" in message and "server is running" not in message


async def test_a_sqlite_file_that_cannot_be_opened_gets_advice_about_the_file(
    tmp_path: Path,
) -> None:
    garbage = tmp_path / "notes.db"
    garbage.write_bytes(b"this is a text file, not a database\n" * 200)
    cases = {
        f"sqlite:///{tmp_path}/missing/dir/x.db": "the directory",
        f"sqlite:///{garbage}": "not a SQLite database",
        f"sqlite:///{tmp_path}": "is a directory",
    }
    for url, says in cases.items():
        with pytest.raises(SourceError) as caught:
            async with rowstream.stream(url, sa.text("SELECT * FROM sqlite_master")) as rows:
                [r async for r in rows]
        await let_aiosqlite_stop()
        message = str(caught.value)
        assert "cannot open the SQLite database" in message and says in message, message
        assert "host" not in message and "port" not in message and "server" not in message


def test_an_unreadable_sqlite_file_names_the_permissions(tmp_path: Path) -> None:
    # Root reads any file: the probe runs without the capabilities that let it (setpriv).
    database = tmp_path / "locked.db"
    sqlite3.connect(database).close()
    database.chmod(0o000)
    probe = (
        "import sqlalchemy as sa, rowstream.sync\n"
        "try:\n"
        f"    with rowstream.sync.stream('sqlite:///{database}', sa.text('SELECT 1')) as r:\n"
        "        list(r)\n"
        "except rowstream.RowstreamError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    without_override = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    result = subprocess.run(
        [*without_override, sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.startswith("SourceError cannot open the SQLite database"), result
    assert "may not read the file: check its permissions" in result.stdout
    assert "host" not in result.stdout and "port" not in result.stdout


class _Events(_Base):
    __tablename__ = "translate_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    happened_at: Mapped[datetime.datetime] = mapped_column(sa.DateTime)


async def test_a_client_side_conversion_error_names_the_column_and_value(sqlite_url: str) -> None:
    # SQLite keeps DATETIME as text; the row "yesterday" fails in SQLAlchemy's parser, in
    # this process: the server rejected nothing.
    engine = rowstream.create_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_Base.metadata.create_all)
            await conn.exec_driver_sql(
                "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s "
                "WHERE i < 2500) INSERT INTO translate_events SELECT i, "
                "CASE i WHEN 2222 THEN 'yesterday' ELSE '2024-01-01 00:00:00' END FROM s"
            )
        table = _Events.__table__
        for statement, strategy in [
            (sa.select(table), "cursor"),
            (sa.select(_Events), "cursor"),
            (sa.select(table), "keyset"),
            (sa.select(_Events), "keyset"),
        ]:
            with pytest.raises(QueryError) as caught:
                async with rowstream.stream(
                    engine, statement, batch_rows=500, strategy=strategy
                ) as rows:
                    [r async for r in rows]
            message = str(caught.value)
            assert "cannot convert column 'happened_at'" in message, message
            assert "'yesterday'" in message and "Invalid isoformat string" in message
            assert "server" not in message
        with (
            pytest.raises(QueryError) as sync_caught,
            rowstream.sync.stream(sqlite_url, sa.select(table), batch_rows=500) as sync_rows,
        ):
            list(sync_rows)
        assert "cannot convert column 'happened_at'" in str(sync_caught.value)
        assert "'yesterday'" in str(sync_caught.value)
    finally:
        await engine.dispose()


async def test_a_value_the_declared_type_does_not_know_names_the_column(db_url: str) -> None:
    # The Table says Enum; the database holds a value the Enum does not list. SQLAlchemy's
    # processor refuses it in this process, on every database, and on both strategies.
    engine = rowstream.create_engine(db_url)
    declared = sa.Table(
        "translate_orders",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("status", sa.Enum("paid", "open", native_enum=False)),
    )
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE IF EXISTS translate_orders")
            await conn.exec_driver_sql(
                "CREATE TABLE translate_orders (id int PRIMARY KEY, status varchar(20))"
            )
            await conn.exec_driver_sql(
                "INSERT INTO translate_orders VALUES (1, 'paid'), (2, 'open'), (3, 'refunded')"
            )
        for strategy in ("cursor", "keyset"):
            with pytest.raises(QueryError) as caught:
                async with rowstream.stream(
                    engine, sa.select(declared), strategy=strategy, batch_rows=2
                ) as rows:
                    [r async for r in rows]
            message = str(caught.value)
            assert "cannot convert column 'status'" in message, message
            assert "'refunded'" in message
            assert "server" not in message
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DROP TABLE IF EXISTS translate_orders")
        await engine.dispose()


async def test_what_the_driver_refuses_is_not_blamed_on_the_server(pg_url: str) -> None:
    # asyncpg counts the arguments itself: the statement never reaches the server.
    exc = await raised(pg_url, lambda conn: conn.exec_driver_sql("SELECT $1::int, $2::int", (1,)))
    error = translate(exc, url=make_url(pg_url))
    assert type(error) is QueryError
    assert str(error).startswith("the database driver (asyncpg) refused the query"), error
    assert "server rejected" not in str(error)
