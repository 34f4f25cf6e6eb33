"""An asyncpg connection in rowstream's COPY transaction, every wait on it bounded.

Shared by the PostgreSQL readers (COPY text, the cursor behind Parquet when ADBC cannot
connect, the column probe before a stream): they use asyncpg's own API
(``copy_from_query``, prepared statements' attributes).

:func:`reader_session` is the one place a reader gets its connection: a new one in a
transaction of its own (:func:`pg_session`), or, for a partition of a partitioned export, the
caller's connection, already in a read-only transaction at the shared snapshot
(:func:`borrowed_session`): the same settings, the same bounded waits, the caller's
transaction left to the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from .._exceptions import RowstreamError
from .._pgcopy import SETTINGS, PgColumn, pg_transaction, probe, raw_pg_transaction
from .._source import ResolvedSource, close_asyncpg, connect_asyncpg, create_engine, mask_url
from .._strategy import shielded
from .._translate import raise_translated
from .._watchdog import Watchdog

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "asyncpg_engine",
    "borrowed_session",
    "copy_engine",
    "pg_columns",
    "pg_session",
    "reader_session",
]


def asyncpg_engine(resolved: ResolvedSource) -> AsyncEngine:
    """The engine PostgreSQL's COPY and catalog probe go through: asyncpg's.

    A source on another driver (``postgresql+psycopg://``) gets a private asyncpg engine on the
    same URL for them (the caller disposes of it), while a stream's rows still come through
    the source.
    """
    engine = resolved.engine
    if resolved.dialect != "postgresql" or engine.dialect.driver == "asyncpg":
        return engine
    return create_engine(engine.url.set(drivername="postgresql+asyncpg"), pool_size=1)


def copy_engine(resolved: ResolvedSource) -> tuple[AsyncEngine | sa.Engine, bool]:
    """The engine a COPY goes through, and whether the caller must dispose of it.

    A URL source on asyncpg whose AsyncEngine is not in use gives its sync side: the COPY
    then runs on a bare asyncpg connection (rowstream._source.connect_asyncpg), and the
    process never loads sqlalchemy.ext.asyncio (a seventh of the CLI's start-up).
    """
    sync = resolved.sync_engine
    if (
        resolved.owns_engine
        and not resolved.engine_in_use
        and resolved.dialect == "postgresql"
        and sync.dialect.driver == "asyncpg"
    ):
        return sync, False
    engine = asyncpg_engine(resolved)
    return engine, engine is not resolved.engine


async def _connect(engine: AsyncEngine) -> AsyncConnection:
    try:
        return await engine.connect()
    except Exception as exc:
        raise_translated(exc, url=engine.url, connecting=True)


async def _close(conn: AsyncConnection) -> None:
    with contextlib.suppress(Exception):
        await conn.close()


@contextlib.asynccontextmanager
async def pg_session(
    engine: AsyncEngine | sa.Engine, read_timeout: float | None
) -> AsyncIterator[tuple[Any, Callable[[], None]]]:
    """An asyncpg connection in rowstream's COPY transaction (see :func:`pg_transaction`),
    and the function to call whenever data arrives on it.

    Every wait on the connection (the probe, the COPY, a cursor's fetch) is bounded: with no
    data for ``read_timeout`` seconds, and the server not busy with the query, the network
    counts as silent and the connection is abandoned (a ConnectionLostError; see
    :mod:`rowstream._watchdog`). A COPY is one long wait, so its data calls ``arrived()``.

    ``engine`` may be the sync side of a URL source's engine (:func:`copy_engine`): the
    connection is then a bare asyncpg one, without a pool.
    """
    if isinstance(engine, sa.Engine):
        async with _bare_session(engine, read_timeout) as session:
            yield session
        return
    conn: AsyncConnection | None = None
    dog = Watchdog(engine, read_timeout, where=mask_url(engine.url), resumable=False)
    try:
        async with dog.watch(lambda: conn) as watch:
            conn = await _connect(engine)
            async with pg_transaction(conn) as apg:
                yield apg, watch.kick
    except RowstreamError:
        raise
    except Exception as exc:
        raise_translated(exc, url=engine.url, resumable=False)
    finally:
        if conn is not None:
            await shielded(_close(conn))


@contextlib.asynccontextmanager
async def _bare_session(
    engine: sa.Engine, read_timeout: float | None
) -> AsyncIterator[tuple[Any, Callable[[], None]]]:
    """:func:`pg_session` on a bare asyncpg connection: the same transaction, bounds and
    errors; the connection is closed (within CLEANUP_TIMEOUT) instead of pooled."""
    apg: Any = None
    ended = False
    dog = Watchdog(engine, read_timeout, where=mask_url(engine.url), resumable=False)
    dog.bare = (connect_asyncpg, close_asyncpg)
    try:
        async with dog.watch(lambda: apg) as watch:
            try:
                apg = await connect_asyncpg(engine)
            except Exception as exc:
                raise_translated(exc, url=engine.url, connecting=True)
            async with raw_pg_transaction(apg) as conn:
                yield conn, watch.kick
        ended = True
    except RowstreamError:
        raise
    except Exception as exc:
        raise_translated(exc, url=engine.url, resumable=False)
    finally:
        if apg is not None:
            if ended:
                await shielded(close_asyncpg(apg))
            else:
                # Cancelled or failed in the middle of a COPY (a client that left): a goodbye
                # would wait behind the rows in flight; closing the socket ends the backend
                # at once.
                apg.terminate()


@contextlib.asynccontextmanager
async def borrowed_session(
    conn: AsyncConnection, read_timeout: float | None
) -> AsyncIterator[tuple[Any, Callable[[], None]]]:
    """The caller's asyncpg connection, inside the transaction it is in (a partition's reader
    at the shared snapshot), with the output settings of :func:`pg_transaction` made local to
    that transaction; yields it and the function to call whenever data arrives on it.

    Every wait is bounded as in :func:`pg_session`. The connection is not the reader's: it is
    neither committed, rolled back nor closed here, and a silent network fails the read
    without abandoning it (the caller, who owns it, leaves it).
    """
    engine = conn.engine
    dog = Watchdog(engine, read_timeout, where=mask_url(engine.url), resumable=False)
    try:
        async with dog.watch(lambda: conn, owned=False) as watch:
            for setting in SETTINGS:
                await conn.exec_driver_sql(setting)
            raw = await conn.get_raw_connection()
            yield raw.driver_connection, watch.kick
    except RowstreamError:
        raise
    except Exception as exc:
        raise_translated(exc, url=engine.url, resumable=False)


def reader_session(
    engine: AsyncEngine | sa.Engine, borrowed: AsyncConnection | None, read_timeout: float | None
) -> contextlib.AbstractAsyncContextManager[tuple[Any, Callable[[], None]]]:
    """``borrowed`` as it is (:func:`borrowed_session`) when there is one, else a connection of
    ``engine``'s in a transaction of its own (:func:`pg_session`)."""
    if borrowed is not None:
        return borrowed_session(borrowed, read_timeout)
    return pg_session(engine, read_timeout)


async def pg_columns(
    engine: AsyncEngine, sql: str, read_timeout: float | None, *, estimate: bool = True
) -> tuple[list[PgColumn], int | None]:
    """The columns of ``sql`` as the catalog describes them, and the planner's row estimate
    (None unless ``estimate``)."""
    async with pg_session(engine, read_timeout) as (apg, _arrived):
        return await probe(apg, sql, estimate=estimate)
