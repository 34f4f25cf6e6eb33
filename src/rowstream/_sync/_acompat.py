"""The sync side of :mod:`rowstream._acompat`: the same names, blocking instead of awaiting.

Written by hand (not generated): this is where the two faces differ in mechanism.
"""

from __future__ import annotations

import contextlib
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
from .._zerodates import ZeroDates, mysql_converters

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
    ``timestamptz`` as rowstream._temporal says (psycopg), and results give MariaDB's zero
    dates as ``zero_dates`` says (PyMySQL, rowstream._zerodates); sqlite3 holds neither. A
    cursor keeps its loaders (a PyMySQL result its converters) to its end."""
    driver = conn.connection.driver_connection
    with (
        psycopg_loaders(driver, infinity, diagnose=diagnose),
        mysql_converters(driver, zero_dates),
    ):
        yield
