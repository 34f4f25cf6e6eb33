"""rowstream for synchronous code: Celery tasks, threads, scripts.

The same stream and the same ``process()`` as the async API, on a sync Engine, Connection or
Session (or a URL), with a server-side cursor per dialect:

- PostgreSQL through psycopg 3: a named cursor (``DECLARE ... CURSOR`` / ``FETCH FORWARD n``)
  inside the stream's transaction;
- MySQL/MariaDB through PyMySQL: an unbuffered ``SSCursor``;
- SQLite through sqlite3, which steps its statement as rows are fetched.

Planning, batch sizing, keys, error translation, the report and checkpoint stores are the
async side's own (:mod:`rowstream._plan`, ``_sizing``, ``_keys``, ``_translate``,
``_process``, ``_checkpoint``); only the I/O differs.

Example::

    from rowstream import sync

    with sync.stream(engine, select(Invoice).where(Invoice.status == "ready")) as invoices:
        for invoice in invoices:
            ...
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Literal, NoReturn, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.selectable import Select

from ._checkpoint import CheckpointStore, Watermark
from ._convert import conversion_error, first_failure, raw_window, unlocated
from ._cursor import detach
from ._exceptions import (
    ConfigurationError,
    ConnectionLostError,
    QueryError,
    RowstreamError,
    StreamKeyError,
)
from ._guard import check_statement
from ._keys import Key, KeyArg, KeyedStream, resolve_key
from ._keyset import pageable
from ._pipeline import (
    BUFFER_BATCHES,
    CANCEL_GRACE,
    Handler,
    Item,
    PipelineStats,
    handler_timed_out,
)
from ._plan import Plan, Statement, make_plan
from ._process import (
    DEFAULT_CONCURRENCY,
    Bookkeeper,
    OnError,
    ProcessReport,
    check_options,
)
from ._readonly import SyncReadOnlyTransaction
from ._sizing import DEFAULT_BATCH_BYTES, FIRST_BATCH_ROWS, BatchSizer
from ._source import APPLICATION_NAME, ResolvedSource, mask_url, split_url
from ._stream import Stats
from ._translate import is_conversion_error, raise_translated
from ._watchdog import (
    DEFAULT_READ_TIMEOUT,
    LIBPQ_KEEPALIVE,
    SyncWatchdog,
    check_read_timeout,
    set_keepalive,
    sync_socket_fileno,
)

__all__ = ["SyncRowStream", "create_engine", "process", "stream"]

#: The synchronous driver each backend gets when a URL names none (or names an async one).
SYNC_DRIVERS = {
    "postgresql": "psycopg",
    "mysql": "pymysql",
    "mariadb": "pymysql",
    "sqlite": "pysqlite",
}
_ASYNC_DRIVERS = {"asyncpg", "psycopg_async", "asyncmy", "aiomysql", "aiosqlite"}
_MYSQL = {"mysql", "mariadb"}

SyncSource = str | URL | sa.Engine | sa.Connection | Session


def resolve_url(url: str | URL) -> URL:
    """Parse ``url`` and give it a synchronous driver (psycopg, PyMySQL or sqlite3).

    >>> resolve_url("postgresql+asyncpg://app@db/shop").drivername
    'postgresql+psycopg'
    """
    parsed, backend, driver = split_url(url)
    if not driver or driver in _ASYNC_DRIVERS:
        driver = SYNC_DRIVERS[backend]
    return parsed.set(drivername=f"{backend}+{driver}")


def create_engine(url: str | URL, **kwargs: Any) -> sa.Engine:
    """Create a synchronous Engine with defaults that are safe for streaming.

    - psycopg: no server-side prepared statements (``prepare_threshold=None``), so it works
      through a transaction-pooling PgBouncer; ``application_name=rowstream``.
    - every connection's session time zone is UTC; ``pool_pre_ping`` on.

    Keyword arguments go to SQLAlchemy's ``create_engine`` and win; ``connect_args`` merge.

    Example::

        engine = rowstream.sync.create_engine("postgresql://app@db/shop")
        with rowstream.sync.stream(engine, select(Order)) as orders:
            ...
    """
    resolved = resolve_url(url)
    connect_args: dict[str, Any] = {}
    if resolved.get_driver_name() == "psycopg":
        connect_args = {
            "prepare_threshold": None,
            "application_name": APPLICATION_NAME,
            **LIBPQ_KEEPALIVE,
        }
    connect_args.update(kwargs.pop("connect_args", {}))
    options: dict[str, Any] = {"pool_pre_ping": True}
    options.update(kwargs)
    try:
        engine = sa.create_engine(resolved, connect_args=connect_args, **options)
    except (ArgumentError, NoSuchModuleError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot create an engine for {mask_url(resolved)!r}: {exc}"
        ) from None
    statement = {
        "postgresql": "SET TIME ZONE 'UTC'",
        "mysql": "SET time_zone = '+00:00'",
        "mariadb": "SET time_zone = '+00:00'",
    }.get(engine.dialect.name)

    @event.listens_for(engine, "connect")
    def _keepalive(dbapi_connection: Any, _record: Any) -> None:
        set_keepalive(getattr(dbapi_connection, "_sock", None))  # PyMySQL; libpq has its own

    if statement is not None:

        @event.listens_for(engine, "connect")
        def _utc(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(statement)
            finally:
                cursor.close()

    return engine


def sync_engine_for(source: Any) -> tuple[sa.Engine, bool]:
    """A synchronous engine for ``source`` (URL, Engine, Connection, Session, or an async
    engine/connection/session, whose URL is reused with a sync driver), and whether the caller
    owns it (must dispose of it)."""
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

    if isinstance(source, (str, URL)):
        return create_engine(source, pool_size=1, max_overflow=1), True
    if isinstance(source, sa.Engine):
        return source, False
    if isinstance(source, sa.Connection):
        return source.engine, False
    if isinstance(source, Session) and source.bind is not None:
        return sync_engine_for(source.bind)
    if isinstance(source, AsyncSession) and source.bind is not None:
        return sync_engine_for(source.bind)
    if isinstance(source, (AsyncEngine, AsyncConnection)):
        engine = source if isinstance(source, AsyncEngine) else source.engine
        if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
            raise ConfigurationError(
                "an in-memory SQLite database cannot hold a checkpoint table: use a file"
            )
        return create_engine(engine.url, pool_size=1, max_overflow=1), True
    raise ConfigurationError(
        f"cannot keep a checkpoint in a {type(source).__name__}: pass a database URL or an engine"
    )


# -- the stream ------------------------------------------------------------------------------


class SyncRowStream(KeyedStream):
    """An open synchronous stream; use it as ``with rowstream.sync.stream(...) as rows``.

    ``for item in rows`` gives one item at a time (an ORM instance for a single-entity select,
    a Row otherwise); ``rows.batches()`` gives lists; ``rows.stats`` tells how much was read;
    ``rows.key_columns`` and ``rows.key_of(item)`` give the key, as on the async stream.
    """

    def __init__(
        self,
        source: SyncSource,
        statement: Statement,
        *,
        batch_rows: int | None = None,
        batch_bytes: int | None = DEFAULT_BATCH_BYTES,
        key: KeyArg = None,
        start_after: tuple[Any, ...] | None = None,
        read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    ) -> None:
        self._watchdog = SyncWatchdog(check_read_timeout(read_timeout))
        self._plan: Plan = make_plan(statement)
        self._sizer = BatchSizer(batch_rows=batch_rows, batch_bytes=batch_bytes)
        self._source_arg = source
        self._key_arg = key
        self._key: Key | None = None
        self._last_key = tuple(start_after) if start_after is not None else None
        self._engine: sa.Engine | None = None
        self._owns_engine = False
        self._borrowed: sa.Connection | None = None
        self._read: Any = None  # the statement the cursor reads
        self._conn: sa.Connection | None = None
        self._trans: SyncReadOnlyTransaction | None = None
        self._session: Session | None = None
        self._result: Any = None
        self._keys: list[str] = []
        self._previous: list[Any] = []
        self._state: Literal["new", "open", "closed"] = "new"
        self._done = False
        self.stats = Stats(strategy="cursor")

    # -- what the caller sees ------------------------------------------------------------

    @property
    def orm(self) -> bool:
        """True when items are ORM instances."""
        return self._plan.scalars

    @property
    def dialect(self) -> str:
        """The database's dialect name (``postgresql``, ``mysql``, ``mariadb``, ``sqlite``)."""
        self._check_open()
        assert self._engine is not None
        return self._engine.dialect.name

    def keys(self) -> list[str]:
        """The names of the result's columns."""
        self._check_open()
        return self._keys

    def _socket(self) -> int | None:
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            return None
        return sync_socket_fileno(conn.connection.dbapi_connection)

    def _lost(self, exc: Exception) -> NoReturn:
        assert self._engine is not None
        if self._watchdog.fired:
            raise ConnectionLostError(self._watchdog.message(mask_url(self._engine.url))) from exc
        raise_translated(exc, url=self._engine.url)

    def batches(self) -> Iterator[list[Any]]:
        """Yield the rows in lists, each about ``batch_bytes`` large (or ``batch_rows`` long)."""
        while batch := self._next_batch():
            yield batch
            del batch  # before the next fetch: see RowStream.batches()

    def __iter__(self) -> Iterator[Any]:
        while batch := self._next_batch():
            yield from batch
            del batch

    # -- opening and closing -------------------------------------------------------------

    def __enter__(self) -> SyncRowStream:
        if self._state != "new":
            raise RowstreamError("a stream can be opened once: call rowstream.sync.stream() again")
        self._state = "open"
        self.stats.started = time.perf_counter()
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _resolve(self) -> None:
        source = self._source_arg
        if isinstance(source, Session):
            bind = source.bind
            if bind is None:
                raise ConfigurationError(
                    "the Session has no bind: create it with sessionmaker(engine) or pass the "
                    "engine to rowstream.sync instead"
                )
            source = bind
        if isinstance(source, (str, URL)):
            self._engine, self._owns_engine = create_engine(source, poolclass=NullPool), True
        elif isinstance(source, sa.Engine):
            self._engine = source
        elif isinstance(source, sa.Connection):
            self._engine, self._borrowed = source.engine, source
        else:
            from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

            if isinstance(source, (AsyncEngine, AsyncConnection, AsyncSession)):
                raise ConfigurationError(
                    f"{type(source).__name__} is asynchronous: use rowstream.stream() with it, "
                    "or pass a sync Engine, Session or URL to rowstream.sync.stream()"
                )
            raise ConfigurationError(
                f"cannot stream from a {type(source).__name__}: pass a database URL string, "
                "an Engine, a Connection or a Session"
            )

    def _open(self) -> None:
        self._resolve()
        engine = self._engine
        assert engine is not None
        dialect = engine.dialect.name
        # Before anything is sent: rowstream only reads (see rowstream._guard).
        check_statement(self._plan.statement, engine.dialect)
        if self._plan.side_queries and dialect in _MYSQL:
            from ._exceptions import UnsupportedQueryError

            raise UnsupportedQueryError(
                "on MySQL/MariaDB a server-side cursor cannot share its connection with the "
                "queries selectinload() sends: load the related objects after the stream"
            )
        if self._borrowed is not None:
            self._conn = self._borrowed
        else:
            try:
                self._conn = engine.connect()
            except Exception as exc:
                raise_translated(exc, url=engine.url, connecting=True)
        conn = self._conn
        assert conn is not None
        try:
            # First, so that the key's catalog lookups do not begin a transaction of their
            # own (SQLAlchemy's autobegin) that would not be read-only.
            if not conn.in_transaction():
                self._trans = SyncReadOnlyTransaction(conn)
            self._key = _resolve_key(conn, self._plan, self._key_arg)
            statement = self._statement(dialect)
            self._read = statement
            statement = statement.execution_options(yield_per=FIRST_BATCH_ROWS)
            with self._watchdog.watch(self._socket()):
                if self._plan.orm:
                    self._session = Session(bind=conn, autoflush=False, expire_on_commit=False)
                    result: Any = self._session.execute(statement)
                else:
                    result = conn.execute(statement)
            self._keys = list(result.keys())
            self._result = result.scalars() if self._plan.scalars else result
        except RowstreamError:
            raise
        except Exception as exc:
            self._lost(exc)

    def _statement(self, dialect: str) -> Any:
        statement = self._plan.statement
        key = self._key
        if key is None:
            if self._last_key is not None:
                raise StreamKeyError(
                    "no usable key: start_after needs one; the primary key of the single table "
                    "selected is used by default, or pass key= naming unique, non-null columns"
                )
            return statement
        assert isinstance(statement, Select)
        refusal = pageable(statement, key)
        if refusal is not None:
            if self._last_key is not None:
                raise StreamKeyError(f"cannot start this statement after a key: {refusal}")
            return statement
        # Rows in key order, so that a key says where the stream is.
        if not statement._order_by_clauses:
            statement = statement.order_by(*key.columns)
        if self._last_key is not None:
            statement = statement.where(key.after(self._last_key, dialect=dialect))
        return statement

    def close(self) -> None:
        """Close the cursor, roll back, return the connection; safe to call twice."""
        if self._state == "closed":
            return
        self._state = "closed"
        self.stats.finished = time.perf_counter()
        self._watchdog.close()
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                try:
                    self._release(conn)
                except Exception:
                    # In an unknown state: drop the connection rather than pool it.
                    if self._borrowed is None:
                        with contextlib.suppress(Exception):
                            conn.invalidate()
                        with contextlib.suppress(Exception):
                            conn.close()
        finally:
            if self._owns_engine and self._engine is not None:
                self._engine.dispose()

    def _release(self, conn: sa.Connection) -> None:
        owned = self._borrowed is None
        assert self._engine is not None
        if (
            owned
            and not self._done
            and self._result is not None
            and self._engine.dialect.name in _MYSQL
        ):
            # Closing an unbuffered result reads every remaining row; on an early exit
            # close the socket instead, which also stops the query on the server. PyMySQL's
            # result would still try to read the rest when garbage-collected (from a closed
            # socket, raising in __del__): tell it there is nothing left to read.
            with contextlib.suppress(Exception):
                result = getattr(conn.connection.dbapi_connection, "_result", None)
                if result is not None and getattr(result, "unbuffered_active", False):
                    result.unbuffered_active = False
            conn.invalidate()
            conn.close()
            return
        if self._result is not None:
            self._result.close()
        if self._session is not None:
            self._session.close()
        if self._trans is not None and self._trans.is_active:
            self._trans.rollback()
        if owned:
            conn.close()

    def _check_open(self) -> None:
        if self._state == "new":
            raise RowstreamError(
                "the stream is not open: use it as `with rowstream.sync.stream(...) as rows:`"
            )
        if self._state == "closed":
            raise RowstreamError(
                "the stream is closed: read it inside its `with rowstream.sync.stream(...)` block"
            )

    def _conversion_error(self, exc: Exception, size: int) -> QueryError:
        """Name the column and value a row's conversion failed on (see rowstream._convert)."""
        engine = self._engine
        assert engine is not None
        fallback = unlocated(exc, engine.url)
        window = raw_window(self._read, engine.dialect, skip=self.stats.rows, limit=size)
        # Read on a connection of its own: an unbuffered MySQL result holds this one.
        if window is None or (self._borrowed is not None and engine.dialect.name in _MYSQL):
            return fallback
        try:
            if self._borrowed is not None:
                rows = self._borrowed.execute(window.statement).all()
            else:
                with engine.connect() as conn:
                    rows = conn.execute(window.statement).all()
        except Exception:
            return fallback  # the diagnosis is a bonus: the error stands without it
        return conversion_error(first_failure(rows, window), fallback)

    def _next_batch(self) -> list[Any]:
        self._check_open()
        if self._done:
            return []
        size = self._sizer.next_rows()
        if self._session is not None and self._previous:
            # Earlier batches belong to the caller; the stream's session must not keep them.
            # Not expunge_all(): it would pull the identity map from under the result.
            entities = (
                self._previous if self._plan.scalars else [e for row in self._previous for e in row]
            )
            detach(self._session, entities)
            self._previous = []
        try:
            with self._watchdog.watch(self._socket()):
                batch = list(self._result.fetchmany(size))
        except Exception as exc:
            if is_conversion_error(exc):
                raise self._conversion_error(exc, size) from exc
            self._lost(exc)
        if len(batch) < size:
            self._done = True
        if self._session is not None:
            self._previous = batch
        if not batch:
            return batch
        stats = self.stats
        stats.rows += len(batch)
        stats.batches += 1
        stats.bytes += self._sizer.observe(batch)
        if self._key is not None:
            self._last_key = self._key.of(batch[-1])
        return batch


def _resolve_key(conn: sa.Connection, plan: Plan, key: KeyArg) -> Key | None:
    """The stream's key, decided by the async side's own :func:`rowstream._keys.resolve_key`.

    That coroutine only ever waits for ``borrowed.run_sync(fn, ...)`` (a catalog lookup);
    given a connection whose ``run_sync`` runs ``fn`` at once on this sync connection, it
    never suspends, so it is driven to its end here without an event loop. One set of key
    rules for both APIs, not two that drift apart.
    """
    source = cast(ResolvedSource, _InlineSource(conn))
    coroutine = resolve_key(source, plan, key)
    try:
        coroutine.send(None)
    except StopIteration as done:
        found, _why_none = cast(tuple[Key | None, str | None], done.value)
        return found
    coroutine.close()
    raise RowstreamError("internal error: key resolution waited for async I/O in rowstream.sync")


def _key_columns(source: SyncSource, statement: Statement, key: KeyArg) -> tuple[str, ...] | None:
    """The names of the key a stream of ``statement`` would have, without running it."""
    probe = SyncRowStream(source, statement, key=key)
    probe._resolve()
    engine = probe._engine
    assert engine is not None
    try:
        conn = probe._borrowed if probe._borrowed is not None else engine.connect()
        try:
            found = _resolve_key(conn, probe._plan, key)
        finally:
            if probe._borrowed is None:
                conn.close()
    finally:
        if probe._owns_engine:
            engine.dispose()
    return found.names if found is not None else None


class _InlineConnection:
    def __init__(self, conn: sa.Connection) -> None:
        self._conn = conn

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self._conn, *args)


class _InlineSource:
    """Just enough of a ResolvedSource for key resolution on a sync connection."""

    def __init__(self, conn: sa.Connection) -> None:
        self.borrowed = _InlineConnection(conn)
        self.engine = conn.engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name


def stream(
    source: SyncSource,
    statement: Statement,
    *,
    batch_rows: int | None = None,
    batch_bytes: int | None = DEFAULT_BATCH_BYTES,
    key: KeyArg = None,
    start_after: tuple[Any, ...] | None = None,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> SyncRowStream:
    """Stream the rows of ``statement`` with flat memory, in synchronous code.

    ``source`` is a URL string, an Engine, a Connection or a Session (whose bind lends a
    connection). The stream runs in a transaction on a connection of its own, rolled back and
    returned on every exit path. ``key`` and ``start_after`` work as in
    :func:`rowstream.stream`: with a key, unordered statements are read in key order.
    ``read_timeout`` (seconds, default 30, None for no bound) bounds each wait for the
    database: when it runs out the connection is abandoned and ``ConnectionLostError`` says
    so (the sync face does not resume: run it again with ``start_after=rows.last_key``).

    Example::

        with rowstream.sync.stream(engine, select(Order).where(Order.status == "paid")) as rows:
            for batch in rows.batches():
                write(batch)
        print(rows.stats.rows)
    """
    return SyncRowStream(
        source,
        statement,
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        key=key,
        start_after=start_after,
        read_timeout=read_timeout,
    )


# -- process ---------------------------------------------------------------------------------


class _ThreadPipeline:
    """The thread-pool twin of :class:`rowstream._pipeline.Pipeline`.

    The calling thread reads the stream and keeps up to ``BUFFER_BATCHES + 1`` batches ready
    while ``concurrency`` worker threads run the handler; workers report back through a queue
    and the calling thread does all the bookkeeping (report, checkpoint, progress), so none of
    it needs a lock.
    """

    def __init__(
        self,
        batches: Iterator[Item[Any]],
        handler: Handler,
        *,
        concurrency: int,
        ordered: bool,
        stop_on_error: bool,
        books: Bookkeeper,
        handler_timeout: float | None = None,
    ) -> None:
        self._batches = batches
        self._handler_timeout = handler_timeout
        #: When each running batch's handler must be done (with a handler_timeout).
        self._deadlines: dict[int, tuple[float, Item[Any]]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._handler = handler
        self._concurrency = concurrency
        self._ordered = ordered
        self._stop_on_error = stop_on_error
        self._books = books
        self._ready: deque[Item[Any]] = deque()
        self._running: dict[int, Future[None]] = {}
        self._finished: dict[int, tuple[Item[Any], BaseException | None]] = {}
        self._next_to_settle = 0
        self._results: queue.SimpleQueue[tuple[Item[Any], BaseException | None]] = (
            queue.SimpleQueue()
        )
        self._exhausted = False
        self._error: BaseException | None = None
        self.stats = PipelineStats()

    def _new_executor(self) -> ThreadPoolExecutor:
        self._executor = ThreadPoolExecutor(
            max_workers=self._concurrency, thread_name_prefix="rowstream-handler"
        )
        return self._executor

    def run(self, save: Callable[[], None]) -> None:
        self._new_executor()
        try:
            self._loop(save)
        finally:
            # Handlers already running cannot be interrupted: give them a moment, keep what
            # finished (so the checkpoint counts it), and leave the rest to finish unseen.
            deadline = time.monotonic() + CANCEL_GRACE
            while self._running and time.monotonic() < deadline:
                try:
                    item, error = self._results.get(timeout=deadline - time.monotonic())
                except queue.Empty:
                    break
                if self._running.pop(item.seq, None) is not None and error is None:
                    self._finish(item, None)
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
        if self._error is not None:
            raise self._error

    def _loop(self, save: Callable[[], None]) -> None:
        while self._error is None:
            self._collect(block=False)
            if self._error is not None:
                break
            if self._ready and self._can_start(self._ready[0].seq):
                self._start(self._ready.popleft())
            elif not self._exhausted and len(self._ready) <= BUFFER_BATCHES:
                # Read ahead while the handlers work (the database and the handlers overlap).
                item = next(self._batches, None)
                if item is None:
                    self._exhausted = True
                    continue
                self._ready.append(item)
                held = len(self._ready) + len(self._running)
                self.stats.peak_batches = max(self.stats.peak_batches, held)
                self.stats.peak_queue = max(self.stats.peak_queue, len(self._ready) - 1)
            elif self._running:
                self._collect(block=True)
            else:
                break
            save()
        save()

    def _can_start(self, seq: int) -> bool:
        if len(self._running) >= self._concurrency:
            return False
        return not self._ordered or seq < self._next_to_settle + self._concurrency

    def _start(self, item: Item[Any]) -> None:
        executor = self._executor or self._new_executor()
        results = self._results
        handler = self._handler

        def work() -> None:
            error: BaseException | None = None
            try:
                handler(item.batch)
            except BaseException as exc:
                # Reported whatever it is (SystemExit too): the calling thread waits for it.
                error = exc
            results.put((item, error))

        self._running[item.seq] = executor.submit(work)
        if self._handler_timeout is not None:
            self._deadlines[item.seq] = (time.monotonic() + self._handler_timeout, item)
        self.stats.peak_running = max(self.stats.peak_running, len(self._running))

    def _wait(self) -> float | None:
        """How long a blocking wait for a result may last: until the next handler deadline."""
        if not self._deadlines:
            return None
        first = min(deadline for deadline, _item in self._deadlines.values())
        return max(0.0, first - time.monotonic())

    def _time_out(self) -> None:
        """Fail the batches whose handler is past its deadline; their threads run on."""
        assert self._handler_timeout is not None
        now = time.monotonic()
        late = [item for deadline, item in self._deadlines.values() if deadline <= now]
        if not late:
            return
        # A thread cannot be stopped: later batches get a fresh pool.
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        for item in late:
            error = handler_timed_out(item, self._handler_timeout, threads=True)
            self._results.put((item, error))

    def _collect(self, *, block: bool) -> None:
        try:
            item, error = self._results.get(block=block, timeout=self._wait() if block else None)
        except queue.Empty:
            if block and self._handler_timeout is not None:
                self._time_out()
            return
        while True:
            if self._running.pop(item.seq, None) is None:
                # A handler that finished after its batch had already timed out: dropped.
                try:
                    item, error = self._results.get_nowait()
                except queue.Empty:
                    return
                continue
            self._deadlines.pop(item.seq, None)
            item.batch = []
            if error is not None and (self._stop_on_error or not isinstance(error, Exception)):
                self._error = error
                return
            self._finish(item, error)
            try:
                item, error = self._results.get_nowait()
            except queue.Empty:
                return

    def _finish(self, item: Item[Any], error: BaseException | None) -> None:
        if not self._ordered:
            self._books.settle(item, error)
            return
        self._finished[item.seq] = (item, error)
        while self._next_to_settle in self._finished:
            done, done_error = self._finished.pop(self._next_to_settle)
            self._next_to_settle += 1
            self._books.settle(done, done_error)


def process(
    source: SyncSource,
    statement: Statement,
    handler: Callable[[list[Any]], Any],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    batch_rows: int | None = None,
    batch_bytes: int | None = DEFAULT_BATCH_BYTES,
    ordered: bool = False,
    on_error: OnError = "raise",
    checkpoint: CheckpointStore | None = None,
    progress: Callable[[ProcessReport], Any] | None = None,
    key: KeyArg = None,
    handler_timeout: float | None = None,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> ProcessReport:
    """Stream ``statement`` and call ``handler(batch)`` in a pool of ``concurrency`` threads.

    The semantics are those of :func:`rowstream.process`: at most ``concurrency`` batches in
    handlers and ``BUFFER_BATCHES + 1`` read ahead; ``on_error="raise"`` stops at the first
    handler error and re-raises it (handlers already running finish in the background; those
    that finish within ``CANCEL_GRACE`` seconds still count), ``"collect"`` reports failed
    batches with their keys; ``ordered`` and checkpoints (same stores, same guarantee: at most
    once per batch across clean stops, at least once across crashes) work the same way.
    Handlers never get the streaming connection: one that needs the database opens its own
    session. ``progress(report)`` runs in the calling thread. ``handler_timeout`` fails a
    batch whose handler runs longer (:class:`rowstream.HandlerTimeoutError`, handled by
    ``on_error`` like any handler error; the thread runs on in the background, its result
    dropped) and ``read_timeout`` bounds each wait for the database, as in :func:`stream`.

    Example (a Celery task)::

        @app.task
        def send_invoices() -> int:
            def send(invoices: list[Invoice]) -> None:
                billing_api.send([i.id for i in invoices])
                with Session() as session, session.begin():
                    session.execute(
                        update(Invoice).where(Invoice.id.in_([i.id for i in invoices]))
                        .values(status="sent")
                    )

            report = rowstream.sync.process(
                engine, select(Invoice).where(Invoice.status == "ready_to_send"), send,
                checkpoint=rowstream.TableCheckpoint(engine, "send-invoices"),
            )
            return report.rows
    """
    check_options(
        handler,
        concurrency=concurrency,
        on_error=on_error,
        checkpoint=checkpoint,
        progress=progress,
    )
    handler_timeout = check_read_timeout(handler_timeout, "handler_timeout")
    books = Bookkeeper(
        concurrency=concurrency, on_error=on_error, store=checkpoint, progress=progress
    )
    if checkpoint is not None:
        books.loaded = checkpoint.load()
        if books.start_after is not None:
            # Checked before the stream starts after the saved key (see rowstream.process).
            columns = _key_columns(source, statement, key)
            assert books.loaded is not None
            Watermark.check(books.loaded, columns, repr(checkpoint))

    def save() -> None:
        if checkpoint is not None:
            snapshot = books.snapshot()
            if snapshot is not None:
                checkpoint.save(snapshot)

    error: BaseException | None = None
    try:
        with stream(
            source,
            statement,
            batch_rows=batch_rows,
            batch_bytes=batch_bytes,
            key=key,
            start_after=books.start_after,
            read_timeout=read_timeout,
        ) as rows:
            books.bind(rows.key_columns, rows.key_of)
            books.sqlite = rows.dialect == "sqlite"
            pipeline = _ThreadPipeline(
                books.items(rows.batches()),
                handler,
                concurrency=concurrency,
                ordered=ordered,
                stop_on_error=on_error == "raise",
                books=books,
                handler_timeout=handler_timeout,
            )
            try:
                try:
                    pipeline.run(save)
                except BaseException as exc:
                    explained = books.explain(exc)
                    if explained is exc:
                        raise
                    raise explained from exc
                books.finish()
            except BaseException as failure:
                books.report.take_stats(pipeline.stats)
                try:
                    save()
                except Exception as save_error:
                    # The run's own error goes first; the stale checkpoint must not pass unnoticed.
                    failure.add_note(f"and the checkpoint could not be saved: {save_error}")
                raise
            books.report.take_stats(pipeline.stats)
            save()
    except BaseException as exc:
        error = exc
        raise
    finally:
        books.close(error)
    return books.report
