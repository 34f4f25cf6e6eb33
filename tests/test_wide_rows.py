"""Rows of several MB: exact through every stream and export path, one row per batch.

Memory itself is measured in ``bench/bench_wide_rows.py`` (10 rows of 50 MB); here the
behaviour that keeps it flat is checked on real servers: batches sized by bytes hold one wide
row each, and every format writes the rows exactly, through each path (PostgreSQL's COPY and
ADBC, the stream export everywhere).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

import rowstream
import rowstream._pgarrow as pgarrow
from rowstream import sync
from rowstream._sizing import DEFAULT_BATCH_BYTES

TABLE = "wide_rows"
ROWS = 3
# Each row is wider than the default batch_bytes (4 MiB), so it must come alone; MariaDB's
# max_allowed_packet (16 MB on the shared server) bounds a row, with its binary escaped.
TEXT_BYTES = 4 * 1024 * 1024 + 1000
BLOB_BYTES = 512 * 1024


def text_of(i: int) -> str:
    # A quote, a comma, a newline and non-ASCII: CSV quoting and JSON escapes both apply.
    return (f'row {i}, "é"\n' + f"{i:07d}" * (TEXT_BYTES // 7))[:TEXT_BYTES]


def blob_of(i: int) -> bytes:
    return bytes(range(256)) * (BLOB_BYTES // 256) + bytes([i])


def table(dialect: str) -> sa.Table:
    blob: Any = sa.LargeBinary()
    text: Any = sa.Text()
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import LONGBLOB, LONGTEXT

        blob, text = LONGBLOB(), LONGTEXT()
    return sa.Table(
        TABLE,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("body", text),
        sa.Column("blob", blob),
    )


@pytest.fixture
async def wide(db_url: str) -> AsyncIterator[tuple[str, sa.Table]]:
    async with wide_table_at(db_url) as made:
        yield made


@pytest.fixture
async def pg_wide(pg_url: str) -> AsyncIterator[tuple[str, sa.Table]]:
    async with wide_table_at(pg_url) as made:
        yield made


@contextlib.asynccontextmanager
async def wide_table_at(db_url: str) -> AsyncIterator[tuple[str, sa.Table]]:
    engine = rowstream.create_engine(db_url)
    wide_table = table(engine.dialect.name)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(wide_table.drop, checkfirst=True)
            await conn.run_sync(wide_table.create)
        for i in range(1, ROWS + 1):
            # One row per statement: each is several MB on the wire.
            async with engine.begin() as conn:
                await conn.execute(
                    wide_table.insert().values(id=i, body=text_of(i), blob=blob_of(i))
                )
        yield db_url, wide_table
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(wide_table.drop, checkfirst=True)
        await engine.dispose()


def check_rows(rows: list[Any]) -> None:
    assert [row[0] for row in rows] == list(range(1, ROWS + 1))
    for i, body, blob in rows:
        assert body == text_of(i)
        assert bytes(blob) == blob_of(i)


@pytest.mark.parametrize("strategy", ["cursor", "keyset"])
async def test_stream_gives_each_wide_row_its_own_batch(
    wide: tuple[str, sa.Table], strategy: str
) -> None:
    url, wide_table = wide
    sizes, rows = [], []
    async with rowstream.stream(url, sa.select(wide_table), strategy=strategy) as stream:  # type: ignore[arg-type]
        async for batch in stream.batches():
            sizes.append(len(batch))
            rows.extend(tuple(row) for row in batch)
    assert sizes == [1] * ROWS
    assert stream.stats.batches == ROWS
    assert stream.stats.bytes >= ROWS * DEFAULT_BATCH_BYTES
    check_rows(rows)


async def test_stream_rows_one_by_one(wide: tuple[str, sa.Table]) -> None:
    url, wide_table = wide
    async with rowstream.stream(url, sa.select(wide_table)) as stream:
        rows = [tuple(row) async for row in stream]
    assert stream.stats.batches == ROWS
    check_rows(rows)


def test_sync_stream_gives_each_wide_row_its_own_batch(wide: tuple[str, sa.Table]) -> None:
    url, wide_table = wide
    sizes, rows = [], []
    with sync.stream(url, sa.select(wide_table)) as stream:
        for batch in stream.batches():
            sizes.append(len(batch))
            rows.extend(tuple(row) for row in batch)
    assert sizes == [1] * ROWS
    assert stream.stats.batches == ROWS
    check_rows(rows)


async def test_narrow_rows_after_wide_ones_grow_their_batches_again(
    wide: tuple[str, sa.Table],
) -> None:
    url, wide_table = wide
    engine = rowstream.create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                wide_table.insert(),
                [{"id": i, "body": "x", "blob": b"y"} for i in range(ROWS + 1, ROWS + 201)],
            )
    finally:
        await engine.dispose()
    sizes = []
    async with rowstream.stream(url, sa.select(wide_table).order_by(wide_table.c.id)) as stream:
        async for batch in stream.batches():
            sizes.append(len(batch))
    assert sizes[:ROWS] == [1] * ROWS
    assert sum(sizes) == ROWS + 200
    assert max(sizes) > 1


async def test_cursor_leaves_a_borrowed_asyncpg_connection_as_it_came(pg_url: str) -> None:
    engine = rowstream.create_engine(pg_url)
    try:
        async with engine.connect() as conn:
            async with rowstream.stream(conn, sa.text("SELECT 1")) as stream:
                assert [tuple(r) async for r in stream] == [(1,)]
            raw = await conn.get_raw_connection()
            assert type(raw.dbapi_connection) is AsyncAdapt_asyncpg_connection
    finally:
        await engine.dispose()


def expected_text_rows() -> list[list[str]]:
    return [[str(i), text_of(i), "\\x" + blob_of(i).hex()] for i in range(1, ROWS + 1)]


def read_csv(path: Path) -> list[list[str]]:
    limit = csv.field_size_limit(2 * TEXT_BYTES)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    finally:
        csv.field_size_limit(limit)
    assert rows[0] == ["id", "body", "blob"]
    return rows[1:]


def read_jsonl(path: Path) -> list[list[str]]:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    objects = [json.loads(line) for line in lines[:-1]]
    assert all(list(o) == ["id", "body", "blob"] for o in objects)
    return [[str(o["id"]), o["body"], o["blob"]] for o in objects]


def read_parquet(path: Path) -> list[list[str]]:
    file = pq.ParquetFile(path)
    for group in range(file.metadata.num_row_groups):
        # Values this wide get no statistics (parquet-cpp would copy each of them to
        # compute some, and drop them from the file); the key keeps its own.
        row_group = file.metadata.row_group(group)
        assert row_group.column(0).is_stats_set
        assert not row_group.column(1).is_stats_set
        assert not row_group.column(2).is_stats_set
    table = file.read()
    return [
        [str(i), body, "\\x" + bytes(blob).hex()]
        for i, body, blob in zip(*(table.column(n).to_pylist() for n in range(3)), strict=True)
    ]


READERS = {"csv": read_csv, "jsonl": read_jsonl, "parquet": read_parquet}


async def export_exactly(url: str, path: Path, strategy: str) -> str:
    """Export the wide table to ``path``, check every value, return the strategy used."""
    report = await rowstream.export(url, TABLE, path, method=strategy)  # type: ignore[arg-type]
    assert report.rows == ROWS
    assert READERS[path.suffix[1:]](path) == expected_text_rows()
    return report.method


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_export_writes_wide_rows_exactly(
    wide: tuple[str, sa.Table], tmp_path: Path, fmt: str
) -> None:
    # PostgreSQL: COPY (CSV, JSONL) and ADBC (Parquet); MariaDB, SQLite: the stream export.
    await export_exactly(wide[0], tmp_path / f"wide.{fmt}", "auto")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_postgresql_stream_export_writes_wide_rows_exactly(
    pg_wide: tuple[str, sa.Table], tmp_path: Path, fmt: str
) -> None:
    assert await export_exactly(pg_wide[0], tmp_path / f"wide.{fmt}", "stream") == "stream"


async def test_adbc_queue_holds_one_wide_batch_at_a_time(
    pg_wide: tuple[str, sa.Table], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = pg_wide
    pumps: list[pgarrow._Pump] = []
    original = pgarrow._Pump.__init__

    def spy(self: pgarrow._Pump, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        pumps.append(self)

    monkeypatch.setattr(pgarrow._Pump, "__init__", spy)
    # Every batch (one 4 MB row) is over the bound: each waits for the one before to be written.
    monkeypatch.setattr(pgarrow, "QUEUE_BYTES", 1024 * 1024)
    report = await rowstream.export(url, TABLE, tmp_path / "wide.parquet")
    assert report.method == "copy"
    assert report.rows == ROWS
    assert [pump.high_water for pump in pumps] == [1]
    assert read_parquet(tmp_path / "wide.parquet") == expected_text_rows()


def test_csv_and_jsonl_write_a_lone_row_as_they_write_it_among_others() -> None:
    from rowstream._sinks import CsvSink, JsonlSink

    rows = [(i, text_of(i)[:50], blob_of(i)[:20], None, "") for i in range(1, 4)]
    for sink_class in (CsvSink, JsonlSink):
        alone, together = io.BytesIO(), io.BytesIO()
        first, second = sink_class(alone), sink_class(together)
        for sink in (first, second):
            sink.begin(["id", "body", "blob", "none", "empty"])
        for row in rows:
            first.write_rows([row])
        second.write_rows(rows)
        assert alone.getvalue() == together.getvalue()


BINARY_TABLE = "wide_binary"


@pytest.fixture
def binary_table(pg_url: str) -> str:
    engine = sync.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {BINARY_TABLE}")
            conn.exec_driver_sql(
                f"CREATE TABLE {BINARY_TABLE} (id int PRIMARY KEY, b bytea, t text, v varchar(9),"
                " c char(3), n numeric(12, 3), nn numeric, f float8, big bigint, small smallint,"
                " u uuid, flag bool, nm name, o oid)"
            )
            conn.exec_driver_sql(
                f"""INSERT INTO {BINARY_TABLE} VALUES
                (1, '\\x00ff5c27', 'é\\\\"', 'x', 'ab', 1.5, 'NaN', 'Infinity', 9223372036854775807,
                 -32768, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', true, 'nm', 4294967295),
                (2, '', '', '', '', -0.001, 1e-20, 'NaN', -1, 0, NULL, false, '', 0),
                (3, NULL, NULL, NULL, NULL, NULL, NULL, -1.7976931348623157e308, NULL, NULL, NULL,
                 NULL, NULL, NULL),
                (4, decode(repeat('ab', 300000), 'hex'), repeat('y', 5), 'z', 'c', 0,
                 12345678901234567890.123456789, 0.1, 2, 3,
                 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', true, 'n', 7)"""
            )
    finally:
        engine.dispose()
    return BINARY_TABLE


def test_sync_bytea_results_come_in_binary_with_the_values_of_text(
    pg_url: str, binary_table: str
) -> None:
    """psycopg's text sends bytea as hex (twice its size, held twice by libpq): a result
    holding bytea whose columns all load the same in binary is read in binary
    (rowstream._sync._acompat._binary_wide_rows), and gives exactly the rows text gives."""
    import psycopg

    from rowstream._pgarrow import libpq_conninfo

    query = f"SELECT * FROM {binary_table} ORDER BY id"
    with psycopg.connect(libpq_conninfo(sa.make_url(pg_url))) as plain:
        want = [tuple(r) for r in plain.execute(query).fetchall()]  # text, psycopg's loaders
    engine = sync.create_engine(pg_url)
    table = sa.Table(binary_table, sa.MetaData(), autoload_with=engine)
    engine.dispose()
    statements = {
        "cursor": sa.text(query),
        "keyset": sa.select(table).order_by(table.c.id),  # pages by the primary key
    }
    for strategy, statement in statements.items():
        with sync.stream(pg_url, statement, strategy=strategy, batch_rows=1) as rows:
            got = [tuple(r) for r in rows]
        assert len(got) == len(want) == 4
        for a, b in zip(got, want, strict=True):
            assert [type(x) for x in a] == [type(x) for x in b]
            # NaN is not equal to itself: compare their texts.
            assert [repr(x) for x in a] == [repr(x) for x in b]


def test_only_exact_results_switch_to_binary_and_the_connection_leaves_as_it_came(
    pg_url: str, binary_table: str
) -> None:
    from psycopg.pq import Format

    from rowstream._sync._acompat import exact_temporals

    engine = sync.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            before = driver.server_cursor_factory
            cases = {
                f"SELECT id, b, n, t FROM {binary_table}": Format.BINARY,
                f"SELECT id, t FROM {binary_table}": Format.TEXT,  # no bytea: nothing to gain
                f"SELECT b, 1.5::float4 FROM {binary_table}": Format.TEXT,  # float4 differs
                f"SELECT b, now() FROM {binary_table}": Format.TEXT,  # another tzinfo
                f"SELECT b, 'x'::regclass FROM {binary_table}": Format.TEXT,  # not known
            }
            with exact_temporals(conn, "error", "refuse"):
                for i, (sql, expected) in enumerate(cases.items()):
                    with driver.cursor(name=f"c{i}") as cursor:
                        cursor.execute(sql.replace("'x'::regclass", "'pg_class'::regclass"))
                        cursor.fetchmany(1)
                        formats = {
                            cursor.pgresult.fformat(k) for k in range(cursor.pgresult.nfields)
                        }
                        assert formats == {expected}, sql
            # infinity= choices load temporal text with rowstream's loaders: text stays.
            with exact_temporals(conn, "null", "refuse"), driver.cursor(name="inf") as cursor:
                cursor.execute(f"SELECT id, b FROM {binary_table}")
                cursor.fetchmany(1)
                assert cursor.pgresult.fformat(1) == Format.TEXT
            assert driver.server_cursor_factory is before
            conn.rollback()
    finally:
        engine.dispose()
