"""SQLite values in CSV, JSONL and Parquet: exactly as stored, or refused naming the column.

SQLite types values, not columns: a declared type only gives an affinity
(https://www.sqlite.org/datatype3.html, 3.1). The fixtures are written and read back as the
truth with Python's sqlite3 module; the files are read by DuckDB (CSV, Parquet), pyarrow
(Parquet) and Python's json module (JSONL).
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

import rowstream
from rowstream._values import sqlite_affinity
from tests.test_export_cli import assert_clean_failure, run_cli

DDL = """
CREATE TABLE ty_lite (
    id INTEGER PRIMARY KEY, i BIGINT, r DOUBLE PRECISION, t VARCHAR(10), b BLOB, n NUMERIC,
    dec DECIMAL(10, 2), flag BOOLEAN, d DATE, dtm DATETIME, ts TIMESTAMP, u, s STRING,
    fl "FLOATING POINT"
);
INSERT INTO ty_lite VALUES
(1, 9223372036854775807, 1.7976931348623157e308, 'héllo, "w"' || char(10) || 'x', x'00ff',
 9007199254740993, 12.34, 1, '2024-02-29', '2024-01-01 10:00:00+02:00', 1700000000, x'01',
 'abc', 3),
(2, -9223372036854775808, 4.9406564584124654e-324, '', x'', -9223372036854775808, 100, 0,
 '0001-01-01', 'yesterday', 0, x'', 'def', -4),
(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
(4, 0, 0.1, '\\x74', x'74', 0, -0.5, 1, '9999-12-31', '2024-06-01T12:00:00Z', 2147483648,
 x'ff', '', 0);
CREATE TABLE ty_odd (
    id INTEGER PRIMARY KEY, m NUMERIC, big NUMERIC, t TEXT, flag BOOLEAN, fl "FLOATING POINT"
);
INSERT INTO ty_odd VALUES (1, 1, 1.5, 'a', 1, 1), (2, 'text', 9007199254740993, x'74', 2, 1.5);
"""
COLUMNS = ["id", "i", "r", "t", "b", "n", "dec", "flag", "d", "dtm", "ts", "u", "s", "fl"]


@pytest.fixture
def lite(sqlite_url: str) -> str:
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.executescript(DDL)
    return sqlite_url


def stored(url: str, table: str = "ty_lite") -> list[dict[str, Any]]:
    """The values as SQLite holds them (Python's sqlite3), BOOLEAN 0/1 as booleans."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        cursor = conn.execute(f"SELECT * FROM {table} ORDER BY id")
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor]
    for row in rows:
        if row.get("flag") is not None and table == "ty_lite":
            row["flag"] = bool(row["flag"])
    return rows


def same_value(got: Any, want: Any) -> bool:
    if isinstance(want, float):
        return (
            type(got) is float and got == want and math.copysign(1, got) == math.copysign(1, want)
        )
    return type(got) is type(want) and got == want


def csv_text(value: Any) -> str | None:
    """What CSV must hold for a stored value (COPY's rules), compared as text."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value)


def test_affinity_rules() -> None:
    # The examples of https://www.sqlite.org/datatype3.html, 3.1.1.
    integer = ["INT", "INTEGER", "TINYINT", "BIGINT", "UNSIGNED BIG INT", "INT8", "FLOATING POINT"]
    text = ["CHARACTER(20)", "VARCHAR(255)", "NCHAR(55)", "NATIVE CHARACTER(70)", "TEXT", "CLOB"]
    real = ["REAL", "DOUBLE", "DOUBLE PRECISION", "FLOAT"]
    numeric = ["NUMERIC", "DECIMAL(10,5)", "BOOLEAN", "DATE", "DATETIME", "STRING"]
    assert {sqlite_affinity(t) for t in integer} == {"integer"}
    assert {sqlite_affinity(t) for t in text} == {"text"}
    assert {sqlite_affinity(t) for t in ["BLOB", "", None]} == {"blob"}
    assert {sqlite_affinity(t) for t in real} == {"real"}
    assert {sqlite_affinity(t) for t in numeric} == {"numeric"}


async def test_csv_is_exact(lite: str, tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    await rowstream.export(lite, "ty_lite", out)
    read = duckdb.sql(
        f"SELECT * FROM read_csv('{out}', header = true, all_varchar = true, "
        "allow_quoted_nulls = false) ORDER BY id::INT"
    ).fetchall()
    for row, want in zip(read, stored(lite), strict=True):
        for column, got in zip(COLUMNS, row, strict=True):
            value = want[column]
            if isinstance(value, float):  # the shortest text that reads back as the same
                assert float(got) == value, (want["id"], column, got)
            else:
                assert got == csv_text(value), (want["id"], column, got, value)
    text = out.read_text(encoding="utf-8")
    # Dates as stored: an offset is kept, not turned into UTC; Unix time stays a number.
    assert ",2024-02-29,2024-01-01 10:00:00+02:00,1700000000," in text
    assert "\n3,,,,,,,,,,,,,\n" in text


async def test_jsonl_is_exact(lite: str, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    await rowstream.export(lite, "ty_lite", out)
    read = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    for got, want in zip(read, stored(lite), strict=True):
        assert list(got) == COLUMNS
        for column in COLUMNS:
            value = want[column]
            expected = "\\x" + value.hex() if isinstance(value, bytes) else value
            if isinstance(value, float):
                # to_jsonb()'s rule: every digit, no exponent (a whole real reads as an integer).
                assert float(got[column]) == value, (want["id"], column, got[column])
                continue
            assert same_value(got[column], expected), (want["id"], column, got[column])
    # NUMERIC integers stay integers, beyond 2**53 too.
    assert read[0]["n"] == 9007199254740993 and read[0]["dec"] == 12.34


async def test_parquet_is_exact(lite: str, tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    await rowstream.export(lite, "ty_lite", out)
    table = pq.read_table(out)
    types = {f.name: f.type for f in table.schema}
    assert types == {
        "id": pa.int64(),
        "i": pa.int64(),
        "r": pa.float64(),
        "t": pa.string(),
        "b": pa.binary(),
        "n": pa.int64(),  # NUMERIC holding integers
        "dec": pa.float64(),  # NUMERIC holding reals and integers exact in a double
        "flag": pa.bool_(),
        "d": pa.string(),  # SQLite has no date type: the stored text
        "dtm": pa.string(),
        "ts": pa.int64(),  # Unix time, as stored
        "u": pa.binary(),
        "s": pa.string(),
        "fl": pa.int64(),  # "FLOATING POINT" has INTEGER affinity (it contains INT)
    }
    want = stored(lite)
    for row in want:
        if isinstance(row["dec"], int):
            row["dec"] = float(row["dec"])
    con = duckdb.connect()
    try:
        cursor = con.execute(f"SELECT * FROM read_parquet('{out}') ORDER BY id")
        by_duckdb = [dict(zip(COLUMNS, r, strict=True)) for r in cursor.fetchall()]
    finally:
        con.close()
    for reader in (table.to_pylist(), by_duckdb):
        for got, expected in zip(reader, want, strict=True):
            for column in COLUMNS:
                assert same_value(got[column], expected[column]), (
                    expected["id"],
                    column,
                    got[column],
                    expected[column],
                )


@pytest.mark.parametrize(
    ("column", "suffixes", "shown", "way_out"),
    [
        ("m", ["parquet"], "'text' (text) among integer", "--text-columns m"),
        ("big", ["parquet"], "9007199254740993 (integer) among real", "--text-columns big"),
        ("fl", ["parquet"], "1.5 (real) among integer", "--text-columns fl"),
        ("t", ["csv", "jsonl", "parquet"], "the blob x'74'", "CAST(t AS BLOB)"),
        ("flag", ["csv", "jsonl", "parquet"], "holds 2 (integer)", "CAST(flag AS INTEGER)"),
    ],
)
async def test_refusals_name_the_column_and_the_way_out(
    lite: str, tmp_path: Path, column: str, suffixes: list[str], shown: str, way_out: str
) -> None:
    for suffix in suffixes:
        out = tmp_path / f"odd.{suffix}"
        with pytest.raises(rowstream.SinkError) as caught:
            await rowstream.export(lite, "ty_odd", out, columns=["id", column])
        message = str(caught.value)
        assert f"column {column!r}" in message and shown in message and way_out in message
        assert "\n" not in message
        assert not out.exists()


async def test_mixed_classes_as_text_and_in_jsonl(lite: str, tmp_path: Path) -> None:
    parquet, jsonl = tmp_path / "m.parquet", tmp_path / "m.jsonl"
    await rowstream.export(
        lite, "ty_odd", parquet, columns=["id", "m", "big", "fl"], text_columns=["m", "big", "fl"]
    )
    table = pq.read_table(parquet)
    assert table.to_pydict() == {
        "id": [1, 2],
        "m": ["1", "text"],
        "big": ["1.5", "9007199254740993"],
        "fl": ["1", "1.5"],
    }
    # JSONL keeps each value's storage class.
    await rowstream.export(lite, "ty_odd", jsonl, columns=["id", "m", "big", "fl"])
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == [
        {"id": 1, "m": 1, "big": 1.5, "fl": 1},
        {"id": 2, "m": "text", "big": 9007199254740993, "fl": 1.5},
    ]
    # The cast the refusal names: the whole column as bytes.
    blob = tmp_path / "t.csv"
    await rowstream.export(lite, sa.text("SELECT id, CAST(t AS BLOB) AS t FROM ty_odd"), blob)
    assert blob.read_text() == "id,t\n1,\\x61\n2,\\x74\n"


async def test_query_with_mixed_classes_is_refused_in_one_line(lite: str, tmp_path: Path) -> None:
    out = tmp_path / "q.parquet"
    with pytest.raises(rowstream.SinkError, match=r"column 'm' holds 'text'.*--text-columns m"):
        await rowstream.export(lite, sa.text("SELECT id, m FROM ty_odd ORDER BY id"), out)
    await rowstream.export(
        lite, sa.text("SELECT id, m FROM ty_odd ORDER BY id"), out, text_columns=["m"]
    )
    assert pq.read_table(out).column("m").to_pylist() == ["1", "text"]
    with pytest.raises(rowstream.ConfigurationError, match="unknown column 'nope'"):
        await rowstream.export(lite, "ty_odd", out, text_columns=["nope"])


async def test_cli_matches_api_and_refuses_in_one_line(lite: str, tmp_path: Path) -> None:
    for suffix in ("csv", "jsonl", "parquet"):
        out, reference = tmp_path / f"cli.{suffix}", tmp_path / f"api.{suffix}"
        result = run_cli(lite, "--table", "ty_lite", "-o", str(out), "-q")
        assert result.returncode == 0, result.stderr
        await rowstream.export(lite, "ty_lite", reference)
        if suffix == "parquet":
            assert pq.read_table(out).equals(pq.read_table(reference))
        else:
            assert out.read_bytes() == reference.read_bytes()
    target = tmp_path / "odd.parquet"
    args = [lite, "--table", "ty_odd", "--columns", "id,m", "-o", str(target)]
    line = assert_clean_failure(run_cli(*args), target)
    assert "column 'm'" in line and "--text-columns m" in line
    ok = run_cli(*args, "--text-columns", "m", "-q")
    assert ok.returncode == 0, ok.stderr
    assert pq.read_table(target).column("m").to_pylist() == ["1", "text"]


async def test_table_object_reads_like_a_table_name(lite: str, tmp_path: Path) -> None:
    """A Table whose types SQLAlchemy would process (DateTime parses ISO text) is read raw."""
    table = sa.Table(
        "ty_lite",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("flag", sa.Boolean),
        sa.Column("dtm", sa.DateTime),
        sa.Column("n", sa.Numeric),
    )
    by_object, by_name = tmp_path / "object.csv", tmp_path / "name.csv"
    await rowstream.export(lite, table, by_object)
    await rowstream.export(lite, "ty_lite", by_name, columns=["id", "flag", "dtm", "n"])
    assert by_object.read_bytes() == by_name.read_bytes()
    assert "2,f,yesterday,-9223372036854775808\n" in by_object.read_text()
