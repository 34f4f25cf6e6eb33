"""Bounded waits: a read deadline on every step of a stream, and clean-up that cannot hang.

A network that goes silent (packets dropped, no reset) leaves a socket read waiting for minutes:
TCP keepalive notices a dead peer only while the connection is idle, and a read that waits for
an answer is not idle. So every step that waits on the server (connect, begin, page query,
fetch, rollback) runs under a :class:`Watchdog` deadline, ``read_timeout`` seconds:

- when it expires, the server is asked from a fresh connection whether it is still working on
  the stream's query (PostgreSQL: ``pg_stat_activity`` of the stream's backend; MariaDB/MySQL:
  the process list). A big sort whose first row takes minutes is "working", so the deadline
  is extended, again and again, while the server works; a backend blocked on writing to us,
  idle, or gone is not, nor is a server that does not answer the check within
  ``LIVENESS_TIMEOUT``;
- otherwise the connection is abandoned: its socket is closed at once, without a goodbye to
  the server (which would wait on the same dead socket). The step waiting on it fails
  with a connection error, which the stream resumes from like any drop.

Behind a pooler (PgBouncer) the backend is not known, so no check is made: a step that takes
longer than ``read_timeout`` counts as a silent network. Pass ``read_timeout=None`` there for
statements that are slow to return their first rows.

Clean-up is bounded too: a graceful release gets ``CLEANUP_TIMEOUT``, then the connection is
abandoned; an engine rowstream made from a URL is disposed within ``DISPOSE_TIMEOUT``, then its
remaining connections are abandoned. A cancelled stream returns within about 2 s on any path.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import socket
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy import event

from ._exceptions import ConfigurationError, ConnectionLostError

if TYPE_CHECKING:
    # Loaded only where an AsyncEngine is made (it brings the ORM; see rowstream._source).
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger("rowstream")

#: The default bound on one wait for the server (a fetch, a page, a begin or a connect).
DEFAULT_READ_TIMEOUT = 30.0
#: How long the liveness check from a fresh connection may take before the server counts as
#: unreachable.
LIVENESS_TIMEOUT = 5.0
#: After abandoning the socket, how long before a step still waiting (on something else than
#: that socket: a pool checkout, a connect) is cancelled.
CANCEL_GRACE = 1.0
#: A graceful release (close the cursor, roll back, return the connection) gets this long.
CLEANUP_TIMEOUT = 0.8
#: Disposing of an engine made from a URL gets this long; then its connections are abandoned.
DISPOSE_TIMEOUT = 0.5

# TCP keepalive on every connection rowstream opens: a peer that disappears while the
# connection is idle is noticed within KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT
# seconds, and data left unacknowledged for TCP_USER_TIMEOUT_MS fails the connection.
KEEPALIVE_IDLE = 15
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 30_000

# libpq's names for the same settings (psycopg, the sync face).
LIBPQ_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": KEEPALIVE_IDLE,
    "keepalives_interval": KEEPALIVE_INTERVAL,
    "keepalives_count": KEEPALIVE_COUNT,
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
}

_MYSQL = {"mysql", "mariadb"}
# A backend blocked on sending to us waits on the network, not on its work.
_PG_ALIVE = sa.text(
    "SELECT 1 FROM pg_stat_activity WHERE pid = :id AND state = 'active' "
    "AND wait_event IS DISTINCT FROM 'ClientWrite'"
)
_PG_ALIVE_ASYNCPG = str(_PG_ALIVE).replace(":id", "$1")
_MY_ALIVE = sa.text(
    "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = :id AND COMMAND = 'Query' "
    "AND STATE NOT LIKE '%net%' AND STATE NOT LIKE '%client%'"
)


def check_read_timeout(value: float | None, name: str = "read_timeout") -> float | None:
    """Validate a timeout argument: positive seconds, or None for no bound."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigurationError(
            f"{name} must be a positive number of seconds (or None for no bound), not {value!r}"
        )
    return float(value)


# -- sockets -------------------------------------------------------------------------------


def set_keepalive(sock: Any) -> None:
    """Turn on TCP keepalive (and a user timeout) on a TCP socket; other sockets are skipped."""
    if sock is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)


def driver_socket(driver: Any) -> Any:
    """The socket under an asyncio driver connection (asyncpg, asyncmy), or None."""
    transport = getattr(driver, "_transport", None)
    if transport is None:
        return None
    return transport.get_extra_info("socket")


def force_close(driver: Any) -> None:
    """Close a driver connection's socket now, without a goodbye; never raises."""
    with contextlib.suppress(Exception):
        terminate = getattr(driver, "terminate", None)
        if callable(terminate):  # asyncpg: aborts the transport, cancels pending cancels
            terminate()
            return
        transport = getattr(driver, "_transport", None)
        if transport is not None:  # asyncmy, aiomysql
            transport.abort()


def driver_of(conn: AsyncConnection | Any) -> Any:
    """The driver connection behind ``conn``, or None (closed, invalidated, not yet open)."""
    if conn is None:
        return None
    # Not loaded: then no AsyncConnection exists.
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_ext is None or not isinstance(conn, asyncio_ext.AsyncConnection):
        # Already a driver-level session (ADBC's, see rowstream._pgarrow; asyncpg's of
        # rowstream._source.connect_asyncpg).
        return conn
    try:
        sync = conn.sync_connection
        # .connection of an invalidated Connection would reconnect: never ask it then.
        if sync is None or sync.closed or sync.invalidated:
            return None
        return sync.connection.driver_connection
    except Exception:
        return None


async def abandon(conn: AsyncConnection) -> None:
    """Drop ``conn``: close its socket at once, then let the pool forget it. Never raises."""
    force_close(driver_of(conn))
    with contextlib.suppress(Exception):
        await conn.invalidate()
    with contextlib.suppress(Exception):
        await conn.close()


async def release(conn: AsyncConnection) -> None:
    """Return ``conn`` to its pool within CLEANUP_TIMEOUT, or abandon it. Never raises."""
    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            await conn.close()
    except Exception:
        await abandon(conn)


# -- engines ---------------------------------------------------------------------------------


def abandon_cancelled(engine: AsyncEngine | sa.Engine) -> None:
    """Make a connection invalidated by a cancellation close its socket at once (once per
    engine).

    SQLAlchemy invalidates a connection whose statement or pre-ping was cancelled, and its
    invalidation says goodbye first: asyncpg's close(timeout=2) held every cancellation on a
    silent network up for 2 s. The pool's ``invalidate`` event comes before that goodbye.
    """
    sync = _sync_engine(engine)
    if event.contains(sync, "invalidate", _close_on_cancel):
        return
    event.listen(sync, "invalidate", _close_on_cancel)


def _sync_engine(engine: AsyncEngine | sa.Engine) -> sa.Engine:
    return engine if isinstance(engine, sa.Engine) else engine.sync_engine


def _close_on_cancel(dbapi_connection: Any, _record: Any, exception: Any) -> None:
    if exception is not None and not isinstance(exception, Exception):
        force_close(getattr(dbapi_connection, "driver_connection", None))


_tracked: weakref.WeakKeyDictionary[sa.Engine, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()


def track_connections(engine: AsyncEngine | sa.Engine) -> None:
    """Keep (weakly) every driver connection ``engine`` opens, so that clean-up can abandon
    the ones a graceful dispose cannot close (:func:`dispose`)."""
    opened: weakref.WeakSet[Any] = weakref.WeakSet()
    sync = _sync_engine(engine)
    _tracked[sync] = opened

    @event.listens_for(sync, "connect")
    def _keep(dbapi_connection: Any, _record: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        if driver is not None:
            opened.add(driver)


async def dispose(engine: AsyncEngine) -> None:
    """Dispose of ``engine`` within DISPOSE_TIMEOUT; what has not closed by then is abandoned.

    A graceful close says goodbye to the server and waits for it: on a silent connection that
    wait never ends (SQLAlchemy's own dispose hung there).
    """
    try:
        async with asyncio.timeout(DISPOSE_TIMEOUT):
            await engine.dispose()
        return
    except Exception as exc:
        logger.debug("disposing of the engine did not finish (%r): abandoning", exc)
    for driver in list(_tracked.get(engine.sync_engine, ())):
        force_close(driver)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DISPOSE_TIMEOUT):
            await engine.dispose()


# -- the read deadline -----------------------------------------------------------------------


# The async face's engine may be the sync side of a URL source's engine, not yet wrapped in an
# AsyncEngine (rowstream._source.ResolvedSource): its connections are bare asyncpg ones.
E = TypeVar("E", "AsyncEngine | sa.Engine", sa.Engine)


class _Deadlines(Generic[E]):
    """What both faces' watchdogs take: ``timeout`` seconds per wait, on ``engine``."""

    def __init__(
        self,
        engine: E,
        timeout: float | None,
        *,
        check_liveness: bool = True,
        where: str = "the database",
        resumable: bool = True,
    ) -> None:
        self.engine: E = engine
        self.timeout = timeout
        self.resumable = resumable
        self.check_liveness = check_liveness and engine.dialect.name in ("postgresql", *_MYSQL)
        self.where = where
        #: How often a deadline was extended because the server was still working.
        self.extended = 0

    def waiting_on(self, rounds: int) -> int:
        """The server still works on the query: note it, and give the next round's number."""
        self.extended += 1
        rounds += 1
        logger.info(
            "%s is still working on the query after %gs: waiting on",
            self.where,
            (self.timeout or 0) * rounds,
        )
        return rounds


class Watchdog(_Deadlines["AsyncEngine | sa.Engine"]):
    """The read deadline of one stream: ``timeout`` seconds per wait (None: no bound).

    ``check_liveness``: ask the server, on expiry, whether it still works on the query
    (off behind a pooler, where the backend is unknown).
    """

    #: When ``engine`` is the sync side of a URL source's engine (never wrapped in an
    #: AsyncEngine), how the liveness check opens and closes its bare driver connection
    #: (set by rowstream._readers._pgsession: rowstream._source.connect_asyncpg and
    #: close_asyncpg).
    bare: tuple[Callable[[sa.Engine], Awaitable[Any]], Callable[[Any], Awaitable[None]]] | None = (
        None
    )

    @contextlib.asynccontextmanager
    async def watch(
        self, conn: Callable[[], AsyncConnection | Any], *, owned: bool = True
    ) -> AsyncIterator[_Watch | _Unwatched]:
        """Bound the waits inside the block; ``conn()`` gives the connection they wait on
        (an AsyncConnection, or a driver-level session with ``terminate()`` and
        ``get_server_pid()``, as ADBC's in rowstream._pgarrow).

        The block gets the armed deadline: a long read that makes progress (COPY data
        arriving chunk after chunk) calls its ``kick()`` on each (a no-op without a timeout).

        On expiry the connection is abandoned, and the error the waiting step then gets
        becomes a :class:`ConnectionLostError` that names the read timeout. A step cancelled
        from outside abandons an ``owned`` connection at once too: half-way through a
        query it cannot be used again, and a graceful end (SQLAlchemy's rollback, then a
        close that waits up to 2 s) would hold the cancellation up on a silent network.
        """
        timeout = self.timeout
        if timeout is None:
            try:
                yield _UNWATCHED
            except asyncio.CancelledError:
                if owned:
                    force_close(driver_of(conn()))
                raise
            return
        async with asyncio.timeout(None) as deadline:
            watch = _Watch(self, conn, deadline, timeout)
            try:
                yield watch
            except Exception as exc:
                if watch.fired:
                    raise ConnectionLostError(self._message()) from exc
                raise
            except asyncio.CancelledError:
                if watch.fired and deadline.expired():
                    # Our own cancellation (a step that was not waiting on the socket).
                    raise ConnectionLostError(self._message()) from None
                if owned:
                    force_close(driver_of(conn()))
                raise
            finally:
                watch.stop()

    def _message(self) -> str:
        return _silence(self.where, self.timeout, self.resumable)

    async def busy(self, driver: Any) -> bool:
        """True when the server is still working on the query of ``driver``'s connection."""
        engine = self.engine
        query, ident = _liveness(engine.dialect.name, driver)
        if not ident:
            return False
        if isinstance(engine, sa.Engine):
            # A URL source's engine that was never wrapped: ask from a bare asyncpg
            # connection too.
            if self.bare is None:
                return False
            connect, close = self.bare
            apg = await connect(engine)
            try:
                return await apg.fetchval(_PG_ALIVE_ASYNCPG, ident) is not None
            finally:
                await close(apg)
        async with engine.connect() as conn:
            found = await conn.scalar(query, {"id": ident})
            await conn.rollback()
        return found is not None


def _silence(where: str, timeout: float | None, resumable: bool) -> str:
    then = (
        "it resumes by itself when the stream has a key"
        if resumable
        else "nothing was written to the target: run the export again"
    )
    return (
        f"no answer from {where} within read_timeout={timeout or 0:g}s: the network "
        f"or the server went silent; rowstream abandoned the connection ({then}); raise "
        "read_timeout for statements that are slow to return rows, or pass "
        "read_timeout=None"
    )


def _liveness(dialect: str, driver: Any) -> tuple[sa.TextClause, int | None]:
    """The liveness query for ``dialect`` and the server's id of ``driver``'s session."""
    if dialect == "postgresql":
        get_pid = getattr(driver, "get_server_pid", None)  # asyncpg
        info = getattr(driver, "info", None)  # psycopg
        ident = get_pid() if callable(get_pid) else getattr(info, "backend_pid", None)
        return _PG_ALIVE, int(ident) if ident else None
    get_thread = getattr(driver, "thread_id", None)  # asyncmy, PyMySQL
    ident = get_thread() if callable(get_thread) else None
    return _MY_ALIVE, int(ident) if ident else None


class _Unwatched:
    """What :meth:`Watchdog.watch` gives without a timeout: no deadline to push back."""

    def kick(self) -> None:
        """Data arrived; without a deadline there is nothing to do."""


_UNWATCHED = _Unwatched()


class _Watch:
    """One armed deadline (see :meth:`Watchdog.watch`)."""

    def __init__(
        self,
        dog: Watchdog,
        conn: Callable[[], AsyncConnection | Any],
        deadline: asyncio.Timeout,
        timeout: float,
    ) -> None:
        self._dog = dog
        self._conn = conn
        self._deadline = deadline
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(timeout, self._expired)
        self._check: asyncio.Task[None] | None = None
        self._rounds = 0
        self._done = False
        self._progress = self._loop.time()
        self.fired = False

    def kick(self) -> None:
        """Data arrived: the wait starts again (one float stored; the timer re-arms lazily)."""
        self._progress = self._loop.time()

    def stop(self) -> None:
        self._done = True
        if self._handle is not None:
            self._handle.cancel()
        if self._check is not None:
            self._check.cancel()

    def _expired(self) -> None:
        self._handle = None
        if self._done:
            return
        quiet = self._loop.time() - self._progress
        if quiet < self._timeout:
            # Data arrived meanwhile: wait the rest of a full timeout after the last of it.
            self._handle = self._loop.call_later(self._timeout - quiet, self._expired)
            return
        driver = driver_of(self._conn())
        if self._dog.check_liveness and driver is not None:
            self._check = self._loop.create_task(self._check_then_act(driver))
        else:
            self._act(driver)

    async def _check_then_act(self, driver: Any) -> None:
        busy = False
        try:
            async with asyncio.timeout(LIVENESS_TIMEOUT):
                busy = await self._dog.busy(driver)
        except Exception as exc:
            logger.debug("liveness check failed: %r", exc)
        if self._done:
            return
        if busy:
            self._rounds = self._dog.waiting_on(self._rounds)
            self._handle = self._loop.call_later(self._timeout, self._expired)
            return
        self._act(driver_of(self._conn()))

    def _act(self, driver: Any) -> None:
        self.fired = True
        logger.warning("no answer within read_timeout=%gs: abandoning", self._timeout)
        if driver is not None:
            force_close(driver)
        # The step may wait on something else than that socket (a pool checkout, a connect):
        # cancel it if it has not failed by itself shortly.
        self._deadline.reschedule(self._loop.time() + CANCEL_GRACE)


# -- the sync face ---------------------------------------------------------------------------
# The same calling interface as the async side (Watchdog(engine, timeout, ...).watch(conn),
# abandon, release, dispose), so the generated sync strategies call it exactly as the async
# ones call theirs; the mechanism differs: a blocked thread cannot be cancelled, so one timer
# thread shuts the socket down under it, and the blocked read then fails.


def sync_socket_fileno(driver: Any) -> int | None:
    """The socket of a sync driver connection (psycopg, PyMySQL), or None (SQLite)."""
    with contextlib.suppress(Exception):
        fileno = getattr(driver, "fileno", None)  # psycopg
        if callable(fileno):
            return int(fileno())
        sock = getattr(driver, "_sock", None)  # PyMySQL
        if sock is not None:
            return int(sock.fileno())
    return None


def shut_down(fileno: int) -> None:
    """Shut a socket down under a thread blocked reading it (which then sees the end of the
    stream); the descriptor itself stays its owner's to close. Never raises."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fileno))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


def sync_driver_of(conn: sa.Connection | Any | None) -> Any:
    """The driver connection behind a sync ``conn``, or None (closed, invalidated, not open).

    Anything else than a SQLAlchemy Connection is taken for a driver connection already (a
    bare psycopg connection, ADBC's session of rowstream._pgarrow)."""
    if conn is None:
        return None
    if not isinstance(conn, sa.Connection):
        return conn
    try:
        # .connection of an invalidated Connection would reconnect: never ask it then.
        if conn.closed or conn.invalidated:
            return None
        return conn.connection.driver_connection
    except Exception:
        return None


def sync_force_close(driver: Any) -> None:
    """Shut a sync driver connection's socket down now; never raises. A connection whose
    socket is out of reach (ADBC's, rowstream._pgarrow._Session) is terminated instead: its
    query cancelled, the connection given up without waiting on it."""
    terminate = getattr(driver, "terminate", None)
    if callable(terminate) and sync_socket_fileno(driver) is None:
        with contextlib.suppress(Exception):
            terminate()
        return
    with contextlib.suppress(Exception):
        # PyMySQL's unbuffered result would read the rest of the rows when closed or
        # garbage-collected (from a dead socket, raising in __del__): nothing is left to read.
        result = getattr(driver, "_result", None)
        if result is not None and getattr(result, "unbuffered_active", False):
            result.unbuffered_active = False
    fileno = sync_socket_fileno(driver)
    if fileno is not None:
        shut_down(fileno)


def sync_abandon(conn: sa.Connection) -> None:
    """Drop ``conn``: shut its socket down, then let the pool forget it. Never raises."""
    sync_force_close(sync_driver_of(conn))
    with contextlib.suppress(Exception):
        conn.invalidate()
    with contextlib.suppress(Exception):
        conn.close()


def sync_release(conn: sa.Connection) -> None:
    """Return ``conn`` to its pool, or abandon it. Never raises."""
    try:
        conn.close()
    except Exception:
        sync_abandon(conn)


def sync_dispose(engine: sa.Engine) -> None:
    """Dispose of ``engine``; never raises (its connections are closed without waiting)."""
    with contextlib.suppress(Exception):
        engine.dispose()


# A pool checkout pre-pings its connection before handing it out: a wait the sync face cannot
# cancel, on a connection the watched block does not have yet. Each engine a SyncWatchdog
# watches notes which connection each thread is pinging, so the deadline can shut it down too.
_pinging: dict[int, Any] = {}
_abandoned_pings: set[int] = set()


def _track_pings(engine: sa.Engine) -> None:
    dialect: Any = engine.dialect
    if getattr(dialect, "_rowstream_pings", False):
        return
    original = dialect.do_ping

    def do_ping(dbapi_connection: Any) -> bool:
        ident = threading.get_ident()
        _pinging[ident] = dbapi_connection
        try:
            return bool(original(dbapi_connection))
        except Exception as exc:
            if id(dbapi_connection) in _abandoned_pings:
                # Not a disconnect to heal by reconnecting (that would wait on the same silent
                # network, out of the deadline's reach): the step fails, the stream resumes.
                _abandoned_pings.discard(id(dbapi_connection))
                raise ConnectionLostError("the read deadline abandoned the connection") from exc
            raise
        finally:
            _pinging.pop(ident, None)

    dialect.do_ping = do_ping
    dialect._rowstream_pings = True


class _Timer:
    """One daemon thread for every armed sync deadline: it sleeps until the earliest."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _SyncWatch]] = []
        self._count = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, watch: _SyncWatch, at: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (at, next(self._count), watch))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="rowstream-read-timeout", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                at, _n, watch = self._heap[0]
                left = at - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
            if not watch.done:
                try:
                    watch.expired()
                except Exception as exc:  # the timer thread must live on
                    logger.debug("read timeout check failed: %r", exc)


_timer = _Timer()


class SyncWatchdog(_Deadlines[sa.Engine]):
    """:class:`Watchdog` for the sync face: same arguments, same ``watch(conn)`` block.

    On expiry the server is asked (from a fresh connection, within ``LIVENESS_TIMEOUT``)
    whether it still works on the query, as on the async side; if not, the socket is shut
    down and the blocked read fails: a :class:`ConnectionLostError` that the stream resumes
    from. A step blocked elsewhere (connecting) cannot be interrupted; TCP_USER_TIMEOUT and
    libpq's keepalives bound it.
    """

    @contextlib.contextmanager
    def watch(
        self, conn: Callable[[], sa.Connection | Any | None], *, owned: bool = True
    ) -> Iterator[_SyncWatch | _Unwatched]:
        """Bound the blocking waits inside the block (see :meth:`Watchdog.watch`); ``conn``
        gives a SQLAlchemy Connection or a driver connection (:func:`sync_driver_of`)."""
        timeout = self.timeout
        if timeout is None:
            yield _UNWATCHED
            return
        _track_pings(self.engine)
        watch = _SyncWatch(self, conn, timeout)
        _timer.arm(watch, time.monotonic() + timeout)
        try:
            yield watch
        except Exception as exc:
            if watch.fired:
                raise ConnectionLostError(_silence(self.where, timeout, self.resumable)) from exc
            raise
        finally:
            watch.done = True

    def busy(self, driver: Any) -> bool:
        """True when the server is still working on the query of ``driver``'s connection."""
        query, ident = _liveness(self.engine.dialect.name, driver)
        if not ident:
            return False
        with self.engine.connect() as conn:
            found = conn.scalar(query, {"id": ident})
            conn.rollback()
        return found is not None


class _SyncWatch:
    """One armed sync deadline (see :class:`SyncWatchdog`)."""

    def __init__(
        self, dog: SyncWatchdog, conn: Callable[[], sa.Connection | Any | None], timeout: float
    ) -> None:
        self._dog = dog
        self._conn = conn
        self._timeout = timeout
        self._progress = time.monotonic()
        self._rounds = 0
        self._thread = threading.get_ident()
        self.done = False
        self.fired = False

    def kick(self) -> None:
        """Data arrived: the wait starts again."""
        self._progress = time.monotonic()

    def expired(self) -> None:
        quiet = time.monotonic() - self._progress
        if quiet < self._timeout:
            _timer.arm(self, self._progress + self._timeout)
            return
        driver = sync_driver_of(self._conn())
        if driver is None:
            pinged = _pinging.get(self._thread)
            if pinged is not None:
                _abandoned_pings.add(id(pinged))
                self._act(pinged)
                return
        if self._dog.check_liveness and driver is not None:
            threading.Thread(
                target=self._check_then_act, args=(driver,), name="rowstream-liveness", daemon=True
            ).start()
        else:
            self._act(driver)

    def _check_then_act(self, driver: Any) -> None:
        answer: list[bool] = []

        def ask() -> None:
            try:
                answer.append(self._dog.busy(driver))
            except Exception as exc:
                logger.debug("liveness check failed: %r", exc)

        asker = threading.Thread(target=ask, name="rowstream-liveness-check", daemon=True)
        asker.start()
        asker.join(LIVENESS_TIMEOUT)
        if self.done:
            return
        if answer and answer[0]:
            self._rounds = self._dog.waiting_on(self._rounds)
            _timer.arm(self, time.monotonic() + self._timeout)
            return
        self._act(driver)

    def _act(self, driver: Any) -> None:
        if self.done:
            return
        self.fired = True
        logger.warning("no answer within read_timeout=%gs: abandoning", self._timeout)
        if driver is not None:
            sync_force_close(driver)
