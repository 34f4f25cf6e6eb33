"""rowstream._pgtypes without a database: the integers ADBC makes of PostgreSQL's edge values,
how a message renders them, and the checks on hand-made batches."""

from __future__ import annotations

from datetime import date, timedelta

import pyarrow as pa
import pytest

from rowstream import SinkError
from rowstream._pgcopy import PgColumn
from rowstream._pgtypes import (
    ADBC_DATE_INFINITY,
    ADBC_TS_INFINITY,
    ADBC_TS_MINUS_INFINITY,
    INT64_MAX,
    PgRead,
    _civil,
    _render,
)


def test_civil_matches_python_and_writes_bc_as_postgresql() -> None:
    epoch = date(1970, 1, 1)
    for days in range(-719_162, 2_932_897, 7919):  # 0001-01-01 to 9999-12-31
        assert _civil(days) == (epoch + timedelta(days=days)).isoformat()
    assert _civil(-2_440_588) == "4714-11-24 BC"  # PostgreSQL's first day
    assert _civil(-719_163) == "0001-12-31 BC"  # the day before 0001-01-01


def test_render_undoes_adbc_wrapping() -> None:
    assert _render(ADBC_TS_INFINITY, True) == "infinity"
    assert _render(ADBC_TS_MINUS_INFINITY, True) == "-infinity"
    assert _render(ADBC_DATE_INFINITY, False) == "infinity"
    assert _render(INT64_MAX, True) == "294247-01-10 04:00:54.775807"
    # PostgreSQL's last instant: microseconds from 1970 past INT64_MAX, which ADBC wraps
    # (measured: ADBC 1.13 gives -9222426057709551617).
    assert _render(9_224_318_015_999_999_999 - 2**64, True) == "294276-12-31 23:59:59.999999"


def _batch(values: list[int | None]) -> pa.RecordBatch:
    array = pa.array(values, pa.int64()).view(pa.timestamp("us", tz="UTC"))
    return pa.RecordBatch.from_arrays([array], names=["at"])


def test_clean_batches_pass_untouched_and_sentinels_are_refused() -> None:
    read = PgRead([PgColumn("at", "timestamptz", -1, None)])
    clean = _batch([0, None, 1_700_000_000_000_000])
    assert read.convert(clean).column(0) == clean.column(0)
    with pytest.raises(SinkError, match=r"column 'at' \(timestamptz\) holds infinity"):
        read.convert(_batch([0, ADBC_TS_INFINITY]))
    clamped = PgRead([PgColumn("at", "timestamptz", -1, None)], infinity="clamp")
    out = clamped.convert(_batch([ADBC_TS_INFINITY, ADBC_TS_MINUS_INFINITY, None, 5]))
    assert out.column(0).view(pa.int64()).to_pylist() == [INT64_MAX, -INT64_MAX, None, 5]


def test_select_list_reads_the_table_it_is_given() -> None:
    # The same reads and guards as query(), on a table's own columns (rowstream.web's pages).
    columns = [PgColumn("at", "date", -1, None), PgColumn("xs", "_int4", -1, "int4")]
    derived = PgRead(columns)
    own = PgRead(columns, table='"orders"')
    assert derived.query("SELECT 1", adbc=False) == (
        f"SELECT {', '.join(derived.select_list(adbc=False))} FROM (SELECT 1) AS t"
    )
    listed = own.select_list(adbc=False)
    assert len(listed) == 3  # two columns and the array's guard
    assert listed == [e.replace('t."', '"orders"."') for e in derived.select_list(adbc=False)]
