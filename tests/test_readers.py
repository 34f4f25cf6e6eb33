"""The reader a plan gets (the one place it is chosen), and the SQL PostgreSQL's stream reader
asks the server to render; no database: nothing connects until ``read``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

import rowstream
from rowstream._export_plan import ExportOptions, ExportPlan
from rowstream._pgcopy import PgColumn
from rowstream._readers import pick_reader
from rowstream._readers._rows import pg_text
from rowstream._source import resolve_source

_ENV = {**os.environ, "PYTHONPATH": str(Path(rowstream.__file__).resolve().parents[1])}


@pytest.mark.parametrize(
    ("url", "method", "fmt", "reader"),
    [
        ("postgresql://u@127.0.0.1:1/d", "copy", "csv", "PgCopyReader"),
        ("postgresql://u@127.0.0.1:1/d", "copy", "jsonl", "PgCopyReader"),
        ("postgresql://u@127.0.0.1:1/d", "copy", "parquet", "PgArrowReader"),
        ("postgresql://u@127.0.0.1:1/d", "stream", "csv", "PgStreamReader"),
        ("postgresql://u@127.0.0.1:1/d", "stream", "parquet", "PgStreamReader"),
        ("sqlite:///:memory:", "stream", "parquet", "RowsReader"),
        ("mysql://u@127.0.0.1:1/d", "stream", "csv", "RowsReader"),
    ],
)
async def test_pick_reader(url: str, method: str, fmt: str, reader: str) -> None:
    resolved = resolve_source(url)
    plan = ExportPlan(
        sa.text("SELECT 1 AS x"),
        fmt,  # type: ignore[arg-type]
        method,  # type: ignore[arg-type]
        resolved.dialect,
        ExportOptions(),
    )
    picked = pick_reader(plan, resolved)
    try:
        assert type(picked).__name__ == reader
        assert picked.method == ("copy" if method == "copy" else "stream")
    finally:
        await picked.aclose()
        await resolved.aclose()


async def test_psycopg_sources_get_a_private_asyncpg_engine_for_copy() -> None:
    resolved = resolve_source("postgresql+psycopg://u@127.0.0.1:1/d")
    plan = ExportPlan(sa.text("SELECT 1"), "csv", "copy", "postgresql", ExportOptions())
    reader = pick_reader(plan, resolved)
    try:
        engine = reader._engine  # type: ignore[attr-defined]
        assert engine.dialect.driver == "asyncpg" and engine is not resolved.engine
    finally:
        await reader.aclose()
        await resolved.aclose()


@pytest.mark.parametrize(
    ("typname", "fmt", "sql"),
    [
        ("int4", "csv", 't."c"::text'),
        ("bool", "csv", "CASE WHEN t.\"c\" THEN 't' WHEN NOT t.\"c\" THEN 'f' END"),
        ("bpchar", "csv", 'CASE WHEN t."c" IS NOT NULL THEN format(\'%s\', t."c") END'),
        ("int4", "jsonl", 'to_jsonb(t."c")::text'),
        ("json", "jsonl", "translate(t.\"c\"::text, E'\\n\\r\\t', '   ')"),
    ],
)
def test_pg_text_renders_as_copy_and_to_jsonb(typname: str, fmt: str, sql: str) -> None:
    assert pg_text(PgColumn("c", typname, -1, None), fmt) == sql  # type: ignore[arg-type]


def test_pg_text_reads_the_table_it_is_given() -> None:
    # rowstream.web reads a table's own columns by keyset pages, not the derived table t.
    sql = pg_text(PgColumn("c", "bool", -1, None), "csv", '"s"."orders"')
    assert sql == 'CASE WHEN "s"."orders"."c" THEN \'t\' WHEN NOT "s"."orders"."c" THEN \'f\' END'


def test_pg_text_timestamptz_is_utc_whatever_the_session() -> None:
    sql = pg_text(PgColumn("c", "timestamptz", -1, None), "csv")
    assert "AT TIME ZONE 'UTC'" in sql and "isfinite" in sql and "+00 BC" in sql


def test_readers_know_no_encoder() -> None:
    # A reader hands Arrow batches to whatever sink it is given: importing the ADBC reader
    # loads no Parquet encoder, and the CSV path neither pyarrow nor ADBC.
    code = (
        "import sys, rowstream._pgarrow, rowstream._readers._pgarrow\n"
        "assert 'rowstream._sinks._parquet' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=_ENV)
    code = (
        "import sys, rowstream._export, rowstream._readers._pgcopy, rowstream._readers._rows\n"
        "assert not {'pyarrow', 'adbc_driver_manager'} & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=_ENV)
