"""PostgreSQL values that Arrow's types cannot hold, caught on the way to Parquet.

Why this exists: ADBC decodes binary COPY without a word about values Arrow has no room for.
PostgreSQL sends a ``timestamp`` as int64 microseconds from 2000-01-01 (``infinity`` is
INT64_MAX, ``-infinity`` INT64_MIN) and a ``date`` as int32 days (INT32_MAX and INT32_MIN);
ADBC adds the offset to 1970 and lets the sum wrap, so ``infinity`` and any instant after
294247-01-10 04:00:54.775807 become dates around 290000 BC. It also flattens an array of two
dimensions (``{{1,2},{3,NULL}}`` becomes ``[1,2,3,null]``), and ``NaN`` in ``numeric(p, s)``
has no decimal128 form. Every such value is written exactly, refused, or written as the
caller chose:

- ``infinity=`` (``date``, ``timestamp``, ``timestamptz`` and their arrays; also the instants
  after Arrow's last microsecond): ``"error"`` (the default) stops the export with one line
  naming the column and the value; ``"null"`` writes NULL; ``"clamp"`` writes the type's
  extreme values (INT64_MAX/-INT64_MAX microseconds, INT32_MAX/-INT32_MAX days), which DuckDB
  reads back as ``infinity``/``-infinity`` (a finite instant past the range becomes
  INT64_MAX - 1); ``"text"`` writes the column as PostgreSQL's text. The instant at INT64_MAX
  itself (294247-01-10 04:00:54.775807) counts as past the range, since DuckDB would read it
  as infinity.
- ``nan=`` (``numeric(p, s)`` and its arrays): ``"error"``, ``"null"`` or ``"text"``.
- Arrays with more than one dimension, or whose first index is not 1, are refused: Arrow
  lists here are one-dimensional and start at 0; the message says to cast them to text.

Cost on the fast path: one NumPy minimum over each temporal column's int64/int32 values per
batch, and a maximum for timestamps (wrapped values are all below PostgreSQL's first instant,
4714-11-24 BC); decimals are
cast as before and scanned only when the cast fails; an array column adds one mostly-NULL
text column (``array_ndims``/``array_lower`` on the server).

The rows paths (a cursor when ADBC cannot connect, ``method="stream"``) read temporal
columns as the same integers ADBC produces (computed by the server), so one converter and one
set of messages serve every path, and asyncpg never has to build a ``date`` for a BC value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from ._arrow import ArrowColumn, rows_batch, schema_of
from ._exceptions import SinkError
from ._pgcopy import quote_ident
from ._sinks._options import check_edge_values
from ._temporal import DAY_US, INT32_MAX, INT64_MAX, PG_EPOCH_UNIX_DAYS, _civil, date_text

if TYPE_CHECKING:
    from ._pgcopy import PgColumn

__all__ = ["PgRead"]

# PostgreSQL's epoch (2000-01-01) in Unix days and microseconds.
PG_EPOCH_DAYS = PG_EPOCH_UNIX_DAYS
PG_EPOCH_US = PG_EPOCH_DAYS * DAY_US
# PostgreSQL's first day, 4714-11-24 BC, in Unix days: every finite value is at or after it,
# every value ADBC wrapped is far below it.
FIRST_DAY = -2_440_588
FIRST_US = FIRST_DAY * 86_400_000_000
# What ADBC makes of infinity and -infinity (the sentinels plus the epoch offset, wrapped).
ADBC_DATE_INFINITY = INT32_MAX + PG_EPOCH_DAYS - 2**32
ADBC_DATE_MINUS_INFINITY = -(2**31) + PG_EPOCH_DAYS
ADBC_TS_INFINITY = INT64_MAX + PG_EPOCH_US - 2**64
ADBC_TS_MINUS_INFINITY = -(2**63) + PG_EPOCH_US
# The last instant written as itself: one microsecond short of INT64_MAX, which DuckDB reads
# as infinity.
LAST_ARROW_INSTANT = "294247-01-10 04:00:54.775806"
# Characters of an offending array shown in a message.
SHOWN_CHARS = 60

Kind = Literal["date", "timestamp", "time", "decimal", "other"]


def _kind(arrow: pa.DataType | None) -> Kind:
    if arrow is None:
        return "other"
    if pa.types.is_date32(arrow):
        return "date"
    if pa.types.is_timestamp(arrow):
        return "timestamp"
    if pa.types.is_time64(arrow):
        return "time"
    if pa.types.is_decimal(arrow):
        return "decimal"
    return "other"


@dataclass(frozen=True)
class _Part:
    """One exported column: its output, its SQL on each path, what to check."""

    column: ArrowColumn
    kind: Kind
    is_list: bool
    typname: str
    adbc_sql: str
    rows_sql: str
    rows_type: pa.DataType


def _rows_scalar(ref: str, kind: Kind, aware: bool) -> str:
    """SQL giving ``ref`` as the integers ADBC produces (Unix days, microseconds); ``aware``:
    a timestamptz, whose date and time of day are taken in UTC whatever the session's zone."""
    if kind == "date":
        return (
            f"CASE WHEN isfinite({ref}) THEN {ref} - DATE '1970-01-01' "
            f"WHEN {ref} = 'infinity' THEN {ADBC_DATE_INFINITY} "
            f"WHEN {ref} = '-infinity' THEN {ADBC_DATE_MINUS_INFINITY} END"
        )
    if kind == "timestamp":
        # Days and time of day apart: extract(epoch) rounds near the ends (PostgreSQL 15 gives
        # ...775800 for 294247-01-10 04:00:54.775807). The numeric sum wraps as ADBC's int64.
        local = f"({ref} AT TIME ZONE 'UTC')" if aware else ref
        return (
            f"CASE WHEN isfinite({ref}) THEN ((({local}::date - DATE '1970-01-01')::numeric "
            f"* 86400000000 + extract(epoch FROM {local}::time) * 1000000 + {2**63}) "
            f"% {2**64} - {2**63})::int8 "
            f"WHEN {ref} = 'infinity' THEN {ADBC_TS_INFINITY} "
            f"WHEN {ref} = '-infinity' THEN {ADBC_TS_MINUS_INFINITY} END"
        )
    if kind == "time":
        # asyncpg turns 24:00:00 into 00:00:00; the integer keeps it.
        return f"(extract(epoch FROM {ref}) * 1000000)::int8"
    return f"{ref}::text"  # decimal: read as PostgreSQL's text, cast like ADBC's


class PgRead:
    """How to read PostgreSQL columns for Parquet, and how to check what arrives.

    >>> from rowstream._pgcopy import PgColumn
    >>> PgRead([PgColumn("d", "date", -1, None)], infinity="text").columns[0].type
    DataType(string)
    """

    def __init__(
        self,
        columns: Sequence[PgColumn],
        *,
        infinity: str = "error",
        nan: str = "error",
        table: str = "t",
    ) -> None:
        check_edge_values(infinity, nan)
        #: What each column is read from: the derived table ``t`` of :meth:`query`, or a
        #: table's own (quoted) name for a caller that builds the FROM (:meth:`select_list`).
        self.table = table
        self.infinity = infinity
        self.nan = nan
        self.parts = [self._part(c) for c in columns]
        self.columns = [p.column for p in self.parts]
        self.schema = schema_of(self.columns)
        self._guards = [i for i, p in enumerate(self.parts) if p.is_list]

    def _part(self, pg: PgColumn) -> _Part:
        column = pg.arrow
        arrow = column.type
        is_list = arrow is not None and pa.types.is_list(arrow)
        item = arrow.value_type if arrow is not None and is_list else arrow
        kind = _kind(item)
        typname = pg.element or pg.typname
        if kind == "decimal" and item is not None:
            typname = f"numeric({item.precision},{item.scale})"
        typname += "[]" if pg.element else ""
        if (kind in ("date", "timestamp") and self.infinity == "text") or (
            kind == "decimal" and self.nan == "text"
        ):
            text = pa.list_(pa.string()) if is_list else pa.string()
            column = replace(column, type=text, cast="text[]" if is_list else "text")
            kind = "other"
        ref = f"{self.table}.{quote_ident(column.name)}"
        plain = f"{ref}::{column.cast}" if column.cast else ref
        adbc_sql, rows_sql, rows_type = plain, plain, column.type
        if kind == "decimal":
            # ADBC decodes numeric as text of its own making: read PostgreSQL's.
            adbc_sql = f"{ref}::text[]" if is_list else f"{ref}::text"
            rows_sql = adbc_sql
            rows_type = pa.list_(pa.string()) if is_list else pa.string()
        elif kind in ("date", "timestamp", "time"):
            aware = getattr(item, "tz", None) is not None
            if is_list:
                element = _rows_scalar("u.e", kind, aware)
                rows_sql = (
                    f"CASE WHEN {ref} IS NOT NULL THEN ARRAY(SELECT {element} FROM "
                    f"unnest({ref}) WITH ORDINALITY AS u(e, n) ORDER BY u.n) END"
                )
            else:
                rows_sql = _rows_scalar(ref, kind, aware)
        assert rows_type is not None
        return _Part(column, kind, is_list, typname, adbc_sql, rows_sql, rows_type)

    def query(self, sql: str, *, adbc: bool) -> str:
        """``sql`` wrapped to read each column (ADBC's or the rows path's way), then one
        guard per array column: its text when it has several dimensions or another base
        (made with the default ``table``)."""
        return f"SELECT {', '.join(self.select_list(adbc=adbc))} FROM ({sql}) AS t"

    def select_list(self, *, adbc: bool) -> list[str]:
        """The expressions of :meth:`query`'s select list, reading :attr:`table`."""
        parts = [p.adbc_sql if adbc else p.rows_sql for p in self.parts]
        for i in self._guards:
            ref = f"{self.table}.{quote_ident(self.parts[i].column.name)}"
            parts.append(
                f"CASE WHEN array_ndims({ref}) > 1 OR array_lower({ref}, 1) <> 1 "
                f"THEN left({ref}::text, {SHOWN_CHARS + 1}) END"
            )
        return parts

    @property
    def rows_columns(self) -> list[ArrowColumn]:
        """The Arrow columns of the rows path's query (guards included)."""
        columns = [ArrowColumn(p.column.name, p.rows_type) for p in self.parts]
        columns += [ArrowColumn(f"guard {i}", pa.string()) for i in self._guards]
        return columns

    def rows_batch(self, rows: Sequence[Sequence[Any]]) -> pa.RecordBatch:
        """Rows of the rows path's query as one checked batch of the export's schema."""
        n = len(self.parts)
        # The guards first: asyncpg gives nested lists, which the list type would refuse.
        for k, i in enumerate(self._guards):
            shown = next((row[n + k] for row in rows if row[n + k] is not None), None)
            if shown is not None:
                self._refuse_array(self.parts[i], shown)
        return self.convert(rows_batch(rows, self.rows_columns))

    def convert(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Check ``batch`` (as read by :meth:`query`) and cast it to the export's schema."""
        n = len(self.parts)
        for guard, i in zip(batch.columns[n:], self._guards, strict=True):
            if guard.null_count != len(guard):
                shown = next(v for v in guard.to_pylist() if v is not None)
                self._refuse_array(self.parts[i], shown)
        arrays = []
        for part, array in zip(self.parts, batch.columns[:n], strict=True):
            if isinstance(array, pa.ExtensionArray):
                array = array.storage
            if part.kind in ("date", "timestamp"):
                array = _map_items(array, functools.partial(self._temporal, part))
            elif part.kind == "decimal":
                array = _map_items(array, functools.partial(self._decimal, part))
            target = part.column.type
            if array.type != target:
                try:
                    array = array.cast(target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SinkError(
                        f"cannot write column {part.column.name!r} ({part.typname}) to Parquet: "
                        f"{str(exc).splitlines()[0]}; cast it in the query (for example to text)"
                    ) from None
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    # ------------------------------------------------------------ the checks

    def _temporal(self, part: _Part, array: pa.Array) -> pa.Array:
        wide = part.kind == "timestamp"
        ints = _ints(array, np.int64 if wide else np.int32)
        first = FIRST_US if wide else FIRST_DAY
        # INT64_MAX is DuckDB's infinity: the one finite instant there is refused too.
        if len(ints) == 0 or (int(ints.min()) >= first and (not wide or ints.max() < INT64_MAX)):
            return array
        valid = _valid(array)
        bad = ((ints < first) | (ints == INT64_MAX if wide else False)) & valid
        if not bad.any():
            return array
        if self.infinity == "error":
            value = _render(int(ints[np.flatnonzero(bad)[0]]), wide)
            raise SinkError(
                f"column {part.column.name!r} ({part.typname}) holds {value}, which a Parquet "
                f"{'timestamp' if wide else 'date'} cannot hold"
                + ("" if value.endswith("infinity") else f" (its last is {LAST_ARROW_INSTANT})")
                + ": pass --infinity null, clamp or text (infinity= in the API), or cast the "
                f"column in the query ({part.column.name}::text)"
            )
        if self.infinity == "null":
            return pa.array(ints, mask=~valid | bad).view(array.type)
        top = INT64_MAX if wide else INT32_MAX
        fixed = ints.copy()
        plus = ADBC_TS_INFINITY if wide else ADBC_DATE_INFINITY
        minus = ADBC_TS_MINUS_INFINITY if wide else ADBC_DATE_MINUS_INFINITY
        fixed[bad] = top - 1  # a finite instant past the range: the last finite one
        fixed[bad & (ints == plus)] = top
        fixed[bad & (ints == minus)] = -top
        return pa.array(fixed, mask=~valid).view(array.type)

    def _decimal(self, part: _Part, array: pa.Array) -> pa.Array:
        target = part.column.type
        if part.is_list:
            assert isinstance(target, pa.ListType)
            target = target.value_type
        try:
            return array.cast(target)
        except pa.ArrowInvalid:
            pass
        # Rare: find the value the cast refused (NaN is the only one PostgreSQL 15 lets into
        # numeric(p, s); Infinity fits only unconstrained numeric, which is written as text).
        values = array.to_pylist()
        special = {"NaN", "Infinity", "-Infinity"}
        if self.nan == "null":
            values = [None if v in special else v for v in values]
            return pa.array(values, pa.string()).cast(target)
        shown = next((v for v in values if v in special), None)
        if shown is None:
            raise SinkError(
                f"cannot write column {part.column.name!r} ({part.typname}) as a decimal; "
                f"cast it in the query ({part.column.name}::text)"
            )
        raise SinkError(
            f"column {part.column.name!r} ({part.typname}) holds {shown}, which a Parquet "
            "decimal cannot hold: pass --nan null or text (nan= in the API), or cast the "
            f"column in the query ({part.column.name}::text)"
        )

    def _refuse_array(self, part: _Part, shown: str) -> None:
        if len(shown) > SHOWN_CHARS:
            shown = shown[:SHOWN_CHARS] + "..."
        raise SinkError(
            f"column {part.column.name!r} ({part.typname}) holds {shown}, an array with several "
            "dimensions or a first index other than 1, which a Parquet list cannot hold: cast "
            f"the column in the query ({part.column.name}::text, or to_jsonb({part.column.name}) "
            "for nested lists in JSON)"
        )


def _map_items(array: pa.Array, fix: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """Apply ``fix`` to a column, or to the items of a list column (same offsets, nulls)."""
    if not pa.types.is_list(array.type):
        return fix(array)
    values = array.values
    fixed = fix(values)
    if fixed is values:
        return array
    return pa.Array.from_buffers(
        pa.list_(fixed.type),
        len(array),
        array.buffers()[:2],
        null_count=array.null_count,
        offset=array.offset,
        children=[fixed],
    )


def _ints(array: pa.Array, dtype: type[np.signedinteger[Any]]) -> np.ndarray[Any, Any]:
    """The raw values of a fixed-width column, without a copy (NULL slots hold anything)."""
    size = np.dtype(dtype).itemsize
    data = array.buffers()[1]
    if data is None:
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * size)


def _valid(array: pa.Array) -> np.ndarray[Any, Any]:
    bitmap = array.buffers()[0]
    if bitmap is None or array.null_count == 0:
        return np.ones(len(array), dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bits[array.offset : array.offset + len(array)].astype(bool)


def _render(value: int, wide: bool) -> str:
    """PostgreSQL's text for a value ADBC wrapped (a message shows it)."""
    if wide:
        pg = (value - PG_EPOCH_US + 2**63) % 2**64 - 2**63
        if pg == INT64_MAX:
            return "infinity"
        if pg == -(2**63):
            return "-infinity"
        days, micros = divmod(pg + PG_EPOCH_US, 86_400_000_000)
        seconds, fraction = divmod(micros, 1_000_000)
        clock = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if fraction:
            clock += f".{fraction:06d}".rstrip("0")
        return f"{_civil(days)} {clock}"
    return date_text((value - PG_EPOCH_DAYS + 2**31) % 2**32 - 2**31)
