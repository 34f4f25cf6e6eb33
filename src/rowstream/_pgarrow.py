"""PostgreSQL to Arrow: binary COPY decoded by ADBC's PostgreSQL driver (the Parquet reader's I/O).

Data path: libpq connection (ADBC) -> ``COPY (query) TO STDOUT (FORMAT binary)``, decoded
into record batches in C (reader thread) -> cast to the export's Arrow types -> a queue of
a few batches -> ``write(batch)`` (writer thread; the export's Parquet encoder, which this
module does not know: :mod:`rowstream._readers._pgarrow` hands it over).

Why ADBC: the server sends binary COPY about twice as fast as CSV (ERRATA 10: 1.61M against
852k rows/s), and the driver decodes it without a Python object per value. Decoding and
encoding run on two threads, so the Parquet encoder works while the next batches arrive: the
export is bounded by the slower of the two, not by their sum.

The read runs in its own ``REPEATABLE READ READ ONLY`` transaction with the same output
settings as the COPY text paths; a partition's read first joins the partitioned export's
snapshot (``SET TRANSACTION SNAPSHOT``) and is refused unless its ``pg_current_snapshot()`` is
the coordinator's. N readers at once share one queue budget (``share``). Columns whose
decoded form is not the export's type are cast: ``numeric(p, s)`` is read as text and cast to
``decimal128(p, s)`` exactly (a value that does not fit fails, never rounds); values Arrow
cannot hold (infinity, instants past its range, NaN, arrays of several dimensions) are caught
by :mod:`rowstream._pgtypes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
from sqlalchemy.engine import URL

from ._exceptions import ConnectionLostError, QueryError, RowstreamError, SinkError
from ._pgcopy import SETTINGS
from ._pgtypes import PgRead
from ._source import APPLICATION_NAME
from ._strategy import shielded
from ._translate import scrub, translate
from ._watchdog import LIBPQ_KEEPALIVE, SyncWatchdog, Watchdog

if TYPE_CHECKING:
    from ._snapshot import SnapshotInfo

__all__ = ["CannotConnect", "copy_to_arrow", "libpq_conninfo"]

T = TypeVar("T")

# The driver's batch size hint. Measured on the 5M-row orders table: 1 MiB batches (about
# 8,000 rows) decode as fast as its default of 16 MiB and cost some 40 MB less peak RSS.
BATCH_BYTES = 1024 * 1024
# N readers at once (a partitioned export's jobs) each ask for 1/N of it, but not less: on
# 5M orders rows with 4 jobs, 512 KiB batches gave 256 MB peak RSS against 268 MB.
MIN_BATCH_BYTES = 256 * 1024
# Decoded batches waiting for the encoder (about 64,000 orders rows): the encoder takes a
# whole row group at a time, and the reader must not stall meanwhile. Measured on the 5M-row
# orders table: 2 batches left the reader blocked 1.5 s of 5; 8 gave 0.87-1.17M rows/s
# against 0.80-0.86M, for 6 MB more peak RSS.
QUEUE_BATCHES = 8
# ... and at most this many bytes of them: a batch holds at least one row, and eight batches
# of one 50 MB row each were 400 MB. A batch larger than this waits for an empty queue, so
# wide rows pass one at a time; narrow batches (about 1 MiB) stay bounded by their count.
QUEUE_BYTES = 16 * 1024 * 1024
# N readers at once (a partitioned export's jobs) share QUEUE_BATCHES and QUEUE_BYTES, but none
# gets fewer batches than this: decoding and encoding must still overlap.
MIN_QUEUE_BATCHES = 2

_SSL_MODES = {"true": "require", "1": "require", "false": "disable", "0": "disable"}
# Connection parameters of libpq (PostgreSQL 15's list) that a URL's query may carry.
_LIBPQ_KEYWORDS = frozenset(
    [
        "hostaddr",
        "connect_timeout",
        "client_encoding",
        "options",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "sslmode",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslpassword",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "gssencmode",
        "krbsrvname",
        "gsslib",
        "service",
        "target_session_attrs",
        "channel_binding",
        "passfile",
        "host",
        "port",
        "application_name",
        "fallback_application_name",
    ]
)


#: Seconds libpq waits for the server to answer a new connection (a silent network).
CONNECT_TIMEOUT = 10
#: Seconds between looks at whether the sync face's read deadline gave the session up.
ABANDON_POLL = 0.25


class CannotConnect(Exception):
    """ADBC could not open its connection; the caller reads another way."""


class ReadError(Exception):
    """Reading ADBC's stream failed (the connection dropped, the query was cancelled...)."""


def _read_failure(error: ReadError, url: URL) -> RowstreamError:
    """What a failed read of ADBC's stream means: a lost connection, or an error the server
    sent in the middle of the COPY (libpq's "ERROR:  ..."), which is no failure to convert."""
    translated = translate(error, url=url, resumable=False)
    if isinstance(translated, ConnectionLostError):
        return translated
    server = str(error).partition("ERROR:")[2].strip()
    if server:
        return QueryError(f"the server rejected the query: {scrub(server.splitlines()[0], url)}")
    return translated


def libpq_conninfo(url: URL) -> str:
    """A libpq connection string for ``url`` (SQLAlchemy's, any driver).

    Query parameters libpq knows are kept (``sslmode``, ``host`` for a socket directory,
    ``options``...), asyncpg's ``ssl=`` becomes ``sslmode``, the rest (driver options) is
    dropped. The string holds the password: it never goes into a message.
    """
    params: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
        "application_name": APPLICATION_NAME,
        # TCP keepalive and a user timeout, as on every connection rowstream opens; a server
        # that does not answer the connection's start within CONNECT_TIMEOUT s is an error.
        **LIBPQ_KEEPALIVE,
        "connect_timeout": CONNECT_TIMEOUT,
    }
    for key, value in url.query.items():
        text = value[-1] if isinstance(value, tuple) else value
        if key == "ssl":
            key, text = "sslmode", _SSL_MODES.get(text.lower(), text)
        if key in _LIBPQ_KEYWORDS:
            params[key] = text
    return " ".join(f"{k}={_quote(str(v))}" for k, v in params.items() if v is not None)


def _quote(value: str) -> str:
    # libpq's conninfo syntax: single quotes, with backslash and quote escaped by a backslash.
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class _Session:
    """One ADBC connection in a read-only transaction; every method blocks (run in a thread)."""

    def __init__(self, conninfo: str, batch_bytes: int | None = None) -> None:
        import adbc_driver_manager as dm
        import adbc_driver_postgresql as dp

        self.error: type[Exception] = dm.Error
        self._begun = False
        #: Given up on (a silent network, see :meth:`terminate`): nothing may wait on it.
        self.abandoned = False
        self.pid: int | None = None
        try:
            self._database = dp.connect(conninfo)
            self._connection = dm.AdbcConnection(self._database)
            self._statement = dm.AdbcStatement(self._connection)
        except dm.Error as exc:
            self.close()
            raise CannotConnect(str(exc)) from None
        hint = str(batch_bytes or BATCH_BYTES)
        self._statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": hint})

    def execute(self, sql: str) -> None:
        self._statement.set_sql_query(sql)
        self._statement.execute_update()

    def begin(self, snapshot: SnapshotInfo | None = None) -> None:
        """Start the read-only transaction, at ``snapshot`` when given (verified)."""
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self._begun = True
        if snapshot is not None:
            self._join(snapshot)
        for statement in SETTINGS:
            self.execute(statement)
        # The backend, for the read deadline's liveness check (rowstream._watchdog).
        self.pid = int(self.query("SELECT pg_backend_pid()").read_all().column(0)[0].as_py())

    def _join(self, snapshot: SnapshotInfo) -> None:
        """Import a partitioned export's snapshot (the transaction's first statement), and
        refuse to read unless the transaction now sees what the coordinator's does."""
        from ._snapshot import POINT_QUERY, SnapshotError, cannot_join, check_point, join_statement

        if snapshot.id is None:
            raise SnapshotError("the snapshot to join has no id")
        try:
            self.execute(join_statement(snapshot.id))
        except self.error as exc:
            raise cannot_join(snapshot.id, "ADBC's connection", exc) from None
        check_point(str(self.query(POINT_QUERY).read_all().column(0)[0].as_py()), snapshot.point)

    def get_server_pid(self) -> int | None:
        """The backend's pid (asyncpg's name: the watchdog asks drivers for it)."""
        return self.pid

    def terminate(self) -> None:
        """Give the connection up without waiting on it (the read deadline expired).

        libpq's socket is not reachable from here, so the server is asked to cancel from a
        thread of its own (through a silent network that request may never return), and
        every later step leaves this connection behind instead of waiting on it.
        """
        self.abandoned = True
        in_background(self.cancel)

    def query(self, sql: str) -> pa.RecordBatchReader:
        self._statement.set_sql_query(sql)
        stream, _ = self._statement.execute_query()
        return pa.RecordBatchReader.from_stream(stream)

    async def call(self, method: Callable[..., T], *args: Any) -> T:
        """Run a blocking ``method`` in a thread; a cancellation cancels it on the server and
        waits for the thread, so the connection is never closed under a running call."""
        future = asyncio.ensure_future(asyncio.to_thread(method, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if self.abandoned:
                raise  # the thread may wait on a silent network for good
            # The cancel request is a network round trip of its own: not on the event loop.
            await asyncio.to_thread(self.cancel)
            with contextlib.suppress(Exception):
                await shielded(future)
            raise

    def cancel(self) -> None:
        """Ask the server to stop the running query (thread-safe)."""
        with contextlib.suppress(Exception):
            self._statement.cancel()

    def release(self) -> None:
        """Close the session, or, when it was abandoned, leave that to a thread of its own:
        its ROLLBACK would wait on the silent network."""
        if self.abandoned:
            in_background(self.close)
        else:
            self.close()

    def close(self) -> None:
        if self._begun:
            with contextlib.suppress(Exception):
                self.execute("ROLLBACK")  # read-only: nothing to commit
        for name in ("_statement", "_connection", "_database"):
            handle = self.__dict__.pop(name, None)
            if handle is not None:
                with contextlib.suppress(Exception):
                    handle.close()


def in_background(function: Callable[[], object]) -> None:
    """Run ``function`` in a daemon thread, not waited for (it may block on the network)."""
    threading.Thread(target=function, name="rowstream-adbc-cancel", daemon=True).start()


class _BatchQueue:
    """Record batches between the reader and the writer thread (thread-safe), bounded by their
    number and by the bytes of those queued or being written.

    The reader asks for room (:meth:`wait_for_room`) before it decodes a batch, for one as
    large as the last: batches wider than the bound (rows of tens of MB) are then decoded
    only once the writer is done with the one before, so one such batch is alive at a time
    besides the driver's buffers. ``None`` ends the queue.
    """

    def __init__(self, max_batches: int, max_bytes: int) -> None:
        self._items: deque[pa.RecordBatch | None] = deque()
        self._max_batches = max_batches
        self._max_bytes = max_bytes
        self._in_flight = 0  # batches queued or being written
        self._bytes = 0  # and their bytes
        self._last = 0
        self._closed = False
        self._changed = threading.Condition()

    def wait_for_room(self) -> None:
        with self._changed:
            # No timeout: the writer drains the queue to the end, even after a failure, and
            # close() (on a stop) lets the reader go at once.
            while (
                not self._closed
                and self._in_flight
                and (
                    len(self._items) >= self._max_batches
                    or self._bytes + self._last > self._max_bytes
                )
            ):
                self._changed.wait()

    def put(self, batch: pa.RecordBatch | None) -> None:
        with self._changed:
            if batch is not None:
                self._last = batch.nbytes
                self._in_flight += 1
                self._bytes += self._last
            self._items.append(batch)
            self._changed.notify_all()

    def get(self) -> pa.RecordBatch | None:
        with self._changed:
            while not self._items:
                self._changed.wait()
            return self._items.popleft()

    def done(self, batch: pa.RecordBatch) -> None:
        """The writer is done with ``batch`` (written, or dropped after a failure)."""
        with self._changed:
            self._in_flight -= 1
            self._bytes -= batch.nbytes
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def qsize(self) -> int:
        with self._changed:
            return len(self._items)


class _Pump:
    """Reader thread -> bounded queue -> writer thread; the first error stops both."""

    def __init__(
        self,
        session: _Session,
        reader: pa.RecordBatchReader,
        read: PgRead,
        write: Callable[[pa.RecordBatch], object],
        on_rows: Callable[[int], object],
        share: int = 1,
    ) -> None:
        self._session = session
        self._reader = reader
        self._convert = read.convert
        self._write = write
        self._on_rows = on_rows
        self._queue = _BatchQueue(*queue_budget(share))
        self._stop = threading.Event()
        self.errors: list[BaseException] = []
        self.rows = 0
        self.high_water = 0

    def stop(self) -> None:
        self._stop.set()
        self._queue.close()
        if self._session.abandoned:
            # The reader may never come back to end the queue: end it for the writer.
            self._queue.put(None)
        in_background(self._session.cancel)

    def _fail(self, exc: BaseException) -> None:
        if not self._stop.is_set():
            self.errors.append(exc)
        self.stop()

    def read(self) -> None:
        batches = iter(self._reader)
        try:
            while True:
                self._queue.wait_for_room()
                if self._stop.is_set():
                    break
                try:
                    batch = next(batches, None)  # ADBC decodes the next batch here
                except (OSError, pa.ArrowException) as exc:
                    # pyarrow raises the driver's failures (a dropped connection, an error the
                    # server sends mid-COPY) as OSError or ArrowInvalid, which would read as a
                    # failure to convert or write: keep the server's words, as a read failure.
                    self._fail(ReadError(str(exc).strip()))
                    break
                if batch is None:
                    break
                self._queue.put(self._convert(batch))
                del batch  # the queue holds it; not this frame while the next is decoded
                self.high_water = max(self.high_water, self._queue.qsize())
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._queue.put(None)

    def write(self) -> None:
        # Drains the queue to the end even after a failure, so the reader never blocks on it.
        while (batch := self._queue.get()) is not None:
            try:
                if not self._stop.is_set():
                    self._write(batch)
                    self.rows += batch.num_rows
                    self._on_rows(batch.num_rows)
            except BaseException as exc:
                self._fail(exc)
            finally:
                self._queue.done(batch)
            del batch  # not kept alive while the next one is awaited

    def _start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self.read, name="rowstream-adbc-read", daemon=True),
            threading.Thread(target=self.write, name="rowstream-parquet", daemon=True),
        ]
        for thread in threads:
            thread.start()
        return threads

    def run_blocking(self) -> None:
        """:meth:`run` for the sync face: waits in the calling thread (a greenlet's, under
        gevent or eventlet: ADBC's calls then block the hub for one batch at a time).

        A session abandoned meanwhile (the read deadline expired: :meth:`_Session.terminate`)
        stops the pump; its reader, which may wait on a silent network for good, is left
        behind, as :meth:`run` leaves it."""
        reader, writer = self._start()
        try:
            while writer.is_alive():
                writer.join(ABANDON_POLL)
                if self._session.abandoned:
                    self.stop()
            if not self._session.abandoned:
                reader.join()
        except BaseException:
            self.stop()
            writer.join()
            if not self._session.abandoned:
                reader.join()
            raise

    async def run(self) -> None:
        threads = self._start()

        def join() -> None:
            for thread in threads:
                thread.join()

        try:
            await asyncio.to_thread(join)
        except asyncio.CancelledError:
            self.stop()
            raise
        finally:
            # After a stop both end soon (the cancelled query fails the reader); nothing may
            # touch the sink or the connection while they run. A reader stuck on a silent
            # network (an abandoned session) is left behind: it touches neither.
            if self._session.abandoned:
                threads = threads[1:]
            await shielded(asyncio.to_thread(join))


def batch_bytes(share: int) -> int:
    """The driver's batch size hint for one of ``share`` readers at once.

    >>> batch_bytes(1), batch_bytes(2), batch_bytes(8)
    (1048576, 524288, 262144)
    """
    return min(BATCH_BYTES, max(MIN_BATCH_BYTES, BATCH_BYTES // max(1, share)))


def queue_budget(share: int) -> tuple[int, int]:
    """The batches and bytes one of ``share`` readers at once may queue.

    >>> queue_budget(1)
    (8, 16777216)
    >>> queue_budget(4)
    (2, 4194304)
    """
    share = max(1, share)
    return max(MIN_QUEUE_BATCHES, QUEUE_BATCHES // share), QUEUE_BYTES // share


async def copy_to_arrow(
    url: URL,
    sql: str,
    read: PgRead,
    write: Callable[[pa.RecordBatch], object],
    on_rows: Callable[[int], None],
    watchdog: Watchdog,
    *,
    snapshot: SnapshotInfo | None = None,
    share: int = 1,
) -> int:
    """Read ``sql`` through ADBC, each record batch into ``write`` (called on a thread of its
    own, one batch at a time); returns the number of rows.

    ``read`` says how each column is read and checked (:mod:`rowstream._pgtypes`).
    ``watchdog`` bounds the waits on the server (:mod:`rowstream._watchdog`): each batch pushes
    its deadline back; on expiry, unless the server is still busy with the query, the session
    is abandoned and a ConnectionLostError raised.

    Raises :class:`CannotConnect` when ADBC cannot open its connection (the caller falls
    back to reading through asyncpg).

    ``snapshot``: join a partitioned export's snapshot first, and verify it
    (:class:`rowstream._snapshot.SnapshotError` when it cannot). ``share``: this read is one of
    that many at once; its batches and queue get that share of the budget (:func:`batch_bytes`,
    :func:`queue_budget`).
    """
    try:
        session = await asyncio.to_thread(_Session, libpq_conninfo(url), batch_bytes(share))
    except CannotConnect as exc:
        raise CannotConnect(scrub(str(exc), url)) from None
    loop = asyncio.get_running_loop()
    try:
        # owned=False: a cancellation from outside (Ctrl-C) cancels the query and waits for
        # the threads; only an expired deadline abandons the session (_Session.terminate).
        async with watchdog.watch(lambda: session, owned=False) as watch:
            arrived = watch.kick

            def rows_written(n: int) -> None:
                arrived()
                on_rows(n)

            await session.call(session.begin, snapshot)
            reader = await session.call(session.query, read.query(sql, adbc=True))
            pump = _Pump(
                session,
                reader,
                read,
                write,
                lambda n: loop.call_soon_threadsafe(rows_written, n),
                share,
            )
            await pump.run()
    except session.error as exc:
        raise translate(exc, url=url, resumable=False) from None
    finally:
        await shielded(asyncio.to_thread(session.release))
    _raise_first(pump, session, url)
    return pump.rows


def _raise_first(pump: _Pump, session: _Session, url: URL) -> None:
    """Raise what the first failure of ``pump`` means (nothing when it had none)."""
    if not pump.errors:
        return
    error = pump.errors[0]
    if isinstance(error, pa.ArrowException):
        raise SinkError(
            f"cannot convert PostgreSQL's rows to Parquet: {str(error).splitlines()[0]}"
        ) from error
    if isinstance(error, ReadError):
        raise _read_failure(error, url) from error
    if isinstance(error, session.error):
        raise translate(error, url=url, resumable=False) from error
    raise error


def copy_to_arrow_blocking(
    url: URL,
    sql: str,
    read: PgRead,
    write: Callable[[pa.RecordBatch], object],
    watchdog: SyncWatchdog,
    *,
    snapshot: SnapshotInfo | None = None,
    share: int = 1,
) -> int:
    """:func:`copy_to_arrow` for the sync face (rowstream._sync._pgparts): no event loop, so
    it runs under gevent and eventlet too. ``watchdog`` bounds the wait for each batch as on
    the async face (on expiry, unless the server still works on the query, the session is
    abandoned and a ConnectionLostError raised); connecting and starting the transaction are
    bounded by libpq's connect timeout, keepalive and user timeout."""
    try:
        session = _Session(libpq_conninfo(url), batch_bytes(share))
    except CannotConnect as exc:
        raise translate(
            ConnectionError(scrub(str(exc), url)), url=url, connecting=True, resumable=False
        ) from None
    try:
        session.begin(snapshot)
        reader = session.query(read.query(sql, adbc=True))
        with watchdog.watch(lambda: session, owned=False) as watch:
            pump = _Pump(session, reader, read, write, lambda n: watch.kick(), share)
            pump.run_blocking()
            if session.abandoned:
                raise ReadError("the read deadline expired")  # the watch says what happened
    except session.error as exc:
        raise translate(exc, url=url, resumable=False) from None
    finally:
        session.release()
    _raise_first(pump, session, url)
    return pump.rows
