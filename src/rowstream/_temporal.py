"""PostgreSQL dates and timestamps that Python's cannot hold, on the stream path (issue 10).

PostgreSQL sends a ``date`` as int32 days from 2000-01-01 (``infinity`` is INT32_MAX,
``-infinity`` INT32_MIN) and a ``timestamp``/``timestamptz`` as int64 microseconds (INT64_MAX,
INT64_MIN); it holds 4713 BC to 5874897 (timestamps: to 294276). Python's ``date`` and
``datetime`` hold the years 1 to 9999. asyncpg's own codecs turn ``infinity`` into
``date.max``/``datetime.max``, which cannot be told from a real 9999-12-31, so the stream
decodes these three types with the codecs below (``format="tuple"``: asyncpg reads the integer,
these build the value). Every value Python can hold comes out as asyncpg would give it; the
others follow ``infinity=``:

- ``"error"`` (the default): the value becomes an :class:`Unrepresentable` marker and
  :func:`hits` counts it; after each batch the stream looks for the marker only when the count
  moved (:func:`refusal`), and stops with one line naming the column and the value;
- ``"null"``: None; ``"clamp"``: the type's largest or smallest value (asyncpg's own mapping:
  a deliberate loss); ``"text"``: PostgreSQL's text (``'infinity'``, ``'0044-03-15 BC'``).

I/O-free: both faces use it (the sync face's psycopg loaders in rowstream._sync._acompat).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from typing import Any, Literal

from ._exceptions import ConfigurationError, QueryError

__all__ = [
    "DEFAULT_INFINITY",
    "INFINITY_CHOICES",
    "Infinity",
    "Unrepresentable",
    "check_infinity",
    "date_text",
    "decoders",
    "edge",
    "encoders",
    "hits",
    "marked",
    "psycopg_loaders",
    "refusal",
    "refused_by_driver",
    "timestamp_text",
    "window",
]

Infinity = Literal["error", "null", "clamp", "text"]
INFINITY_CHOICES: tuple[Infinity, ...] = ("error", "null", "clamp", "text")
DEFAULT_INFINITY: Infinity = "error"

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
PG_EPOCH = dt.datetime(2000, 1, 1)
PG_EPOCH_UTC = PG_EPOCH.replace(tzinfo=dt.UTC)
PG_EPOCH_ORDINAL = PG_EPOCH.toordinal()
# PostgreSQL's epoch in Unix days (for the civil calendar below).
PG_EPOCH_UNIX_DAYS = 10_957
DAY_US = 86_400_000_000
# The days and microseconds (from PostgreSQL's epoch) Python's date and datetime can hold.
FIRST_DAY = dt.date.min.toordinal() - PG_EPOCH_ORDINAL
LAST_DAY = dt.date.max.toordinal() - PG_EPOCH_ORDINAL
FIRST_US = FIRST_DAY * DAY_US
LAST_US = (LAST_DAY + 1) * DAY_US - 1

# How many values became markers in this process: a stream compares it before and after a
# batch, so the normal path pays one comparison per batch. Streams running at once share it;
# a count moved by another stream only costs a scan that finds nothing.
_hits = [0]


class Unrepresentable:
    """A value the stream refuses (``infinity="error"``); never handed to the caller.

    rowstream._zerodates's :class:`ZeroDate` (MariaDB) is one too, with its own message.
    """

    __slots__ = ("text", "typname")

    def __init__(self, text: str, typname: str) -> None:
        self.text = text
        self.typname = typname

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r}, {self.typname!r})"

    def refusal(self, column: str) -> QueryError:
        """The one-line error naming ``column`` and the value."""
        python = "date" if self.typname == "date" else "datetime"
        if self.text.endswith("infinity"):
            why = f"which Python's {python} cannot hold"
        else:
            why = f"outside the years 1 to 9999 that Python's {python} holds"
        return QueryError(
            f"column {column!r} ({self.typname}) holds {self.text}, {why}: pass "
            "infinity='null', 'clamp' or 'text' to the stream, or select the column as text "
            f"({column}::text), or export it with rowstream export, which writes it exactly",
            column=column,
        )


def hits() -> int:
    """How many values became :class:`Unrepresentable` so far (compare two readings)."""
    return _hits[0]


def marked(marker: Unrepresentable) -> Unrepresentable:
    """``marker``, counted: the stream searches the batches for markers once :func:`hits`
    moved."""
    _hits[0] += 1
    return marker


def check_infinity(choice: str) -> Infinity:
    """Refuse an unknown ``infinity=`` choice before anything connects.

    >>> check_infinity("null")
    'null'
    """
    for known in INFINITY_CHOICES:
        if choice == known:
            return known
    raise ConfigurationError(
        f"unknown infinity choice {choice!r}: choose one of {', '.join(INFINITY_CHOICES)}"
    )


def _civil(unix_days: int) -> str:
    """The proleptic Gregorian date of a Unix day, BC as PostgreSQL writes it (Howard
    Hinnant's days_from_civil, inverted)."""
    z = unix_days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    if year <= 0:
        return f"{1 - year:04d}-{month:02d}-{day:02d} BC"
    return f"{year:04d}-{month:02d}-{day:02d}"


def date_text(days: int) -> str:
    """PostgreSQL's text of a ``date`` sent as ``days`` from 2000-01-01.

    >>> date_text(-730_485), date_text(2**31 - 1)
    ('0001-01-01 BC', 'infinity')
    """
    if days == INT32_MAX:
        return "infinity"
    if days == -INT32_MAX - 1:
        return "-infinity"
    return _civil(days + PG_EPOCH_UNIX_DAYS)


def timestamp_text(micros: int, *, tz: bool) -> str:
    """PostgreSQL's text of a ``timestamp`` (``tz``: ``timestamptz``, in UTC) sent as
    ``micros`` from 2000-01-01.

    >>> timestamp_text(2**63 - 1, tz=True), timestamp_text(-63_113_904_000_000_000, tz=True)
    ('infinity', '0001-01-01 00:00:00+00 BC')
    """
    if micros == INT64_MAX:
        return "infinity"
    if micros == -INT64_MAX - 1:
        return "-infinity"
    days, rest = divmod(micros, DAY_US)
    seconds, fraction = divmod(rest, 1_000_000)
    clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    if fraction:
        clock += f".{fraction:06d}".rstrip("0")
    if tz:
        clock += "+00"
    day, bc, _ = _civil(days + PG_EPOCH_UNIX_DAYS).partition(" BC")
    return f"{day} {clock}" + (" BC" if bc else "")


_UTC_MAX = dt.datetime.max.replace(tzinfo=dt.UTC)
_UTC_MIN = dt.datetime.min.replace(tzinfo=dt.UTC)
_EXTREMES: dict[str, tuple[Any, Any]] = {
    "date": (dt.date.max, dt.date.min),
    "timestamp": (dt.datetime.max, dt.datetime.min),
    "timestamptz": (_UTC_MAX, _UTC_MIN),
}


def edge(choice: Infinity, text: str, typname: str, top: bool) -> Any:
    """What a value Python cannot hold becomes; ``top``: it lies after the year 9999."""
    if choice == "error":
        return marked(Unrepresentable(text, typname))
    if choice == "null":
        return None
    if choice == "clamp":
        largest, smallest = _EXTREMES[typname]
        return largest if top else smallest
    return text


@cache
def decoders(choice: Infinity) -> dict[str, Callable[[tuple[int]], Any]]:
    """asyncpg tuple-format decoders of ``date``, ``timestamp`` and ``timestamptz``.

    One set per choice (cached), so a statement prepared with them stays right for any
    stream with the same choice.
    """
    from_ordinal = dt.date.fromordinal
    delta = dt.timedelta
    epoch, epoch_utc = PG_EPOCH, PG_EPOCH_UTC

    def date_decode(value: tuple[int]) -> Any:
        days = value[0]
        if FIRST_DAY <= days <= LAST_DAY:
            return from_ordinal(days + PG_EPOCH_ORDINAL)
        return edge(choice, date_text(days), "date", days > 0)

    def timestamp_decode(value: tuple[int]) -> Any:
        micros = value[0]
        if FIRST_US <= micros <= LAST_US:
            return epoch + delta(0, 0, micros)
        text = timestamp_text(micros, tz=False)
        return edge(choice, text, "timestamp", micros > 0)

    def timestamptz_decode(value: tuple[int]) -> Any:
        micros = value[0]
        if FIRST_US <= micros <= LAST_US:
            return epoch_utc + delta(0, 0, micros)
        text = timestamp_text(micros, tz=True)
        return edge(choice, text, "timestamptz", micros > 0)

    return {
        "date": date_decode,
        "timestamp": timestamp_decode,
        "timestamptz": timestamptz_decode,
    }


def _micros(delta: dt.timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _date_encode(value: dt.date) -> tuple[int]:
    return (value.toordinal() - PG_EPOCH_ORDINAL,)


def _timestamp_encode(value: dt.datetime | dt.date) -> tuple[int]:
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    elif value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return (_micros(value - PG_EPOCH),)


def _timestamptz_encode(value: dt.datetime | dt.date) -> tuple[int]:
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    # A naive value is local time, as asyncpg's own encoder takes it.
    return (_micros(value.astimezone(dt.UTC) - PG_EPOCH_UTC),)


def encoders() -> dict[str, Callable[[Any], tuple[int]]]:
    """The matching encoders (parameters: a keyset page's last key, a filter's datetime).

    Unlike asyncpg's, they send ``date.max`` as 9999-12-31, not ``infinity``: exact both ways.
    """
    return {
        "date": _date_encode,
        "timestamp": _timestamp_encode,
        "timestamptz": _timestamptz_encode,
    }


# psycopg's type OIDs of the values Python's date and datetime may not hold.
_PSYCOPG_OIDS = {"date": 1082, "timestamp": 1114, "timestamptz": 1184}


@cache
def _exact_loader(base: type[Any], typname: str, infinity: Infinity) -> type[Any]:
    """A text loader that asks ``base`` (psycopg's own, usually its C one) first and turns
    only what it refuses (DataError: infinity, BC, after 9999) into the ``infinity`` choice:
    one Python call per value, the parsing stays psycopg's."""
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
def psycopg_loaders(driver: Any, infinity: Infinity, *, diagnose: bool = False) -> Iterator[None]:
    """While open, cursors created on the psycopg connection ``driver`` (sync or async) load
    ``date``, ``timestamp`` and ``timestamptz`` text with :func:`_exact_loader`'s loaders
    (psycopg refuses what Python cannot hold, but cannot say in which column); a cursor
    keeps its loaders to its end, and the connection's own are put back afterwards. Any
    other driver: nothing to do.
    """
    adapters: Any = getattr(driver, "adapters", None)
    psycopg = adapters is not None and type(driver).__module__.startswith("psycopg")
    # psycopg refuses these values by itself: with infinity="error" its C loaders stay (no
    # cost), and only a refusal reads the failing rows again with these (``diagnose``).
    if not psycopg or (infinity == "error" and not diagnose):
        yield
        return
    from psycopg.pq import Format

    previous = {oid: adapters.get_loader(oid, Format.TEXT) for oid in _PSYCOPG_OIDS.values()}
    try:
        for typname, oid in _PSYCOPG_OIDS.items():
            base = previous[oid]
            if base is not None:
                adapters.register_loader(oid, _exact_loader(base, typname, infinity))
        yield
    finally:
        for oid, base in previous.items():
            if base is not None:
                adapters.register_loader(oid, base)


# In an array psycopg's C loaders say "can't parse date 'infinity}'" instead.
_PSYCOPG_REFUSAL = re.compile(r"(date|timestamp) too (small|large)|can't parse (date|timestamp)")


def refused_by_driver(exc: BaseException) -> bool:
    """True for psycopg's own refusal of a date or timestamp Python cannot hold (``DataError:
    date too large (after year 10K): 'infinity'``): it says the value, not the column."""
    inner: BaseException | None = exc
    seen: set[int] = set()
    # An error's ``orig`` and ``__cause__`` can lead back to itself (a translated drop whose
    # cause is the driver error that carries it): walk each error once.
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if type(inner).__name__ == "DataError" and type(inner).__module__.startswith("psycopg"):
            return _PSYCOPG_REFUSAL.search(str(inner)) is not None
        inner = getattr(inner, "orig", None) or inner.__cause__
    return False


def window(statement: Any, *, skip: int, limit: int) -> tuple[Any, list[str]] | None:
    """``statement``'s rows ``skip`` to ``skip + limit`` as plain columns, and their names:
    read again with the exact loaders, they show which column held the refused value. None
    for a bare ``text()`` (it cannot be wrapped)."""
    # Here, not at the top: the CLI's parser reaches this module (rowstream._zerodates's
    # option) and must not load SQLAlchemy.
    import sqlalchemy as sa
    from sqlalchemy.sql.selectable import Select, TextualSelect

    if not isinstance(statement, (Select, TextualSelect)):
        return None
    selected = list(statement.selected_columns)
    columns = list(statement.subquery().c)
    if len(columns) != len(selected):
        return None
    names = [
        str(getattr(c, "key", None) or getattr(c, "name", f"column {i + 1}"))
        for i, c in enumerate(selected)
    ]
    return sa.select(*columns).offset(skip).limit(limit), names


def _find(value: Any, name: str, depth: int = 0) -> tuple[str, Unrepresentable] | None:
    if isinstance(value, Unrepresentable):
        return name, value
    if depth > 3:
        return None
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _find(item, name, depth + 1)
            if found is not None:
                return found
        return None
    if hasattr(value, "_sa_instance_state"):
        # An ORM instance (or one loaded by selectinload() into it): its attributes.
        for key, item in vars(value).items():
            if not key.startswith("_sa_"):
                found = _find(item, key, depth + 1)
                if found is not None:
                    return found
    return None


def refusal(batch: Sequence[Any], keys: Sequence[str]) -> QueryError | None:
    """The error naming the first refused value of ``batch`` (rows or ORM instances).

    >>> refusal([(1, Unrepresentable("infinity", "date"))], ["id", "valid_to"]).context
    {'column': 'valid_to'}
    """
    for item in batch:
        if isinstance(item, Sequence) and not isinstance(item, str):
            found = None
            for name, value in zip(keys, item, strict=False):
                found = _find(value, name)
                if found is not None:
                    break
        else:
            found = _find(item, keys[0] if len(keys) == 1 else "?")
        if found is None:
            continue
        name, marker = found
        return marker.refusal(name)
    return None
