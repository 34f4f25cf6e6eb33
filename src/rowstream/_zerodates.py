"""MariaDB zero dates on the stream path (issue 10).

MariaDB stores ``0000-00-00``, ``0000-00-00 00:00:00`` and dates with zero parts
(``2024-00-15``, ``2024-01-00``) unless ``sql_mode`` holds ``NO_ZERO_DATE`` and
``NO_ZERO_IN_DATE`` (with ``ALLOW_INVALID_DATES``, also days a month does not have:
``2024-02-31``). Python's ``date`` cannot hold them, and the drivers (asyncmy, aiomysql, PyMySQL)
hand such a value back as the server's text: a ``str`` in a ``DATE``, ``DATETIME`` or
``TIMESTAMP`` column. The stream follows ``zero_dates=`` instead, the export's option:

- ``"refuse"`` (the default): the value becomes a :class:`ZeroDate` marker, counted like
  rowstream._temporal's (:func:`rowstream._temporal.hits`); after the batch the stream stops
  with one line naming the column and the value;
- ``"null"``: None; ``"text"``: the server's text (``'0000-00-00'``), as the driver gives it.

Where the driver hands the ``str`` back: while the stream's statement (each keyset page)
executes, the cursors opened on its connection are of a subclass (:func:`checked_cursor`) whose
fetches pass each batch of raw rows through :func:`checked_rows` before SQLAlchemy builds rows
or entities from them. It looks at the temporal columns only, a column at a time, in C
(``map``), so a batch without a zero date costs tens of ns per temporal value and asyncmy keeps
its fast parsing from bytes; a result without a temporal column pays nothing, and ``"text"``
changes nothing. rowstream._acompat swaps the class of SQLAlchemy's asyncmy or aiomysql
adapter, rowstream._sync._acompat that of PyMySQL's connection.

I/O-free: both faces use it.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from ._exceptions import ConfigurationError, QueryError
from ._temporal import Unrepresentable, marked

__all__ = [
    "DEFAULT_ZERO_DATES",
    "ZERO_DATES",
    "ZeroDate",
    "ZeroDates",
    "check_zero_dates",
    "checked_cursor",
    "checked_rows",
    "temporal_columns",
    "text_protocol",
]

# The export's option too (rowstream._values): one name, one set of values, one default.
ZeroDates = Literal["refuse", "null", "text"]
ZERO_DATES: tuple[ZeroDates, ...] = ("refuse", "null", "text")
DEFAULT_ZERO_DATES: ZeroDates = "refuse"

# MySQL's column type codes (MYSQL_TYPE_*) of the values a zero date can hide in.
_TEMPORAL_TYPES = {7: "timestamp", 10: "date", 12: "datetime", 14: "date"}
_ZERO_PART = re.compile(r"0+-|\d+-0+-|\d+-\d+-0+(?!\d)")


def check_zero_dates(value: str) -> ZeroDates:
    """Refuse an unknown ``zero_dates=`` choice before anything connects.

    >>> check_zero_dates("null")
    'null'
    """
    for choice in ZERO_DATES:
        if value == choice:
            return choice
    raise ConfigurationError(f"unknown zero_dates {value!r}: choose one of {', '.join(ZERO_DATES)}")


class ZeroDate(Unrepresentable):
    """A MariaDB date the stream refuses (``zero_dates="refuse"``); never handed out."""

    __slots__ = ()

    def refusal(self, column: str) -> QueryError:
        """The one-line error naming ``column`` and the value."""
        what = "the zero date" if _ZERO_PART.match(self.text) else "the invalid date"
        python = "date" if self.typname == "date" else "datetime"
        return QueryError(
            f"column {column!r} ({self.typname}) holds {what} {self.text!r}, which Python's "
            f"{python} cannot hold: pass zero_dates='null' for None or zero_dates='text' for "
            "the server's text",
            column=column,
        )


def temporal_columns(description: Any) -> list[tuple[int, str]]:
    """The positions and types of a result's ``DATE``, ``DATETIME`` and ``TIMESTAMP`` columns
    (from a DB-API ``cursor.description``)."""
    if not description:
        return []
    return [
        (i, _TEMPORAL_TYPES[d[1]]) for i, d in enumerate(description) if d[1] in _TEMPORAL_TYPES
    ]


def checked_rows(rows: Sequence[Any], description: Any, zero_dates: ZeroDates) -> Sequence[Any]:
    """``rows`` (a driver's raw tuples) with the zero dates of their temporal columns made
    ``zero_dates`` ("refuse": markers; "null": None); ``rows`` itself when there is none.

    >>> checked_rows([(1, "0000-00-00")], [("id", 3), ("d", 10)], "null")
    [(1, None)]
    """
    if not rows:
        return rows
    columns = temporal_columns(description)
    for i, _ in columns:
        if str in map(type, map(itemgetter(i), rows)):
            break
    else:
        return rows
    out = []
    for row in rows:
        if any(row[i].__class__ is str for i, _ in columns):
            values = list(row)
            for i, typname in columns:
                text = values[i]
                if text.__class__ is str:
                    values[i] = None if zero_dates == "null" else marked(ZeroDate(text, typname))
            row = tuple(values)
        out.append(row)
    return out


@functools.cache
def checked_cursor(cursor_cls: type[Any], zero_dates: ZeroDates) -> type[Any]:
    """``cursor_cls`` (a DB-API cursor class, or SQLAlchemy's adapter of one), whose
    ``fetchone``, ``fetchmany`` and ``fetchall`` go through :func:`checked_rows`; one class per
    cursor class and choice."""

    def fetchone(self: Any) -> Any:
        row = cursor_cls.fetchone(self)
        return row if row is None else checked_rows([row], self.description, zero_dates)[0]

    def fetchmany(self: Any, size: int | None = None) -> Any:
        return checked_rows(cursor_cls.fetchmany(self, size), self.description, zero_dates)

    def fetchall(self: Any) -> Any:
        return checked_rows(cursor_cls.fetchall(self), self.description, zero_dates)

    methods = {"fetchone": fetchone, "fetchmany": fetchmany, "fetchall": fetchall}
    return type(f"ZeroDate{cursor_cls.__name__}", (cursor_cls,), {"__slots__": (), **methods})


@contextlib.contextmanager
def text_protocol(driver: Any) -> Iterator[None]:
    """While open, the asyncmy connection ``driver`` runs every statement on the text
    protocol. With its statement cache on (``stmt_cache_size``), asyncmy runs a statement with
    parameters as a prepared statement, and its binary rows make a zero date None, like NULL:
    no check could tell them apart. Any other driver: nothing to do."""
    cached = getattr(driver, "_stmt_cache_size", 0)
    if not cached or not type(driver).__module__.startswith("asyncmy"):
        yield
        return
    driver._stmt_cache_size = 0
    try:
        yield
    finally:
        driver._stmt_cache_size = cached
