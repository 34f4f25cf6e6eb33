"""Where rows come from: URL strings, engines, connections and sessions.

Plain URLs map to the async driver rowstream ships with (``postgresql://`` -> asyncpg,
``mysql://`` and ``mariadb://`` -> asyncmy, ``sqlite:///path`` -> aiosqlite); an explicit
``+driver`` is honoured when it is an async one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import quote, quote_plus

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from ._exceptions import ConfigurationError
from ._watchdog import (
    CLEANUP_TIMEOUT,
    abandon_cancelled,
    dispose,
    driver_socket,
    set_keepalive,
    track_connections,
)

if TYPE_CHECKING:
    # sqlalchemy.ext.asyncio loads the ORM (a seventh of a 1-row export's start-up): it is
    # imported where an AsyncEngine is first needed, and a URL export on PostgreSQL's COPY
    # never needs one (see ResolvedSource, connect_asyncpg).
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

APPLICATION_NAME = "rowstream"

# The async driver each backend gets when a URL names none.
DEFAULT_DRIVERS = {
    "postgresql": "asyncpg",
    "mysql": "asyncmy",
    "mariadb": "asyncmy",
    "sqlite": "aiosqlite",
}
_BACKEND_ALIASES = {"postgres": "postgresql", "pgsql": "postgresql"}
_ASYNC_DRIVERS = {
    "postgresql": {"asyncpg", "psycopg", "psycopg_async"},
    "mysql": {"asyncmy", "aiomysql"},
    "mariadb": {"asyncmy", "aiomysql"},
    "sqlite": {"aiosqlite"},
}

Source: TypeAlias = "str | URL | AsyncEngine | AsyncConnection | AsyncSession"
_SMALL_POOL = {"pool_size": 2, "max_overflow": 2}


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """``(scheme, userinfo, rest)`` of a URL string with credentials, split at the LAST ``@``.

    Passwords are often pasted unescaped and may hold any character, ``@`` included; a host
    never holds ``@``, so the last one ends the credentials (as curl reads them). There are
    credentials only when the user name (up to the first ``:`` or ``@``) holds no ``/``:
    ``sqlite:///dir/a@b.db`` and ``postgresql://host/db@x`` have none.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return None
    userinfo, _, after = rest.rpartition("@")
    if "/" in userinfo.split(":", 1)[0]:
        return None
    return scheme, userinfo, after


def _parse(url: str) -> URL:
    """SQLAlchemy's ``make_url``, with the credentials ending at the last ``@``.

    ``make_url`` ends the password at the first ``@`` (``ghost:pre@TAIL@host`` gives the
    password ``pre`` and the host ``TAIL@host``). The ``@`` inside the credentials are
    percent-encoded before parsing (``make_url`` decodes them back), so the URL connects as
    meant; other ``%`` escapes keep their meaning, as ``make_url`` has always read them.
    """
    found = _userinfo(url)
    if found is not None and "@" in found[1]:
        scheme, userinfo, after = found
        url = f"{scheme}://{userinfo.replace('@', '%40')}@{after}"
    return make_url(url)


def _repair(url: URL) -> URL:
    """A URL object that ``make_url`` split at the first ``@`` of a password, put right:
    a host never holds ``@``, so what stands before its last ``@`` is the password's."""
    if url.host is None or "@" not in url.host:
        return url
    spill, _, host = url.host.rpartition("@")
    return url.set(password=f"{url.password or ''}@{spill}", host=host)


def split_url(url: str | URL) -> tuple[URL, str, str]:
    """Parse ``url`` into (URL, backend, driver), refusing what rowstream cannot read.

    ``backend`` is normalized (``postgres`` -> ``postgresql``); ``driver`` is "" when the URL
    names none. Shared by the async and the sync side, which then pick their own driver.
    The credentials end at the last ``@`` (see :func:`_parse`).
    """
    if isinstance(url, str):
        try:
            parsed = _parse(url)
        except (ArgumentError, ValueError):  # ValueError: a non-numeric port
            raise ConfigurationError(
                f"malformed database URL {mask_url(url)!r}: expected something like "
                "postgresql://user@host:5432/dbname, mysql://user@host/dbname or "
                "sqlite:///path/to/file.db"
            ) from None
    else:
        parsed = _repair(url)
    backend, _, driver = parsed.drivername.partition("+")
    backend = _BACKEND_ALIASES.get(backend, backend)
    if backend not in DEFAULT_DRIVERS:
        raise ConfigurationError(
            f"unsupported database {backend!r} in {mask_url(parsed)!r}: rowstream reads "
            "postgresql://, mysql://, mariadb:// and sqlite:/// URLs"
        )
    return parsed, backend, driver


def resolve_url(url: str | URL) -> URL:
    """Parse ``url`` and give it an async driver.

    >>> resolve_url("postgresql://app@db/shop").drivername
    'postgresql+asyncpg'
    """
    parsed, backend, driver = split_url(url)
    if not driver:
        driver = DEFAULT_DRIVERS[backend]
    elif driver not in _ASYNC_DRIVERS[backend]:
        choices = ", ".join(sorted(_ASYNC_DRIVERS[backend]))
        raise ConfigurationError(
            f"{backend}+{driver} is not an async driver: use one of {choices} "
            f"(or leave the driver out), or rowstream.sync for synchronous code"
        )
    return parsed.set(drivername=f"{backend}+{driver}")


def mask_url(url: str | URL) -> str:
    """Render ``url`` with everything between the user name and the host hidden.

    Safe for messages, logs and progress lines whatever the password holds: the credentials
    end at the last ``@``, and a URL object that ``make_url`` split at an earlier ``@`` is put
    right first (see :func:`_repair`).

    >>> mask_url("postgresql://ghost:pre@TAIL@db/shop")
    'postgresql://ghost:***@db/shop'
    """
    if isinstance(url, URL):
        return _repair(url).render_as_string(hide_password=True)
    try:
        return _parse(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not parseable: hide the credentials by hand.
        found = _userinfo(url)
        if found is None:
            return url
        scheme, userinfo, after = found
        user, colon, _ = userinfo.partition(":")
        return f"{scheme}://{user}{':***' if colon else ''}@{after}"


def password_forms(url: URL | None) -> list[str]:
    """Every form in which ``url``'s password may show up in a driver's error, longest first.

    The password as meant and as parsed, percent-encoded (as a URL carries it), escaped (as
    ``repr()`` and a libpq connection string write it), and the part of a mis-split password
    that landed in the host: :func:`scrub` removes them all from a message.
    """
    if url is None:
        return []
    forms: set[str] = set()
    repaired = _repair(url)
    if repaired.password:
        password = str(repaired.password)
        forms.update(
            {
                password,
                quote(password, safe=""),
                quote(password, safe=" +"),
                quote_plus(password),
                # As Python's repr() and libpq's conninfo quoting escape it.
                repr(password)[1:-1],
                password.replace("\\", "\\\\").replace("'", "\\'"),
            }
        )
    if url.password:
        forms.add(str(url.password))
    if url.host and "@" in url.host:
        forms.add(url.host.rpartition("@")[0])
    forms.discard("")
    return sorted(forms, key=len, reverse=True)


def scrub(text: str, url: URL | None) -> str:
    """``text`` with every form of the URL's password replaced by ``***``."""
    for form in password_forms(url):
        text = text.replace(form, "***")
    return text


def create_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """Create an AsyncEngine with defaults that are safe for streaming.

    - asyncpg: statement caches off (``statement_cache_size=0`` and SQLAlchemy's
      ``prepared_statement_cache_size=0``), so statements are unnamed and survive a
      transaction-pooling PgBouncer; ``application_name=rowstream``.
    - asyncmy: one statement per query (the driver asks the server for multi-statements;
      rowstream's connections do not), so ``SELECT 1; DELETE ...`` is a syntax error there.
    - every connection's session time zone is UTC (a ``connect`` event).
    - TCP keepalive on every connection, and a connection whose statement is cancelled is
      closed at once rather than with a goodbye that a silent network would hold up (given
      engines get the latter too).
    - ``pool_pre_ping`` on, and a pool large enough for several concurrent streams.

    Keyword arguments are passed to SQLAlchemy's ``create_async_engine`` and win over these
    defaults; ``connect_args`` are merged.

    Example::

        engine = rowstream.create_engine("postgresql://app@db/shop", poolclass=NullPool)
        async with rowstream.stream(engine, select(Order)) as orders:
            ...
    """
    from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

    def make(url: URL, **options: Any) -> sa.Engine:
        return create_async_engine(url, **options).sync_engine

    return AsyncEngine(_create_sync_engine(url, make, **kwargs))


def _driver_connect_args(driver: str) -> dict[str, Any]:
    """The connect arguments :func:`create_engine` gives ``driver`` (see its docstring)."""
    if driver == "asyncpg":
        return {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "server_settings": {"application_name": APPLICATION_NAME},
        }
    if driver == "asyncmy":
        return {"async_creator_fn": _asyncmy_one_statement}
    return {}


def _create_sync_engine(url: str | URL, make: Any = None, **kwargs: Any) -> sa.Engine:
    """The Engine an AsyncEngine of :func:`create_engine` wraps (its ``sync_engine``).

    ``make`` creates it from the URL and options; by default as ``create_async_engine`` does
    (``_is_async=True``) without importing sqlalchemy.ext.asyncio: wrapping it in
    ``AsyncEngine`` later gives the same engine. ``create_engine`` passes SQLAlchemy's own
    function, which also handles ``async_creator`` and refuses ``server_side_cursors``.
    """
    resolved = resolve_url(url)
    backend = resolved.get_backend_name()
    connect_args = _driver_connect_args(resolved.get_driver_name())
    connect_args.update(kwargs.pop("connect_args", {}))
    options: dict[str, Any] = {"pool_pre_ping": True}
    if kwargs.get("poolclass") is not NullPool and backend != "sqlite":
        options.update(pool_size=10, max_overflow=20)
    options.update(kwargs)
    with engine_errors(resolved):
        if make is None:
            engine = sa.create_engine(
                resolved, connect_args=connect_args, _is_async=True, **options
            )
        else:
            engine = make(resolved, connect_args=connect_args, **options)
    streaming_defaults(engine)
    abandon_cancelled(engine)
    return engine


@contextlib.contextmanager
def engine_errors(url: URL) -> Iterator[None]:
    """SQLAlchemy's refusal of engine options, as one clear line (both faces)."""
    try:
        yield
    except (ArgumentError, NoSuchModuleError, TypeError) as exc:
        raise ConfigurationError(f"cannot create an engine for {mask_url(url)!r}: {exc}") from None


def streaming_defaults(engine: sa.Engine) -> None:
    """Every new connection of ``engine`` (the sync Engine of either face) gets the session
    time zone UTC and TCP keepalive."""
    _set_utc_on_connect(engine)

    # A peer that vanishes while the connection idles (between keyset pages, in the pool) is
    # noticed by TCP keepalive; a silent network during a read is the read timeout's job.
    @event.listens_for(engine, "connect")
    def _keepalive(dbapi_connection: Any, _record: Any) -> None:
        driver = getattr(dbapi_connection, "driver_connection", None)
        # asyncpg and asyncmy under their transport, PyMySQL its own; libpq sets its own.
        set_keepalive(driver_socket(driver) or getattr(driver, "_sock", None))


async def _asyncmy_one_statement(**kwargs: Any) -> Any:
    """An asyncmy connection without CLIENT_MULTI_STATEMENTS.

    asyncmy always sets the flag in its handshake (PyMySQL does not), and SQLAlchemy passes no
    way to clear it: the flag is cleared on the connection before it connects (and so before
    any reconnect, which reuses it). See rowstream._readonly for what stands behind it.
    """
    from asyncmy.connection import Connection
    from asyncmy.constants.CLIENT import MULTI_STATEMENTS

    conn: Any = Connection(**kwargs)  # type: ignore[no-untyped-call]
    conn._client_flag &= ~MULTI_STATEMENTS
    await conn.connect()
    return conn


def _set_utc_on_connect(engine: sa.Engine) -> None:
    statement = {
        "postgresql": "SET TIME ZONE 'UTC'",
        "mysql": "SET time_zone = '+00:00'",
        "mariadb": "SET time_zone = '+00:00'",
    }.get(engine.dialect.name)
    if statement is None:
        return

    @event.listens_for(engine, "connect")
    def _utc(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        # The driver (asyncpg's adapter, psycopg) opened a transaction for the SET: commit it,
        # or the setting is rolled back with the first transaction, and a transaction-pooling
        # PgBouncer keeps a backend pinned to this idle connection until then.
        dbapi_connection.commit()


class ResolvedSource:
    """A source reduced to the engine to connect with, or a caller's connection to borrow.

    A URL source holds the sync side of its private engine (``sync_engine``) and wraps it
    in an AsyncEngine on first use of ``engine``: an export on PostgreSQL's COPY connects
    with :func:`connect_asyncpg` and never needs one, so the CLI does not load
    sqlalchemy.ext.asyncio (and with it the ORM) for it.
    """

    def __init__(
        self,
        engine: AsyncEngine | sa.Engine,
        borrowed: AsyncConnection | None = None,
        owns_engine: bool = False,
    ) -> None:
        self._engine: AsyncEngine | None = None
        if isinstance(engine, sa.Engine):
            self.sync_engine = engine
        else:
            self._engine = engine
            self.sync_engine = engine.sync_engine
        self.borrowed = borrowed
        self.owns_engine = owns_engine

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            from sqlalchemy.ext.asyncio import AsyncEngine

            self._engine = AsyncEngine(self.sync_engine)
        return self._engine

    @property
    def engine_in_use(self) -> bool:
        """True once ``engine`` was asked for (its pool may hold connections)."""
        return self._engine is not None

    @property
    def dialect(self) -> str:
        return self.sync_engine.dialect.name

    async def aclose(self) -> None:
        if self.owns_engine and self._engine is not None:
            # Bounded: a graceful dispose waits on every pooled connection, forever on a
            # silent one. An engine never wrapped never connected: nothing to dispose of.
            await dispose(self._engine)


async def connect_asyncpg(engine: sa.Engine) -> Any:
    """A bare asyncpg connection to the URL of ``engine`` (a ``postgresql+asyncpg`` Engine of
    :func:`_create_sync_engine`), set up as that engine's connections are: the URL's options
    as SQLAlchemy's dialect reads them, statement cache off, ``application_name``, TCP
    keepalive and the session time zone UTC. The caller closes it.

    For the COPY path, which speaks asyncpg's own API anyway: no pool, no AsyncEngine.
    """
    import asyncpg

    args, kwargs = engine.dialect.create_connect_args(engine.url)
    kwargs.update(_driver_connect_args("asyncpg"))
    # SQLAlchemy's adapter takes these; asyncpg does not know them.
    for name in ("prepared_statement_cache_size", "prepared_statement_name_func"):
        kwargs.pop(name, None)
    conn = await asyncpg.connect(*args, **kwargs)
    try:
        set_keepalive(driver_socket(conn))
        await conn.execute("SET TIME ZONE 'UTC'")
    except BaseException:
        conn.terminate()
        raise
    return conn


async def close_asyncpg(conn: Any) -> None:
    """Close a connection of :func:`connect_asyncpg` within CLEANUP_TIMEOUT, else drop it
    without a goodbye (which a silent network would hold up). Never raises."""
    import asyncio

    try:
        async with asyncio.timeout(CLEANUP_TIMEOUT):
            await conn.close()
    except BaseException as exc:
        conn.terminate()
        if not isinstance(exc, Exception):
            raise


def resolve_source(source: Source) -> ResolvedSource:
    """Turn what the caller passed into an engine (or a connection to use as is).

    A URL gets a private engine with a small pool, disposed when the stream closes; an
    AsyncSession lends its engine (the session itself is never used, so it stays usable);
    an AsyncConnection is used as it is, inside its transaction when it has one.
    """
    if isinstance(source, (str, URL)):
        # A small pool of its own: keyset pages and the pooler probe reuse connections.
        small = {} if resolve_url(source).get_backend_name() == "sqlite" else _SMALL_POOL
        engine = _create_sync_engine(source, **small)
        track_connections(engine)
        return ResolvedSource(engine, owns_engine=True)
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

    if isinstance(source, AsyncEngine):
        abandon_cancelled(source)
        return ResolvedSource(source)
    if isinstance(source, AsyncConnection):
        return ResolvedSource(source.engine, borrowed=source)
    if isinstance(source, AsyncSession):
        bind = source.bind
        if isinstance(bind, AsyncConnection):
            return ResolvedSource(bind.engine, borrowed=bind)
        if isinstance(bind, AsyncEngine):
            abandon_cancelled(bind)
            return ResolvedSource(bind)
        raise ConfigurationError(
            "the AsyncSession has no bind: create it with async_sessionmaker(engine) "
            "or pass the engine to rowstream instead"
        )
    if isinstance(source, (sa.Engine, sa.Connection, sa.orm.Session)):
        raise ConfigurationError(
            f"{type(source).__name__} is synchronous: use rowstream.sync.stream() with it, "
            "or pass an AsyncEngine, AsyncSession or URL to rowstream.stream()"
        )
    raise ConfigurationError(
        f"cannot stream from a {type(source).__name__}: pass a database URL string, an "
        "AsyncEngine, an AsyncConnection or an AsyncSession"
    )
