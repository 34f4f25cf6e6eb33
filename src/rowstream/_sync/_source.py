"""Where the sync face's rows come from: URLs, Engines, Connections and Sessions.

Written by hand: the sync drivers (psycopg 3, PyMySQL, sqlite3) and their engine options
differ from the async ones. URL parsing, masking and the per-connection defaults are
:mod:`rowstream._source`'s own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from .._exceptions import ConfigurationError
from .._source import APPLICATION_NAME, engine_errors, mask_url, split_url, streaming_defaults
from .._watchdog import LIBPQ_KEEPALIVE, sync_dispose

__all__ = [
    "SYNC_DRIVERS",
    "ResolvedSource",
    "Source",
    "SyncSource",
    "create_engine",
    "mask_url",
    "resolve_source",
    "resolve_url",
    "sync_engine_for",
]

#: The synchronous driver each backend gets when a URL names none (or names an async one).
SYNC_DRIVERS = {
    "postgresql": "psycopg",
    "mysql": "pymysql",
    "mariadb": "pymysql",
    "sqlite": "pysqlite",
}
_ASYNC_DRIVERS = {"asyncpg", "psycopg_async", "asyncmy", "aiomysql", "aiosqlite"}
_SMALL_POOL = {"pool_size": 2, "max_overflow": 2}
#: Seconds libpq may take to connect (psycopg); PyMySQL's own default is 10 too.
SYNC_CONNECT_TIMEOUT = 10

SyncSource = str | URL | sa.Engine | sa.Connection | Session
Source = SyncSource


def resolve_url(url: str | URL) -> URL:
    """Parse ``url`` and give it a synchronous driver (psycopg, PyMySQL or sqlite3).

    >>> resolve_url("postgresql+asyncpg://app@db/shop").drivername
    'postgresql+psycopg'
    """
    parsed, backend, driver = split_url(url)
    if not driver or driver in _ASYNC_DRIVERS:
        driver = SYNC_DRIVERS[backend]
    query = dict(parsed.query)
    if driver == "psycopg" and "ssl" in query and "sslmode" not in query:
        # asyncpg spells libpq's sslmode "ssl" (?ssl=require): one URL serves both faces.
        query["sslmode"] = query.pop("ssl")
        parsed = parsed.set(query=query)
    return parsed.set(drivername=f"{backend}+{driver}")


def create_engine(url: str | URL, **kwargs: Any) -> sa.Engine:
    """Create a synchronous Engine with defaults that are safe for streaming.

    - psycopg: no server-side prepared statements (``prepare_threshold=None``), so it works
      through a transaction-pooling PgBouncer; ``application_name=rowstream``; libpq's TCP
      keepalives.
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
            # A connect cannot be interrupted by the read deadline: libpq bounds it.
            "connect_timeout": SYNC_CONNECT_TIMEOUT,
            **LIBPQ_KEEPALIVE,
        }
    connect_args.update(kwargs.pop("connect_args", {}))
    options: dict[str, Any] = {"pool_pre_ping": True}
    options.update(kwargs)
    with engine_errors(resolved):
        engine = sa.create_engine(resolved, connect_args=connect_args, **options)
    streaming_defaults(engine)
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
    if isinstance(source, (Session, AsyncSession)) and source.bind is not None:
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


@dataclass
class ResolvedSource:
    """A source reduced to the engine to connect with, or a caller's connection to borrow."""

    engine: sa.Engine
    borrowed: sa.Connection | None = None
    owns_engine: bool = False

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        if self.owns_engine:
            sync_dispose(self.engine)


def resolve_source(source: SyncSource) -> ResolvedSource:
    """Turn what the caller passed into an engine (or a connection to use as is).

    A URL gets a private engine with a small pool, disposed when the stream closes; a
    Session lends its bind; a Connection is used as it is, inside its transaction when it
    has one.
    """
    if isinstance(source, Session):
        bind = source.bind
        if bind is None:
            raise ConfigurationError(
                "the Session has no bind: create it with sessionmaker(engine) or pass the "
                "engine to rowstream.sync instead"
            )
        return resolve_source(bind)
    if isinstance(source, (str, URL)):
        # A small pool of its own: keyset pages and the pooler probe reuse connections.
        small = {} if resolve_url(source).get_backend_name() == "sqlite" else _SMALL_POOL
        return ResolvedSource(create_engine(source, **small), owns_engine=True)
    if isinstance(source, sa.Engine):
        return ResolvedSource(source)
    if isinstance(source, sa.Connection):
        return ResolvedSource(source.engine, borrowed=source)
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
