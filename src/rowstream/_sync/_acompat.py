"""The sync side of :mod:`rowstream._acompat`: the same names, blocking instead of awaiting.

Written by hand (not generated): this is where the two faces differ in mechanism.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .._temporal import Infinity, psycopg_loaders
from .._watchdog import SyncWatchdog as Watchdog
from .._watchdog import sync_abandon as abandon
from .._watchdog import sync_dispose as dispose
from .._watchdog import sync_release as release
from .._zerodates import ZeroDates, checked_cursor

__all__ = [
    "Lock",
    "Watchdog",
    "abandon",
    "bounded",
    "dispose",
    "driver_connection",
    "exact_fetches",
    "exact_temporals",
    "orm_session",
    "peer_address",
    "release",
    "run_sync",
    "sleep",
    "sync_engine",
    "to_thread",
]

T = TypeVar("T")

Lock = threading.Lock
sleep = time.sleep


def to_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """Already in a thread of the caller's: call ``fn`` here."""
    return fn(*args)


def run_sync(conn: sa.Connection, fn: Callable[..., T], *args: Any) -> T:
    """``fn(conn, *args)``: already on a sync connection."""
    return fn(conn, *args)


def bounded(seconds: float) -> contextlib.AbstractContextManager[None]:
    """No deadline: a blocking clean-up cannot be interrupted (the async side bounds it);
    libpq's keepalives and TCP_USER_TIMEOUT end a wait on a dead peer."""
    return contextlib.nullcontext()


def sync_engine(engine: sa.Engine) -> sa.Engine:
    return engine


def orm_session(session: Session) -> Session:
    return session


def driver_connection(conn: sa.Connection) -> Any:
    """The driver's own connection under ``conn`` (psycopg, PyMySQL, sqlite3)."""
    return conn.connection.driver_connection


def peer_address(driver: Any) -> tuple[str | None, int | None]:
    """The address and port libpq dialled (psycopg), or (None, None)."""
    info = getattr(driver, "info", None)
    host, port = getattr(info, "hostaddr", None), getattr(info, "port", None)
    if not host or not port:  # a Unix socket, or not libpq
        return (None, None)
    return (str(host), int(port))


@contextlib.contextmanager
def exact_fetches(conn: sa.Connection) -> Iterator[None]:
    """psycopg's named cursors, PyMySQL's SSCursor and sqlite3 read exactly what is asked."""
    yield


@contextlib.contextmanager
def exact_temporals(
    conn: sa.Connection, infinity: Infinity, zero_dates: ZeroDates, *, diagnose: bool = False
) -> Iterator[None]:
    """While open, cursors created on ``conn`` load ``date``, ``timestamp`` and
    ``timestamptz`` as rowstream._temporal says (psycopg), and give MariaDB's zero dates as
    ``zero_dates`` says (PyMySQL: :func:`_zero_date_rows`); sqlite3 holds neither. A cursor
    keeps its loaders (its class) to its end."""
    driver = conn.connection.driver_connection
    if conn.dialect.name in ("mysql", "mariadb"):
        with _zero_date_rows(driver, zero_dates):
            yield
        return
    with psycopg_loaders(driver, infinity, diagnose=diagnose):
        if infinity != "error" or diagnose:
            yield  # rowstream's own text loaders decide: the rows stay in text
            return
        with _binary_wide_rows(driver):
            yield


# Types whose binary loaders give exactly what their text loaders give (psycopg's own, both):
# bool, bytea, name, int8, int2, int4, text, oid, json, float8, bpchar, varchar, numeric, uuid,
# jsonb. Not float4 (binary 1.100000023841858 where text gives 1.1), not the temporal types
# (another tzinfo; rowstream's infinity= loaders are text loaders), not unknown types (bytes in
# binary, str in text).
_SAME_IN_BINARY = frozenset(
    {16, 17, 19, 20, 21, 23, 25, 26, 114, 701, 1042, 1043, 1700, 2950, 3802}
)
_BYTEA = 17


@contextlib.contextmanager
def _binary_wide_rows(driver: Any) -> Iterator[None]:
    """While open, named cursors of the psycopg connection ``driver`` read a result that holds
    ``bytea`` in binary when every column loads the same in binary as in text.

    In text a bytea comes as hex, twice its size: libpq then holds the message (in a buffer
    grown to the next power of two) and the result while psycopg decodes it. Measured on 10
    rows of 50 MB: psycopg alone peaks at 384 MB in text, 234 MB in binary. The connection's
    class of named cursors is put back afterwards. Any other driver: nothing to do.
    """
    plain: Any = getattr(driver, "server_cursor_factory", None)
    if plain is None or not type(driver).__module__.startswith("psycopg"):
        yield
        return
    driver.server_cursor_factory = _wide_rows_cursor(plain)
    try:
        yield
    finally:
        driver.server_cursor_factory = plain


@functools.cache
def _wide_rows_cursor(plain: type[Any]) -> type[Any]:
    """``plain`` (psycopg's ServerCursor or a subclass), declaring its cursor again in binary
    when that is exact and saves memory (:func:`_binary_wide_rows`)."""

    def execute(self: Any, query: Any, params: Any = None, *, binary: Any = None, **kw: Any) -> Any:
        plain.execute(self, query, params, binary=binary, **kw)
        if binary is None and not self.format and _binary_is_exact(self):
            # One more DECLARE (a plan, no rows yet): the rows then come in binary.
            plain.execute(self, query, params, binary=True, **kw)
        return self

    return type(f"Binary{plain.__name__}", (plain,), {"execute": execute})


def _binary_is_exact(cursor: Any) -> bool:
    """True when ``cursor``'s result holds bytea and every column loads the same in binary."""
    from psycopg import adapters as defaults
    from psycopg.pq import Format

    oids = [column.type_code for column in cursor.description or ()]
    if _BYTEA not in oids:
        return False
    mine = cursor.adapters
    for oid in set(oids):
        if oid not in _SAME_IN_BINARY:
            return False
        # The connection's own loaders (SQLAlchemy's for json, a caller's) decide otherwise.
        if mine.get_loader(oid, Format.TEXT) is not defaults.get_loader(oid, Format.TEXT):
            return False
        if mine.get_loader(oid, Format.BINARY) is not defaults.get_loader(oid, Format.BINARY):
            return False
    return True


@contextlib.contextmanager
def _zero_date_rows(driver: Any, zero_dates: ZeroDates) -> Iterator[None]:
    """While open, cursors of the PyMySQL connection ``driver`` hand their rows through
    rowstream._zerodates's ``checked_rows`` (``"text"``: PyMySQL's own rows are the server's
    text already). Its class is swapped back afterwards: the connection may be the caller's,
    or go back to the pool. Any other driver: nothing to do."""
    plain: Any = type(driver)
    if zero_dates == "text" or not plain.__module__.startswith("pymysql"):
        yield
        return
    driver.__class__ = _zero_date_connection(plain, zero_dates)
    try:
        yield
    finally:
        driver.__class__ = plain


@functools.cache
def _zero_date_connection(plain: type[Any], zero_dates: ZeroDates) -> type[Any]:
    """PyMySQL's connection class ``plain``, whose cursors (of whichever class is asked for:
    SQLAlchemy asks for an ``SSCursor`` for a server-side cursor) are checked ones."""

    def cursor(self: Any, cursor: type[Any] | None = None) -> Any:
        asked: Any = cursor or self.cursorclass
        return checked_cursor(asked, zero_dates)(self)

    return type(f"ZeroDate{plain.__name__}", (plain,), {"cursor": cursor})
