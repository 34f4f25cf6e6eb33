"""MariaDB values in CSV, JSONL and Parquet: exact, as the server holds them, or refused.

The expected values are the server's own rendering (the ``mariadb`` command-line client, FLOAT
read as ``CAST(f AS DOUBLE)``, the double of the float32 it stores); the files are read back by
readers rowstream does not use to write them: DuckDB (CSV, Parquet), pyarrow (Parquet),
Python's json module (JSONL) and numpy (the shortest text of a float32).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import rowstream
from rowstream._values import float32_text
from tests.test_export_cli import assert_clean_failure, run_cli

TABLE = "ty_my"
DDL = f"""
CREATE TABLE {TABLE} (
    id int PRIMARY KEY, f float, dbl double, d date, dt datetime(6), ts timestamp(6) NULL,
    j json
) DEFAULT CHARSET = utf8mb4
"""
ROWS = f"""
INSERT INTO {TABLE} VALUES
(1, 16777217, 1.7976931348623157e308, '1000-01-01', '1000-01-01 00:00:00',
 '1970-01-01 00:00:01',
 '{{"b": 1, "a": [1.50, 12345678901234567890, "x\\\\ny", -0.0], "n": null, "é": true}}'),
(2, 3.4028234e38, -2.2250738585072014e-308, '9999-12-31', '9999-12-31 23:59:59.999999',
 '2038-01-19 03:14:07.999999', '"just text"'),
(3, -1.17549435e-38, 0.1, '2024-02-29', '2024-02-29 12:00:00.5', '2024-02-29 12:00:00.5',
 '[]'),
(4, 0.1, -0.0, '2000-01-01', '2000-01-01 00:00:00', '2000-01-01 00:00:00', '1e400'),
(5, NULL, NULL, NULL, NULL, NULL, NULL)
"""
ZERO = "ty_zero"
ZERO_DDL = f"CREATE TABLE {ZERO} (id int PRIMARY KEY, d date, dt datetime, ts timestamp NULL)"
ZERO_ROWS = f"""
INSERT INTO {ZERO} VALUES
(1, '2024-01-01', '2024-01-01 00:00:00', '2024-01-01 00:00:00'),
(2, '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00'),
(3, '2024-00-15', '2024-01-00 10:00:00', NULL)
"""
COLUMNS = ["id", "f", "dbl", "d", "dt", "ts", "j"]


@pytest.fixture
async def my_types(mysql_url: str) -> AsyncIterator[str]:
    engine = rowstream.create_engine(mysql_url)
    try:
        async with engine.begin() as conn:
            # Zero dates are what this file is about: a session without NO_ZERO_DATE.
            await conn.exec_driver_sql("SET SESSION sql_mode = ''")
            for table, ddl, rows in ((TABLE, DDL, ROWS), (ZERO, ZERO_DDL, ZERO_ROWS)):
                await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
                await conn.exec_driver_sql(ddl)
                await conn.exec_driver_sql(rows.replace("%", "%%"))
        yield mysql_url
    finally:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}, {ZERO}")
        await engine.dispose()


def mariadb_client(url: str, sql: str) -> list[list[str | None]]:
    """Rows as the ``mariadb`` client prints them (tab-separated, raw), UTC session."""
    u = make_url(url)
    result = subprocess.run(
        ["mariadb", "-h", u.host or "127.0.0.1", "-P", str(u.port or 3306), "-u", u.username or "",
         "-D", u.database or "", "-N", "-B", "--raw",
         "-e", f"SET time_zone = '+00:00'; {sql}"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return [
        [None if v == "NULL" else v for v in line.split("\t")]
        for line in result.stdout.splitlines()
    ]


def server_rows(url: str) -> list[dict[str, Any]]:
    """The server's values, parsed from its text: FLOAT as the double of its float32."""
    sql = f"SELECT id, CAST(f AS DOUBLE), dbl, d, dt, ts, j FROM {TABLE} ORDER BY id"
    parse = {
        "id": int,
        "f": float,
        "dbl": float,
        "d": date.fromisoformat,
        "dt": datetime.fromisoformat,
        "ts": lambda v: datetime.fromisoformat(v).replace(tzinfo=UTC),
        "j": lambda v: json.loads(v, parse_float=Decimal),
    }
    return [
        {c: None if v is None else parse[c](v) for c, v in zip(COLUMNS, row, strict=True)}
        for row in mariadb_client(url, sql)
    ]


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def shortest_float32(value: float) -> float:
    """numpy's shortest text of the float32 (what ``mariadb`` shows with full precision)."""
    return float(str(np.float32(value)))


def duckdb_rows(relation: str) -> list[dict[str, Any]]:
    sql = (
        "SELECT id, f::DOUBLE AS f, dbl, d, dt, timezone('UTC', ts) AS ts, j::VARCHAR AS j "
        f"FROM {relation} ORDER BY id"
    )
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        cursor = con.execute(sql)
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()
    for row in rows:
        if row["ts"] is not None:
            row["ts"] = row["ts"].replace(tzinfo=UTC)
        if row["j"] is not None:
            row["j"] = json.loads(row["j"], parse_float=Decimal)
    return rows


def assert_same(read: list[dict[str, Any]], server: list[dict[str, Any]]) -> None:
    assert len(read) == len(server)
    for got, want in zip(read, server, strict=True):
        assert got.keys() == want.keys()
        for column in COLUMNS:
            assert got[column] == want[column], (want["id"], column, got[column], want[column])
            if isinstance(want[column], float):  # -0.0 == 0.0: the sign too
                assert str(got[column])[0] == str(want[column])[0], (want["id"], column)


async def test_csv_is_exact(my_types: str, tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    await rowstream.export(my_types, TABLE, out)
    server = server_rows(my_types)
    relation = (
        f"read_csv('{out}', header = true, columns = {{'id': 'INTEGER', 'f': 'FLOAT', "
        "'dbl': 'DOUBLE', 'd': 'DATE', 'dt': 'TIMESTAMP', 'ts': 'TIMESTAMPTZ', 'j': 'JSON'})"
    )
    assert_same(duckdb_rows(relation), server)
    lines = out.read_text(encoding="utf-8").splitlines()
    # FLOAT: the shortest text of the stored float32 (the text protocol would give 1.67772e7).
    assert lines[1].startswith("1,16777216,1.7976931348623157e+308,1000-01-01,")
    assert lines[2].startswith("2,3.4028235e+38,")
    for line, row in zip(lines[1:], server, strict=True):
        f_text = line.split(",")[1]
        if row["f"] is not None:
            assert float(f_text) == shortest_float32(row["f"])
    # TIMESTAMP is an instant, with +00 as PostgreSQL's timestamptz; DATETIME has no zone.
    assert ",1000-01-01 00:00:00,1970-01-01 00:00:01+00," in lines[1]
    assert lines[-1] == "5,,,,,,"


async def test_jsonl_is_exact_and_json_is_nested(my_types: str, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    await rowstream.export(my_types, TABLE, out)
    lines = out.read_text(encoding="utf-8").splitlines()
    read = [json.loads(line, parse_float=Decimal) for line in lines]
    server = server_rows(my_types)
    for got, want in zip(read, server, strict=True):
        if want["f"] is None:
            assert got == {c: (1 * want["id"] if c == "id" else None) for c in COLUMNS}
            continue
        assert float(got["f"]) == shortest_float32(want["f"])
        assert float(got["dbl"]) == want["dbl"]
        assert date.fromisoformat(got["d"]) == want["d"]
        assert datetime.fromisoformat(got["dt"]) == want["dt"]
        assert datetime.fromisoformat(got["ts"]) == want["ts"]
        assert got["ts"].endswith("+00:00") and "+" not in got["dt"]
        assert got["j"] == want["j"]  # nested, every digit kept
    assert read[0]["j"]["a"][1] == 12345678901234567890
    assert read[1]["j"] == "just text" and read[2]["j"] == []
    assert '"f": 340282350000000000000000000000000000000,' in lines[1]


async def test_parquet_is_exact(my_types: str, tmp_path: Path) -> None:
    out = tmp_path / "t.parquet"
    await rowstream.export(my_types, TABLE, out)
    server = server_rows(my_types)
    table = pq.read_table(out)
    assert table.schema.field("f").type == pa.float32()
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    read = table.to_pylist()
    for row in read:
        row["j"] = None if row["j"] is None else json.loads(row["j"], parse_float=Decimal)
    assert_same(read, server)
    assert_same(duckdb_rows(f"read_parquet('{out}')"), server)


async def test_query_reads_float_exactly(my_types: str, tmp_path: Path) -> None:
    """A --query's FLOAT columns are read as DOUBLE too (the query becomes a derived table)."""
    by_table, by_query = tmp_path / "table.csv", tmp_path / "query.csv"
    await rowstream.export(my_types, TABLE, by_table, columns=["id", "f", "ts"])
    sql = f"SELECT id, f, ts FROM {TABLE} WHERE 'a%' LIKE '%'"
    await rowstream.export(my_types, sa.text(sql), by_query)
    assert by_query.read_bytes() == by_table.read_bytes()
    parquet = tmp_path / "query.parquet"
    await rowstream.export(my_types, sa.text(sql), parquet)
    table = pq.read_table(parquet).sort_by("id")
    assert table.column("f").to_pylist() == [r["f"] for r in server_rows(my_types)]
    # MariaDB may ignore a derived table's ORDER BY: such a query is refused, naming the cast.
    ordered = tmp_path / "ordered.csv"
    with pytest.raises(rowstream.SinkError, match=r"column 'f' is a FLOAT.*CAST\(f AS DOUBLE\)"):
        await rowstream.export(my_types, sa.text(f"{sql} ORDER BY id DESC"), ordered)
    cast = f"SELECT id, CAST(f AS DOUBLE) AS f, ts FROM {TABLE} ORDER BY id DESC"
    await rowstream.export(my_types, sa.text(cast), ordered)
    # The user's DOUBLE is written with a double's digits (0.10000000149011612): the same value.
    lines = [line.split(",") for line in ordered.read_text().splitlines()[1:]]
    assert [int(line[0]) for line in lines] == [5, 4, 3, 2, 1]
    exact = {r["id"]: r["f"] for r in server_rows(my_types)}
    assert all(float(line[1] or "nan") == exact[int(line[0])] for line in lines[1:])


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
async def test_zero_dates_refused_by_default(my_types: str, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"z.{suffix}"
    with pytest.raises(rowstream.SinkError) as caught:
        await rowstream.export(my_types, ZERO, out)
    message = str(caught.value)
    assert "column 'd'" in message and "'0000-00-00'" in message
    assert "--zero-dates null" in message and "\n" not in message
    assert names(tmp_path) == []


async def test_zero_dates_null_and_text(my_types: str, tmp_path: Path) -> None:
    null_csv, text_csv = tmp_path / "null.csv", tmp_path / "text.csv"
    await rowstream.export(my_types, ZERO, null_csv, zero_dates="null")
    assert null_csv.read_text() == (
        "id,d,dt,ts\n1,2024-01-01,2024-01-01 00:00:00,2024-01-01 00:00:00+00\n2,,,\n3,,,\n"
    )
    await rowstream.export(my_types, ZERO, text_csv, zero_dates="text")
    server = mariadb_client(my_types, f"SELECT id, d, dt, ts FROM {ZERO} ORDER BY id")
    assert text_csv.read_text().splitlines()[2:] == [
        ",".join(v or "" for v in server[1]),
        ",".join(v or "" for v in server[2]),
    ]
    text_parquet = tmp_path / "text.parquet"
    await rowstream.export(my_types, ZERO, text_parquet, zero_dates="text")
    table = pq.read_table(text_parquet)
    assert [table.schema.field(c).type for c in ("d", "dt", "ts")] == [pa.string()] * 3
    assert [list(row.values()) for row in table.to_pylist()[1:]] == [
        [2, *server[1][1:]],
        [3, *server[2][1:]],
    ]
    assert table.to_pylist()[0]["ts"] == "2024-01-01 00:00:00+00"
    null_parquet = tmp_path / "null.parquet"
    await rowstream.export(my_types, ZERO, null_parquet, zero_dates="null")
    rows = duckdb.sql(f"SELECT d, dt FROM read_parquet('{null_parquet}') ORDER BY id").fetchall()
    assert rows == [(date(2024, 1, 1), datetime(2024, 1, 1)), (None, None), (None, None)]


async def test_cli_matches_api_and_refuses_in_one_line(my_types: str, tmp_path: Path) -> None:
    for suffix in ("csv", "jsonl", "parquet"):
        out, reference = tmp_path / f"cli.{suffix}", tmp_path / f"api.{suffix}"
        result = run_cli(my_types, "--table", TABLE, "-o", str(out), "-q")
        assert result.returncode == 0, result.stderr
        await rowstream.export(my_types, TABLE, reference)
        if suffix == "parquet":
            assert pq.read_table(out).equals(pq.read_table(reference))
        else:
            assert out.read_bytes() == reference.read_bytes()
    target = tmp_path / "zero.parquet"
    line = assert_clean_failure(run_cli(my_types, "--table", ZERO, "-o", str(target)), target)
    assert "column 'd'" in line and "--zero-dates" in line
    ok = run_cli(my_types, "--table", ZERO, "-o", str(target), "--zero-dates", "null", "-q")
    assert ok.returncode == 0, ok.stderr
    assert pq.read_table(target).column("d").to_pylist() == [date(2024, 1, 1), None, None]
    bad = run_cli(my_types, "--table", ZERO, "-o", str(tmp_path / "x.csv"), "--zero-dates", "x")
    assert bad.returncode != 0 and "--zero-dates" in bad.stderr


async def test_table_object_reads_float_exactly(my_types: str, tmp_path: Path) -> None:
    table = sa.Table(
        TABLE,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("f", sa.Float),
        sa.Column("ts", sa.TIMESTAMP),
    )
    by_object, by_name = tmp_path / "object.jsonl", tmp_path / "name.jsonl"
    await rowstream.export(my_types, table, by_object)
    await rowstream.export(my_types, TABLE, by_name, columns=["id", "f", "ts"])
    assert by_object.read_bytes() == by_name.read_bytes()


def test_float32_text_is_numpys_shortest() -> None:
    """Database-free: the FLOAT rendering equals numpy's shortest float32 text, edges included."""
    rng = np.random.default_rng(10)
    bits = rng.integers(0, 2**32, size=20_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    edges = np.array(
        [16777216, 3.4028235e38, -3.4028235e38, 1.17549435e-38, 1.4e-45, 0.1, 1e-45, 1.5],
        dtype=np.float32,
    )
    for value in np.concatenate([values[np.isfinite(values)], edges]):
        assert float(float32_text(float(value))) == float(str(value)), value
