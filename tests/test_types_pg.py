"""Every PostgreSQL type, in CSV, JSONL and Parquet: exact, or refused in one line.

One table holds some 40 types with each type's extremes (ints' min and max, the first and last
date and the last microsecond Arrow holds, BC dates, 24:00:00, NaN and Infinity in unconstrained
numeric) and NULL in every column. CSV must equal the server's ``COPY ... CSV HEADER``, JSONL
its ``to_jsonb()``; Parquet is read back by pyarrow and by DuckDB and compared with what
asyncpg returns (temporal values as integers the server computes: Python's datetime cannot
hold them). A second table holds what Parquet's types cannot: infinity, instants past Arrow's
range, NaN in ``numeric(p, s)``, arrays of two dimensions; each is refused naming the column,
the value and the option, through the API and the CLI, or written as the option says.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

import rowstream
from tests.test_export_pg import _oracle_copy

# name, type, then three values (SQL literals): the largest, the smallest, an ordinary one.
COLUMNS: list[tuple[str, str, str, str, str]] = [
    ("i2", "smallint", "32767", "-32768", "0"),
    ("i4", "integer", "2147483647", "-2147483648", "0"),
    ("i8", "bigint", "9223372036854775807", "-9223372036854775808", "0"),
    ("b", "boolean", "true", "false", "true"),
    ("f4", "real", "3.4028235e38", "'-Infinity'", "1.4e-45"),
    ("f8", "double precision", "1.7976931348623157e308", "'NaN'", "5e-324"),
    ("n10", "numeric(10, 2)", "99999999.99", "-99999999.99", "0.01"),
    ("n38", "numeric(38, 10)", "9" * 28 + "." + "9" * 10, "-" + "9" * 28 + "." + "9" * 10, "0"),
    ("n", "numeric", "'Infinity'", "'NaN'", "0.000000000000000000001"),
    ("tstz", "timestamptz", "'294247-01-10 04:00:54.775806+00'", "'4713-01-01 00:00+00 BC'",
     "'2024-02-29 12:34:56.5+00'"),
    ("ts", "timestamp", "'294247-01-10 04:00:54.775806'", "'4713-01-01 00:00 BC'",
     "'0044-03-15 12:00 BC'"),
    ("d", "date", "'5874897-12-31'", "'4714-11-24 BC'", "'0001-01-01 BC'"),
    ("t", "time", "'24:00:00'", "'00:00:00'", "'12:34:56.789'"),
    ("tz", "timetz", "'24:00:00-15:59'", "'00:00:00+15:59'", "'12:00+02'"),
    ("iv", "interval", "'178000000 years'", "'-178000000 years'",
     "'1 year 2 mons 3 days 04:05:06.789'"),
    ("u", "uuid", "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
     "'00000000-0000-0000-0000-000000000000'", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    ("j", "json", """'{"b": 1,  "a": [1, 2.50]}'""", "'[]'", """E'{"a": 1,\\n\\t"a": 2}'"""),
    ("jb", "jsonb", """'{"b": 1, "a": [1e400, 2.50], "z": null}'""", "'{}'", """'"text"'"""),
    ("x", "xml", "'<a b=\"1\">é</a>'", "''", "'text'"),
    ("m", "money", "'92233720368547758.07'", "'-92233720368547758.08'", "0"),
    ("ip", "inet", "'ffff::1/128'", "'0.0.0.0/0'", "'192.168.0.1/24'"),
    ("cidr", "cidr", "'10.0.0.0/8'", "'::/0'", "'192.168.0.0/24'"),
    ("mac", "macaddr", "'ff:ff:ff:ff:ff:ff'", "'00:00:00:00:00:00'", "'08:00:2b:01:02:03'"),
    ("bits", "bit(4)", "B'1111'", "B'0000'", "B'1010'"),
    ("vb", "varbit", "B'1'", "B''", "B'10101'"),
    ("pt", "point", "'(1e308,-1e308)'", "'(0,0)'", "'(1.5,2)'"),
    ("r", "int4range", "'[1,5)'", "'empty'", "'(,)'"),
    ("tv", "tsvector", "'a:1 b:2'", "''", "'fat cat'"),
    ("o", "oid", "4294967295", "0", "1"),
    ("by", "bytea", "'\\x00ff10'", "'\\x'", "'abc'"),
    ("s", "text", "'héllo, \"wörld\"' || E'\\nline2\\r\\n'", "''", "'日本語 😀 \\.'"),
    ("v", "varchar(20)", "'x'", "''", "','"),
    ("c", "char(3)", "'abc'", "''", "'a'"),
    ("ch", '"char"', "'z'", "''", "'a'"),
    ("nm", "name", "'n'", "''", "'x y'"),
    ("ai", "integer[]", "'{1,NULL,2147483647}'", "'{}'", "'{-2147483648}'"),
    ("at", "text[]", """'{"a b","",NULL,"q\\"uote"}'""", "'{}'", "'{NULL}'"),
    ("ad", "date[]", "'{4714-11-24 BC,5874897-12-31}'", "'{}'", "'{NULL,2024-02-29}'"),
    ("atz", "timestamptz[]", "'{\"4713-01-01 00:00+00 BC\",\"2024-02-29 12:00+00\"}'", "'{}'",
     "'{NULL}'"),
    ("an", "numeric(6, 2)[]", "'{9999.99,NULL,-9999.99}'", "'{}'", "'{0}'"),
]  # fmt: skip
TABLE = "types_all"
QUERY = f"SELECT * FROM {TABLE} ORDER BY id"
# Columns compared as integers: days or microseconds from 1970, as the server computes them.
TEMPORAL = {"tstz", "ts", "d", "t", "ad", "atz"}
METHODS = ("copy", "stream")
# Columns compared with what asyncpg returns as it is; the rest with the server's text.
AS_ASYNCPG_RETURNS = {
    "smallint", "integer", "bigint", "boolean", "real", "double precision", "numeric(10, 2)",
    "numeric(38, 10)", "oid", "bytea", "integer[]", "numeric(6, 2)[]",
}  # fmt: skip


def _ddl() -> str:
    columns = ", ".join(f"{name} {kind}" for name, kind, *_ in COLUMNS)
    rows = []
    for i in range(3):
        rows.append(f"({i + 1}, " + ", ".join(c[2 + i] for c in COLUMNS) + ")")
    rows.append("(4" + ", NULL" * len(COLUMNS) + ")")
    return (
        f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id int PRIMARY KEY, {columns}); "
        f"INSERT INTO {TABLE} VALUES {', '.join(rows)}"
    )


@pytest.fixture
async def types_url(pg_url: str) -> AsyncIterator[str]:
    async with _table(pg_url, _ddl(), TABLE):
        yield pg_url


@contextlib.asynccontextmanager
async def _table(url: str, ddl: str, name: str) -> AsyncIterator[None]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(ddl)
        yield
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
        await conn.close()


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET TimeZone = 'UTC'")
        return await conn.fetch(sql)
    finally:
        await conn.close()


@pytest.mark.parametrize("method", METHODS)
async def test_csv_equals_copy(types_url: str, tmp_path: Path, method: str) -> None:
    out = tmp_path / "all.csv"
    await rowstream.export(types_url, sa.text(QUERY), out, method=method)  # type: ignore[arg-type]
    expected = await _oracle_copy(types_url, QUERY)
    assert out.read_bytes() == expected
    assert b"294247-01-10 04:00:54.775806+00" in expected and b"4714-11-24 BC" in expected


async def test_jsonl_equals_to_jsonb_on_both_paths(types_url: str, tmp_path: Path) -> None:
    copied, streamed = tmp_path / "copy.jsonl", tmp_path / "stream.jsonl"
    await rowstream.export(types_url, sa.text(QUERY), copied, method="copy")
    await rowstream.export(types_url, sa.text(QUERY), streamed, method="stream")
    assert copied.read_bytes() == streamed.read_bytes()
    oracle = [r[0] for r in await _fetch(types_url, f"SELECT to_jsonb(q)::text FROM ({QUERY}) q")]
    lines = copied.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(oracle) == 4
    for line, expected in zip(lines, oracle, strict=True):
        ours = json.loads(line, parse_float=Decimal)
        assert list(ours) == ["id", *(c[0] for c in COLUMNS)]
        theirs = json.loads(expected, parse_float=Decimal)
        # json as stored: to_jsonb() sorts keys and keeps only the last of duplicate ones.
        ours.pop("j"), theirs.pop("j")
        assert ours == theirs
    assert '"j": {"b": 1,  "a": [1, 2.50]}' in lines[0] and '"j": []' in lines[1]
    assert '"j": {"a": 1,  "a": 2}' in lines[2]
    assert json.loads(lines[3]) == {"id": 4, **{c[0]: None for c in COLUMNS}}


def _oracle_sql() -> str:
    """The table as asyncpg returns it, temporal columns as integers, text-typed ones as text."""
    parts = ["id"]
    for name, kind, *_ in COLUMNS:
        if name in ("d",):
            parts.append(f"{name} - DATE '1970-01-01' AS {name}")
        elif name in ("tstz", "ts"):
            # extract(epoch) rounds near the ends: days and time of day apart.
            parts.append(
                f"(({name}::date - DATE '1970-01-01')::numeric * 86400000000 "
                f"+ extract(epoch FROM {name}::time) * 1000000)::int8 AS {name}"
            )
        elif name == "t":
            parts.append(f"(extract(epoch FROM {name}) * 1000000)::int8 AS {name}")
        elif name == "ad":
            parts.append(
                f"CASE WHEN {name} IS NOT NULL THEN ARRAY(SELECT e - DATE '1970-01-01' "
                f"FROM unnest({name}) e) END AS {name}"
            )
        elif name == "atz":
            parts.append(
                f"CASE WHEN {name} IS NOT NULL THEN ARRAY(SELECT ((e::date - DATE '1970-01-01')"
                f"::numeric * 86400000000 + extract(epoch FROM e::time) * 1000000)::int8 "
                f"FROM unnest({name}) e) END AS {name}"
            )
        elif kind in AS_ASYNCPG_RETURNS:
            parts.append(name)
        elif kind == "char(3)":
            # COPY's text keeps the padding (the output function); a cast to text drops it.
            parts.append(f"CASE WHEN {name} IS NOT NULL THEN format('%s', {name}) END AS {name}")
        else:
            parts.append(f"{name}::text" + ("[]" if kind.endswith("[]") else "") + f" AS {name}")
    return f"SELECT {', '.join(parts)} FROM {TABLE} ORDER BY id"


def _duckdb_rows(path: Path) -> list[tuple[Any, ...]]:
    parts = ["id"]
    for name, *_ in COLUMNS:
        if name == "d":
            parts.append("d - DATE '1970-01-01'")
        elif name == "tstz":
            parts.append("epoch_us(tstz::TIMESTAMP)")
        elif name in ("ts", "t"):
            parts.append(f"epoch_us({name})")
        elif name == "ad":
            parts.append("list_transform(ad, lambda x: x - DATE '1970-01-01')")
        elif name == "atz":
            parts.append("list_transform(atz, lambda x: epoch_us(x::TIMESTAMP))")
        else:
            parts.append(f'"{name}"')
    return duckdb.sql(f"SELECT {', '.join(parts)} FROM '{path}' ORDER BY id").fetchall()


def _pyarrow_rows(path: Path) -> list[list[Any]]:
    table = pq.read_table(path)
    columns = []
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if name in TEMPORAL:
            # Integers: pyarrow's datetime conversion stops at year 9999 (and 24:00 wraps).
            item = column.type.value_type if pa.types.is_list(column.type) else column.type
            width = pa.int64() if item.bit_width == 64 else pa.int32()
            column = (
                column.cast(pa.list_(width))
                if pa.types.is_list(column.type)
                else column.view(width)
            )
        columns.append(column.to_pylist())
    return [list(row) for row in zip(*columns, strict=True)]


@pytest.mark.parametrize("method", METHODS)
async def test_parquet_read_back_by_pyarrow_and_duckdb(
    types_url: str, tmp_path: Path, method: str
) -> None:
    out = tmp_path / "all.parquet"
    report = await rowstream.export(types_url, sa.text(QUERY), out, method=method)  # type: ignore[arg-type]
    assert report.method == method and report.rows == 4
    expected = [list(r) for r in await _fetch(types_url, _oracle_sql())]
    # repr: NaN equals itself, -0.0 differs from 0.0, Decimal keeps its digits.
    assert repr(_pyarrow_rows(out)) == repr(expected)
    assert repr([list(r) for r in _duckdb_rows(out)]) == repr(expected)
    schema = pq.read_schema(out)
    assert schema.field("n38").type == pa.decimal128(38, 10)
    assert schema.field("tstz").type == pa.timestamp("us", tz="UTC")
    assert schema.field("ad").type == pa.list_(pa.date32())
    assert schema.field("iv").type == pa.string()
    texts = duckdb.sql(f"SELECT tstz::VARCHAR, d::VARCHAR, t::VARCHAR FROM '{out}' ORDER BY id")
    assert texts.fetchall()[:2] == [
        ("294247-01-10 04:00:54.775806+00", "5874897-12-31", "24:00:00"),
        ("4713-01-01 (BC) 00:00:00+00", "4714-11-24 (BC)", "00:00:00"),
    ]


async def test_parquet_through_the_cursor_fallback_is_the_same(
    types_url: str, edge_url: str, tmp_path: Path
) -> None:
    # ADBC cannot connect (the engine's connect_args hold the real host): rows come through
    # asyncpg, read as the same integers and checked the same way.
    url = sa.make_url(types_url).set(drivername="postgresql+asyncpg")
    engine = rowstream.create_engine(
        url.set(host="rowstream-no-such-host.invalid"),
        connect_args={"host": url.host, "port": url.port},
    )
    fast, slow = tmp_path / "adbc.parquet", tmp_path / "cursor.parquet"
    try:
        assert (await rowstream.export(engine, sa.text(QUERY), slow)).method == "cursor"
        with pytest.raises(rowstream.SinkError, match=r"'tstz'.*infinity.*--infinity"):
            await rowstream.export(engine, sa.text(f"SELECT id, tstz FROM {EDGE}"), slow)
    finally:
        await engine.dispose()
    await rowstream.export(types_url, sa.text(QUERY), fast)
    assert repr(_pyarrow_rows(fast)) == repr(_pyarrow_rows(slow))  # repr: NaN == NaN


# ---------------------------------------------------------------- what Parquet cannot hold

EDGE = "types_edge"
EDGE_DDL = f"""
DROP TABLE IF EXISTS {EDGE};
CREATE TABLE {EDGE} (id int PRIMARY KEY, tstz timestamptz, ts timestamp, d date,
                     atz timestamptz[], ad date[], n numeric(38, 10), an numeric(6, 2)[],
                     md integer[]);
INSERT INTO {EDGE} VALUES
(1, 'infinity', 'infinity', 'infinity', '{{2024-01-01 00:00+00,infinity}}', '{{-infinity}}',
 'NaN', '{{1.5,NaN}}', '{{{{1,2}},{{3,NULL}}}}'),
(2, '-infinity', '-infinity', '-infinity', NULL, NULL, 1.5, NULL, '[0:1]={{5,6}}'),
(3, '294276-12-31 23:59:59.999999+00', '294276-12-31 23:59:59.999999', '2024-02-29',
 '{{"294276-12-31 23:59:59.999999+00"}}', '{{2024-02-29}}', NULL, NULL, '{{1}}'),
(4, '2024-02-29 12:00+00', '2024-02-29 12:00', '2024-02-29', NULL, NULL, 2.5, '{{2.5}}', NULL),
(5, '294247-01-10 04:00:54.775807+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""


@pytest.fixture
async def edge_url(pg_url: str) -> AsyncIterator[str]:
    async with _table(pg_url, EDGE_DDL, EDGE):
        yield pg_url


# column, rows, what the message must show, the option it must name.
REFUSED = [
    ("tstz", "1", "holds infinity", "--infinity"),
    ("tstz", "2", "holds -infinity", "--infinity"),
    ("tstz", "3", "holds 294276-12-31 23:59:59.999999", "--infinity"),
    ("tstz", "5", "holds 294247-01-10 04:00:54.775807", "--infinity"),
    ("ts", "3", "holds 294276-12-31 23:59:59.999999", "--infinity"),
    ("d", "1", "holds infinity", "--infinity"),
    ("d", "2", "holds -infinity", "--infinity"),
    ("atz", "1", "holds infinity", "--infinity"),
    ("atz", "3", "holds 294276-12-31", "--infinity"),
    ("ad", "1", "holds -infinity", "--infinity"),
    ("n", "1", "holds NaN", "--nan"),
    ("an", "1", "holds NaN", "--nan"),
    ("md", "1", "holds {{1,2},{3,NULL}}", "md::text"),
    ("md", "2", "holds [0:1]={5,6}", "md::text"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("column", "ids", "shown", "option"), REFUSED)
async def test_parquet_refuses_what_it_cannot_hold(
    edge_url: str, tmp_path: Path, method: str, column: str, ids: str, shown: str, option: str
) -> None:
    out = tmp_path / "edge.parquet"
    query = sa.text(f"SELECT id, {column} FROM {EDGE} WHERE id IN ({ids}, 4) ORDER BY id")
    with pytest.raises(rowstream.SinkError) as caught:
        await rowstream.export(edge_url, query, out, method=method)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    assert f"column {column!r}" in message and shown in message and option in message
    assert not out.exists()


def _ints(path: Path, column: str) -> list[Any]:
    array = pq.read_table(path).column(column).combine_chunks()
    if pa.types.is_list(array.type):
        width = pa.int64() if array.type.value_type.bit_width == 64 else pa.int32()
        return array.cast(pa.list_(width)).to_pylist()
    return array.view(pa.int64() if array.type.bit_width == 64 else pa.int32()).to_pylist()


TOP = 2**63 - 1
DAY_TOP = 2**31 - 1
NOON = 1709208000000000  # 2024-02-29 12:00 UTC
LEAP_DAY = 19782  # 2024-02-29


@pytest.mark.parametrize("method", METHODS)
async def test_infinity_null_clamp_and_text(edge_url: str, tmp_path: Path, method: str) -> None:
    query = sa.text(f"SELECT id, tstz, ts, d, atz, ad FROM {EDGE} WHERE id <= 4 ORDER BY id")
    nulls, clamped, texts = (tmp_path / f"{k}.parquet" for k in ("null", "clamp", "text"))
    for path, choice in ((nulls, "null"), (clamped, "clamp"), (texts, "text")):
        await rowstream.export(edge_url, query, path, method=method, infinity=choice)  # type: ignore[arg-type]
    assert _ints(nulls, "tstz") == [None, None, None, NOON]
    assert _ints(nulls, "d") == [None, None, LEAP_DAY, LEAP_DAY]
    assert _ints(nulls, "atz") == [[1704067200000000, None], None, [None], None]
    assert _ints(clamped, "tstz") == [TOP, -TOP, TOP - 1, NOON]
    assert _ints(clamped, "ts") == [TOP, -TOP, TOP - 1, NOON]
    assert _ints(clamped, "d") == [DAY_TOP, -DAY_TOP, LEAP_DAY, LEAP_DAY]
    assert _ints(clamped, "ad") == [[-DAY_TOP], None, [LEAP_DAY], None]
    # DuckDB, a reader nobody here wrote, reads the clamped extremes as infinity.
    seen = duckdb.sql(f"SELECT tstz::VARCHAR, ts::VARCHAR, d::VARCHAR FROM '{clamped}' ORDER BY id")
    assert seen.fetchall()[:2] == [
        ("infinity", "infinity", "infinity"),
        ("-infinity", "-infinity", "-infinity"),
    ]
    server = await _fetch(
        edge_url,
        f"SELECT tstz::text, ts::text, d::text, atz::text[], ad::text[] FROM {EDGE} "
        "WHERE id <= 4 ORDER BY id",
    )
    assert pq.read_table(texts).drop(["id"]).to_pylist() == [
        dict(zip(("tstz", "ts", "d", "atz", "ad"), r, strict=True)) for r in server
    ]
    assert pq.read_schema(texts).field("atz").type == pa.list_(pa.string())


@pytest.mark.parametrize("method", METHODS)
async def test_nan_null_and_text(edge_url: str, tmp_path: Path, method: str) -> None:
    query = sa.text(f"SELECT id, n, an FROM {EDGE} WHERE id <= 4 ORDER BY id")
    nulls, texts = tmp_path / "null.parquet", tmp_path / "text.parquet"
    await rowstream.export(edge_url, query, nulls, method=method, nan="null")  # type: ignore[arg-type]
    await rowstream.export(edge_url, query, texts, method=method, nan="text")  # type: ignore[arg-type]
    table = pq.read_table(nulls)
    assert table.schema.field("n").type == pa.decimal128(38, 10)
    assert table.column("n").to_pylist() == [None, Decimal("1.5"), None, Decimal("2.5")]
    assert table.column("an").to_pylist() == [
        [Decimal("1.50"), None],
        None,
        None,
        [Decimal("2.50")],
    ]
    assert pq.read_table(texts).column("n").to_pylist() == [
        "NaN", "1.5000000000", None, "2.5000000000"
    ]  # fmt: skip
    assert pq.read_table(texts).column("an").to_pylist() == [["1.50", "NaN"], None, None, ["2.50"]]


async def test_csv_and_jsonl_keep_the_edge_values(edge_url: str, tmp_path: Path) -> None:
    # Nothing to refuse in text: PostgreSQL's own renderings, the same on both paths.
    query = sa.text(f"SELECT * FROM {EDGE} ORDER BY id")
    for suffix in ("csv", "jsonl"):
        copied, streamed = tmp_path / f"copy.{suffix}", tmp_path / f"stream.{suffix}"
        await rowstream.export(edge_url, query, copied, method="copy")
        await rowstream.export(edge_url, query, streamed, method="stream")
        assert copied.read_bytes() == streamed.read_bytes()
    first = json.loads(copied.read_text().splitlines()[0])
    assert first["tstz"] == "infinity" and first["d"] == "infinity" and first["n"] == "NaN"
    assert first["md"] == [[1, 2], [3, None]]
    # to_jsonb() would write [5,6]: the bounds go with the text.
    assert json.loads(copied.read_text().splitlines()[1])["md"] == "[0:1]={5,6}"
    assert json.loads(copied.read_text().splitlines()[2])["md"] == [1]
    assert b"infinity,infinity,infinity" in (tmp_path / "copy.csv").read_bytes()


def test_cli_refuses_in_one_line_and_leaves_no_file(edge_url: str, tmp_path: Path) -> None:
    out = tmp_path / "edge.parquet"
    env = {**os.environ, "PYTHONPATH": str(Path(rowstream.__file__).parents[1])}
    command = [
        sys.executable,
        "-m",
        "rowstream",
        "export",
        edge_url,
        "--table",
        EDGE,
        "-o",
        str(out),
        "--columns",
    ]
    done = subprocess.run(
        [*command, "id,tstz"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "column 'tstz'" in lines[0] and "infinity" in lines[0] and "--infinity" in lines[0]
    assert "Traceback" not in done.stderr and list(tmp_path.iterdir()) == []
    # With the options, the same table exports.
    command += ["id,tstz,ts,d,atz,ad,n,an", "--infinity", "clamp", "--nan", "null"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert pq.read_table(out).num_rows == 5


async def test_stream_names_the_column_python_cannot_hold(types_url: str) -> None:
    # asyncpg turns dates into Python's date, which stops at year 1: a clear refusal naming the
    # column (a client-side decode, not a server error), and the cast that reads it.
    query = sa.text(f"SELECT id, i4, d FROM {TABLE} ORDER BY id")
    with pytest.raises(rowstream.QueryError) as caught:
        async with rowstream.stream(types_url, query) as rows:
            async for _ in rows:
                pass
    message = str(caught.value)
    assert "column 'd' (date) holds 5874897-12-31" in message and "(d::text)" in message
    assert "server rejected" not in message and "\n" not in message
    # psycopg refuses too (infinity as well), with the value; a bare text() cannot be read
    # again to find the column (a select() can: tests/test_stream_types.py), so the column
    # comes from the result psycopg was loading.
    psycopg = sa.make_url(types_url).set(drivername="postgresql+psycopg")
    with pytest.raises(rowstream.QueryError) as caught:
        async with rowstream.stream(psycopg, query) as rows:
            async for _ in rows:
                pass
    message = str(caught.value)
    assert "cannot read column d (date)" in message and "'5874897-12-31'" in message
    assert "server rejected" not in message
    query = sa.text(f"SELECT id, d::text AS d FROM {TABLE} ORDER BY id")
    async with rowstream.stream(types_url, query) as rows:
        assert [r.d async for r in rows] == [
            "5874897-12-31",
            "4714-11-24 BC",
            "0001-01-01 BC",
            None,
        ]


async def test_parquet_from_a_connection_in_another_time_zone(
    types_url: str, tmp_path: Path
) -> None:
    # A borrowed connection keeps its session (here +05:30): instants are still read in UTC.
    engine = rowstream.create_engine(types_url)
    ours, copied = tmp_path / "borrowed.parquet", tmp_path / "copy.parquet"
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SET TIME ZONE 'Asia/Kolkata'")
            report = await rowstream.export(conn, sa.text(QUERY), ours)
    finally:
        await engine.dispose()
    assert report.method == "stream"
    await rowstream.export(types_url, sa.text(QUERY), copied)
    assert repr(_pyarrow_rows(ours)) == repr(_pyarrow_rows(copied))
