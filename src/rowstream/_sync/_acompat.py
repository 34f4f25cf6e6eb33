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
        yield


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
