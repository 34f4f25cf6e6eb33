"""``rowstream export --jobs N`` and ``rowstream.export(..., jobs=N)`` on real servers.

A ``--jobs`` export writes what a plain export of the same table writes (the same rows, the
same text, the same Parquet types), into one file or a dataset; ``--resume`` after a SIGKILL
of the command keeps the parts already written; every bad combination of options is one line
that creates nothing; ``--celery`` with two real workers writes the dataset of a local run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

import rowstream
import rowstream.sync
from rowstream._dataset import MANIFEST_NAME, read_manifest
from tests.plugins.servers import Servers

ROOT = Path(__file__).resolve().parent.parent
TABLE = "xj_orders"
ROWS = 30_000
# Small partitions, so a small table is cut into many parts (the default is 16MB).
SMALL = "64KB"
pytestmark = pytest.mark.timeout(600)


def _create(url: str, rows: int = ROWS, table: str = TABLE) -> None:
    """Rows with text that CSV must quote (commas, quotes), NULLs, numerics and timestamps."""
    engine = rowstream.sync.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
            conn.exec_driver_sql(
                f"CREATE TABLE {table} (id int PRIMARY KEY, k int NULL, total numeric(12,2) NOT "
                "NULL, note varchar(60) NULL, created timestamp NOT NULL)"
            )
            conn.exec_driver_sql(
                f"INSERT INTO {table} (id, k, total, note, created) VALUES "
                "(%(id)s, %(k)s, %(total)s, %(note)s, %(created)s)",
                [
                    {
                        "id": i,
                        "k": None if i % 9 == 0 else i % 500,
                        "total": f"{i * 0.37:.2f}",
                        "note": None if i % 13 == 0 else f'order {i}, "quoted"',
                        "created": f"2026-01-{1 + i % 28:02d} 10:{i % 60:02d}:00",
                    }
                    for i in range(1, rows + 1)
                ],
            )
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def pg(servers: Servers) -> str:
    _create(servers.pg_url)
    return servers.pg_url


@pytest.fixture(scope="module")
def maria(servers: Servers) -> str:
    _create(servers.mysql_url)
    return servers.mysql_url


@pytest.fixture(params=["postgresql", "mariadb"])
def url(request: pytest.FixtureRequest) -> str:
    name = "pg" if request.param == "postgresql" else "maria"
    value: str = request.getfixturevalue(name)
    return value


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rowstream", "export", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def same_content(plain: Path, other: Path | str, fmt: str) -> None:
    """The same rows: sorted lines for text (one header), sorted tables for Parquet."""
    if fmt == "parquet":
        want = pq.read_table(plain).sort_by("id")
        # A folder is read as one dataset (the manifest, starting with "_", is skipped).
        got = pq.read_table(other).sort_by("id")
        assert got.schema.names == want.schema.names
        assert got.num_rows == want.num_rows
        assert got.cast(want.schema).equals(want)
        return
    want_lines = plain.read_text().splitlines()
    got_lines = Path(other).read_text().splitlines()
    if fmt == "csv":
        assert got_lines[0] == want_lines[0]
        want_lines, got_lines = want_lines[1:], got_lines[1:]
    assert len(got_lines) == len(want_lines)
    assert sorted(got_lines) == sorted(want_lines)


@pytest.mark.parametrize(("fmt", "jobs"), [("csv", 2), ("jsonl", 4), ("parquet", 4)])
def test_jobs_to_one_file_is_a_plain_export(url: str, tmp_path: Path, fmt: str, jobs: int) -> None:
    plain = tmp_path / f"plain.{fmt}"
    ok(cli(url, "--table", TABLE, "-o", str(plain)))
    target = tmp_path / f"jobs.{fmt}"
    stderr = ok(
        cli(
            url,
            "--table",
            TABLE,
            "--jobs",
            str(jobs),
            "--min-partition-size",
            SMALL,
            "-o",
            str(target),
        )
    )
    assert stderr == ""  # not a terminal: silent, as a plain export
    same_content(plain, target, fmt)
    # The parts' folder is gone: only the two files are left.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([plain.name, target.name])


def test_jobs_to_a_dataset_reads_as_the_table(url: str, tmp_path: Path) -> None:
    plain = tmp_path / "plain.parquet"
    ok(cli(url, "--table", TABLE, "-o", str(plain)))
    folder = tmp_path / "ds"
    stderr = ok(
        cli(
            url,
            "--table",
            TABLE,
            "--jobs",
            "2",
            "--min-partition-size",
            SMALL,
            "-o",
            f"{folder}/",
            "--verbose",
        )
    )
    manifest = read_manifest(folder)
    assert manifest is not None and manifest.state == "complete"
    assert len(manifest.parts) > 2 and all(p.state == "done" for p in manifest.parts)
    same_content(plain, folder, "parquet")
    lines = stderr.splitlines()
    # The summary, then one line per partition.
    assert lines[0].startswith(f"exported {ROWS:,} rows to {folder}") and "parts" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[1:]] == [p.file for p in manifest.parts]


def test_a_csv_dataset_and_progress_lines(pg: str, tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    ok(cli(pg, "--table", TABLE, "-o", str(plain)))
    folder = tmp_path / "csv"
    folder.mkdir()  # an existing empty directory is a dataset too, without the slash
    stderr = ok(
        cli(
            pg,
            "--table",
            TABLE,
            "--jobs",
            "2",
            "--min-partition-size",
            SMALL,
            "--format",
            "csv",
            "-o",
            str(folder),
            "--progress",
        )
    )
    [got] = duckdb.sql(
        f"SELECT count(*), sum(id), count(note) FROM read_csv('{folder}/*.csv')"
    ).fetchall()
    [want] = duckdb.sql(
        f"SELECT count(*), sum(id), count(note) FROM read_csv('{plain}')"
    ).fetchall()
    assert got == want
    progress = [line for line in stderr.splitlines() if line.startswith("rowstream: ")]
    total = len(list(folder.glob("part-*.csv")))
    assert len(progress) == total and progress[-1].startswith(f"rowstream: {total}/{total} parts")
    assert "rows/s" in progress[-1]
    assert any(line.startswith(f"exported {ROWS:,} rows") for line in stderr.splitlines())


def test_the_whole_job_bar_on_a_terminal(pg: str, tmp_path: Path) -> None:
    """stderr a terminal (a pty): the bar draws parts done/total, rows/s and an ETA, then the
    summary."""
    import pty

    leader, follower = pty.openpty()
    argv = ["--table", TABLE, "--jobs", "2", "--min-partition-size", SMALL]
    child = subprocess.Popen(
        [sys.executable, "-m", "rowstream", "export", pg, *argv, "-o", f"{tmp_path}/ds/"],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "160"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    screen = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(leader)
        assert child.wait(120) == 0, screen.decode(errors="replace")
    text = screen.decode(errors="replace")
    assert "Traceback" not in text
    assert " parts " in text and "rows/s" in text and "ETA" in text
    assert f"exported {ROWS:,} rows to {tmp_path}/ds" in text


def test_partition_by_a_nullable_column_keeps_the_null_rows(url: str, tmp_path: Path) -> None:
    folder = tmp_path / "by_k"
    ok(
        cli(
            url,
            "--table",
            TABLE,
            "--jobs",
            "2",
            "--partition-by",
            "k",
            "--min-partition-size",
            SMALL,
            "-o",
            f"{folder}/",
        )
    )
    manifest = read_manifest(folder)
    assert manifest is not None and manifest.plan["column"] == "k"
    assert [p.bounds["kind"] for p in manifest.parts].count("null") == 1
    [(rows, nulls, ids)] = duckdb.sql(
        f"SELECT count(*), count(*) FILTER (WHERE k IS NULL), count(DISTINCT id) "
        f"FROM read_parquet('{folder}/*.parquet')"
    ).fetchall()
    assert (rows, nulls, ids) == (ROWS, ROWS // 9, ROWS)


def test_sqlite_says_one_reader_and_works(tmp_path: Path) -> None:
    import sqlite3

    database = tmp_path / "shop.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(1, 1001)])
    target = tmp_path / "t.csv"
    result = cli(f"sqlite:///{database}", "--table", "t", "--jobs", "4", "-o", str(target))
    stderr = ok(result)
    [line] = stderr.splitlines()
    assert line.startswith("rowstream: note: one reader")
    assert target.read_text().splitlines()[:2] == ["id,name", "1,n1"]
    assert len(target.read_text().splitlines()) == 1001


# -- SIGKILL, then --resume --------------------------------------------------------------------

BIG = "xj_big"
BIG_ROWS = 300_000


@pytest.fixture(scope="module")
def big(servers: Servers) -> str:
    _create(servers.pg_url, BIG_ROWS, BIG)
    return servers.pg_url


def _kill_after_parts(argv: list[str], folder: Path, parts: int) -> None:
    """Run the CLI, SIGKILL it at a random moment after ``parts`` parts are done."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen(
        [sys.executable, "-m", "rowstream", "export", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        done = 0
        while time.monotonic() < deadline and child.poll() is None:
            manifest = read_manifest(folder) if (folder / MANIFEST_NAME).exists() else None
            done = len(manifest.done) if manifest else 0
            if done >= parts:
                break
            time.sleep(0.02)
        assert child.poll() is None, "the export ended before it could be killed"
        assert done >= parts
        time.sleep(random.uniform(0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
        if child.stderr is not None:
            child.stderr.close()


def _stats(folder: Path) -> dict[str, tuple[int, int]]:
    manifest = read_manifest(folder)
    assert manifest is not None and manifest.state == "running"
    return {
        p.file: ((folder / p.file).stat().st_ino, (folder / p.file).stat().st_mtime_ns)
        for p in manifest.done
    }


@pytest.mark.parametrize("where", ["dataset", "file"])
def test_resume_after_sigkill_keeps_finished_parts(big: str, tmp_path: Path, where: str) -> None:
    plain = tmp_path / "plain.parquet"
    ok(cli(big, "--table", BIG, "-o", str(plain)))
    out = f"{tmp_path / 'ds'}/" if where == "dataset" else str(tmp_path / "big.parquet")
    folder = tmp_path / "ds" if where == "dataset" else tmp_path / ".big.parquet.rowstream-parts"
    argv = [big, "--table", BIG, "--jobs", "2", "--min-partition-size", "256KB", "-o", out]
    _kill_after_parts(argv, folder, 3)
    kept = _stats(folder)
    manifest = read_manifest(folder)
    assert manifest is not None and 3 <= len(kept) < len(manifest.parts)

    again = cli(*argv)  # without --resume: refused, nothing touched
    assert again.returncode != 0 and len(again.stderr.splitlines()) == 1
    assert "--resume" in again.stderr and "Traceback" not in again.stderr

    stderr = ok(cli(*argv, "--resume", "--verbose"))
    if where == "dataset":
        for file, stat in kept.items():
            assert ((folder / file).stat().st_ino, (folder / file).stat().st_mtime_ns) == stat
        same_content(plain, folder, "parquet")
        parts = [line for line in stderr.splitlines() if line.startswith("  part-")]
        assert sum(line.endswith("kept from the earlier run") for line in parts) == len(kept)
    else:
        assert not folder.exists()
        same_content(plain, out, "parquet")
    # The first snapshot died with the killed command: the command says so.
    assert "rowstream: warning: the dataset is not one point in time" in stderr


@pytest.mark.parametrize(
    ("signum", "code", "says"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_a_signal_mid_job_leaves_finished_parts_and_no_temporary_file(
    big: str, tmp_path: Path, signum: int, code: int, says: str
) -> None:
    folder = tmp_path / "ds"
    argv = [big, "--table", BIG, "--jobs", "2", "--min-partition-size", "256KB", "-o", f"{folder}/"]
    child = subprocess.Popen(
        [sys.executable, "-m", "rowstream", "export", *argv],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        manifest = read_manifest(folder) if (folder / MANIFEST_NAME).exists() else None
        if manifest is not None and manifest.done:
            break
        time.sleep(0.02)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == code, stderr
    assert stderr.splitlines() == [f"rowstream: {says}"]
    # The parts being written were removed; finished ones stay for --resume.
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    ok(cli(*argv, "--resume"))
    assert pq.read_table(folder).num_rows == BIG_ROWS


def test_a_failing_part_is_one_line_and_leaves_nothing_when_no_part_is_done(
    pg: str, tmp_path: Path
) -> None:
    target = tmp_path / "t.csv"
    # A column that does not exist fails every part: nothing is kept, one line.
    result = cli(pg, "--table", TABLE, "--columns", "id,nope", "--jobs", "2", "-o", str(target))
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "nope" in result.stderr and "Traceback" not in result.stderr
    # No part was done: the hidden folder goes too, so the next run needs no --resume.
    assert list(tmp_path.iterdir()) == []


def test_a_part_that_fails_after_others_says_resume_and_resume_finishes(
    pg: str, tmp_path: Path
) -> None:
    """The last rows hold a timestamp Parquet cannot store: their part fails after others
    are done; the line says how many are kept, and --resume with --infinity finishes."""
    engine = rowstream.sync.create_engine(pg)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS xj_inf")
            conn.exec_driver_sql(
                "CREATE TABLE xj_inf AS SELECT i AS id, CASE WHEN i > 19990 THEN "
                "timestamp 'infinity' ELSE timestamp '2026-01-01' + i * interval '1 min' END "
                "AS at, repeat('x', 40) AS pad FROM generate_series(1, 20000) AS i"
            )
    finally:
        engine.dispose()
    target = tmp_path / "inf.parquet"
    argv = [
        pg,
        "--table",
        "xj_inf",
        "--jobs",
        "2",
        "--min-partition-size",
        SMALL,
        "-o",
        str(target),
    ]
    failed = cli(*argv)
    assert failed.returncode == 1 and len(failed.stderr.splitlines()) == 1, failed.stderr
    line = failed.stderr.strip()
    assert "infinity" in line and "parts are kept in" in line and line.endswith("with --resume")
    assert not target.exists()
    ok(cli(*argv, "--resume", "--infinity", "null"))
    table = pq.read_table(target)
    assert table.num_rows == 20_000 and table.column("at").null_count == 10


# -- bad combinations --------------------------------------------------------------------------

BAD = [
    (["--jobs", "2", "-o", "-"], "--jobs writes part files, not a stream"),
    (["--jobs", "0", "-o", "{tmp}/x.csv"], "--jobs must be at least 1"),
    (["--resume", "-o", "{tmp}/x.csv"], "--resume need --jobs N"),
    (["--partition-by", "k", "-o", "{tmp}/x.csv"], "--partition-by need --jobs N"),
    (["--celery", "-o", "{tmp}/d/"], "--celery need --jobs N"),
    (["-o", "{tmp}/d/"], "is a directory: a dataset is read by N connections, add --jobs N"),
    (["--jobs", "2", "--celery", "-o", "{tmp}/x.parquet"], "--celery writes a dataset"),
    (["--jobs", "2", "--broker", "redis://127.0.0.1/0", "-o", "{tmp}/d/"], "are for --celery"),
    (["--jobs", "2", "--resume", "-o", "{tmp}/x.csv"], "nothing to resume"),
    (["--jobs", "2", "--resume", "-o", "{tmp}/d/"], "nothing to resume"),
    (["--jobs", "2", "--format", "xml", "-o", "{tmp}/d/"], "invalid choice"),
    (["--jobs", "2", "--min-partition-size", "lots", "-o", "{tmp}/d/"], "cannot read the size"),
    (["--jobs", "2", "--where", "1=1; DROP TABLE xj_orders", "-o", "{tmp}/d/"], ""),
    (
        ["--jobs", "2", "--partition-by", "nope", "--min-partition-size", SMALL, "-o", "{tmp}/d/"],
        "nope",
    ),
]


# Each part's options, refused before anything is made or any connection opened (nothing
# listens at this URL: a check that needed the server would fail with another line).
NOWHERE = "postgresql://nobody@127.0.0.1:1/nowhere"
BAD_PART_OPTIONS = [
    (["--batch-rows", "0"], "batch_rows must be at least 1"),  # PostgreSQL drops batch sizes
    (["--text-columns", "note"], "--text-columns) is for MariaDB and SQLite"),
    (["--batch-bytes", "0"], "must be positive"),
]


@pytest.mark.parametrize("out", ["{tmp}/d/", "{tmp}/x.parquet"])
@pytest.mark.parametrize(("extra", "says"), BAD_PART_OPTIONS)
def test_part_options_are_refused_up_front_in_one_line(
    tmp_path: Path, extra: list[str], says: str, out: str
) -> None:
    target = out.replace("{tmp}", str(tmp_path))
    result = cli(NOWHERE, "--table", TABLE, "--jobs", "2", *extra, "-o", target)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert says in lines[0] and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


async def test_the_api_refuses_part_options_up_front(tmp_path: Path) -> None:
    for options, says in [
        ({"infinity": "sometimes"}, "unknown infinity choice"),
        ({"zero_dates": "epoch"}, "unknown zero_dates"),
        ({"batch_rows": -5}, "batch_rows must be at least 1"),
        ({"text_columns": ["note"]}, "is for MariaDB and SQLite"),
        ({"read_timeout": -1.0}, "read_timeout must be a positive number"),
    ]:
        for path in (tmp_path / "x.csv", f"{tmp_path}/d/"):
            with pytest.raises(rowstream.ConfigurationError, match=says):
                await rowstream.export(NOWHERE, TABLE, path, jobs=2, **options)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("extra", "says"), BAD)
def test_bad_combinations_are_one_line_and_create_nothing(
    pg: str, tmp_path: Path, extra: list[str], says: str
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    before = _count(pg)
    result = cli(pg, "--table", TABLE, *args)
    lines = result.stderr.splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert says in lines[0] and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert result.stdout == ""
    assert _count(pg) == before


def test_pgbouncer_is_refused_in_one_line_and_nothing_is_made(
    pg: str, pgbouncer_url: str, tmp_path: Path
) -> None:
    for out in (f"{tmp_path}/d/", str(tmp_path / "x.csv")):
        result = cli(pgbouncer_url, "--table", TABLE, "--jobs", "2", "-o", out)
        assert result.returncode != 0 and len(result.stderr.splitlines()) == 1, result.stderr
        assert "PgBouncer" in result.stderr and "Traceback" not in result.stderr
        assert list(tmp_path.iterdir()) == []


def test_celery_refuses_mariadb_and_a_query_in_one_line(
    maria: str, pg: str, tmp_path: Path
) -> None:
    result = cli(maria, "--table", TABLE, "--jobs", "2", "--celery", "-o", f"{tmp_path}/d/")
    assert result.returncode != 0 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "PostgreSQL exports and mysql cannot" in result.stderr
    result = cli(pg, "--query", "SELECT 1", "--jobs", "2", "--celery", "-o", f"{tmp_path}/d/")
    assert result.returncode != 0 and "--celery exports a --table" in result.stderr
    assert list(tmp_path.iterdir()) == []


def _count(url: str) -> int:
    engine = rowstream.sync.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM {TABLE}").scalar_one())
    finally:
        engine.dispose()


# -- the API and the sync face -----------------------------------------------------------------


async def test_the_api_returns_a_job_report_for_a_dataset_and_an_export_report_for_a_file(
    pg: str, tmp_path: Path
) -> None:
    seen: list[Any] = []
    dataset = await rowstream.export(
        pg,
        TABLE,
        f"{tmp_path / 'ds'}/",
        jobs=2,
        min_partition_bytes=64 * 1024,
        on_progress=lambda state: seen.append((state.parts_done, state.rows)),
    )
    assert isinstance(dataset, rowstream._jobs.JobReport) and dataset.rows == ROWS
    assert dataset.exact and len(dataset.parts) == len(seen) > 2
    assert seen[-1] == (len(dataset.parts), ROWS)
    one = await rowstream.export(pg, TABLE, tmp_path / "one.jsonl", jobs=2, where="k IS NULL")
    assert isinstance(one, rowstream.ExportReport) and one.method == "jobs"
    assert one.rows == ROWS // 9 and one.job is not None and one.job.rows == one.rows
    assert len((tmp_path / "one.jsonl").read_text().splitlines()) == ROWS // 9
    with pytest.raises(rowstream.ConfigurationError, match="resume, partition_by"):
        await rowstream.export(pg, TABLE, tmp_path / "x.csv", resume=True)
    with pytest.raises(rowstream.ConfigurationError, match="method='copy' picks"):
        await rowstream.export(pg, TABLE, tmp_path / "x.csv", jobs=2, method="copy")
    with pytest.raises(rowstream.ConfigurationError, match="not standard output or a stream"):
        await rowstream.export(pg, TABLE, "-", jobs=2)
    assert not (tmp_path / "x.csv").exists()


def test_sync_export_from_plain_code(pg: str, tmp_path: Path) -> None:
    report = rowstream.sync.export(pg, TABLE, tmp_path / "s.parquet", jobs=2)
    assert report.rows == ROWS and pq.read_table(tmp_path / "s.parquet").num_rows == ROWS
    engine = rowstream.sync.create_engine(pg)  # a sync Engine: its database, async driver
    try:
        single = rowstream.sync.export(engine, TABLE, tmp_path / "s.csv", where="id <= 10")
    finally:
        engine.dispose()
    assert single.rows == 10 and len((tmp_path / "s.csv").read_text().splitlines()) == 11


def test_sync_export_from_a_thread_whose_loop_runs(pg: str, tmp_path: Path) -> None:
    """Sync code called from inside a coroutine (a sync library used in async code): the
    thread's loop is running, so asyncio.run() would refuse; the facade does not."""
    results: list[Any] = []

    async def inside() -> None:
        results.append(rowstream.sync.export(pg, TABLE, f"{tmp_path / 'ds'}/", jobs=2))

    errors: list[BaseException] = []

    def thread_main() -> None:
        try:
            asyncio.run(inside())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=thread_main)
    thread.start()
    thread.join(240)
    assert not errors and results and results[0].rows == ROWS


# -- --celery ----------------------------------------------------------------------------------


@pytest.fixture
def crew(amqp_url: str, tmp_path: Path) -> Iterator[Any]:
    from tests.test_celery import Workers

    (tmp_path / "crew").mkdir()
    workers = Workers(amqp_url, tmp_path / "crew", pool="prefork", sleep=0.0)
    try:
        yield workers
    finally:
        workers.stop()


def test_celery_writes_the_dataset_of_a_local_jobs_export(
    pg: str, crew: Any, tmp_path: Path
) -> None:
    crew.start()
    crew.start()
    local, remote = tmp_path / "local", tmp_path / "remote"
    common = ["--table", TABLE, "--jobs", "2", "--min-partition-size", SMALL]
    ok(cli(pg, *common, "-o", f"{local}/"))
    stderr = ok(
        cli(
            pg,
            *common,
            "-o",
            f"{remote}/",
            "--celery",
            "--broker",
            crew.broker,
            "--queue",
            crew.queue,
            "--progress",
        )
    )
    assert any("parts" in line for line in stderr.splitlines())
    mine = json.loads((local / MANIFEST_NAME).read_text())
    theirs = json.loads((remote / MANIFEST_NAME).read_text())
    assert theirs["state"] == mine["state"] == "complete"
    assert [p["bounds"] for p in theirs["parts"]] == [p["bounds"] for p in mine["parts"]]
    assert [p["rows"] for p in theirs["parts"]] == [p["rows"] for p in mine["parts"]]
    want = pq.read_table(local).sort_by("id")
    got = pq.read_table(remote).sort_by("id")
    assert got.num_rows == ROWS and got.equals(want)
