"""Translate driver and SQLAlchemy errors into rowstream's tree, at the boundary.

Each driver reports the same failure differently (asyncpg by SQLSTATE, the MySQL drivers by
error number, aiosqlite by message), so classification looks at all three and falls back to
:class:`QueryError` for anything the server said about the statement.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any, NoReturn

import sqlalchemy.exc as sa_exc
from sqlalchemy.engine import URL

from ._exceptions import (
    ConnectionLostError,
    QueryError,
    RowstreamError,
    SourceError,
    UnsupportedQueryError,
)
from ._source import mask_url, scrub

__all__ = ["is_connection_lost", "raise_translated", "scrub", "translate"]

# SQLSTATE classes and codes (PostgreSQL) and error numbers (MySQL/MariaDB client and server).
_PG_CONNECTION_LOST = {
    "57P01",
    "57P02",
    "57P03",
    "08000",
    "08003",
    "08006",
    "08001",
    "08004",
    "08P01",
}
_PG_MISSING_DATABASE = "3D000"
_PG_AUTH = {"28P01", "28000"}
# A transaction-pooling pooler hands the next transaction a backend that never prepared the
# statement (26000), or one that already has one of that name (42P05). Anything else that
# mentions prepared statements (asyncpg's "cannot insert multiple commands into a prepared
# statement", a 42601 syntax error) is about the statement, not the path.
_PG_POOLER_STATES = {"26000", "42P05"}
_PG_MISSING_PREPARED = re.compile(r"prepared statement .* (does not exist|already exists)")
_PG_SYNTAX = "42601"
_MY_CONNECTION_LOST = {2006, 2013, 2055}
_MY_CANNOT_CONNECT = {2002, 2003, 2005}
_MY_MISSING_DATABASE = 1049
_MY_AUTH = {1045, 1044}

_EAGER_FIX = (
    "collection joinedload(), subqueryload() and unique() need the whole result in memory, "
    "which defeats streaming: load collections with selectinload() instead (a many-to-one "
    "joinedload() is fine)"
)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _driver_error(exc: BaseException) -> BaseException:
    """The innermost driver exception behind SQLAlchemy's wrappers."""
    inner: BaseException = exc
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        inner = exc.orig
    # SQLAlchemy's async adapters raise their own DBAPI-style error from the driver's.
    while inner.__cause__ is not None and type(inner).__module__.startswith("sqlalchemy"):
        inner = inner.__cause__
    return inner


def _sqlstate(exc: BaseException) -> str | None:
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return str(code) if code else None


def _mysql_errno(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int):
        return args[0]
    return None


def is_sqlite_locked(exc: BaseException) -> bool:
    """True when ``exc`` is SQLite's lock wait running out ("database is locked")."""
    inner = _driver_error(exc)
    return type(inner).__name__ == "OperationalError" and "database is locked" in str(inner)


def sqlite_locked_error(exc: BaseException) -> QueryError:
    """One line for SQLite's "database is locked" that says what to do about it."""
    return QueryError(
        "the SQLite database is locked: a connection waited for another's lock until its "
        "busy timeout ran out (a process() handler that writes to the very file being read "
        "waits for the stream's read, which waits for the handler); switch the database to "
        "WAL mode (PRAGMA journal_mode=WAL: readers and one writer work at once) or let the "
        "handler write to another database"
    )


def is_connection_lost(exc: BaseException) -> bool:
    """True when ``exc`` means the connection is gone (the stream may be resumed)."""
    if isinstance(exc, ConnectionLostError):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    inner = _driver_error(exc)
    if isinstance(inner, (ConnectionError, socket.timeout, EOFError)):
        return True
    state = _sqlstate(inner)
    if state in _PG_CONNECTION_LOST:
        return True
    if _mysql_errno(inner) in _MY_CONNECTION_LOST:
        return True
    name = type(inner).__name__
    text = str(inner).lower()
    return name in {"ConnectionDoesNotExistError", "InternalClientError"} or (
        "connection" in text
        and ("closed" in text or "lost" in text or "reset" in text or "terminat" in text)
    )


def translate(
    exc: BaseException, *, url: URL | None, connecting: bool = False, resumable: bool = True
) -> RowstreamError:
    """Map ``exc`` to the most specific rowstream error, with a message that says what to do.

    ``resumable=False``: the work cannot pick up where it stopped (an export's COPY), so a lost
    connection says to run it again.
    """
    if isinstance(exc, RowstreamError):
        return exc
    where = mask_url(url) if url is not None else "the database"
    if isinstance(exc, sa_exc.InvalidRequestError) and not isinstance(exc, sa_exc.DBAPIError):
        text = str(exc)
        if "yield_per" in text or "unique()" in text:
            return UnsupportedQueryError(f"cannot stream this statement: {_EAGER_FIX}")
        return UnsupportedQueryError(f"cannot stream this statement: {_first_line(text)}")
    inner = _driver_error(exc)
    if is_sqlite_locked(inner):
        return sqlite_locked_error(inner)
    state = _sqlstate(inner)
    errno = _mysql_errno(inner)
    text = str(inner.args[1]) if errno is not None and len(inner.args) > 1 else str(inner)
    detail = scrub(_first_line(text) or type(inner).__name__, url)

    if state == _PG_MISSING_DATABASE or errno == _MY_MISSING_DATABASE:
        return SourceError(f"cannot use {where}: {detail}; create the database or fix the URL")
    if state in _PG_AUTH or errno in _MY_AUTH:
        return SourceError(
            f"cannot log in to {where}: {detail}; check the user name and password in the URL"
        )
    if isinstance(exc, sa_exc.TimeoutError):
        # QueuePool's "limit of size N overflow M reached": the server is fine, the engine's
        # pool is not big enough for the streams running at once.
        return SourceError(
            f"the connection pool of {where} is full: {detail}; every connection is held by "
            "another stream or session: give the engine a larger pool (rowstream.create_engine"
            "(url, pool_size=..., max_overflow=...)) or run fewer streams at once"
        )
    if state in _PG_POOLER_STATES or _PG_MISSING_PREPARED.search(detail):
        return SourceError(
            f"{where}: {detail}; a transaction-pooling pooler (PgBouncer) sits in the path: "
            "use a URL or rowstream.create_engine(), which turn statement caches off, or pass "
            "connect_args={'statement_cache_size': 0, 'prepared_statement_cache_size': 0}"
        )
    if not connecting and is_connection_lost(exc):
        # Mid-stream, a refused or reset connection is a drop the stream can resume from.
        if not resumable:
            return ConnectionLostError(
                f"lost the connection to {where}: {detail}; nothing was written to the "
                "target: run the export again"
            )
        return ConnectionLostError(
            f"lost the connection to {where}: {detail}; rowstream resumes by itself when the "
            "stream has a key, otherwise run the stream again"
        )
    if url is not None and url.get_backend_name() == "sqlite" and _is_sqlite_file_error(text):
        return SourceError(_sqlite_file_advice(url, detail))
    if connecting or errno in _MY_CANNOT_CONNECT or isinstance(inner, OSError):
        if isinstance(inner, socket.gaierror):
            detail = "unknown host"
        return SourceError(
            f"cannot connect to {where}: {detail}; check that the server is running and "
            "that host, port and database in the URL are right"
        )
    decoding = _undecodable(inner)
    if decoding is not None:
        return QueryError(decoding)
    if is_conversion_error(inner):
        return QueryError(
            f"cannot convert a value of the result: {detail}; the column's type in the "
            "statement does not match what the database holds: fix the value, or select the "
            "column with another type (sa.type_coerce(column, sa.String))"
        )
    if state == _PG_SYNTAX and "multiple commands" in detail:
        return QueryError(f"the server rejected the query: {detail}; send one statement at a time")
    if not _from_the_database(inner, state, errno):
        # The driver itself refused (asyncpg's InterfaceError, a client-side MySQL error):
        # nothing reached the server, so it is not said to have rejected anything.
        driver = type(inner).__module__.split(".")[0]
        return QueryError(f"the database driver ({driver}) refused the query: {detail}")
    return QueryError(f"the server rejected the query: {detail}")


def _from_the_database(inner: BaseException, state: str | None, errno: int | None) -> bool:
    """True when the database itself reported the error: a SQLSTATE (PostgreSQL), a server
    error number (MySQL's client errors are 2000 and up), or SQLite's engine."""
    if state is not None:
        return True
    if errno is not None:
        return errno < 2000
    return type(inner).__module__.split(".")[0] == "sqlite3"


def is_conversion_error(exc: BaseException) -> bool:
    """True for an error raised in this process while a row's values were converted (a result
    processor or a driver's decoder: ``Invalid isoformat string``, a number out of range, a
    value an ``Enum`` does not know), as opposed to one the database sent."""
    return (
        isinstance(exc, (ValueError, ArithmeticError, TypeError, LookupError))
        and not isinstance(exc, sa_exc.SQLAlchemyError)
        # aiosqlite's ValueError("no active connection") is about the connection.
        and "connection" not in str(exc).lower()
    )


_SQLITE_FILE_ERRORS = (
    "unable to open database file",
    "file is not a database",
    "database disk image is malformed",
    "attempt to write a readonly database",
)


def _is_sqlite_file_error(text: str) -> bool:
    return any(phrase in text for phrase in _SQLITE_FILE_ERRORS)


def _sqlite_file_advice(url: URL, detail: str) -> str:
    """What is wrong with a SQLite file that cannot be opened: it has no host or port."""
    database = url.database or ""
    path = Path(database)
    label = f"cannot open the SQLite database {database!r}: {detail}"
    if "not a database" in detail or "malformed" in detail:
        return f"{label}; the file is not a SQLite database (or is damaged): check the path"
    if database.startswith("file:") or not database or database == ":memory:":
        return f"{label}; check the path in the URL"
    if path.is_dir():
        return f"{label}; {database!r} is a directory: name the database file in it"
    if not path.parent.is_dir():
        return (
            f"{label}; the directory {str(path.parent)!r} does not exist: create it or fix the "
            "path (sqlite:///relative.db or sqlite:////absolute.db)"
        )
    if path.exists() and not os.access(path, os.R_OK):
        return f"{label}; this user may not read the file: check its permissions"
    if not path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        return (
            f"{label}; the file does not exist and this user may not create files in "
            f"{str(path.parent)!r}: check the path and the directory's permissions"
        )
    return f"{label}; check the path and the permissions of the file and its directory"


# asyncpg's type OIDs of the columns whose values Python's date/datetime may not hold.
_PG_TEMPORAL_OIDS = {1082: "date", 1114: "timestamp", 1184: "timestamptz"}
_PG_TEMPORAL_OIDS |= {1182: "date[]", 1115: "timestamp[]", 1185: "timestamptz[]"}


def _undecodable(inner: BaseException) -> str | None:
    """A message for a value the driver could not turn into a Python date or datetime.

    PostgreSQL holds dates from 4713 BC to 5874897 and timestamps to 294276; Python's
    date and datetime hold the years 1 to 9999, so the driver fails on the client (this is no
    server error): asyncpg with a ValueError or OverflowError from its codec, psycopg with a
    DataError ("date too small (before year 1): '0044-03-15 BC'", also for infinity). The
    columns that may hold such values are named from the cursor's description, found on the
    failing call's stack (SQLAlchemy's adapter cursor keeps it).
    """
    frames = []
    tb = inner.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames:
        return None
    exact = True
    if (
        isinstance(inner, (ValueError, OverflowError))
        and "asyncpg" in frames[-1].f_code.co_filename
    ):
        # The failing codec is the innermost frame: date_decode, timestamp_decode, ...
        codec = frames[-1].f_code.co_name.rpartition(".")[2].removesuffix("_decode")
    elif type(inner).__module__.startswith("psycopg") and type(inner).__name__ == "DataError":
        found = re.match(r"(date|timestamp) too (small|large)", str(inner))
        if found is None:
            return None
        codec, exact = found.group(1), False  # psycopg says timestamp for timestamptz too
    else:
        return None
    if codec not in ("date", "timestamp", "timestamptz"):
        return None
    columns = [
        f"{name} ({kind})"
        for name, kind in _temporal_columns(frames)
        if kind.removesuffix("[]") == codec or (not exact and kind.startswith(codec))
    ]
    cast = "col::text"
    if len(columns) == 1:
        which = f"column {columns[0]}"
        cast = columns[0].split(" (")[0] + "::text"
    elif columns:
        which = "one of the columns " + ", ".join(columns)
    else:
        which = f"a {codec} column"
    return (
        f"cannot read {which}: a value is outside the years 1 to 9999 that Python's date and "
        f"datetime hold (a BC date, a later year or infinity; {_first_line(str(inner))}): "
        "pass infinity='null', 'clamp' or 'text' to the stream, or select the column as text "
        f"({cast}), or export it with rowstream export, which writes it exactly"
    )


def _temporal_columns(frames: list[Any]) -> list[tuple[str, str]]:
    """(name, type) of the date and timestamp columns in the first cursor description on the
    stack; DBAPI descriptions are sequences of (name, type code, ...)."""
    for frame in frames:
        description = getattr(frame.f_locals.get("self"), "description", None)
        if description is None:
            # SQLAlchemy closes a cursor that failed while it buffered the first rows: its
            # description is gone, but psycopg's fetch still holds the result it was loading.
            description = _result_description(frame.f_locals.get("res"))
        if not isinstance(description, (list, tuple)) or not description:
            continue
        found = []
        for column in description:
            try:
                name, oid = column[0], column[1]
            except (TypeError, IndexError, KeyError):
                return []
            if oid in _PG_TEMPORAL_OIDS:
                found.append((str(name), _PG_TEMPORAL_OIDS[oid]))
        return found
    return []


def _result_description(result: Any) -> list[tuple[str, int]] | None:
    """(name, type oid) of each column of a psycopg ``PGresult``, or None."""
    try:
        return [
            (bytes(result.fname(i)).decode(), int(result.ftype(i)))
            for i in range(int(result.nfields))
        ]
    except Exception:
        return None


def raise_translated(
    exc: BaseException, *, url: URL | None, connecting: bool = False, resumable: bool = True
) -> NoReturn:
    """``raise translate(exc) from exc``, for use in ``except`` blocks."""
    raise translate(exc, url=url, connecting=connecting, resumable=resumable) from exc
