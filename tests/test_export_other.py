"""Export on MariaDB and SQLite: the same formats with PostgreSQL's rendering rules.

Neither server has COPY or to_jsonb(), so the equivalent is defined by PostgreSQL's rules
applied to the values each driver returns: COPY's CSV quoting (NULL empty, "" for the empty
string), ``t``/``f``, UTC timestamps without trailing zeros, bytes as ``\\x`` hex; in JSON every
digit of a decimal, dates in ISO 8601. The expected files below are those rules written out.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

import rowstream

MY_TABLE = "exp_my"
MY_DDL = f"""
CREATE TABLE {MY_TABLE} (
    id int PRIMARY KEY, ti tinyint, si smallint, i int, bi bigint, bu bigint unsigned,
    d10 decimal(10, 2), d38 decimal(38, 10), fl float, db double,
    dt date, dtm datetime(6), ts timestamp(6) NULL, tm time(6),
    vc varchar(50), tx text, bl blob
) DEFAULT CHARSET = utf8mb4
"""
MY_ROWS = f"""
INSERT INTO {MY_TABLE} VALUES
(1, -128, -32768, -2147483648, -9223372036854775808, 18446744073709551615,
 12345678.90, 1234567890123456789012345678.0123456789, 1.5, 1.7976931348623157e308,
 '1000-01-01', '1000-01-01 00:00:00', '2000-01-01 00:00:01', '-838:59:59',
 'héllo, "wörld"\nline2', '', x'00ff10'),
(2, 127, 32767, 2147483647, 9223372036854775807, 0,
 -0.01, -0.0000000001, -0.25, 1e-7,
 '9999-12-31', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.5', '12:34:56.5',
 '日本語 😀', 'a,b', x''),
(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL)
"""
MY_CSV = (
    "id,ti,si,i,bi,bu,d10,d38,fl,db,dt,dtm,ts,tm,vc,tx,bl\n"
    "1,-128,-32768,-2147483648,-9223372036854775808,18446744073709551615,12345678.90,"
    "1234567890123456789012345678.0123456789,1.5,1.7976931348623157e+308,1000-01-01,"
    '1000-01-01 00:00:00,2000-01-01 00:00:01+00,-838:59:59,"héllo, ""wörld""\nline2","",\\x00ff10\n'
    "2,127,32767,2147483647,9223372036854775807,0,-0.01,-0.0000000001,-0.25,1e-07,9999-12-31,"
    '9999-12-31 23:59:59.999999,2038-01-19 03:14:07.5+00,12:34:56.5,日本語 😀,"a,b",\\x\n'
    "3,,,,,,,,,,,,,,,,\n"
)


@pytest.fixture
async def my_table(mysql_url: str) -> AsyncIterator[str]:
    engine = rowstream.create_engine(mysql_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {MY_TABLE}")
            await conn.exec_driver_sql(MY_DDL)
            await conn.exec_driver_sql(MY_ROWS)
        yield mysql_url
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {MY_TABLE}")
        await engine.dispose()


async def test_mariadb_csv(my_table: str, tmp_path: Path) -> None:
    out = tmp_path / "my.csv"
    report = await rowstream.export(my_table, MY_TABLE, out)
    assert out.read_text(encoding="utf-8") == MY_CSV
    assert report.rows == 3 and report.method == "stream"


async def test_mariadb_jsonl(my_table: str, tmp_path: Path) -> None:
    out = tmp_path / "my.jsonl"
    await rowstream.export(my_table, MY_TABLE, out, columns=["id", "d38", "db", "dtm", "tm", "bl"])
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == (
        '{"id": 1, "d38": 1234567890123456789012345678.0123456789, '
        f'"db": {format(Decimal("1.7976931348623157e308"), "f")}, '
        '"dtm": "1000-01-01T00:00:00", "tm": "-838:59:59", "bl": "\\\\x00ff10"}'
    )
    second = json.loads(lines[1], parse_float=Decimal)
    assert second == {
        "id": 2,
        "d38": Decimal("-1E-10"),
        "db": Decimal("0.0000001"),
        "dtm": "9999-12-31T23:59:59.999999",
        "tm": "12:34:56.5",
        "bl": "\\x",
    }
    assert lines[2] == '{"id": 3, "d38": null, "db": null, "dtm": null, "tm": null, "bl": null}'


async def test_mariadb_parquet(my_table: str, tmp_path: Path) -> None:
    out = tmp_path / "my.parquet"
    await rowstream.export(my_table, MY_TABLE, out)
    table = pq.read_table(out)
    assert {f.name: f.type for f in table.schema} == {
        "id": pa.int32(),
        "ti": pa.int8(),
        "si": pa.int16(),
        "i": pa.int32(),
        "bi": pa.int64(),
        "bu": pa.uint64(),
        "d10": pa.decimal128(10, 2),
        "d38": pa.decimal128(38, 10),
        "fl": pa.float32(),
        "db": pa.float64(),
        "dt": pa.date32(),
        "dtm": pa.timestamp("us"),
        "ts": pa.timestamp("us", tz="UTC"),
        "tm": pa.duration("us"),
        "vc": pa.string(),
        "tx": pa.string(),
        "bl": pa.binary(),
    }
    first, second, nulls = table.to_pylist()
    assert first["bu"] == 2**64 - 1 and first["bi"] == -(2**63)
    assert first["d38"] == Decimal("1234567890123456789012345678.0123456789")
    assert first["ts"] == datetime(2000, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert first["tm"] == -timedelta(hours=838, minutes=59, seconds=59)
    assert first["vc"] == 'héllo, "wörld"\nline2' and first["tx"] == ""
    assert first["bl"] == b"\x00\xff\x10" and second["bl"] == b""
    assert first["dt"] == date(1000, 1, 1) and second["dt"] == date(9999, 12, 31)
    assert second["dtm"] == datetime(9999, 12, 31, 23, 59, 59, 999999)
    assert second["fl"] == -0.25
    assert all(v is None for k, v in nulls.items() if k != "id")


SQLITE_DDL = """
CREATE TABLE exp_lite (id INTEGER PRIMARY KEY, n INTEGER, r REAL, t TEXT, b BLOB, v NUMERIC)
"""


@pytest.fixture
async def lite_table(sqlite_url: str) -> str:
    engine = rowstream.create_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(SQLITE_DDL)
            await conn.exec_driver_sql(
                "INSERT INTO exp_lite VALUES "
                "(1, 9223372036854775807, 1e15, 'a \"q\", b\nc', x'00ff', 1.5), "
                "(2, -9223372036854775808, 9e999, '', x'', 10), "
                "(3, NULL, -9e999, NULL, NULL, NULL), "
                "(4, 0, 0.1, '\\.', NULL, NULL)"
            )
    finally:
        await engine.dispose()
    return sqlite_url


async def test_sqlite_csv_and_jsonl(lite_table: str, tmp_path: Path) -> None:
    csv_out, jsonl_out = tmp_path / "lite.csv", tmp_path / "lite.jsonl"
    await rowstream.export(lite_table, "exp_lite", csv_out)
    assert csv_out.read_text(encoding="utf-8") == (
        "id,n,r,t,b,v\n"
        '1,9223372036854775807,1e+15,"a ""q"", b\nc",\\x00ff,1.5\n'
        '2,-9223372036854775808,Infinity,"",\\x,10\n'
        "3,,-Infinity,,,\n"
        "4,0,0.1,\\.,,\n"
    )
    await rowstream.export(lite_table, sa.text("SELECT * FROM exp_lite ORDER BY id"), jsonl_out)
    assert jsonl_out.read_text(encoding="utf-8").splitlines() == [
        '{"id": 1, "n": 9223372036854775807, "r": 1000000000000000, '
        '"t": "a \\"q\\", b\\nc", "b": "\\\\x00ff", "v": 1.5}',
        '{"id": 2, "n": -9223372036854775808, "r": "Infinity", "t": "", "b": "\\\\x", "v": 10}',
        '{"id": 3, "n": null, "r": "-Infinity", "t": null, "b": null, "v": null}',
        '{"id": 4, "n": 0, "r": 0.1, "t": "\\\\.", "b": null, "v": null}',
    ]


async def test_sqlite_single_column_backslash_dot_is_quoted(
    lite_table: str, tmp_path: Path
) -> None:
    # COPY quotes a lone \. so that it cannot read as the end-of-data marker.
    out = tmp_path / "one.csv"
    await rowstream.export(lite_table, "exp_lite", out, columns=["t"], where="id = 4")
    assert out.read_text() == 't\n"\\."\n'


async def test_sqlite_parquet(lite_table: str, tmp_path: Path) -> None:
    out = tmp_path / "lite.parquet"
    await rowstream.export(lite_table, "exp_lite", out)
    table = pq.read_table(out)
    assert table.schema.field("n").type == pa.int64()
    assert table.schema.field("r").type == pa.float64()
    assert table.schema.field("t").type == pa.string()
    assert table.schema.field("b").type == pa.binary()
    rows = table.to_pylist()
    assert rows[0]["n"] == 2**63 - 1 and rows[1]["n"] == -(2**63)
    assert rows[1]["r"] == math.inf and rows[2]["r"] == -math.inf
    assert rows[0]["t"] == 'a "q", b\nc' and rows[1]["t"] == ""
    assert rows[0]["b"] == b"\x00\xff"


async def test_sqlite_unknown_table_and_column(lite_table: str, tmp_path: Path) -> None:
    with pytest.raises(rowstream.QueryError, match="unknown table 'exp_nope'"):
        await rowstream.export(lite_table, "exp_nope", tmp_path / "x.csv")
    with pytest.raises(rowstream.QueryError, match="unknown column 'nope'"):
        await rowstream.export(lite_table, "exp_lite", tmp_path / "x.csv", columns=["nope"])
    assert _names(tmp_path) == ["test.db"]


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_sqlite_into_a_stream_is_the_file(lite_table: str, tmp_path: Path, fmt: str) -> None:
    # Any object with write(bytes) takes every format, the same bytes as the file.
    target = tmp_path / f"lite.{fmt}"
    await rowstream.export(lite_table, "exp_lite", target)
    buffer = io.BytesIO()
    report = await rowstream.export(lite_table, "exp_lite", buffer, format=fmt)  # type: ignore[arg-type]
    assert buffer.getvalue() == target.read_bytes()
    assert report.rows == 4 and report.bytes == len(buffer.getvalue())
    assert report.path == "<BytesIO>" and not buffer.closed


class _Refusing(io.RawIOBase):
    """A stream whose writes fail after ``allowed`` bytes (a client that went away)."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.written + len(data) > self.allowed:
            raise ConnectionResetError("peer went away")
        self.written += len(data)
        return len(data)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_sqlite_stream_that_fails_midway(sqlite_url: str, fmt: str) -> None:
    engine = rowstream.create_engine(sqlite_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE many (id INTEGER PRIMARY KEY, note TEXT)")
            await conn.exec_driver_sql(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) "
                "INSERT INTO many SELECT i, 'note ' || i FROM n"
            )
    finally:
        await engine.dispose()
    out = _Refusing(allowed=5000)
    with pytest.raises(rowstream.SinkError, match=r"cannot write to <_Refusing>.*peer went away"):
        await rowstream.export(sqlite_url, "many", out, format=fmt, batch_rows=100)  # type: ignore[arg-type]
    assert 0 < out.written <= 5000


@pytest.mark.parametrize("codec", ["gzip", "snappy", "none"])
async def test_sqlite_parquet_codecs_stay_inside_the_file(
    lite_table: str, tmp_path: Path, codec: str
) -> None:
    # Parquet's gzip is a page codec: the file itself is not gzip'd (it was, once).
    out = tmp_path / "lite.parquet"
    await rowstream.export(lite_table, "exp_lite", out, compression=codec)
    metadata = pq.ParquetFile(out).metadata
    assert metadata.num_rows == 4
    assert metadata.row_group(0).column(0).compression == codec.upper().replace(
        "NONE", "UNCOMPRESSED"
    )
