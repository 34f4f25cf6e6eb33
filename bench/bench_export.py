"""Export the orders table to files: rowstream against its peers, in one run.

    python bench/bench_export.py                 # 5M rows, every tool
    python bench/bench_export.py --sizes 1000000,5000000 --only rowstream-parquet,rowstream-csv
    python bench/bench_export.py --repeat 3      # interleaved rounds, median per variant
    python bench/bench_export.py --sizes 500000 --only rowstream-csv --before /tmp/old/src
                                                 # and an older tree's rowstream, same run

Each variant runs in a fresh child process (peak RSS is that child's own, from ``os.wait4``;
for psql, the largest of the wrapper and psql). Every variant reads the same rows
(``SELECT * FROM bench_orders [WHERE id <= N]``) and writes a file; Parquet files are zstd.
The table prints rows/s, peak RSS and ratios against ADBC (Parquet) and psql ``\\copy`` (CSV).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    DEFAULT_PG_DSN,
    ORDERS_ROWS,
    ORDERS_TABLE,
    Result,
    asyncpg_dsn,
    child_adbc,
    child_psql,
    child_report,
    ensure_orders,
    ratio_table,
    run_child,
)

VARIANTS = (
    "rowstream-parquet",
    "rowstream-csv",
    "rowstream-jsonl",
    "adbc-parquet",
    "connectorx-parquet",
    "polars-parquet",
    "pandas-chunks-parquet",
    "dlt-parquet",
    "psql-copy-csv",
)
# Peers that need an optional package: skipped (and said so) when it is not installed.
_NEEDS = {
    "adbc-parquet": "adbc_driver_postgresql",
    "connectorx-parquet": "connectorx",
    "polars-parquet": "polars",
    "pandas-chunks-parquet": "pandas",
    "dlt-parquet": "dlt",
}
PANDAS_CHUNK = 100_000
#: Prefix of the rowstream variants run from the older tree given by --before.
BEFORE = "before-"


def query(rows: int) -> str:
    where = "" if rows >= ORDERS_ROWS else f" WHERE id <= {int(rows)}"
    return f"SELECT * FROM {ORDERS_TABLE}{where}"


# ---------------------------------------------------------------- children


def child_rowstream(fmt: str, dsn: str, rows: int, out: Path, src: Path | None = None) -> None:
    # The command users run, in this process: `rowstream export URL --table ... -o PATH`.
    if src is not None:
        sys.path.insert(0, str(src))  # an older tree (--before), ahead of the installed one
    from rowstream._cli import main as cli

    if fmt == "parquet":
        # Like the peers' children, import the libraries before the clock starts (rowstream
        # loads pyarrow only when it writes Parquet; the import takes about 0.5 s).
        import pyarrow.parquet  # noqa: F401

    argv = ["export", dsn, "--table", ORDERS_TABLE, "-o", str(out), "--format", fmt, "--quiet"]
    if rows < ORDERS_ROWS:
        argv += ["--where", f"id <= {int(rows)}"]
    started = time.perf_counter()
    code = cli(argv)
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(code)
    # The parent counts the rows in the file: counting here would add to this child's peak RSS.
    child_report(-1, seconds)


def count_rows(path: Path, fmt: str) -> int:
    """Rows in a written file, counted by the parent after the child exited.

    The parent must stay small: a child's ``ru_maxrss`` starts from the parent's memory (the
    kernel folds the forked address space's high-water mark in at exec), so Parquet is
    counted in a throwaway process (pyarrow would add 40 MB to the parent) and text files in
    1 MiB reads.
    """
    if fmt == "parquet":
        code = (
            "import sys, pyarrow.parquet as pq; "
            "print(pq.ParquetFile(sys.argv[1]).metadata.num_rows)"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True
        )
        return int(done.stdout.strip() or -1)
    lines = 0
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            lines += block.count(b"\n")
    # The orders' notes have no newlines: one line per row, plus CSV's header.
    return lines - 1 if fmt == "csv" else lines


def child_connectorx(dsn: str, rows: int, out: Path) -> None:
    import connectorx as cx
    import pyarrow.parquet as pq

    started = time.perf_counter()
    table = cx.read_sql(asyncpg_dsn(dsn), query(rows), return_type="arrow")
    pq.write_table(table, out, compression="zstd")
    child_report(table.num_rows, time.perf_counter() - started)


def child_polars(dsn: str, rows: int, out: Path) -> None:
    import polars as pl

    started = time.perf_counter()
    frame = pl.read_database_uri(query(rows), asyncpg_dsn(dsn))
    frame.write_parquet(out, compression="zstd")
    child_report(frame.height, time.perf_counter() - started)


def child_pandas(dsn: str, rows: int, out: Path) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import sqlalchemy as sa

    driver = "psycopg2" if importlib.util.find_spec("psycopg2") else "psycopg"
    engine = sa.create_engine(asyncpg_dsn(dsn).replace("postgresql://", f"postgresql+{driver}://"))
    started = time.perf_counter()
    count = 0
    writer = None
    with engine.connect().execution_options(stream_results=True) as conn:
        for chunk in pd.read_sql(sa.text(query(rows)), conn, chunksize=PANDAS_CHUNK):
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema, compression="zstd")
            writer.write_table(table)
            count += len(chunk)
    if writer is not None:
        writer.close()
    child_report(count, time.perf_counter() - started)


def child_dlt(dsn: str, rows: int, out: Path) -> None:
    import dlt
    from dlt.sources.sql_database import sql_table

    started = time.perf_counter()
    driver = "psycopg2" if importlib.util.find_spec("psycopg2") else "psycopg"
    url = asyncpg_dsn(dsn).replace("postgresql://", f"postgresql+{driver}://")
    source = sql_table(
        credentials=url,
        table=ORDERS_TABLE,
        backend="pyarrow",
        chunk_size=100_000,
        query_adapter_callback=(
            None if rows >= ORDERS_ROWS else lambda q, t, *a: q.where(t.c.id <= rows)  # type: ignore[misc]
        ),
    )
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_export_{os.getpid()}",
        pipelines_dir=str(out.parent / "dlt-pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=str(out.parent / "dlt-out")),
        dataset_name="bench",
    )
    info = pipeline.run(source, loader_file_format="parquet")
    info.raise_on_failed_jobs()
    count = pipeline.last_trace.last_normalize_info.row_counts.get(ORDERS_TABLE, 0)
    child_report(count, time.perf_counter() - started)


def run_variant(name: str, dsn: str, rows: int, out: Path, before: Path | None) -> None:
    if name.startswith(BEFORE):
        child_rowstream(name.rsplit("-", 1)[1], dsn, rows, out, before)
    elif name.startswith("rowstream-"):
        child_rowstream(name.split("-", 1)[1], dsn, rows, out)
    elif name == "adbc-parquet":
        child_adbc(dsn, query(rows), out)
    elif name == "connectorx-parquet":
        child_connectorx(dsn, rows, out)
    elif name == "polars-parquet":
        child_polars(dsn, rows, out)
    elif name == "pandas-chunks-parquet":
        child_pandas(dsn, rows, out)
    elif name == "dlt-parquet":
        child_dlt(dsn, rows, out)
    elif name == "psql-copy-csv":
        child_psql(dsn, query(rows), out)
    else:
        raise SystemExit(f"unknown variant {name!r}")


# ---------------------------------------------------------------- parent


def suffix(name: str) -> str:
    return {"csv": ".csv", "jsonl": ".jsonl"}.get(name.rsplit("-", 1)[-1], ".parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=DEFAULT_PG_DSN)
    parser.add_argument("--sizes", default=str(ORDERS_ROWS), help="comma-separated row counts")
    parser.add_argument("--only", help="comma-separated variants (default: all)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds; each variant's median run is reported"
    )
    parser.add_argument(
        "--before", type=Path, help="an older src/ tree: its rowstream variants run alongside"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=ORDERS_ROWS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_variant(args.child, args.dsn, args.rows, args.out, args.before)
        return

    built = asyncio.run(ensure_orders(args.dsn))
    if built:
        print(f"built {ORDERS_TABLE} in {built:.0f} s", file=sys.stderr)
    names = [n for n in (args.only.split(",") if args.only else VARIANTS) if _available(n)]
    if args.before is not None:
        names += [BEFORE + n for n in names if n.startswith("rowstream-")]
    for rows in [int(s) for s in args.sizes.split(",")]:
        runs: dict[str, list[Result]] = {name: [] for name in names}
        with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
            # Rounds interleave the variants, so a noisy moment on a shared machine hits one
            # run of each rather than every run of one.
            for _ in range(args.repeat):
                for name in names:
                    result = measure(name, args.dsn, rows, Path(tmp), args.before)
                    if result is not None:
                        runs[name].append(result)
        results = [_median(r) for r in runs.values() if r]
        print(f"\n### {rows:,} rows (median of {args.repeat}; peak RSS: the highest)\n")
        print(
            ratio_table(results, [("vs ADBC", "adbc-parquet"), ("vs psql \\copy", "psql-copy-csv")])
        )
        by_name = {r.name: r for r in results}
        for old in [r for r in results if r.name.startswith(BEFORE)]:
            new = by_name.get(old.name[len(BEFORE) :])
            if new is not None and old.rows_per_second:
                print(
                    f"{new.name}: this tree / --before = "
                    f"{new.rows_per_second / old.rows_per_second:.2f}x rows/s"
                )


def _available(name: str) -> bool:
    module = _NEEDS.get(name)
    if module and importlib.util.find_spec(module) is None:
        print(f"{name}: skipped, {module} is not installed", file=sys.stderr)
        return False
    return True


def measure(name: str, dsn: str, rows: int, tmp: Path, before: Path | None) -> Result | None:
    out = tmp / f"{name}{suffix(name)}"
    argv = [sys.executable, __file__, "--child", name, "--dsn", dsn]
    if before is not None:
        argv += ["--before", str(before)]
    argv += ["--rows", str(rows), "--out", str(out)]
    try:
        report, peak = run_child(argv)
    except RuntimeError as exc:
        print(f"{name}: failed: {str(exc)[-400:]}", file=sys.stderr)
        return None
    extra = {k: v for k, v in report.items() if k not in ("rows", "seconds")}
    extra["file_mb"] = round(_size(out) / 2**20, 1)
    count = report["rows"]
    if count < 0:
        count = count_rows(out, name.rsplit("-", 1)[-1])
    result = Result(name, count, report["seconds"], peak, extra)
    print(
        f"{name}: {result.rows:,} rows in {result.seconds:.2f} s, "
        f"{result.rows_per_second:,.0f} rows/s, peak RSS {peak:.0f} MB, "
        f"file {extra['file_mb']} MB",
        file=sys.stderr,
        flush=True,
    )
    _remove(out)
    return result


def _median(results: list[Result]) -> Result:
    ordered = sorted(results, key=lambda r: r.seconds)
    middle = ordered[len(ordered) // 2]
    peak = max(r.peak_rss_mb for r in results)
    return Result(middle.name, middle.rows, middle.seconds, peak, middle.extra)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.parent.rglob("*.parquet") if "dlt-out" in str(p))


def _remove(path: Path) -> None:
    if path.is_file():
        path.unlink()
    for directory in ("dlt-out", "dlt-pipelines"):
        shutil.rmtree(path.parent / directory, ignore_errors=True)


if __name__ == "__main__":
    main()
