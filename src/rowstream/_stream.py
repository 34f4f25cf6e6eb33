"""``rowstream.stream``: the one context-managed way to stream a SELECT.

Data path: source (URL, engine, session) -> plan -> strategy (cursor or keyset) -> batches
sized by bytes -> the caller, one item at a time or one batch at a time.

The sync face's stream, rowstream._sync._stream, is generated from this module
(tools/unasync.py); the decisions it shares live in rowstream._strategy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Literal, Protocol

from sqlalchemy.sql.selectable import Select

from ._acompat import Watchdog, shielded, sleep
from ._cursor import CursorStrategy
from ._exceptions import (
    ConnectionLostError,
    ResumeError,
    RowstreamError,
    SourceError,
    StreamKeyError,
)
from ._guard import check_statement
from ._keyfind import resolve_key
from ._keys import Key, KeyArg, KeyedStream, pageable
from ._keyset import KeysetStrategy
from ._plan import Plan, Statement, make_plan
from ._pooler import inspect_path
from ._sizing import DEFAULT_BATCH_BYTES, BatchSizer
from ._source import ResolvedSource, Source, mask_url, resolve_source
from ._strategy import (
    DEFAULT_BACKOFF,
    DEFAULT_RETRIES,
    MYSQL,
    POOLED_SETUP,
    PathInfo,
    Stats,
    StrategyName,
    backoff_delay,
    check_stream_options,
    fewer_collections,
)
from ._temporal import DEFAULT_INFINITY, Infinity, check_infinity, hits, refusal
from ._translate import raise_translated
from ._watchdog import DEFAULT_READ_TIMEOUT, check_read_timeout
from ._zerodates import DEFAULT_ZERO_DATES, ZeroDates, check_zero_dates

__all__ = ["RowStream", "Stats", "stream"]


class Strategy(Protocol):
    """What :class:`RowStream` asks of a way of reading (see rowstream._strategy)."""

    name: str

    async def open(self) -> None:
        """Connect and start reading; errors are already translated."""

    async def fetch(self, size: int) -> list[Any]:
        """The next ``size`` rows or fewer; an empty list at the end."""

    def keys(self) -> list[str]:
        """The names of the result's columns."""

    async def aclose(self) -> None:
        """Release everything: cursor, transaction, connection. Never raises."""


class RowStream(KeyedStream):
    """An open stream; use it as ``async with rowstream.stream(...) as rows``.

    ``async for item in rows`` gives one item at a time (an ORM instance for a single-entity
    select, a Row otherwise), reading a batch at a time, not a row; ``rows.batches()`` gives
    lists; ``rows.stats`` tells how much was read.
    """

    def __init__(
        self,
        source: Source,
        statement: Statement,
        *,
        batch_rows: int | None = None,
        batch_bytes: int | None = DEFAULT_BATCH_BYTES,
        strategy: StrategyName = "auto",
        key: KeyArg = None,
        start_after: tuple[Any, ...] | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
        infinity: Infinity = DEFAULT_INFINITY,
        zero_dates: ZeroDates = DEFAULT_ZERO_DATES,
    ) -> None:
        check_stream_options(strategy, retries, backoff)
        self._infinity = check_infinity(infinity)
        self._zero_dates = check_zero_dates(zero_dates)
        self._plan: Plan = make_plan(statement)
        self._sizer = BatchSizer(batch_rows=batch_rows, batch_bytes=batch_bytes)
        self._source_arg = source
        self._strategy_name = strategy
        self._key_arg = key
        self._key: Key | None = None
        self._last_key = tuple(start_after) if start_after is not None else None
        self._retries = retries
        self._backoff = backoff
        self._read_timeout = check_read_timeout(read_timeout)
        self._watchdog: Watchdog | None = None
        self._resumable = False
        self._source: ResolvedSource | None = None
        self._strategy: Strategy | None = None
        self._setup: tuple[str, ...] = ()
        self._cursor_statement = self._plan.statement
        self._state: Literal["new", "open", "closed"] = "new"
        self._done = False
        self._hits = 0
        self._collections: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        self.stats = Stats()

    @property
    def orm(self) -> bool:
        """True when items are ORM instances."""
        return self._plan.scalars

    @property
    def dialect(self) -> str:
        """The database's dialect name (``postgresql``, ``mysql``, ``mariadb``, ``sqlite``)."""
        self._check_open()
        assert self._source is not None
        return self._source.dialect

    def keys(self) -> list[str]:
        """The names of the result's columns."""
        self._check_open()
        assert self._strategy is not None
        return self._strategy.keys()

    async def __aenter__(self) -> RowStream:
        if self._state != "new":
            raise RowstreamError("a stream can be opened once: call rowstream.stream() again")
        self._state = "open"
        self.stats.started = time.perf_counter()
        # Held until the stream closes: building the rows and walking them one by one (each
        # step of an async iterator allocates) would otherwise run the collector over the
        # live batch again and again. See BATCH_GC_THRESHOLD.
        self._collections = fewer_collections()
        self._collections.__enter__()
        self._hits = hits()
        try:
            self._source = resolve_source(self._source_arg)
            # Before anything is sent, with the statement as this database will get it:
            # rowstream only reads (see rowstream._guard).
            check_statement(self._plan.statement, self._source.engine.dialect)
            # Planning (the key's catalog check, the pooler probe) waits on the server too.
            planning = Watchdog(
                self._source.engine,
                self._read_timeout,
                check_liveness=False,
                where=mask_url(self._source.engine.url),
            )
            async with planning.watch(lambda: None):
                self._strategy = await self._choose_strategy(self._source)
            self.stats.strategy = self._strategy.name
            try:
                await self._strategy.open()
            except ConnectionLostError as exc:
                # A drop while the query starts is resumed like one in the middle.
                if not self._resumable or self._source.borrowed is not None:
                    raise
                await self._resume(exc, 1)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the cursor, roll back, return the connection; safe to call twice."""
        if self._state == "closed":
            return
        self._state = "closed"
        self.stats.finished = time.perf_counter()
        self._collections.__exit__(None, None, None)
        if self._strategy is not None:
            await shielded(self._strategy.aclose())
        if self._source is not None:
            await shielded(self._source.aclose())

    async def _choose_strategy(self, source: ResolvedSource) -> Strategy:
        """Pick the strategy and settle the key; nothing is read yet."""
        plan, name = self._plan, self._strategy_name
        self._key, why = await resolve_key(source, plan, self._key_arg)
        key = self._key
        if key is None and (name == "keyset" or self._last_key is not None):
            raise StreamKeyError(
                f"no usable key ({why}): keyset paging and start_after need one; the primary "
                "key of the single table selected is used by default, or pass key= naming "
                "unique, non-null selected columns"
            )
        statement = plan.statement
        path = PathInfo()
        if source.dialect == "postgresql" and source.borrowed is None:
            try:
                path = await inspect_path(source.engine)
            except Exception as exc:
                raise_translated(exc, url=source.engine.url, connecting=True)
        self._setup = POOLED_SETUP if path.pooler else ()
        # Behind a pooler the backend serving a query is unknown: no liveness check there.
        self._watchdog = Watchdog(
            source.engine,
            self._read_timeout,
            check_liveness=not path.pooler,
            where=mask_url(source.engine.url),
        )
        can_page = (
            key is not None and isinstance(statement, Select) and pageable(statement, key) is None
        )
        if name == "auto":
            wants_keyset = path.wants_short_transactions or (
                plan.side_queries and source.dialect in MYSQL
            )
            name = "keyset" if can_page and wants_keyset else "cursor"
        if name == "keyset":
            assert key is not None
            self._resumable = True
            return self._keyset(source, key)
        # A cursor resumes by key when its rows come in key order: ask for that order when
        # the statement has none (any order is then ours to choose).
        if key is not None and can_page and isinstance(statement, Select):
            if not statement._order_by_clauses:
                statement = statement.order_by(*key.columns)
            self._cursor_statement = statement
            self._resumable = True
        else:
            self._cursor_statement = statement
        return self._cursor(source)

    def _keyset(self, source: ResolvedSource, key: Key) -> Strategy:
        return KeysetStrategy(
            source,
            self._plan,
            key,
            after=self._last_key,
            setup=self._setup,
            watchdog=self._watchdog,
            infinity=self._infinity,
            zero_dates=self._zero_dates,
        )

    def _cursor(self, source: ResolvedSource) -> Strategy:
        statement = self._cursor_statement
        if self._key is not None and self._last_key is not None and isinstance(statement, Select):
            statement = statement.where(self._key.after(self._last_key, dialect=source.dialect))
        return CursorStrategy(
            source,
            self._plan,
            statement=statement,
            setup=self._setup,
            watchdog=self._watchdog,
            infinity=self._infinity,
            zero_dates=self._zero_dates,
        )

    def _check_open(self) -> None:
        if self._state == "new":
            raise RowstreamError(
                "the stream is not open: use it as `async with rowstream.stream(...) as rows:`"
            )
        if self._state == "closed":
            raise RowstreamError(
                "the stream is closed: read it inside its `async with rowstream.stream(...)` block"
            )

    async def _next_batch(self) -> list[Any]:
        self._check_open()
        if self._done:
            return []
        size = self._sizer.next_rows()
        attempt = 0
        while True:
            assert self._strategy is not None
            try:
                batch = await self._strategy.fetch(size)
                break
            except ConnectionLostError as exc:
                attempt += 1
                await self._resume(exc, attempt)
        if hits() != self._hits:
            # A date or timestamp Python cannot hold was read (rowstream._temporal; a MariaDB
            # zero date: rowstream._zerodates): rare, so batches are searched only from then
            # on (the count is not reset: a driver may decode rows a batch or more before they
            # are delivered).
            error = refusal(batch, self._strategy.keys())
            if error is not None:
                raise error
        if not batch:
            self._done = True
            return batch
        stats = self.stats
        stats.rows += len(batch)
        stats.batches += 1
        stats.bytes += self._sizer.observe(batch)
        if self._key is not None:
            self._last_key = self._key.of(batch[-1])
        return batch

    async def _resume(self, lost: ConnectionLostError, attempt: int) -> None:
        """Reconnect with backoff and go on after the last key delivered."""
        source, old = self._source, self._strategy
        assert source is not None and old is not None
        if not self._resumable:
            why = (
                "it has no key"
                if self._key is None
                else "its rows are not read in key order (order it by its key, or drop order_by())"
            )
            raise ResumeError(
                f"the connection dropped and the stream cannot resume: {why}", last_key=None
            ) from lost
        if source.borrowed is not None:
            raise ResumeError(
                "the connection dropped and the stream cannot resume on a borrowed "
                "connection: pass the engine or a URL instead"
            ) from lost
        await shielded(old.aclose())
        while True:
            if attempt > self._retries:
                raise ResumeError(
                    f"the connection dropped and {self._retries} reconnects failed; "
                    "check the server and run the stream again with start_after=last_key",
                    last_key=self._last_key,
                ) from lost
            await sleep(backoff_delay(self._backoff, attempt))
            self.stats.reconnects += 1
            if old.name == "keyset" and self._key is not None:
                strategy = self._keyset(source, self._key)
            else:
                strategy = self._cursor(source)
            try:
                await strategy.open()
            except SourceError as exc:
                await shielded(strategy.aclose())
                if not isinstance(exc, ConnectionLostError):
                    exc = ConnectionLostError(str(exc))
                lost = exc
                attempt += 1
                continue
            self._strategy = strategy
            return

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Yield the rows in lists, each about ``batch_bytes`` large (or ``batch_rows`` long)."""
        while batch := await self._next_batch():
            yield batch
            # Let go of the batch before the next one is read: with 50 MB rows, each batch
            # kept alive through the next fetch is 50 MB more at the peak.
            del batch

    async def _items(self) -> AsyncIterator[Any]:
        while batch := await self._next_batch():
            for item in batch:
                yield item
            del batch, item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items()


def stream(
    source: Source,
    statement: Statement,
    *,
    batch_rows: int | None = None,
    batch_bytes: int | None = DEFAULT_BATCH_BYTES,
    strategy: StrategyName = "auto",
    key: KeyArg = None,
    start_after: tuple[Any, ...] | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    infinity: Infinity = DEFAULT_INFINITY,
    zero_dates: ZeroDates = DEFAULT_ZERO_DATES,
) -> RowStream:
    """Stream the rows of ``statement`` from ``source`` with flat memory.

    ``source`` is a URL string (``postgresql://``, ``mysql://``, ``mariadb://``,
    ``sqlite:///path``), an AsyncEngine, an AsyncConnection or an AsyncSession (whose engine
    lends a connection; the session itself stays usable). The stream runs in a transaction on a
    connection of its own, which is rolled back and returned on every exit path.

    ``strategy``: ``"cursor"`` reads one server-side cursor in one transaction; ``"keyset"``
    reads pages by key, each in its own short transaction; ``"auto"`` (the default) takes the
    cursor unless a pooler or proxy is in the path (PgBouncer), the server ends idle
    transactions (``idle_in_transaction_session_timeout``), or MySQL must serve
    selectinload()'s queries, and a key allows paging.

    ``key`` defaults to the primary key of the single table selected; it must be unique and
    non-null. With a key, the stream resumes after a dropped connection (up to ``retries``
    reconnects, waiting ``backoff`` seconds, doubling) right after the last key delivered, and
    ``start_after`` starts it after a given key. Unordered statements are then read in key order.

    ``read_timeout`` (seconds, default 30; None for no bound) bounds every wait for the server:
    a silent network becomes a drop (resumed like any other) instead of a hang. When it
    expires, rowstream first asks the server from a fresh connection whether it is still
    working on the query (a big sort before the first row) and then waits on; behind a pooler
    it cannot ask, so pass a larger value (or None) for statements slow to return rows there.

    ``infinity`` says what a PostgreSQL ``date``, ``timestamp`` or ``timestamptz`` that
    Python's cannot hold (``infinity``, ``-infinity``, a BC date, a year after 9999) becomes:
    ``"error"`` (the default) stops the stream naming the column and the value; ``"null"``
    gives None, ``"clamp"`` the type's largest or smallest value, ``"text"`` PostgreSQL's text
    (``'infinity'``). A real 9999-12-31 always comes as itself. See docs/types-postgresql.md.

    ``zero_dates`` says what a MariaDB/MySQL zero date in a ``DATE``, ``DATETIME`` or
    ``TIMESTAMP`` column becomes (``0000-00-00``, ``2024-00-15``: no date, which the drivers
    would hand back as a ``str``): ``"refuse"`` (the default) stops the stream naming the
    column and the value; ``"null"`` gives None; ``"text"`` gives the server's text as a
    ``str`` (``'0000-00-00'``, ``'0000-00-00 00:00:00.000000'`` for a ``DATETIME(6)``). Real
    dates and NULLs come as themselves. PostgreSQL and SQLite have no zero dates: there the
    option is accepted and has no effect. See docs/types-mariadb.md.

    Example::

        async with rowstream.stream(engine, select(Order).where(Order.status == "paid")) as rows:
            async for order in rows:
                total += order.total_cents
        print(rows.stats.rows, rows.stats.rows_per_second)
    """
    return RowStream(
        source,
        statement,
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        strategy=strategy,
        key=key,
        start_after=start_after,
        retries=retries,
        backoff=backoff,
        read_timeout=read_timeout,
        infinity=infinity,
        zero_dates=zero_dates,
    )
