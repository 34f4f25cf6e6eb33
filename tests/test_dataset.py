"""Datasets: part names, the manifest, resume bookkeeping, and readers that see one table."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import duckdb
import pyarrow.dataset as pads
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

import rowstream
from rowstream._dataset import (
    MANIFEST_NAME,
    Manifest,
    PartRecord,
    check_same_export,
    finished_parts,
    merge_parts,
    part_name,
    point_in_time_warning,
    prepare_directory,
    read_manifest,
    sha256_of,
    write_manifest,
)
from rowstream._exceptions import ConfigurationError, SinkError
from rowstream._jobs import export_dataset
from rowstream._partition import Partition


def _manifest(parts: int = 3) -> Manifest:
    return Manifest(
        database="postgresql+asyncpg://app:***@db/shop",
        table="orders",
        statement="SELECT * FROM orders",
        format="parquet",
        compression=None,
        plan={"method": "ctid", "column": None, "note": ""},
        parts=[
            PartRecord(i, part_name(i, "parquet"), Partition(i, "ctid", i * 8, i * 8 + 8).bounds())
            for i in range(parts)
        ],
    )


def test_part_names_sort_and_carry_the_format() -> None:
    assert part_name(0, "parquet") == "part-00000.parquet"
    assert part_name(7, "jsonl") == "part-00007.jsonl"
    assert part_name(12, "csv", "gzip") == "part-00012.csv.gz"
    assert part_name(3, "parquet", "zstd") == "part-00003.parquet"
    names = [part_name(i, "csv") for i in (10, 2, 100)]
    assert sorted(names) == [part_name(i, "csv") for i in (2, 10, 100)]
    with pytest.raises(ConfigurationError, match="unknown format"):
        part_name(1, "xlsx")


def test_the_manifest_round_trips_and_is_written_atomically(tmp_path: Path) -> None:
    manifest = _manifest()
    manifest.parts[1].state = "done"
    write_manifest(tmp_path, manifest)
    assert [p.name for p in tmp_path.iterdir()] == [MANIFEST_NAME]
    again = read_manifest(tmp_path)
    assert again == manifest
    assert again is not None and again.parts[1].partition() == Partition(1, "ctid", 8, 16)
    assert "***" in json.loads((tmp_path / MANIFEST_NAME).read_text())["database"]


def test_prepare_directory_refuses_what_would_mix_or_lose_data(tmp_path: Path) -> None:
    new = tmp_path / "new"
    assert prepare_directory(new, resume=False) is None and new.is_dir()
    with pytest.raises(ConfigurationError, match="nothing to resume"):
        prepare_directory(tmp_path / "missing", resume=True)
    with pytest.raises(SinkError, match="does not exist"):
        prepare_directory(tmp_path / "no" / "such", resume=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SinkError, match="holds other files"):
        prepare_directory(tmp_path / "other", resume=False)
    write_manifest(new, _manifest())
    with pytest.raises(SinkError, match="pass --resume"):
        prepare_directory(new, resume=False)
    # A killed export's temporary file is cleared on resume.
    stale = new / ".part-00001.parquet.abc.rowstream-tmp"
    stale.write_bytes(b"half")
    resumed = prepare_directory(new, resume=True)
    assert resumed is not None and resumed.parts == _manifest().parts
    assert not stale.exists()


def test_finished_parts_need_state_file_and_size(tmp_path: Path) -> None:
    manifest = _manifest(4)
    for i, content in ((0, b"abc"), (1, b"defg"), (2, b"hi")):
        (tmp_path / manifest.parts[i].file).write_bytes(content)
    manifest.parts[0].state, manifest.parts[0].bytes = "done", 3
    manifest.parts[1].state, manifest.parts[1].bytes = "done", 99  # not the size recorded
    manifest.parts[3].state, manifest.parts[3].bytes = "done", 3  # no file
    assert finished_parts(tmp_path, manifest) == {0}
    assert sha256_of(tmp_path / manifest.parts[0].file) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_resume_refuses_another_export(tmp_path: Path) -> None:
    manifest = _manifest()
    check_same_export(
        manifest, database=manifest.database, statement=manifest.statement, fmt="parquet"
    )
    with pytest.raises(ConfigurationError, match="dataset's statement"):
        check_same_export(manifest, database=manifest.database, statement="SELECT 1", fmt="parquet")


def test_point_in_time_warning_names_the_parts_of_each_snapshot() -> None:
    manifest = _manifest(4)
    manifest.snapshots = [
        {"consistent": True, "taken_at": "T1", "note": ""},
        {"consistent": True, "taken_at": "T2", "note": ""},
    ]
    for part, snap in zip(manifest.parts, (0, 0, 1, 1), strict=True):
        part.state, part.snapshot = "done", snap
    warning = point_in_time_warning(manifest)
    assert warning is not None and "parts 0-1 at T1; parts 2-3 at T2" in warning
    for part in manifest.parts:
        part.snapshot = 0
    assert point_in_time_warning(manifest) is None
    manifest.snapshots[0]["consistent"] = False
    manifest.snapshots[0]["note"] = "no RELOAD"
    assert "no RELOAD" in (point_in_time_warning(manifest) or "")


@pytest.fixture
async def pg_table(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = rowstream.create_engine(pg_url)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE IF EXISTS ds_orders")
        await conn.exec_driver_sql(
            "CREATE TABLE ds_orders (id bigint PRIMARY KEY, amount numeric(10, 2), "
            "placed timestamptz, note text)"
        )
        await conn.exec_driver_sql(
            "INSERT INTO ds_orders SELECT g, g / 100.0, "
            "timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute', "
            "CASE WHEN g % 5 = 0 THEN NULL ELSE 'n' || g END FROM generate_series(1, 20000) g"
        )
    yield engine
    await engine.dispose()


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
async def test_duckdb_and_pyarrow_read_the_folder_as_one_table(
    pg_table: AsyncEngine, pg_url: str, tmp_path: Path, fmt: str
) -> None:
    folder = tmp_path / "orders"
    report = await export_dataset(
        pg_url, "ds_orders", folder, jobs=2, format=fmt, min_partition_bytes=64 * 1024
    )
    assert len(report.parts) > 4 and report.rows == 20_000 and report.exact
    suffix = {"parquet": "parquet", "csv": "csv", "jsonl": "json"}[fmt]
    reader = {"parquet": "read_parquet", "csv": "read_csv", "jsonl": "read_json"}[fmt]
    glob = str(folder / f"*.{fmt}")
    got = duckdb.sql(
        f"SELECT count(*), count(DISTINCT id), sum(id), count(note) FROM {reader}('{glob}')"
    ).fetchall()
    assert got == [(20_000, 20_000, 20_000 * 20_001 // 2, 16_000)], suffix
    if fmt != "jsonl":
        # pyarrow skips the manifest (it starts with "_") and reads the parts as one table.
        table = pads.dataset(folder, format=fmt).to_table()
        assert table.num_rows == 20_000
        assert sorted(table.column("id").to_pylist()) == list(range(1, 20_001))
    manifest = read_manifest(folder)
    assert manifest is not None and manifest.state == "complete"
    assert all(p.state == "done" and p.sha256 for p in manifest.parts)
    for part in manifest.parts:
        assert sha256_of(folder / part.file) == part.sha256
        assert (folder / part.file).stat().st_size == part.bytes
    assert sum(p.rows or 0 for p in manifest.parts) == 20_000


async def test_a_single_export_and_the_dataset_hold_the_same_values(
    pg_table: AsyncEngine, pg_url: str, tmp_path: Path
) -> None:
    await rowstream.export(pg_url, "ds_orders", tmp_path / "one.parquet")
    await export_dataset(
        pg_url, "ds_orders", tmp_path / "ds", jobs=2, format="parquet", min_partition_bytes=65536
    )
    one = duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path / 'one.parquet'}') ORDER BY id")
    many = duckdb.sql(f"SELECT * FROM read_parquet('{tmp_path / 'ds'}/*.parquet') ORDER BY id")
    assert one.types == many.types
    assert one.fetchall() == many.fetchall()


async def test_sqlite_gives_one_part(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = rowstream.create_engine(url)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE t (id integer primary key, v text)")
        await conn.execute(
            sa.text("INSERT INTO t VALUES (:i, :v)"), [{"i": i, "v": "x"} for i in range(50)]
        )
    await engine.dispose()
    report = await export_dataset(url, "t", tmp_path / "ds", jobs=4, format="csv")
    assert report.plan == "single" and len(report.parts) == 1 and report.rows == 50


async def test_csv_parts_hold_the_bytes_of_a_single_export(
    pg_table: AsyncEngine, pg_url: str, tmp_path: Path
) -> None:
    await rowstream.export(pg_url, "ds_orders", tmp_path / "one.csv")
    report = await export_dataset(
        pg_url, "ds_orders", tmp_path / "ds", jobs=2, format="csv", min_partition_bytes=65536
    )
    header, *single = (tmp_path / "one.csv").read_bytes().splitlines(keepends=True)
    lines: list[bytes] = []
    for part in report.parts:
        first, *body = (tmp_path / "ds" / part.file).read_bytes().splitlines(keepends=True)
        assert first == header
        lines += body
    assert len(report.parts) > 4
    assert sorted(lines) == sorted(single)


@pytest.mark.parametrize(
    ("fmt", "compression", "name"),
    [
        ("csv", None, "one.csv"),
        ("csv", "gzip", "one.csv.gz"),
        ("jsonl", None, "one.jsonl"),
        ("parquet", None, "one.parquet"),
    ],
)
async def test_merged_parts_are_one_file_like_a_single_export(
    pg_table: AsyncEngine,
    pg_url: str,
    tmp_path: Path,
    fmt: str,
    compression: str | None,
    name: str,
) -> None:
    single = tmp_path / name
    await rowstream.export(pg_url, "ds_orders", single)
    folder = tmp_path / "ds"
    report = await export_dataset(
        pg_url,
        "ds_orders",
        folder,
        jobs=2,
        format=fmt,
        compression=compression,
        min_partition_bytes=65536,
    )
    assert len(report.parts) > 4
    merged = tmp_path / f"merged-{name}"
    rows, size = merge_parts(folder, merged)
    assert rows == 20_000 and size == merged.stat().st_size
    if fmt == "parquet":
        one = duckdb.sql(f"SELECT * FROM read_parquet('{single}') ORDER BY id")
        many = duckdb.sql(f"SELECT * FROM read_parquet('{merged}') ORDER BY id")
        assert one.types == many.types and one.fetchall() == many.fetchall()
        return
    import gzip

    def lines(path: Path) -> list[bytes]:
        data = gzip.decompress(path.read_bytes()) if compression else path.read_bytes()
        return data.splitlines(keepends=True)

    a, b = lines(single), lines(merged)
    if fmt == "csv":
        assert a[0] == b[0] and b.count(a[0]) == 1  # one header, first
    assert sorted(a) == sorted(b)


async def test_an_unfinished_dataset_is_not_merged(tmp_path: Path) -> None:
    write_manifest(tmp_path, _manifest())
    with pytest.raises(SinkError, match="not complete"):
        merge_parts(tmp_path, tmp_path / "all.parquet")
    assert not (tmp_path / "all.parquet").exists()
