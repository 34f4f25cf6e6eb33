"""rowstream only reads, on every database and every entry point, checked on real servers.

Every injection is tried through ``stream``, ``process``, ``export``, the CLI and the sync face,
on PostgreSQL, MariaDB and SQLite; after each attempt the table's rows and the database's list
of tables must be what they were, and the attempt must end in one clear line. Behind the
statement check stand the databases' own refusals (read-only transactions, MySQL connections
without multi-statements): those are tried with statements the check lets through (a function
that writes) or without rowstream at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import rowstream
from rowstream import QueryError, RowstreamError, UnsupportedQueryError
from rowstream import sync as rsync
from rowstream._source import resolve_url
from tests.plugins.servers import DIALECTS, Servers
from tests.test_export_cli import assert_clean_failure, run_cli

TABLE = "ro_victim"
ROWS = [(i, f"note {i}") for i in range(1, 11)]
victim_table = sa.Table(
    TABLE,
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("note", sa.String(40), nullable=False),
)

# The injections and their kin, given as the statement to read.
QUERIES = [
    "SELECT 1; DELETE FROM ro_victim; COMMIT",
    "SELECT 1; DROP TABLE ro_victim",
    "DROP TABLE ro_victim",
    "TRUNCATE TABLE ro_victim",
    "CREATE TABLE ro_new (x int)",
    "INSERT INTO ro_victim VALUES (100, 'new')",
    "UPDATE ro_victim SET note = 'changed'",
    "DELETE FROM ro_victim RETURNING *",
    "WITH gone AS (DELETE FROM ro_victim RETURNING *) SELECT * FROM gone",
    "WITH x AS (SELECT 1 AS a) DELETE FROM ro_victim",
    "SELECT * FROM ro_victim FOR UPDATE",
    "SELECT * INTO ro_new FROM ro_victim",
]
# MariaDB runs what is inside /*! ... */ and /*M! ... */.
EXECUTABLE_COMMENTS = [
    "SELECT 1 /*! ; DELETE FROM ro_victim */",
    "SELECT 1 /*M! ; DROP TABLE ro_victim */",
    "/*!DELETE FROM ro_victim*/",
    "SELECT id FROM ro_victim /*!50000 FOR UPDATE */",
    "SELECT id FROM ro_victim /*!INTO OUTFILE '/tmp/rowstream-ro-victim.txt'*/",
]
WHERES = [
    "1=1); DELETE FROM ro_victim; COMMIT; --",
    "1=1); DROP TABLE ro_victim; --",
    "id > 0 /* hidden */",
    "id > 0) FOR UPDATE --",
    # Balanced, no ';', no comment: only the check of the whole statement sees the lock.
    "id > 0 FOR UPDATE",
]
COLUMNS = ["id; DROP TABLE ro_victim", "id) FROM ro_victim; DELETE FROM ro_victim; --"]
TABLES = ["ro_victim; DROP TABLE ro_victim", 'ro_victim"; DELETE FROM ro_victim; --']
QUERY_ENTRIES = ("stream", "process", "export", "sync.stream", "sync.process")
TABLE_ENTRIES = ("export",)
# The CLI is a thin layer over export(): a subprocess each (seconds on a loaded machine) for
# the issue's own injections and one of each other kind.
CLI = {
    "SELECT 1; DELETE FROM ro_victim; COMMIT",
    "DROP TABLE ro_victim",
    "DELETE FROM ro_victim RETURNING *",
    "WITH gone AS (DELETE FROM ro_victim RETURNING *) SELECT * FROM gone",
    "SELECT * FROM ro_victim FOR UPDATE",
    "SELECT * INTO ro_new FROM ro_victim",
    "SELECT 1 /*! ; DELETE FROM ro_victim */",
    "/*!DELETE FROM ro_victim*/",
    "1=1); DELETE FROM ro_victim; COMMIT; --",
    "1=1); DROP TABLE ro_victim; --",
    "id > 0 FOR UPDATE",
    "id; DROP TABLE ro_victim",
    "ro_victim; DROP TABLE ro_victim",
}


@dataclass
class Victim:
    """A table of ten rows on one database, and what the database holds."""

    url: str
    dialect: str
    engine: AsyncEngine

    async def rows(self) -> list[tuple[Any, ...]] | None:
        return (await self.snapshot())[0]

    async def tables(self) -> set[str]:
        return (await self.snapshot())[1]

    async def snapshot(self) -> tuple[list[tuple[Any, ...]] | None, set[str]]:
        """The table's rows (None when it is gone) and the names of the database's tables."""
        async with self.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            if TABLE not in tables:
                return None, tables
            result = await conn.execute(sa.select(victim_table).order_by(victim_table.c.id))
            return [tuple(row) for row in result], tables

    async def execute(self, *statements: str) -> None:
        async with self.engine.begin() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)


def _url(dialect: str, servers: Servers, tmp_path: Path) -> str:
    if dialect == "postgresql":
        return servers.pg_url
    if dialect == "mariadb":
        return servers.mysql_url
    return f"sqlite:///{tmp_path / 'victim.db'}"


async def _victim(url: str, dialect: str) -> AsyncIterator[Victim]:
    engine = create_async_engine(resolve_url(url), pool_size=1)
    victim = Victim(url, dialect, engine)
    try:
        if await victim.rows() != ROWS:
            async with engine.begin() as conn:
                await conn.run_sync(lambda c: victim_table.drop(c, checkfirst=True))
                await conn.run_sync(victim_table.create)
                await conn.execute(victim_table.insert(), [dict(id=i, note=n) for i, n in ROWS])
        yield victim
    finally:
        await engine.dispose()


@pytest.fixture
async def victim(request: pytest.FixtureRequest, servers: Servers, tmp_path: Path) -> Any:
    dialect: str = request.param
    async for victim in _victim(_url(dialect, servers, tmp_path), dialect):
        yield victim


# ---------------------------------------------------------------------------- entry points


async def _drain(stream: rowstream.RowStream) -> None:
    async with stream as rows:
        async for _ in rows:
            pass


def _sync_drain(url: str, sql: str) -> None:
    with rsync.stream(url, sql) as rows:
        for _ in rows:
            pass


async def _attempt(
    entry: str, kind: str, payload: str, url: str, target: Path
) -> tuple[RowstreamError | None, str]:
    """Run ``payload`` through ``entry``; the rowstream error it raised, and the CLI's line."""
    where = payload if kind == "where" else None
    columns = payload.split(",") if kind == "columns" else None
    if entry == "cli":
        table = payload if kind == "table" else TABLE
        args = ["--query", payload] if kind == "query" else ["--table", table]
        if where is not None:
            args += ["--where", where]
        if columns is not None:
            args += ["--columns", payload]
        result = await asyncio.to_thread(run_cli, url, *args, "-o", str(target))
        return None, assert_clean_failure(result, target)
    runs: dict[str, Callable[[], Awaitable[Any]]] = {
        "stream": lambda: _drain(rowstream.stream(url, payload)),
        "process": lambda: rowstream.process(url, payload, lambda batch: None),
        "sync.stream": lambda: asyncio.to_thread(_sync_drain, url, payload),
        "sync.process": lambda: asyncio.to_thread(rsync.process, url, payload, lambda b: None),
        "export": lambda: rowstream.export(
            url,
            sa.text(payload) if kind == "query" else payload if kind == "table" else TABLE,
            target,
            where=where,
            columns=columns,
        ),
    }
    try:
        await runs[entry]()
    except RowstreamError as exc:
        return exc, str(exc)
    raise AssertionError(f"{entry} ran {payload!r}")


def _files(directory: Path) -> list[str]:
    """What an attempt left in ``directory`` (nothing: no output, no temporary file)."""
    return sorted(p.name for p in directory.iterdir() if p.suffix != ".db")


def _params() -> list[Any]:
    params = []
    for dialect in DIALECTS:
        queries = QUERIES + (EXECUTABLE_COMMENTS if dialect == "mariadb" else [])
        cases = [("query", q, QUERY_ENTRIES) for q in queries]
        cases += [("where", w, TABLE_ENTRIES) for w in WHERES]
        cases += [("columns", c, TABLE_ENTRIES) for c in COLUMNS]
        cases += [("table", t, TABLE_ENTRIES) for t in TABLES]
        for kind, payload, entries in cases:
            for entry in (*entries, "cli") if payload in CLI else entries:
                params.append(
                    pytest.param(
                        dialect, kind, payload, entry, id=f"{dialect}-{entry}-{kind}-{payload}"
                    )
                )
    return params


@pytest.mark.parametrize(("victim", "kind", "payload", "entry"), _params(), indirect=["victim"])
async def test_no_input_changes_anything(
    victim: Victim, kind: str, payload: str, entry: str, tmp_path: Path
) -> None:
    before = await victim.snapshot()
    assert before[0] == ROWS
    target = tmp_path / "out.csv"
    error, line = await _attempt(entry, kind, payload, victim.url, target)
    assert await victim.snapshot() == before
    assert _files(tmp_path) == []
    assert "ro_new" not in before[1]
    assert "\n" not in line
    if kind in ("columns", "table"):
        # Names are quoted (PostgreSQL) or looked up (MariaDB, SQLite): never pasted.
        assert error is None or isinstance(error, QueryError)
        assert ("column" if kind == "columns" else "ro_victim") in line
    else:
        assert "refusing" in line and "rowstream only reads" in line
        assert error is None or isinstance(error, UnsupportedQueryError)


# --------------------------------------------------------------------- PostgreSQL's paths


@pytest.fixture
async def pg_victim(pg_url: str) -> AsyncIterator[Victim]:
    async for victim in _victim(pg_url, "postgresql"):
        yield victim


EXPORT_PATHS = [
    pytest.param("csv", "auto", id="copy-csv"),
    pytest.param("jsonl", "auto", id="copy-jsonl"),
    pytest.param("parquet", "auto", id="adbc-parquet"),
    pytest.param("csv", "stream", id="stream-csv"),
]


@pytest.mark.parametrize(("fmt", "strategy"), EXPORT_PATHS)
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1; DELETE FROM ro_victim; COMMIT",
        "WITH gone AS (DELETE FROM ro_victim RETURNING *) SELECT * FROM gone",
        "SELECT * FROM ro_victim FOR UPDATE",
    ],
)
async def test_pg_copy_and_adbc_paths_check_first(
    pg_victim: Victim, sql: str, fmt: str, strategy: Any, tmp_path: Path
) -> None:
    before = await pg_victim.snapshot()
    target = tmp_path / f"out.{fmt}"
    with pytest.raises(UnsupportedQueryError, match="not a single read"):
        await rowstream.export(pg_victim.url, sa.text(sql), target, method=strategy)
    assert await pg_victim.snapshot() == before
    assert not target.exists()


@pytest.fixture
async def pg_writer(pg_victim: Victim) -> AsyncIterator[Victim]:
    """A function that deletes the table's rows: a SELECT the statement check lets through."""
    await pg_victim.execute(
        "CREATE OR REPLACE FUNCTION ro_write() RETURNS int LANGUAGE sql VOLATILE AS "
        "$$ DELETE FROM ro_victim; SELECT 1 $$"
    )
    try:
        yield pg_victim
    finally:
        await pg_victim.execute("DROP FUNCTION IF EXISTS ro_write()")


def _read_only_refusal(text: str) -> bool:
    return "read-only transaction" in text or "READ ONLY transaction" in text


@pytest.mark.parametrize(("fmt", "strategy"), EXPORT_PATHS)
async def test_pg_export_transactions_are_read_only(
    pg_writer: Victim, fmt: str, strategy: Any, tmp_path: Path
) -> None:
    target = tmp_path / f"out.{fmt}"
    # Every path, ADBC's included (its read fails mid-COPY), says the server refused.
    with pytest.raises(QueryError, match="the server rejected the query") as caught:
        await rowstream.export(pg_writer.url, sa.text("SELECT ro_write()"), target, method=strategy)
    assert _read_only_refusal(str(caught.value))
    assert await pg_writer.rows() == ROWS


STRATEGIES = ["cursor", "keyset"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("through", ["direct", "pgbouncer", "psycopg"])
async def test_pg_stream_transactions_are_read_only(
    pg_writer: Victim, pgbouncer_url: str, through: str, strategy: Any
) -> None:
    url = {
        "direct": pg_writer.url,
        "pgbouncer": pgbouncer_url,
        "psycopg": pg_writer.url.replace("postgresql://", "postgresql+psycopg://", 1),
    }[through]
    # Keyset pages need a key: the table's, with the writing function as a column.
    statement = sa.select(victim_table.c.id, sa.func.ro_write())
    with pytest.raises(QueryError) as caught:
        await _drain(rowstream.stream(url, statement, strategy=strategy))
    assert _read_only_refusal(str(caught.value))
    assert await pg_writer.rows() == ROWS


async def test_pg_sync_transactions_are_read_only(pg_writer: Victim) -> None:
    with pytest.raises(QueryError) as caught:
        await asyncio.to_thread(_sync_drain, pg_writer.url, "SELECT ro_write()")
    assert _read_only_refusal(str(caught.value))
    assert await pg_writer.rows() == ROWS


async def test_pg_pooled_connection_is_not_left_read_only(pg_victim: Victim) -> None:
    # Two connections: the stream's and the one that looks for a pooler; both go back.
    engine = rowstream.create_engine(pg_victim.url, pool_size=2, max_overflow=0)
    try:
        for strategy in STRATEGIES:
            await _drain(rowstream.stream(engine, sa.select(victim_table), strategy=strategy))
            async with engine.connect() as first, engine.connect() as second:
                for conn in (first, second):
                    assert await conn.scalar(sa.text("SHOW transaction_read_only")) == "off"
                    await conn.execute(victim_table.update().values(note="written"))
                    await conn.rollback()
    finally:
        await engine.dispose()
    assert await pg_victim.rows() == ROWS


# ----------------------------------------------------------------------------- MariaDB


@pytest.fixture
async def maria_victim(mysql_url: str) -> AsyncIterator[Victim]:
    async for victim in _victim(mysql_url, "mariadb"):
        yield victim


@pytest.fixture
async def maria_writer(maria_victim: Victim) -> AsyncIterator[Victim]:
    await maria_victim.execute(
        "DROP FUNCTION IF EXISTS ro_write",
        "CREATE FUNCTION ro_write() RETURNS INT MODIFIES SQL DATA "
        "BEGIN DELETE FROM ro_victim; RETURN 1; END",
    )
    try:
        yield maria_victim
    finally:
        await maria_victim.execute("DROP FUNCTION IF EXISTS ro_write")


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_mariadb_stream_transactions_are_read_only(
    maria_writer: Victim, strategy: Any
) -> None:
    statement = sa.select(victim_table.c.id, sa.func.ro_write())
    with pytest.raises(QueryError, match="READ ONLY transaction"):
        await _drain(rowstream.stream(maria_writer.url, statement, strategy=strategy))
    assert await maria_writer.rows() == ROWS


async def test_mariadb_sync_transactions_are_read_only(maria_writer: Victim) -> None:
    with pytest.raises(QueryError, match="READ ONLY transaction"):
        await asyncio.to_thread(_sync_drain, maria_writer.url, "SELECT ro_write()")
    assert await maria_writer.rows() == ROWS


async def test_mariadb_connections_refuse_a_second_statement(maria_victim: Victim) -> None:
    # Without rowstream's check: the server itself refuses, on the async and the sync engine.
    raw = "SELECT 1; DELETE FROM ro_victim"
    engine = rowstream.create_engine(maria_victim.url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(sa.exc.ProgrammingError, match="1064"):
                await conn.exec_driver_sql(raw)
    finally:
        await engine.dispose()
    sync_engine = rsync.create_engine(maria_victim.url)
    try:
        with sync_engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="1064"):
            conn.exec_driver_sql(raw)
    finally:
        sync_engine.dispose()
    assert await maria_victim.rows() == ROWS
    # asyncmy's own default, for contrast: several statements in one query.
    async with maria_victim.engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1; SELECT 2")


async def test_mariadb_pooled_connection_is_not_left_read_only(maria_victim: Victim) -> None:
    engine = rowstream.create_engine(maria_victim.url, pool_size=1, max_overflow=0)
    try:
        for strategy in STRATEGIES:
            await _drain(rowstream.stream(engine, sa.select(victim_table), strategy=strategy))
            async with engine.connect() as conn:
                await conn.execute(victim_table.update().values(note="written"))
                await conn.rollback()
    finally:
        await engine.dispose()
    assert await maria_victim.rows() == ROWS


async def test_mariadb_runs_ddl_inside_a_read_only_transaction(maria_victim: Victim) -> None:
    # Measured, and the reason the statement check comes first: MariaDB commits the
    # read-only transaction implicitly and runs the DDL (DML is refused with 1792).
    async with maria_victim.engine.connect() as conn:
        await conn.exec_driver_sql("START TRANSACTION READ ONLY")
        with pytest.raises(sa.exc.DBAPIError, match="1792"):
            await conn.exec_driver_sql("DELETE FROM ro_victim")
        await conn.exec_driver_sql("START TRANSACTION READ ONLY")
        await conn.exec_driver_sql("CREATE TABLE ro_ddl_probe (x int)")
        await conn.exec_driver_sql("DROP TABLE ro_ddl_probe")
        await conn.rollback()
    assert "ro_ddl_probe" not in await maria_victim.tables()


# ------------------------------------------------------------------------------ SQLite


@pytest.fixture
async def lite_victim(sqlite_url: str) -> AsyncIterator[Victim]:
    async for victim in _victim(sqlite_url, "sqlite"):
        yield victim


async def test_sqlite_is_query_only_for_the_stream_and_restored(lite_victim: Victim) -> None:
    engine = rowstream.create_engine(lite_victim.url)
    try:
        async with engine.connect() as conn:
            async with rowstream.stream(conn, "SELECT id FROM ro_victim", batch_rows=2) as rows:
                assert len(await anext(rows.batches())) == 2
                assert await conn.scalar(sa.text("PRAGMA query_only")) == 1
                with pytest.raises(sa.exc.OperationalError, match="readonly database"):
                    await conn.execute(victim_table.delete())
            assert await conn.scalar(sa.text("PRAGMA query_only")) == 0
        # The pooled connection goes back writable.
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("PRAGMA query_only")) == 0
    finally:
        await engine.dispose()
    assert await lite_victim.rows() == ROWS


async def test_sqlite_keeps_a_callers_query_only(lite_victim: Victim) -> None:
    engine = rowstream.create_engine(lite_victim.url)
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA query_only = ON")
            await conn.commit()
            await _drain(rowstream.stream(conn, "SELECT id FROM ro_victim"))
            assert await conn.scalar(sa.text("PRAGMA query_only")) == 1
            await conn.exec_driver_sql("PRAGMA query_only = OFF")
    finally:
        await engine.dispose()


def test_sqlite_sync_is_query_only_for_the_stream(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sync.db'}"
    engine = rsync.create_engine(url)
    try:
        with engine.begin() as conn:
            victim_table.create(conn)
            conn.execute(victim_table.insert(), [dict(id=i, note=n) for i, n in ROWS])
        with engine.connect() as conn:
            with rsync.stream(conn, "SELECT id FROM ro_victim", batch_rows=2) as rows:
                assert len(next(rows.batches())) == 2
                assert conn.scalar(sa.text("PRAGMA query_only")) == 1
            assert conn.scalar(sa.text("PRAGMA query_only")) == 0
    finally:
        engine.dispose()


# ----------------------------------------------------------------------- normal habits

HABITS = [
    "SELECT id, note FROM ro_victim WHERE note <> 'DELETE; DROP TABLE ro_victim' ORDER BY id;",
    "/* every row */ SELECT id, note FROM ro_victim ORDER BY id; -- done",
    "SELECT id, note -- the two columns\nFROM ro_victim ORDER BY id -- no newline after",
    "WITH v AS (SELECT id, note FROM ro_victim) SELECT id, note FROM v ORDER BY id",
]


@pytest.mark.parametrize("victim", DIALECTS, indirect=True)
@pytest.mark.parametrize("sql", HABITS)
async def test_normal_habits_pass_everywhere(victim: Victim, sql: str, tmp_path: Path) -> None:
    async with rowstream.stream(victim.url, sql) as rows:
        assert [tuple(r) for r in [row async for row in rows]] == ROWS

    def sync_rows() -> list[tuple[Any, ...]]:
        with rsync.stream(victim.url, sql) as rows:
            return [tuple(r) for r in rows]

    assert await asyncio.to_thread(sync_rows) == ROWS
    report = await rowstream.export(victim.url, sa.text(sql), tmp_path / "api.csv")
    assert report.rows == len(ROWS)
    cli = tmp_path / "cli.csv"
    result = await asyncio.to_thread(run_cli, victim.url, "--query", sql, "-o", str(cli))
    assert result.returncode == 0, result.stderr
    expected = ["id,note", *(f"{i},{n}" for i, n in ROWS)]
    assert cli.read_text().splitlines() == expected
    assert (tmp_path / "api.csv").read_text().splitlines() == expected


@pytest.mark.parametrize("victim", DIALECTS, indirect=True)
async def test_a_where_with_strings_and_parentheses_passes(victim: Victim, tmp_path: Path) -> None:
    target = tmp_path / "w.csv"
    where = "(id > 2) AND (id < 5 OR note = 'a; DELETE FROM ro_victim -- x')"
    report = await rowstream.export(victim.url, TABLE, target, where=where, columns=["id"])
    assert report.rows == 2
    assert target.read_text().splitlines() == ["id", "3", "4"]
