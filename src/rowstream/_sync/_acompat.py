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

from .._temporal import Infinity, edge
from .._watchdog import SyncWatchdog as Watchdog
from .._watchdog import sync_abandon as abandon
from .._watchdog import sync_dispose as dispose
from .._watchdog import sync_release as release

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


# psycopg's type OIDs of the values Python's date and datetime may not hold.
_TEMPORAL_OIDS = {"date": 1082, "timestamp": 1114, "timestamptz": 1184}


@functools.cache
def _exact_loader(base: type[Any], typname: str, infinity: Infinity) -> type[Any]:
    """A text loader that asks ``base`` (psycopg's own, usually its C one) first and turns
    only what it refuses (DataError: infinity, BC, after 9999) into rowstream._temporal's
    choice: one Python call per value, the parsing stays psycopg's."""
    from psycopg import DataError
    from psycopg.adapt import Loader

    class ExactLoader(Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._inner = base(oid, context)

        def load(self, data: Any) -> Any:
            try:
                return self._inner.load(data)
            except DataError:
                text = bytes(data).decode()
                top = text == "infinity" or not (text.startswith("-") or text.endswith("BC"))
                return edge(infinity, text, typname, top)

    ExactLoader.__name__ = f"Exact{typname.capitalize()}Loader"
    return ExactLoader


@contextlib.contextmanager
def exact_temporals(conn: sa.Connection, infinity: Infinity) -> Iterator[None]:
    """While open, cursors created on ``conn`` load ``date``, ``timestamp`` and
    ``timestamptz`` with loaders that name what psycopg refuses (or turn it into the
    ``infinity`` choice); a cursor keeps its loaders to its end. psycopg only (PyMySQL and
    sqlite3 hold no infinity); the connection's own loaders are put back afterwards.
    """
    driver = conn.connection.driver_connection
    adapters = getattr(driver, "adapters", None)
    if adapters is None or not type(driver).__module__.startswith("psycopg"):
        yield
        return
    from psycopg.pq import Format

    previous = {oid: adapters.get_loader(oid, Format.TEXT) for oid in _TEMPORAL_OIDS.values()}
    try:
        for typname, oid in _TEMPORAL_OIDS.items():
            base = previous[oid]
            if base is not None:
                adapters.register_loader(oid, _exact_loader(base, typname, infinity))
        yield
    finally:
        for oid, base in previous.items():
            if base is not None:
                adapters.register_loader(oid, base)
