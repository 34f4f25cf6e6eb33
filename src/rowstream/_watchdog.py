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
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._exceptions import ConfigurationError, ConnectionLostError

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
    if not isinstance(conn, AsyncConnection):
        return conn  # already a driver-level session (ADBC's, see rowstream._pgarrow)
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


def abandon_cancelled(engine: AsyncEngine) -> None:
    """Make a connection invalidated by a cancellation close its socket at once (once per
    engine).

    SQLAlchemy invalidates a connection whose statement or pre-ping was cancelled, and its
    invalidation says goodbye first: asyncpg's close(timeout=2) held every cancellation on a
    silent network up for 2 s. The pool's ``invalidate`` event comes before that goodbye.
    """
    if event.contains(engine.sync_engine, "invalidate", _close_on_cancel):
        return
    event.listen(engine.sync_engine, "invalidate", _close_on_cancel)


def _close_on_cancel(dbapi_connection: Any, _record: Any, exception: Any) -> None:
    if exception is not None and not isinstance(exception, Exception):
        force_close(getattr(dbapi_connection, "driver_connection", None))


_tracked: weakref.WeakKeyDictionary[sa.Engine, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()


def track_connections(engine: AsyncEngine) -> None:
    """Keep (weakly) every driver connection ``engine`` opens, so that clean-up can abandon
    the ones a graceful dispose cannot close (:func:`dispose`)."""
    opened: weakref.WeakSet[Any] = weakref.WeakSet()
    _tracked[engine.sync_engine] = opened

    @event.listens_for(engine.sync_engine, "connect")
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


class Watchdog:
    """The read deadline of one stream: ``timeout`` seconds per wait (None: no bound).

    ``check_liveness``: ask the server, on expiry, whether it still works on the query
    (off behind a pooler, where the backend is unknown).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        timeout: float | None,
        *,
        check_liveness: bool = True,
        where: str = "the database",
        resumable: bool = True,
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.resumable = resumable
        self.check_liveness = check_liveness and engine.dialect.name in ("postgresql", *_MYSQL)
        self.where = where
        #: How often a deadline was extended because the server was still working.
        self.extended = 0

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
        then = (
            "it resumes by itself when the stream has a key"
            if self.resumable
            else "nothing was written to the target: run the export again"
        )
        return (
            f"no answer from {self.where} within read_timeout={self.timeout:g}s: the network "
            f"or the server went silent; rowstream abandoned the connection ({then}); raise "
            "read_timeout for statements that are slow to return rows, or pass "
            "read_timeout=None"
        )

    async def busy(self, driver: Any) -> bool:
        """True when the server is still working on the query of ``driver``'s connection."""
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            get_pid = getattr(driver, "get_server_pid", None)
            ident = get_pid() if callable(get_pid) else None
            query = _PG_ALIVE
        else:
            get_thread = getattr(driver, "thread_id", None)
            ident = get_thread() if callable(get_thread) else None
            query = _MY_ALIVE
        if not ident:
            return False
        async with self.engine.connect() as conn:
            found = await conn.scalar(query, {"id": int(ident)})
            await conn.rollback()
        return found is not None


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
            self._dog.extended += 1
            self._rounds += 1
            logger.info(
                "%s is still working on the query after %gs: waiting on",
                self._dog.where,
                self._timeout * self._rounds,
            )
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


def sync_socket_fileno(dbapi_connection: Any) -> int | None:
    """The socket of a sync driver connection (psycopg, PyMySQL), or None (SQLite)."""
    with contextlib.suppress(Exception):
        fileno = getattr(dbapi_connection, "fileno", None)  # psycopg
        if callable(fileno):
            return int(fileno())
        sock = getattr(dbapi_connection, "_sock", None)  # PyMySQL
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


class SyncWatchdog:
    """The read deadline of a sync stream: one helper thread that shuts the socket down when
    a wait lasts longer than ``timeout`` seconds.

    No liveness check here: a statement slower than ``timeout`` to return rows fails like a
    silent network (pass ``read_timeout=None`` for those).
    """

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._cond = threading.Condition()
        self._armed: tuple[float, int] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.fired = False

    @contextlib.contextmanager
    def watch(self, fileno: int | None) -> Iterator[None]:
        if self.timeout is None or fileno is None:
            yield
            return
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="rowstream-read-timeout", daemon=True
                )
                self._thread.start()
            self.fired = False
            self._armed = (time.monotonic() + self.timeout, fileno)
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._armed = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._armed = None
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._armed is None:
                    self._cond.wait()
                    continue
                deadline, fileno = self._armed
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._armed = None
                self.fired = True
                logger.warning("no answer within read_timeout=%gs: abandoning", self.timeout)
                shut_down(fileno)

    def message(self, where: str) -> str:
        return (
            f"no answer from {where} within read_timeout={self.timeout:g}s: the network or "
            "the server went silent and rowstream abandoned the connection; run the stream "
            "again with start_after=last_key, raise read_timeout for statements that are "
            "slow to return rows, or pass read_timeout=None"
        )
