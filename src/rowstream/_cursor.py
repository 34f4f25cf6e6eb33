"""The server-side cursor strategy: one connection, one transaction, one cursor.

PostgreSQL (asyncpg) binds a protocol-level portal and fetches it with Execute(n), which needs
an open transaction; MySQL/MariaDB read an unbuffered result (SSCursor); SQLite steps its
statement. Batches are fetched with ``fetchmany(n)``, so each batch may have its own size.

Each fetch reads exactly the rows asked for, no more: SQLAlchemy's asyncpg adapter reads 50
rows ahead whenever its buffer is empty (its first fetch of 1 row included), which is 2.5 GB
for 50 MB rows before the first batch is sized; the stream's cursor reads without that
read-ahead (:class:`_ExactAsyncpgCursor`). The MySQL/MariaDB unbuffered cursor (asyncmy,
PyMySQL) and SQLite's read exactly ``n`` rows already.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_ss_cursor,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.ext.asyncio.result import AsyncResult, AsyncScalarResult
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import Select, TextualSelect
from sqlalchemy.util import await_

from ._convert import conversion_error, first_failure, raw_window, unlocated
from ._exceptions import QueryError, UnsupportedQueryError
from ._plan import Plan
from ._readonly import ReadOnlyTransaction
from ._sizing import FIRST_BATCH_ROWS
from ._source import ResolvedSource
from ._translate import is_conversion_error, raise_translated
from ._watchdog import CLEANUP_TIMEOUT, Watchdog, abandon

_MYSQL = {"mysql", "mariadb"}


class CursorStrategy:
    """Read ``statement`` (``plan``'s, unless given) through one server-side cursor.

    ``setup`` statements run first in the transaction (``SET LOCAL ...``).
    """

    name = "cursor"

    def __init__(
        self,
        source: ResolvedSource,
        plan: Plan,
        *,
        statement: Select[Any] | TextualSelect | TextClause | None = None,
        setup: tuple[str, ...] = (),
        watchdog: Watchdog | None = None,
    ) -> None:
        if plan.side_queries and source.dialect in _MYSQL:
            raise UnsupportedQueryError(
                "on MySQL/MariaDB a server-side cursor cannot share its connection with the "
                "queries selectinload() sends: use strategy='keyset' (each page is a complete "
                "query), or load the related objects after the stream"
            )
        self._source = source
        self._plan = plan
        self._statement = plan.statement if statement is None else statement
        self._setup = setup
        self._watchdog = watchdog or Watchdog(source.engine, None)
        self._owned = source.borrowed is None
        self._conn: AsyncConnection | None = None
        self._trans: ReadOnlyTransaction | None = None
        self._session: AsyncSession | None = None
        self._result: AsyncResult[Any] | AsyncScalarResult[Any] | None = None
        self._keys: list[str] = []
        self._previous: list[Any] = []
        self._mysql_thread: int | None = None
        self._delivered = 0
        self.exhausted = False

    async def open(self) -> None:
        source = self._source
        url = source.engine.url
        try:
            # Bounded like a fetch: the first rows of a big sort may take long (the watchdog
            # then sees the server at work and waits on); a silent network may not.
            async with self._watchdog.watch(lambda: self._conn, owned=self._owned):
                await self._open()
        except Exception as exc:
            raise_translated(exc, url=url)

    async def _open(self) -> None:
        source = self._source
        url = source.engine.url
        if source.borrowed is not None:
            self._conn = source.borrowed
        else:
            try:
                self._conn = await source.engine.connect()
            except Exception as exc:
                raise_translated(exc, url=url, connecting=True)
        conn = self._conn
        assert conn is not None
        try:
            if source.dialect in _MYSQL:
                # Known now: once a cancelled query has invalidated the connection, it is not.
                raw = await conn.get_raw_connection()
                driver: Any = raw.driver_connection
                self._mysql_thread = int(driver.thread_id())
            if not conn.in_transaction():
                self._trans = await ReadOnlyTransaction(conn)
            for sql in self._setup:
                await conn.exec_driver_sql(sql)
            statement = self._statement.execution_options(yield_per=FIRST_BATCH_ROWS)
            result: AsyncResult[Any]
            async with _exact_fetches(conn):
                if self._plan.orm:
                    self._session = AsyncSession(bind=conn, autoflush=False, expire_on_commit=False)
                    result = await self._session.stream(statement)
                else:
                    result = await conn.stream(statement)
            self._keys = list(result.keys())
            self._result = result.scalars() if self._plan.scalars else result
        except Exception as exc:
            raise_translated(exc, url=url)

    async def fetch(self, size: int) -> list[Any]:
        assert self._result is not None
        if self._session is not None and self._previous:
            self._let_go(self._previous)
        try:
            async with self._watchdog.watch(lambda: self._conn, owned=self._owned):
                batch = list(await self._result.fetchmany(size))
        except Exception as exc:
            if is_conversion_error(exc):
                raise await self._conversion_error(exc, size) from exc
            raise_translated(exc, url=self._source.engine.url)
        self._delivered += len(batch)
        if len(batch) < size:
            self.exhausted = True
        if self._session is not None:
            self._previous = batch
        return batch

    async def _conversion_error(self, exc: Exception, size: int) -> QueryError:
        """Name the column and value a row's conversion failed on (see rowstream._convert)."""
        source = self._source
        fallback = unlocated(exc, source.engine.url)
        window = raw_window(
            self._statement, source.engine.dialect, skip=self._delivered, limit=size
        )
        # Read on a connection of its own: an unbuffered MySQL result holds this one.
        if window is None or (source.borrowed is not None and source.dialect in _MYSQL):
            return fallback
        try:
            if source.borrowed is not None:
                rows = (await source.borrowed.execute(window.statement)).all()
            else:
                async with source.engine.connect() as conn:
                    rows = (await conn.execute(window.statement)).all()
        except Exception:
            return fallback  # the diagnosis is a bonus: the error stands without it
        return conversion_error(first_failure(rows, window), fallback)

    def _let_go(self, batch: list[Any]) -> None:
        """Expunge the previous batch's instances: they are the caller's to keep, and the
        stream's session must not keep them alive (it holds modified objects strongly, see
        ERRATA 7). expunge_all() is no option: the loading result holds the identity map."""
        assert self._session is not None
        entities = batch if self._plan.scalars else [e for row in batch for e in row]
        detach(self._session.sync_session, entities)
        self._previous = []

    def keys(self) -> list[str]:
        return self._keys

    async def aclose(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                await self._release(conn)
        except Exception:
            # The connection is in an unknown state (or silent): drop it rather than pool it,
            # without a goodbye that would wait on it again.
            if self._source.borrowed is None:
                await abandon(conn)

    async def _kill_mysql_query(self) -> None:
        if self._mysql_thread is None:
            return
        with contextlib.suppress(Exception):
            async with self._source.engine.connect() as killer:
                await killer.exec_driver_sql(f"KILL QUERY {int(self._mysql_thread)}")

    async def _release(self, conn: AsyncConnection) -> None:
        owned = self._source.borrowed is None
        if owned and not self.exhausted and self._source.dialect in _MYSQL:
            # Closing an unbuffered MySQL result reads every remaining row; on an early exit
            # (or a cancellation while the query starts) close the socket instead. That stops
            # a query that is sending rows; one still computing them runs on unless killed,
            # so KILL QUERY it from a second connection first.
            await self._kill_mysql_query()
            await abandon(conn)
            return
        if self._result is not None:
            await self._result.close()
        if self._session is not None:
            await self._session.close()
        if self._trans is not None and self._trans.is_active:
            await self._trans.rollback()
        if owned:
            await conn.close()


class _ExactAsyncpgCursor(AsyncAdapt_asyncpg_ss_cursor):
    """SQLAlchemy's asyncpg server-side cursor, whose ``fetchmany(n)`` reads ``n`` rows.

    The original first reads 50 rows into its buffer whenever the buffer is empty, then the
    rest of ``n``: 50 wide rows held at once, and two round trips per batch.
    """

    __slots__ = ()

    def fetchmany(self, size: int | None = None) -> list[Any]:
        if size is None:
            return list(self.fetchall())  # type: ignore[no-untyped-call]
        assert self._cursor is not None
        buffered = self._rowbuffer
        if size > len(buffered):
            buffered.extend(await_(self._cursor.fetch(size - len(buffered))))
        return [buffered.popleft() for _ in range(min(size, len(buffered)))]


class _ExactAsyncpgConnection(AsyncAdapt_asyncpg_connection):
    """The same connection, opening :class:`_ExactAsyncpgCursor` server-side cursors."""

    __slots__ = ()
    _ss_cursor_cls = _ExactAsyncpgCursor


@contextlib.asynccontextmanager
async def _exact_fetches(conn: AsyncConnection) -> AsyncIterator[None]:
    """While the stream's statement executes, server-side cursors of ``conn`` read exactly
    the rows asked for (asyncpg only; other drivers already do).

    The connection's class is swapped back afterwards: the connection may be the caller's
    (borrowed) or go back to the engine's pool, and must leave as it came.
    """
    raw = await conn.get_raw_connection()
    adapted: Any = raw.dbapi_connection
    if type(adapted) is not AsyncAdapt_asyncpg_connection:
        yield
        return
    adapted.__class__ = _ExactAsyncpgConnection
    try:
        yield
    finally:
        adapted.__class__ = AsyncAdapt_asyncpg_connection


def detach(session: Session, entities: list[Any]) -> None:
    """Expunge ``entities`` (those of ``session``; anything else is skipped) in one call.

    ``Session.expunge()`` walks the expunge cascade object by object: about 21 µs an object,
    more than loading it; one ``_expunge_states()`` call for the whole batch costs about
    2.6 µs an object (measured on SQLAlchemy 2.1.9). Objects whose mapper cascades expunge
    to related objects still go through ``expunge()``, for the cascade.
    """
    states = []
    for entity in entities:
        state = getattr(entity, "_sa_instance_state", None)
        if state is None or state.session_id != session.hash_key:
            continue
        if _cascades_expunge(state.mapper):
            session.expunge(entity)
        else:
            states.append(state)
    if states:
        session._expunge_states(states)


@functools.cache
def _cascades_expunge(mapper: Any) -> bool:
    return any(relationship.cascade.expunge for relationship in mapper.relationships)
