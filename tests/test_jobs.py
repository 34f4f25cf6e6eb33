"""Partitioned exports on real servers: one snapshot under concurrent writes; SIGKILL, resume."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import rowstream
from rowstream._dataset import MANIFEST_NAME, merge_parts, read_manifest, write_manifest
from rowstream._exceptions import ConfigurationError, ResumeError, SinkError
from rowstream._jobs import JobProgress, export_dataset
from rowstream._snapshot import Snapshot

ROWS = 10_000
TABLE = "jobs_t"
Row = tuple[Any, ...]


async def _create(engine: AsyncEngine, rows: int = ROWS) -> None:
    async with engine.begin() as conn:
        await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.exec_driver_sql(
            f"CREATE TABLE {TABLE} (id int PRIMARY KEY, k int NULL, v int, note varchar(40))"
        )
        await conn.execute(
            sa.text(f"INSERT INTO {TABLE} VALUES (:id, :k, :v, :note)"),
            [
                {"id": i, "k": None if i % 11 == 0 else i, "v": i, "note": f"row {i}"}
                for i in range(1, rows + 1)
            ],
        )


async def _rows(engine: AsyncEngine) -> list[Row]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.text(f"SELECT id, k, v, note FROM {TABLE} ORDER BY id"))
        return [tuple(r) for r in result]


def _dataset_rows(folder: Path, fmt: str) -> list[Row]:
    reader = "read_parquet" if fmt == "parquet" else "read_csv"
    return [
        tuple(r)
        for r in duckdb.sql(
            f"SELECT id, k, v, note FROM {reader}('{folder}/*.{fmt}') ORDER BY id"
        ).fetchall()
    ]


async def _writes(engine: AsyncEngine, batch: range, *, pause: float, rows: int = ROWS) -> None:
    """10% of the rows updated (their key moved across partitions), inserted and deleted."""
    for i in batch:
        async with engine.begin() as conn:
            # Moves a row from a late key range (and a late block: a new tuple version) into
            # an early one, or into the NULL partition, where a reader without the snapshot
            # would see it twice or not at all.
            await conn.execute(
                sa.text(f"UPDATE {TABLE} SET v = v + 1000000, k = :k WHERE id = :id"),
                {"id": rows - i, "k": None if i % 3 == 0 else i},
            )
            await conn.execute(
                sa.text(f"INSERT INTO {TABLE} VALUES (:id, :k, 0, 'new')"),
                {"id": rows + 1 + i, "k": None if i % 4 == 0 else -i},
            )
            await conn.execute(sa.text(f"DELETE FROM {TABLE} WHERE id = :id"), {"id": 2 + i * 7})
        if pause:
            await asyncio.sleep(pause)


@pytest.fixture(params=["postgresql", "mariadb"])
async def source(
    request: pytest.FixtureRequest, pg_url: str, mysql_url: str
) -> AsyncIterator[tuple[str, AsyncEngine]]:
    url = pg_url if request.param == "postgresql" else mysql_url
    engine = rowstream.create_engine(url)
    await _create(engine)
    yield url, engine
    await engine.dispose()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("partition_by", [None, "k"])
async def test_jobs_4_under_concurrent_writes_equals_the_table_at_the_snapshot(
    source: tuple[str, AsyncEngine], tmp_path: Path, fmt: str, partition_by: str | None
) -> None:
    url, engine = source
    before = await _rows(engine)
    writer: asyncio.Task[None] | None = None
    at_snapshot: list[Row] = []
    seen: list[JobProgress] = []

    async def start_writing(snap: Snapshot) -> None:
        nonlocal writer
        if snap.dialect == "postgresql":
            # A copy of the table taken inside the snapshot, by one more reader joining it.
            conn = await snap.join()
            result = await conn.execute(sa.text(f"SELECT id, k, v, note FROM {TABLE} ORDER BY id"))
            at_snapshot.extend(tuple(r) for r in result)
            await snap.leave(conn)
        # Half the writes land before any part is read, the rest while the parts are read.
        await _writes(engine, range(0, ROWS // 20), pause=0)
        writer = asyncio.create_task(_writes(engine, range(ROWS // 20, ROWS // 10), pause=0.001))

    report = await export_dataset(
        url,
        TABLE,
        tmp_path / "ds",
        jobs=4,
        format=fmt,
        partition_by=partition_by,
        min_partition_bytes=16 * 1024,
        on_snapshot=start_writing,
        progress=seen.append,
    )
    assert writer is not None
    await asyncio.wait_for(writer, 120)
    after = await _rows(engine)
    assert after != before and len(after) == ROWS  # 10% in, 10% out, 10% changed
    assert report.exact and report.warning is None and report.snapshot.consistent
    assert len(report.parts) >= 8
    if partition_by is not None or engine.dialect.name != "postgresql":
        assert report.plan == "key"
    else:
        assert report.plan == "ctid"
    if partition_by == "k":
        assert report.parts[-1].rows == sum(1 for r in before if r[1] is None)  # the NULL part
    got = _dataset_rows(tmp_path / "ds", fmt)
    assert len(got) == len(set(got)) == ROWS
    assert got == before
    # -o FILE is this dataset merged into one file (rowstream._export_jobs.export_jobs).
    whole = tmp_path / "file" / f"whole.{fmt}"
    whole.parent.mkdir()
    assert merge_parts(tmp_path / "ds", whole)[0] == ROWS
    assert _dataset_rows(whole.parent, fmt) == before
    if at_snapshot:
        assert at_snapshot == before
    assert sum(1 for r in got if r[1] is None) == sum(1 for r in before if r[1] is None)
    assert seen[-1].parts_done == len(report.parts) and seen[-1].rows == ROWS


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
async def test_live_progress_counts_the_rows_of_running_parts(
    source: tuple[str, AsyncEngine], tmp_path: Path, fmt: str
) -> None:
    url, _engine = source
    live: list[tuple[int, int, int]] = []
    finished: list[int] = []

    def on_rows(state: JobProgress) -> None:
        live.append((state.parts_done, state.rows_seen, state.reading))

    report = await export_dataset(
        url,
        TABLE,
        tmp_path / "ds",
        jobs=2,
        format=fmt,
        min_partition_bytes=16 * 1024,
        progress=lambda state: finished.append(state.rows),
        live=on_rows,
    )
    parts = len(report.parts)
    assert parts >= 4 and report.rows == ROWS
    # Rows were counted while parts ran, not only when one finished...
    assert any(reading > 0 for _, _, reading in live)
    assert len(live) > parts
    # ...never counted twice (a finished part's rows leave "reading" as they join "rows"),
    # and the count reaches every row of the table once the last part is done.
    seen = [rows for _, rows, _ in live]
    assert seen == sorted(seen) and max(seen) == ROWS
    assert live[-1] == (parts, ROWS, 0)
    assert finished[-1] == ROWS and len(finished) == parts


_CHILD = """
import asyncio, sys
from rowstream._jobs import export_dataset
asyncio.run(export_dataset(sys.argv[1], sys.argv[2], sys.argv[3], jobs=2, format="parquet",
                           min_partition_bytes=16 * 1024, per_job=12))
"""


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["postgresql", "mariadb"])
async def test_sigkill_then_resume_is_complete_and_keeps_finished_parts(
    pg_url: str, mysql_url: str, tmp_path: Path, dialect: str
) -> None:
    url = pg_url if dialect == "postgresql" else mysql_url
    engine = rowstream.create_engine(url)
    try:
        await _create(engine, rows=200_000)
        expected = await _rows(engine)
    finally:
        await engine.dispose()
    folder = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, url, TABLE, str(folder), env=env
    )
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and child.returncode is None:
            manifest = read_manifest(folder) if (folder / MANIFEST_NAME).exists() else None
            done = len(manifest.done) if manifest else 0
            if done >= 3:
                break
            await asyncio.sleep(0.05)
        assert child.returncode is None, "the export ended before it could be killed"
        assert done >= 3
        # A random moment after a few parts are done: mid-part, mid-manifest, anywhere.
        await asyncio.sleep(random.uniform(0, 0.5))
        os.kill(child.pid, signal.SIGKILL)
        await asyncio.wait_for(child.wait(), 30)
    finally:
        if child.returncode is None:
            os.kill(child.pid, signal.SIGKILL)
            await asyncio.wait_for(child.wait(), 30)
    manifest = read_manifest(folder)
    assert manifest is not None and manifest.state == "running"
    kept = {p.file: _stat(folder / p.file) for p in manifest.done}
    assert 3 <= len(kept) < len(manifest.parts)

    report = await export_dataset(url, TABLE, folder, jobs=2, format="parquet", resume=True)
    assert {p.file for p in report.parts if p.skipped} == set(kept)
    for file, stat in kept.items():
        assert _stat(folder / file) == stat, f"{file} was rewritten"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]
    assert _dataset_rows(folder, "parquet") == expected
    final = read_manifest(folder)
    assert final is not None and final.state == "complete" and len(final.snapshots) == 2
    # The first snapshot went with the killed process: the manifest and the report say so.
    assert report.warning is not None and "not one point in time" in report.warning
    assert not report.exact


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
async def test_a_dropped_reader_rejoins_the_snapshot_and_the_result_stays_exact(
    pg_url: str, tmp_path: Path, fmt: str
) -> None:
    engine = rowstream.create_engine(pg_url)
    await _create(engine)
    before = await _rows(engine)
    killed: list[int] = []

    async def kill_a_reader() -> None:
        # A backend in the middle of a part (COPY, or ADBC's binary COPY); not the
        # coordinator, which exported the snapshot and waits.
        find = sa.text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'active' AND query LIKE 'COPY%ctid >=%' LIMIT 1"
        )
        deadline = time.monotonic() + 60
        async with engine.connect() as admin:
            while not killed and time.monotonic() < deadline:
                pid = await admin.scalar(find)
                await admin.rollback()
                if pid is not None and await admin.scalar(
                    sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
                ):
                    killed.append(int(pid))
                await asyncio.sleep(0.01)

    killer: asyncio.Task[None] | None = None

    async def start(snap: Snapshot) -> None:
        nonlocal killer
        await _writes(engine, range(0, 300), pause=0)
        killer = asyncio.create_task(kill_a_reader())

    try:
        report = await export_dataset(
            pg_url,
            TABLE,
            tmp_path / "ds",
            jobs=2,
            format=fmt,
            # Slow reads (0.2 ms a row), so that one is caught in the middle.
            where="pg_sleep(0.0002) IS NOT NULL",
            min_partition_bytes=16 * 1024,
            on_snapshot=start,
        )
        assert killer is not None
        await asyncio.wait_for(killer, 60)
    finally:
        await engine.dispose()
    assert killed, "no reader was caught reading"
    assert sum(p.retries for p in report.parts) >= 1
    assert report.exact
    assert _dataset_rows(tmp_path / "ds", fmt) == before


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
async def test_a_failing_part_ends_the_export_with_one_error_and_nothing_half_written(
    pg_url: str, tmp_path: Path, fmt: str
) -> None:
    engine = rowstream.create_engine(pg_url)
    try:
        await _create(engine)
    finally:
        await engine.dispose()
    folder = tmp_path / "ds"
    with pytest.raises(rowstream.QueryError) as info:
        await export_dataset(
            pg_url,
            TABLE,
            folder,
            jobs=2,
            format=fmt,
            where="no_such_column > 0",
            min_partition_bytes=16384,
        )
    assert "no_such_column" in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST_NAME]
    manifest = read_manifest(folder)
    assert manifest is not None and not manifest.done and manifest.state == "running"


async def test_resume_redoes_what_is_missing_and_refuses_a_rewritten_table(
    pg_url: str, tmp_path: Path
) -> None:
    engine = rowstream.create_engine(pg_url)
    folder = tmp_path / "ds"
    try:
        await _create(engine)
        expected = await _rows(engine)
        first = await export_dataset(
            pg_url, TABLE, folder, jobs=2, format="csv", min_partition_bytes=16384
        )
        # As an interrupted run leaves it: one part never written, one written but not recorded.
        manifest = read_manifest(folder)
        assert manifest is not None and len(manifest.parts) > 4
        manifest.state = "running"
        lost, unrecorded = manifest.parts[1], manifest.parts[3]
        (folder / lost.file).unlink()
        unrecorded.state = "pending"
        write_manifest(folder, manifest)
        kept = {p.file: _stat(folder / p.file) for p in manifest.done if p is not lost}
        report = await export_dataset(pg_url, TABLE, folder, jobs=2, format="csv", resume=True)
        assert {p.id for p in report.parts if not p.skipped} == {lost.id, unrecorded.id}
        assert all(_stat(folder / f) == s for f, s in kept.items())
        assert _dataset_rows(folder, "csv") == expected
        assert report.rows == first.rows == ROWS
        with pytest.raises(SinkError, match="pass --resume"):
            await export_dataset(pg_url, TABLE, folder, jobs=2, format="csv")
        with pytest.raises(ConfigurationError, match="dataset's format"):
            await export_dataset(pg_url, TABLE, folder, jobs=2, format="parquet", resume=True)
        # A rewrite moves every row to another ctid: the old ranges cannot be finished.
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql(f"VACUUM FULL {TABLE}")
        with pytest.raises(ResumeError, match="was rewritten"):
            await export_dataset(pg_url, TABLE, folder, jobs=2, format="csv", resume=True)
    finally:
        await engine.dispose()


async def test_a_select_is_split_by_one_of_its_columns(
    source: tuple[str, AsyncEngine], tmp_path: Path
) -> None:
    url, engine = source
    t = sa.table(TABLE, sa.column("id"), sa.column("k"), sa.column("v"), sa.column("note"))
    statement = sa.select(t.c.id, t.c.k, t.c.v, t.c.note).where(t.c.id % 3 != 0)
    async with engine.connect() as conn:
        expected = [tuple(r) for r in await conn.execute(statement.order_by(t.c.id))]
    report = await export_dataset(
        url, statement, tmp_path / "ds", jobs=2, format="parquet", partition_by="k"
    )
    assert report.plan == "key" and len(report.parts) > 4
    assert _dataset_rows(tmp_path / "ds", "parquet") == expected
    assert report.parts[-1].rows == sum(1 for r in expected if r[1] is None)
    manifest = read_manifest(tmp_path / "ds")
    assert manifest is not None and manifest.table is None and "%" in manifest.statement
    # Without partition_by, and for text(): one reader, and the report says which plan.
    one = await export_dataset(url, sa.text(f"SELECT id FROM {TABLE}"), tmp_path / "one", jobs=2)
    assert one.plan == "single" and len(one.parts) == 1 and one.rows == ROWS


async def test_bad_arguments_are_refused_before_anything_is_made_or_sent(tmp_path: Path) -> None:
    url = "postgresql://nobody@127.0.0.1:1/nowhere"  # never reached
    with pytest.raises(ConfigurationError, match="unknown format"):
        await export_dataset(url, TABLE, tmp_path / "a", format="xlsx")
    with pytest.raises(rowstream.UnsupportedQueryError, match="where condition"):
        await export_dataset(url, TABLE, tmp_path / "b", where="1 = 1); DROP TABLE x; --")
    with pytest.raises(ConfigurationError, match="jobs must be at least 1"):
        await export_dataset(url, TABLE, tmp_path / "c", jobs=0)
    assert not os.listdir(tmp_path)


BAD_PART_OPTIONS = [
    ({"bogus": 1}, "unknown export option 'bogus'"),
    ({"infinity": "maybe"}, "unknown infinity choice 'maybe'"),
    ({"nan": "zero"}, "unknown nan choice 'zero'"),
    ({"zero_dates": "epoch"}, "unknown zero_dates 'epoch'"),
    ({"batch_rows": 0}, "batch_rows must be at least 1"),
    ({"batch_bytes": -1}, "batch_bytes must be positive"),
    ({"text_columns": ["note"]}, "text_columns .* is for MariaDB and SQLite"),
    ({"text_columns": "note"}, "text_columns must be a list of column names"),
    ({"method": "fast"}, "unknown export method 'fast'"),
    ({"read_timeout": 0}, "read_timeout must be a positive number"),
]


@pytest.mark.parametrize(("options", "says"), BAD_PART_OPTIONS)
async def test_part_options_are_refused_before_the_first_part_runs(
    tmp_path: Path, options: dict[str, Any], says: str
) -> None:
    # Nothing listens there: a refusal that needed a connection would fail differently.
    url = "postgresql://nobody@127.0.0.1:1/nowhere"
    with pytest.raises(ConfigurationError, match=says) as info:
        await export_dataset(url, TABLE, tmp_path / "ds", jobs=2, **options)
    assert "\n" not in str(info.value)
    assert not os.listdir(tmp_path)


_TYPED = "jobs_typed"


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_postgresql_parts_hold_the_bytes_of_a_single_export(
    pg_url: str, tmp_path: Path, fmt: str
) -> None:
    # Values whose text depends on the output settings (time zone, float digits, json as
    # stored, arrays, backslashes): each part is COPY on its worker's connection, as a single
    # export is, so the lines are the same bytes.
    engine = rowstream.create_engine(pg_url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_TYPED}")
            await conn.exec_driver_sql(
                f"CREATE TABLE {_TYPED} (id int PRIMARY KEY, n numeric(12, 3), f float8, "
                "t timestamptz, j json, a int[], s text)"
            )
            await conn.exec_driver_sql(
                f"INSERT INTO {_TYPED} SELECT i, i / 7.0, i / 3.0, "
                "timestamptz '2024-03-01 12:00:00+02' + i * interval '1 minute', "
                """('{"b": ' || i || ', "a": "x\\\\y"}')::json, ARRAY[i, NULL, -i], """
                """CASE WHEN i % 5 = 0 THEN NULL ELSE 'row "' || i || E'"\\\\,' END """
                "FROM generate_series(1, 3000) i"
            )
    finally:
        await engine.dispose()
    report = await export_dataset(
        pg_url, _TYPED, tmp_path / "ds", jobs=2, format=fmt, min_partition_bytes=16 * 1024
    )
    assert report.rows == 3000 and len(report.parts) > 2
    single = await rowstream.export(pg_url, _TYPED, tmp_path / f"one.{fmt}")
    assert single.method == "copy"
    whole = (tmp_path / f"one.{fmt}").read_bytes().splitlines()
    lines: list[bytes] = []
    for part in report.parts:
        text = (tmp_path / "ds" / part.file).read_bytes().splitlines()
        if fmt == "csv":
            assert text[0] == whole[0]  # each part has the header
            text = text[1:]
        lines += text
    body = whole[1:] if fmt == "csv" else whole
    assert sorted(lines) == sorted(body) and len(lines) == 3000


async def test_a_parquet_part_refuses_a_snapshot_that_is_not_the_coordinators(
    pg_url: str, tmp_path: Path
) -> None:
    import dataclasses

    from rowstream._jobs import write_part
    from rowstream._partition import Partition
    from rowstream._snapshot import SnapshotError

    engine = rowstream.create_engine(pg_url)
    await _create(engine, rows=100)
    path = tmp_path / "part-00000.parquet"
    try:
        async with Snapshot(engine, sessions=1) as snap:
            conn = await snap.join()
            try:
                rows, size = await write_part(
                    conn, TABLE, Partition(0, "all"), path, format="parquet",
                    compression=None, where=None, columns=None, read_timeout=30,
                    options={}, snapshot=snap.info,
                )  # fmt: skip
                assert rows == 100 and size == path.stat().st_size
                path.unlink()
                # ADBC's connection joins the snapshot, then checks it sees what the
                # coordinator sees: another point in time is refused, nothing written.
                wrong = dataclasses.replace(snap.info, point="1:1:")
                with pytest.raises(SnapshotError, match="not the coordinator's"):
                    await write_part(
                        conn, TABLE, Partition(0, "all"), path, format="parquet",
                        compression=None, where=None, columns=None, read_timeout=30,
                        options={}, snapshot=wrong,
                    )  # fmt: skip
                assert _files(tmp_path) == []
            finally:
                await snap.leave(conn)
    finally:
        await engine.dispose()


def test_export_options_are_the_plans_and_unknown_ones_are_refused_in_one_line() -> None:
    from rowstream._jobs import _export_options

    options = _export_options(12.5, {"text_columns": ["a", "b"], "infinity": "null"})
    assert options.text_columns == frozenset({"a", "b"}) and options.infinity == "null"
    assert options.read_timeout == 12.5
    with pytest.raises(ConfigurationError, match="unknown export option 'bogus'") as info:
        _export_options(None, {"bogus": 1})
    assert "\n" not in str(info.value)
