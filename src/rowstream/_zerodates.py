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

It is done in the driver's own converters (:func:`mysql_converters`): a result takes its
converters when its columns are described, at execute, so while the context is open the
connection's converters of the temporal types are wrapped. Only temporal columns pay (one
Python call around the driver's own converter per value); a result without one pays nothing.

I/O-free: both faces use it (asyncmy or aiomysql on the async face, PyMySQL on the sync one).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator
from typing import Any, Literal

from ._exceptions import ConfigurationError, QueryError
from ._temporal import Unrepresentable, marked

__all__ = [
    "DEFAULT_ZERO_DATES",
    "ZERO_DATES",
    "ZeroDate",
    "ZeroDates",
    "check_zero_dates",
    "mysql_converters",
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


def _refuse(base: Callable[[Any], Any], typname: str, value: Any) -> Any:
    out = base(value)
    if out.__class__ is str:
        return marked(ZeroDate(out, typname))
    return out


def _null(base: Callable[[Any], Any], value: Any) -> Any:
    out = base(value)
    return None if out.__class__ is str else out


class _Checked(functools.partial[Any]):
    """The driver's converter ``args[0]``, checked; it hashes and compares equal to it.

    asyncmy hands raw bytes (no ``str`` made first: several times faster) only to the
    converters it knows, which it looks up in a set: being equal to the wrapped one keeps that.
    """

    def __hash__(self) -> int:
        return hash(self.args[0])

    def __eq__(self, other: object) -> bool:
        return other is self or other is self.args[0]


def _converters(decoders: dict[int, Any], zero_dates: ZeroDates) -> dict[int, Any]:
    checked = dict(decoders)
    for code, typname in _TEMPORAL_TYPES.items():
        base = decoders.get(code)
        if base is None:
            continue
        if isinstance(base, _Checked):
            base = base.args[0]
        if zero_dates == "null":
            checked[code] = _Checked(_null, base)
        else:
            checked[code] = _Checked(_refuse, base, typname)
    return checked


@contextlib.contextmanager
def mysql_converters(driver: Any, zero_dates: ZeroDates) -> Iterator[None]:
    """While open, results of the MySQL/MariaDB connection ``driver`` (asyncmy, aiomysql or
    PyMySQL; sync or async) give zero dates as ``zero_dates`` says; the connection leaves as
    it came (it may be the caller's, or go back to the pool). Any other driver: nothing to do.

    asyncmy runs statements with parameters as prepared statements when its statement cache
    is on (``stmt_cache_size``), and its binary rows make a zero date None, like NULL: the
    text protocol is used meanwhile, so every zero date is seen.
    """
    module = type(driver).__module__
    if module.startswith("asyncmy"):
        attr = "_decoders"
    elif module.startswith(("pymysql", "aiomysql")):
        attr = "decoders"
    else:
        yield
        return
    decoders = getattr(driver, attr)
    cached = int(getattr(driver, "_stmt_cache_size", 0) or 0)
    try:
        if zero_dates != "text":
            setattr(driver, attr, _converters(decoders, zero_dates))
        if cached:
            driver._stmt_cache_size = 0
        yield
    finally:
        setattr(driver, attr, decoders)
        if cached:
            driver._stmt_cache_size = cached
