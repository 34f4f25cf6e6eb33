"""The server-side cursor strategy: one connection, one transaction, one cursor.

PostgreSQL (asyncpg) binds a protocol-level portal and fetches it with Execute(n), which needs
an open transaction; MySQL/MariaDB read an unbuffered result (SSCursor); SQLite steps its
statement. Batches are fetched with ``fetchmany(n)``, so each batch may have its own size.

Each fetch reads exactly the rows asked for, no more: SQLAlchemy's asyncpg adapter reads 50
rows ahead whenever its buffer is empty (its first fetch of 1 row included), which is 2.5 GB
for 50 MB rows before the first batch is sized; the stream's cursor reads without that
read-ahead (``exact_fetches`` in rowstream._acompat). psycopg's named cursors, the MySQL/MariaDB
unbuffered cursor (asyncmy, PyMySQL) and SQLite's read exactly ``n`` rows already.

The sync twin, rowstream._sync._cursor, is generated from this module (tools/unasync.py).
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.ext.asyncio.result import AsyncResult, AsyncScalarResult
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import Select, TextualSelect

from ._acompat import (
    Watchdog,
    abandon,
    bounded,
    driver_connection,
    exact_fetches,
    exact_temporals,
    orm_session,
)
from ._convert import conversion_error, first_failure, raw_window, unlocated
from ._exceptions import QueryError, RowstreamError, UnsupportedQueryError
from ._plan import Plan, detach
from ._readonly import ReadOnlyTransaction
from ._sizing import FIRST_BATCH_ROWS
from ._source import ResolvedSource
from ._strategy import MYSQL
from ._temporal import DEFAULT_INFINITY, Infinity, refusal, refused_by_driver, window
from ._translate import is_conversion_error, raise_translated, translate
from ._watchdog import CLEANUP_TIMEOUT
from ._zerodates import DEFAULT_ZERO_DATES, ZeroDates


class CursorStrategy:
    """Read ``statement`` (``plan``'s, unless given) through one server-side cursor.

    ``setup`` statements run first in the transaction (``SET LOCAL ...``). ``infinity``:
    what a date or timestamp Python cannot hold becomes (see rowstream._temporal);
    ``zero_dates``: what a MariaDB zero date becomes (see rowstream._zerodates).
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
        infinity: Infinity = DEFAULT_INFINITY,
        zero_dates: ZeroDates = DEFAULT_ZERO_DATES,
    ) -> None:
        if plan.side_queries and source.dialect in MYSQL:
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
        self._infinity = infinity
        self._zero_dates = zero_dates
        self._temporals_held: Any = None
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
            if refused_by_driver(exc):
                # Rows the execution already buffered (yield_per).
                raise await self._temporal_error(exc, 0) from exc
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
            if source.dialect in MYSQL:
                # Known now: once a cancelled query has invalidated the connection, it is not.
                driver: Any = await driver_connection(conn)
                self._mysql_thread = int(driver.thread_id())
            if not conn.in_transaction():
                self._trans = await ReadOnlyTransaction(conn).start()
            for sql in self._setup:
                await conn.exec_driver_sql(sql)
            statement = self._statement.execution_options(yield_per=FIRST_BATCH_ROWS)
            # Held to the end: selectinload()'s queries on this connection decode the same way.
            held = exact_temporals(conn, self._infinity, self._zero_dates)
            await held.__aenter__()
            self._temporals_held = held
            result: AsyncResult[Any]
            async with exact_fetches(conn):
                if self._plan.orm:
                    self._session = AsyncSession(bind=conn, autoflush=False, expire_on_commit=False)
                    # sync: result = self._session.execute(statement)
                    result = await self._session.stream(statement)
                else:
                    # sync: result = conn.execute(statement)
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
            if refused_by_driver(exc):
                raise await self._temporal_error(exc, size) from exc
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
        if window is None or (source.borrowed is not None and source.dialect in MYSQL):
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

    async def _temporal_error(self, exc: Exception, size: int) -> RowstreamError:
        """psycopg refused a date or timestamp Python cannot hold, naming no column: the rows
        it may have been reading are read again with loaders that mark such values (see
        rowstream._temporal), to name the column."""
        source = self._source
        fallback = translate(exc, url=source.engine.url)
        # The driver reads ahead of what was delivered by up to FIRST_BATCH_ROWS (yield_per).
        found = window(self._statement, skip=self._delivered, limit=size + FIRST_BATCH_ROWS)
        if found is None:
            return fallback
        statement, names = found
        try:
            if source.borrowed is not None:
                async with exact_temporals(source.borrowed, "error", "refuse", diagnose=True):
                    rows = (await source.borrowed.execute(statement)).all()
            else:
                async with (
                    source.engine.connect() as conn,
                    exact_temporals(conn, "error", "refuse", diagnose=True),
                ):
                    rows = (await conn.execute(statement)).all()
        except Exception:
            return fallback  # the diagnosis is a bonus: the error stands without it
        return refusal(rows, names) or fallback

    def _let_go(self, batch: list[Any]) -> None:
        """Expunge the previous batch's instances: they are the caller's to keep, and the
        stream's session must not keep them alive (it holds modified objects strongly, see
        ERRATA 7). expunge_all() is no option: the loading result holds the identity map."""
        assert self._session is not None
        entities = batch if self._plan.scalars else [e for row in batch for e in row]
        detach(orm_session(self._session), entities)
        self._previous = []

    def keys(self) -> list[str]:
        return self._keys

    async def aclose(self) -> None:
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        try:
            async with bounded(CLEANUP_TIMEOUT):
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
        if owned and not self.exhausted and self._source.dialect in MYSQL:
            # Closing an unbuffered MySQL result reads every remaining row; on an early exit
            # (or a cancellation while the query starts) close the socket instead. That stops
            # a query that is sending rows; one still computing them runs on unless killed,
            # so KILL QUERY it from a second connection first.
            await self._kill_mysql_query()
            await abandon(conn)
            return
        try:
            if self._result is not None:
                await self._result.close()
            if self._session is not None:
                await self._session.close()
            if self._trans is not None and self._trans.is_active:
                await self._trans.rollback()
        finally:
            # Even when the clean-up fails: a borrowed connection gets its own codecs back.
            held, self._temporals_held = self._temporals_held, None
            if held is not None:
                await held.__aexit__(None, None, None)
        if owned:
            await conn.close()
