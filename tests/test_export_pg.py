"""Export on PostgreSQL: every listed type, in the three formats, against the server's oracles.

The oracles are the server's own renderings: ``COPY ... TO STDOUT WITH CSV HEADER`` (CSV),
``to_jsonb()`` (JSONL) and the Arrow types of the issue (Parquet). Both strategies (COPY and
the generic stream, ``method="copy"`` and ``"stream"``) must write the same thing, to a file
or to any writable stream.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

import rowstream

TABLE = "exp_types"

DDL = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE TABLE {TABLE} (
    id int PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint, b boolean,
    f4 real, f8 double precision,
    n10 numeric(10, 2), n38 numeric(38, 10), n numeric,
    tstz timestamptz, ts timestamp, d date, t time, iv interval,
    u uuid, j json, jb jsonb, ai integer[], at text[], by bytea, s text, v varchar(20)
);
INSERT INTO {TABLE} VALUES
(1, 32767, 2147483647, 9223372036854775807, true,
 3.4028235e38, 1.7976931348623157e308,
 12345678.90, 1234567890123456789012345678.0123456789,
 123456789012345678901234567890.123456789012345,
 '0001-01-01 00:00:00+00', '0001-01-01 00:00:00', '0001-01-01', '00:00:00',
 '1 year 2 mons 3 days 04:05:06.789',
 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{{"b": 1,  "a": [1, 2.50]}}',
 '{{"b": 1, "a": [1, 2.50], "z": null}}',
 '{{1,NULL,3}}', '{{"a b","",NULL,"q\\"uote"}}', '\\x00ff10',
 'héllo, "wörld"' || E'\\nline2\\r\\n', ''),
(2, -32768, -2147483648, -9223372036854775808, false,
 'NaN', 'Infinity',
 -0.01, -0.0000000001, 'NaN',
 '9999-12-31 23:59:59.999999+00', '9999-12-31 23:59:59.999999', '9999-12-31', '23:59:59.999999',
 '-3 days -00:00:01',
 '00000000-0000-0000-0000-000000000000', '[]', '{{}}', '{{}}', '{{}}', '\\x', '日本語 😀 \\.', 'x'),
(3, 0, 0, 0, NULL,
 '-Infinity', '-Infinity',
 0, 0, 0.000000000000000000001,
 '2024-02-29 12:34:56.5+00', '2024-02-29 12:34:56.5', '2024-02-29', '12:34:56.5', '0',
 NULL, 'null', '"text"', NULL, NULL, NULL, ',', NULL),
(4, NULL, NULL, NULL, NULL, NULL, '-0', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""
QUERY = f"SELECT * FROM {TABLE} ORDER BY id"
METHODS = ("copy", "stream")


@pytest.fixture
async def types_table(pg_url: str) -> AsyncIterator[str]:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(DDL)
        yield pg_url
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.close()


async def _oracle_copy(url: str, query: str) -> bytes:
    conn = await asyncpg.connect(url)
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    try:
        await conn.execute("SET TimeZone = 'UTC'")
        await conn.copy_from_query(query, output=sink, format="csv", header=True)
    finally:
        await conn.close()
    return b"".join(chunks)


@pytest.mark.parametrize("method", METHODS)
async def test_csv_is_byte_identical_to_copy(types_table: str, tmp_path: Path, method: str) -> None:
    out = tmp_path / "types.csv"
    report = await rowstream.export(types_table, sa.text(QUERY), out, method=method)  # type: ignore[arg-type]
    expected = await _oracle_copy(types_table, QUERY)
    assert out.read_bytes() == expected
    assert report.rows == 4
    assert report.bytes == len(expected)
    assert report.method == method


@pytest.mark.parametrize("method", METHODS)
async def test_jsonl_values_are_to_jsonb(types_table: str, tmp_path: Path, method: str) -> None:
    out = tmp_path / "types.jsonl"
    await rowstream.export(types_table, sa.text(QUERY), out, method=method)  # type: ignore[arg-type]
    conn = await asyncpg.connect(types_table)
    try:
        await conn.execute("SET TimeZone = 'UTC'")
        oracle = [r[0] for r in await conn.fetch(f"SELECT to_jsonb(r)::text FROM ({QUERY}) r")]
        names = [a.name for a in (await conn.prepare(QUERY)).get_attributes()]
    finally:
        await conn.close()
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(oracle)
    for line, expected in zip(lines, oracle, strict=True):
        # Decimal parsing compares every digit; the order of keys is the columns' order.
        ours = json.loads(line, parse_float=Decimal)
        assert list(ours) == names
        assert ours == json.loads(expected, parse_float=Decimal)
    first = lines[0]
    assert '"n": 123456789012345678901234567890.123456789012345' in first
    assert '"tstz": "0001-01-01T00:00:00+00:00"' in first
    assert '"by": "\\\\x00ff10"' in first
    assert '"jb": {"a": [1, 2.50], "b": 1, "z": null}' in first
    assert '"ai": [1, null, 3]' in first
    assert '"f4": "NaN"' in lines[1] and '"f8": "Infinity"' in lines[1]


async def test_jsonl_strategies_write_the_same_bytes(types_table: str, tmp_path: Path) -> None:
    # COPY builds cheap scalars with to_json() or plain text, the stream path with to_jsonb()
    # everywhere: byte for byte the same, floats' exponents and NaN included.
    copied, streamed = tmp_path / "copy.jsonl", tmp_path / "stream.jsonl"
    await rowstream.export(types_table, sa.text(QUERY), copied, method="copy")
    await rowstream.export(types_table, sa.text(QUERY), streamed, method="stream")
    assert copied.read_bytes() == streamed.read_bytes()
    line = copied.read_text(encoding="utf-8").splitlines()[0]
    assert '"f8": 179769313486231570000000000000000000000' in line  # to_jsonb's float


EXPECTED_ARROW = {
    "id": pa.int32(),
    "i2": pa.int16(),
    "i4": pa.int32(),
    "i8": pa.int64(),
    "b": pa.bool_(),
    "f4": pa.float32(),
    "f8": pa.float64(),
    "n10": pa.decimal128(10, 2),
    "n38": pa.decimal128(38, 10),
    "n": pa.string(),
    "tstz": pa.timestamp("us", tz="UTC"),
    "ts": pa.timestamp("us"),
    "d": pa.date32(),
    "t": pa.time64("us"),
    "iv": pa.string(),
    "u": pa.string(),
    "j": pa.string(),
    "jb": pa.string(),
    "ai": pa.list_(pa.int32()),
    "at": pa.list_(pa.string()),
    "by": pa.binary(),
    "s": pa.string(),
    "v": pa.string(),
}


@pytest.mark.parametrize("method", METHODS)
async def test_parquet_types_and_values(types_table: str, tmp_path: Path, method: str) -> None:
    out = tmp_path / "types.parquet"
    report = await rowstream.export(types_table, sa.text(QUERY), out, method=method)  # type: ignore[arg-type]
    # "copy": binary COPY decoded by ADBC; never a silent fall-back to the cursor.
    assert report.method == method
    table = pq.read_table(out)
    assert {f.name: f.type for f in table.schema} == EXPECTED_ARROW
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"
    rows = table.to_pylist()
    conn = await asyncpg.connect(types_table)
    try:
        texts = await conn.fetch(
            f"SELECT iv::text, n::text, j::text, jb::text, u::text FROM ({QUERY}) t"
        )
    finally:
        await conn.close()
    assert [r["iv"] for r in rows] == [t[0] for t in texts]
    assert rows[0]["iv"] == "1 year 2 mons 3 days 04:05:06.789"
    assert [r["n"] for r in rows] == [t[1] for t in texts]
    assert [r["j"] for r in rows] == [t[2] for t in texts]
    assert [r["jb"] for r in rows] == [t[3] for t in texts]
    assert [r["u"] for r in rows] == [t[4] for t in texts]
    first, second, third, nulls = rows
    assert first["tstz"] == datetime(1, 1, 1, tzinfo=UTC)
    assert second["tstz"] == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert second["ts"] == datetime(9999, 12, 31, 23, 59, 59, 999999)
    assert first["i8"] == 2**63 - 1 and second["i8"] == -(2**63)
    assert first["n38"] == Decimal("1234567890123456789012345678.0123456789")
    assert second["n10"] == Decimal("-0.01")
    assert math.isnan(second["f4"]) and second["f8"] == math.inf
    assert third["f4"] == -math.inf and third["f8"] == -math.inf
    assert math.copysign(1, nulls["f8"]) == -1
    assert first["ai"] == [1, None, 3] and first["at"] == ["a b", "", None, 'q"uote']
    assert first["by"] == b"\x00\xff\x10" and second["by"] == b""
    assert first["s"] == 'héllo, "wörld"\nline2\r\n' and first["v"] == ""
    assert nulls["s"] is None and nulls["v"] is None
    assert all(v is None for k, v in nulls.items() if k not in ("id", "f8"))


async def test_parquet_oid_and_numeric_arrays(pg_url: str, tmp_path: Path) -> None:
    # ADBC decodes oid as a signed int32 and numeric as its own text: both are cast on the
    # way, so oids above 2**31 stay positive and numeric(p, s)[] becomes a list of decimals.
    query = sa.text(
        "SELECT 4294967295::oid AS o, ARRAY[1.50, NULL, -2.25]::numeric(6, 2)[] AS na, "
        "'NaN'::numeric AS n"
    )
    out = tmp_path / "cast.parquet"
    assert (await rowstream.export(pg_url, query, out)).method == "copy"
    table = pq.read_table(out)
    assert table.schema.field("o").type == pa.int64()
    assert table.schema.field("na").type == pa.list_(pa.decimal128(6, 2))
    assert table.to_pylist() == [
        {"o": 4294967295, "na": [Decimal("1.50"), None, Decimal("-2.25")], "n": "NaN"}
    ]


async def test_parquet_falls_back_to_a_cursor_when_adbc_cannot_connect(
    types_table: str, tmp_path: Path
) -> None:
    # The engine's connect_args reach the server; the URL alone (all ADBC gets) does not.
    url = sa.make_url(types_table).set(drivername="postgresql+asyncpg")
    engine = rowstream.create_engine(
        url.set(host="rowstream-no-such-host.invalid"),
        connect_args={"host": url.host, "port": url.port},
    )
    try:
        fast, slow = tmp_path / "fallback.parquet", tmp_path / "stream.parquet"
        report = await rowstream.export(engine, sa.text(QUERY), fast)
        assert report.method == "cursor" and report.rows == 4
    finally:
        await engine.dispose()
    await rowstream.export(types_table, sa.text(QUERY), slow, method="stream")
    assert repr(pq.read_table(fast).to_pylist()) == repr(pq.read_table(slow).to_pylist())


async def test_psycopg_sources(types_table: str, tmp_path: Path) -> None:
    # COPY and the catalog probe speak asyncpg; a psycopg URL or connection still exports the
    # same files (a private asyncpg engine on the same URL does those parts).
    url = sa.make_url(types_table).set(drivername="postgresql+psycopg")
    out = tmp_path / "psycopg.csv"
    report = await rowstream.export(url, sa.text(QUERY), out)
    assert report.method == "copy"
    assert out.read_bytes() == await _oracle_copy(types_table, QUERY)
    parquet, reference = tmp_path / "psycopg.parquet", tmp_path / "asyncpg.parquet"
    await rowstream.export(url, sa.text(QUERY), parquet)
    await rowstream.export(types_table, sa.text(QUERY), reference)
    assert repr(pq.read_table(parquet).to_pylist()) == repr(pq.read_table(reference).to_pylist())
    engine = rowstream.create_engine(url)
    try:
        async with engine.connect() as conn:
            borrowed = tmp_path / "borrowed.csv"
            report = await rowstream.export(conn, sa.text(QUERY), borrowed)
            assert report.method == "stream"
            assert borrowed.read_bytes() == out.read_bytes()
    finally:
        await engine.dispose()


async def test_table_name_columns_and_where(types_table: str, tmp_path: Path) -> None:
    out = tmp_path / "some.csv"
    report = await rowstream.export(
        types_table, f"public.{TABLE}", out, columns=["id", "s"], where="id <= 2 AND s <> ''"
    )
    assert report.rows == 2
    assert out.read_bytes().splitlines()[0] == b"id,s"


async def test_gzip_and_stdout_formats(types_table: str, tmp_path: Path) -> None:
    import gzip

    out = tmp_path / "types.csv.gz"
    await rowstream.export(types_table, sa.text(QUERY), out)
    assert gzip.decompress(out.read_bytes()) == await _oracle_copy(types_table, QUERY)


async def test_empty_result_still_writes_valid_files(types_table: str, tmp_path: Path) -> None:
    query = sa.text(f"SELECT id, n10, tstz FROM {TABLE} WHERE false")
    for name in ("empty.csv", "empty.jsonl", "empty.parquet"):
        report = await rowstream.export(types_table, query, tmp_path / name)
        assert report.rows == 0
    assert (tmp_path / "empty.csv").read_bytes() == b"id,n10,tstz\n"
    assert (tmp_path / "empty.jsonl").read_bytes() == b""
    schema = pq.read_schema(tmp_path / "empty.parquet")
    assert schema.field("n10").type == pa.decimal128(10, 2)


async def test_through_pgbouncer(types_table: str, pgbouncer_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bounced.csv"
    await rowstream.export(pgbouncer_url, sa.text(QUERY), out)
    assert out.read_bytes() == await _oracle_copy(types_table, QUERY)
    # Parquet through the pooler too: ADBC's prepare, COPY and transaction on one backend.
    bounced, direct = tmp_path / "bounced.parquet", tmp_path / "direct.parquet"
    assert (await rowstream.export(pgbouncer_url, sa.text(QUERY), bounced)).method == "copy"
    await rowstream.export(types_table, sa.text(QUERY), direct)
    assert repr(pq.read_table(bounced).to_pylist()) == repr(pq.read_table(direct).to_pylist())


async def test_parquet_many_batches_match_the_stream(pg_url: str, tmp_path: Path) -> None:
    # Several MiB with newlines and quotes inside fields: many decoded batches pass through
    # the queue between the reader and the encoder, and come out whole and in order.
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS exp_blocks; CREATE TABLE exp_blocks AS "
            "SELECT i AS id, repeat('x', i % 50) || E'\\n\"' || i || E'\",\\r\\n' AS note, "
            "timestamptz '2024-01-01' + i * interval '1 second' AS at, "
            "(ARRAY['new', 'paid', 'sent'])[1 + i % 3] AS status "
            "FROM generate_series(1, 60000) i"
        )
        fast, slow = tmp_path / "fast.parquet", tmp_path / "slow.parquet"
        query = sa.text("SELECT * FROM exp_blocks ORDER BY id")
        assert (await rowstream.export(pg_url, query, fast)).method == "copy"
        await rowstream.export(pg_url, query, slow, method="stream")
        assert pq.read_table(fast).equals(pq.read_table(slow))
        assert pq.read_table(fast).column("note")[6].as_py() == 'xxxxxxx\n"7",\r\n'
        # A dictionary only where values repeat: it is wasted work on unique ones.
        group = pq.ParquetFile(fast).metadata.row_group(0)
        encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(4)}
        assert "RLE_DICTIONARY" in encodings["status"]
        assert "RLE_DICTIONARY" not in encodings["note"]
        assert "RLE_DICTIONARY" not in encodings["id"]
    finally:
        await conn.execute("DROP TABLE IF EXISTS exp_blocks")
        await conn.close()


async def test_planner_estimate_for_the_progress_bar(pg_url: str) -> None:
    from rowstream._pgcopy import pg_transaction, probe

    engine = rowstream.create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(
                "CREATE TEMP TABLE exp_estimate AS SELECT generate_series(1, 5000) AS id"
            )
            await conn.exec_driver_sql("ANALYZE exp_estimate")
            await conn.commit()
            async with pg_transaction(conn) as apg:
                columns, estimate = await probe(apg, "SELECT id FROM exp_estimate")
        assert [(c.name, c.typname) for c in columns] == [("id", "int4")]
        assert estimate == 5000
    finally:
        await engine.dispose()


@pytest.fixture
async def lost_table(pg_url: str) -> AsyncIterator[str]:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS exp_lost; CREATE TABLE exp_lost AS "
            "SELECT i AS id, md5(i::text) || md5((i + 1)::text) AS note "
            "FROM generate_series(1, 1500000) i",
            timeout=None,
        )
        yield pg_url
    finally:
        await conn.execute("DROP TABLE IF EXISTS exp_lost")
        await conn.close()


def _largest(directory: Path) -> int:
    return max((p.stat().st_size for p in directory.iterdir()), default=-1)


@pytest.mark.parametrize("name", ["lost.csv", "lost.parquet"])
async def test_connection_lost_in_the_middle(lost_table: str, tmp_path: Path, name: str) -> None:
    # The server ends the COPY's backend (as a restart or a pooler would): one clear error
    # that says to run the export again, and nothing at the target.
    task = asyncio.create_task(rowstream.export(lost_table, "exp_lost", tmp_path / name))
    conn = await asyncpg.connect(lost_table)
    try:
        for _ in range(600):
            if _largest(tmp_path) > 1_000_000 or task.done():
                break
            await asyncio.sleep(0.02)
        assert not task.done(), "the export finished before the connection could be cut"
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
            "application_name = 'rowstream' AND query LIKE 'COPY%' AND pid <> pg_backend_pid() "
            "AND datname = current_database()"
        )
        assert killed == 1
    finally:
        await conn.close()
    with pytest.raises(rowstream.ConnectionLostError, match="run the export again"):
        await task
    assert _largest(tmp_path) == -1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_into_a_stream_is_the_file(
    types_table: str, tmp_path: Path, method: str, fmt: str
) -> None:
    target = tmp_path / f"types.{fmt}"
    await rowstream.export(types_table, sa.text(QUERY), target, method=method)  # type: ignore[arg-type]
    buffer = io.BytesIO()
    report = await rowstream.export(
        types_table,
        sa.text(QUERY),
        buffer,
        format=fmt,  # type: ignore[arg-type]
        method=method,  # type: ignore[arg-type]
    )
    assert buffer.getvalue() == target.read_bytes()
    assert report.bytes == len(buffer.getvalue()) and report.rows == 4


class _Refusing(io.RawIOBase):
    """A stream whose writes fail after ``allowed`` bytes (a client that went away)."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.written + len(data) > self.allowed:
            raise BrokenPipeError("peer went away")
        self.written += len(data)
        return len(data)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_a_stream_that_fails_midway(pg_url: str, method: str, fmt: str) -> None:
    # The failure comes from inside asyncpg's COPY callback, ADBC's writer thread or the
    # stream loop: one SinkError naming the stream, and the connection is not left busy.
    query = sa.text("SELECT i, md5(i::text) AS pad FROM generate_series(1, 300000) i")
    out = _Refusing(allowed=1024 * 1024)
    with pytest.raises(rowstream.SinkError, match=r"cannot write to <_Refusing>.*peer went away"):
        await rowstream.export(pg_url, query, out, format=fmt, method=method)  # type: ignore[arg-type]
    assert out.written <= 1024 * 1024  # chunks come in 128 KB and more: maybe none fit
    buffer = io.BytesIO()
    await rowstream.export(pg_url, sa.text("SELECT 1 AS x"), buffer, method=method)  # type: ignore[arg-type]
    assert buffer.getvalue() == b"x\n1\n"
