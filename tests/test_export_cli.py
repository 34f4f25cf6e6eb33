"""``rowstream export`` as a subprocess: bad input gives one clear line, Ctrl-C, SIGTERM and
SIGHUP leave nothing, a closed standard output (``| head``) ends quietly.

Every failure must print exactly one line on stderr, exit non-zero, show no traceback and no
password, and leave neither the target nor a temporary file behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy.engine import make_url

from tests.plugins.servers import Servers

SECRET = "s3cr3t-pw"
BIG = "exp_big"
BIG_ROWS = 3_000_000


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rowstream", "export", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def with_password(url: str) -> str:
    return make_url(url).set(password=SECRET).render_as_string(hide_password=False)


def assert_clean_failure(result: subprocess.CompletedProcess[str], target: Path) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert not target.exists()
    if target.parent.is_dir():
        assert [p.name for p in target.parent.iterdir() if "rowstream-tmp" in p.name] == []
    return lines[0]


@pytest.fixture
async def small_table(pg_url: str) -> AsyncIterator[str]:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS exp_cli; CREATE TABLE exp_cli AS "
            "SELECT i AS id, 'row ' || i AS note FROM generate_series(1, 100) i"
        )
        yield pg_url
    finally:
        await conn.execute("DROP TABLE IF EXISTS exp_cli")
        await conn.close()


async def test_success_prints_nothing_when_not_a_tty(small_table: str, tmp_path: Path) -> None:
    target = tmp_path / "ok.csv"
    result = await asyncio.to_thread(
        run_cli, small_table, "--table", "exp_cli", "--where", "id <= 10", "-o", str(target)
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    assert target.read_text().splitlines()[:2] == ["id,note", "1,row 1"]
    assert len(target.read_text().splitlines()) == 11


async def test_stdout(small_table: str) -> None:
    result = await asyncio.to_thread(
        run_cli,
        small_table,
        "--query",
        "SELECT id FROM exp_cli WHERE id < 3",
        "-o",
        "-",
        "--format",
        "jsonl",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == '{"id": 1}\n{"id": 2}\n'


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
async def test_stdout_is_the_file_export(small_table: str, tmp_path: Path, fmt: str) -> None:
    """Every format goes through a pipe: Parquet's footer needs byte counts, not a seek."""
    target = tmp_path / f"file.{fmt}"
    args = [small_table, "--table", "exp_cli", "--format", fmt, "-q"]
    to_file = await asyncio.to_thread(run_cli, *args, "-o", str(target))
    assert to_file.returncode == 0, to_file.stderr
    piped = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "rowstream", "export", *args, "-o", "-"],
        capture_output=True,
        timeout=120,
    )
    assert piped.returncode == 0 and piped.stderr == b"", piped.stderr
    assert piped.stdout == target.read_bytes()
    if fmt == "parquet":
        table = pq.read_table(pa.BufferReader(piped.stdout))
        assert table.num_rows == 100 and table.column("id").to_pylist()[:2] == [1, 2]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--table", "exp_nope"], "exp_nope"),
        (["--table", "exp_cli", "--columns", "id,nope"], "nope"),
        (["--table", "exp_cli", "--where", "id >>> 1"], "operator does not exist"),
        (["--table", "exp_cli", "--where", "nope = 1"], "nope"),
        (
            [
                "--table",
                "exp_cli",
                "--where",
                "true) TO STDOUT; DROP TABLE exp_cli; COPY (SELECT 1",
            ],
            "refusing the where condition",
        ),
        (["--query", "SELECT * FROM exp_nope"], "exp_nope"),
    ],
)
async def test_bad_query_input(
    small_table: str, tmp_path: Path, args: list[str], expected: str
) -> None:
    target = tmp_path / "out.csv"
    url = with_password(small_table)
    result = await asyncio.to_thread(run_cli, url, *args, "-o", str(target))
    line = assert_clean_failure(result, target)
    assert expected in line
    conn = await asyncpg.connect(small_table)
    try:
        assert await conn.fetchval("SELECT count(*) FROM exp_cli") == 100
    finally:
        await conn.close()


async def test_unreachable_server(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:1/test"
    line = assert_clean_failure(
        await asyncio.to_thread(run_cli, url, "--table", "t", "-o", str(target)), target
    )
    assert "cannot connect" in line


async def test_missing_database(pg_url: str, tmp_path: Path) -> None:
    target = tmp_path / "out.parquet"
    url = with_password(str(make_url(pg_url).set(database="exp_no_such_db")))
    line = assert_clean_failure(
        await asyncio.to_thread(run_cli, url, "--table", "t", "-o", str(target)), target
    )
    assert "exp_no_such_db" in line


async def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    database = tmp_path / "missing.db"
    line = assert_clean_failure(
        await asyncio.to_thread(
            run_cli, f"sqlite:///{database}", "--table", "t", "-o", str(target)
        ),
        target,
    )
    assert "no SQLite database" in line
    assert _names(tmp_path) == []


async def test_mariadb_unknown_table(mysql_url: str, tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    line = assert_clean_failure(
        await asyncio.to_thread(run_cli, mysql_url, "--table", "exp_nope", "-o", str(target)),
        target,
    )
    assert "exp_nope" in line


@pytest.mark.parametrize(
    "url", [f"postgresql://u:{SECRET}@host:port/db", "not a url", f"oracle://u:{SECRET}@h/db"]
)
async def test_malformed_url(tmp_path: Path, url: str) -> None:
    target = tmp_path / "out.csv"
    assert_clean_failure(
        await asyncio.to_thread(run_cli, url, "--table", "t", "-o", str(target)), target
    )


async def test_unwritable_output(small_table: str, tmp_path: Path) -> None:
    missing_dir = tmp_path / "no" / "such" / "dir" / "out.csv"
    line = assert_clean_failure(
        await asyncio.to_thread(run_cli, small_table, "--table", "exp_cli", "-o", str(missing_dir)),
        missing_dir,
    )
    assert "does not exist" in line
    directory = tmp_path / "adir.csv"
    directory.mkdir()
    result = await asyncio.to_thread(
        run_cli, small_table, "--table", "exp_cli", "-o", str(directory)
    )
    assert result.returncode != 0 and "directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["-o", "{dir}/out.xlsx"],
        ["-o", "{dir}/out.csv", "--format", "xml"],
        ["-o", "{dir}/out.csv", "--compression", "zstd"],
    ],
)
async def test_unknown_format(small_table: str, tmp_path: Path, args: list[str]) -> None:
    args = [a.replace("{dir}", str(tmp_path)) for a in args]
    target = Path(args[1]) if args[1] != "-" else tmp_path / "none"
    line = assert_clean_failure(
        await asyncio.to_thread(run_cli, small_table, "--table", "exp_cli", *args), target
    )
    assert "format" in line or "compression" in line or "Parquet" in line


# ---------------------------------------------------------------- Ctrl-C


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql, timeout=None)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def big_table(servers: Servers) -> Iterator[str]:
    # Built once for the three formats: filling 3M rows is the slow part of these tests.
    asyncio.run(
        _execute(
            servers.pg_url,
            f"DROP TABLE IF EXISTS {BIG}; CREATE TABLE {BIG} AS "
            "SELECT i AS id, now() AS created_at, md5(i::text) || md5((i + 1)::text) AS note "
            f"FROM generate_series(1, {BIG_ROWS}) i",
        )
    )
    try:
        yield servers.pg_url
    finally:
        asyncio.run(_execute(servers.pg_url, f"DROP TABLE IF EXISTS {BIG}"))


def _start_export(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rowstream", "export", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _temp_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if "rowstream-tmp" in p.name)


def _names(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir()]


async def _backends_on(url: str, table: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT state || ': ' || query FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database() "
            "AND query ILIKE '%' || $1 || '%' AND state <> 'idle'",
            table,
        )
        return [r[0] for r in rows]
    finally:
        await conn.close()


async def _assert_query_gone(running: Callable[[], Awaitable[list[Any]]]) -> None:
    """The server lets go of a cancelled query within a few seconds."""
    for _ in range(50):
        left = await running()
        if not left:
            break
        await asyncio.sleep(0.1)
    assert left == []


# What each stopping signal prints, and the exit status: 128 + its number, as a shell reports.
STOPS = {
    signal.SIGINT: ("rowstream: interrupted", 130),
    signal.SIGTERM: ("rowstream: terminated", 143),
    signal.SIGHUP: ("rowstream: hung up", 129),
}


async def _interrupt_export(
    url: str,
    table: str,
    target: Path,
    running: Callable[[], Awaitable[list[Any]]],
    signum: signal.Signals = signal.SIGINT,
) -> None:
    """Export ``table``, send ``signum`` (Ctrl-C by default) once it is well under way (a
    temporary file with data in it), and check what is left: one line, the signal's exit
    status, no file, and no query on the server."""
    proc = _start_export(url, "--table", table, "-o", str(target))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if _temp_size(target.parent) > 1_000_000:
                break
            assert proc.poll() is None, proc.communicate()
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the export never started writing")
        assert await running(), "the export's query should be running"
        proc.send_signal(signum)
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line, code = STOPS[signum]
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [line]
    assert _names(target.parent) == []  # neither the target nor a temporary file
    # The process is gone; its query must be gone too (a cancel, not a backend left working).
    await _assert_query_gone(running)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["csv", "parquet", "jsonl"])
async def test_ctrl_c_leaves_nothing(big_table: str, tmp_path: Path, suffix: str) -> None:
    await _interrupt_export(
        big_table, BIG, tmp_path / f"big.{suffix}", lambda: _backends_on(big_table, BIG)
    )


@pytest.fixture(params=["postgresql", "mariadb"])
def big_export(request: pytest.FixtureRequest) -> tuple[str, str, Callable[[str, str], Any]]:
    """(URL, table, running-queries probe) of each database's big table."""
    if request.param == "postgresql":
        return request.getfixturevalue("big_table"), BIG, _backends_on
    return request.getfixturevalue("my_big_table"), MY_BIG, _my_queries_on


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
async def test_sigterm_and_sighup_leave_nothing(
    big_export: tuple[str, str, Callable[[str, str], Any]], tmp_path: Path, signum: signal.Signals
) -> None:
    # What systemd, Kubernetes and Celery send, and what a closed terminal sends.
    url, table, running = big_export
    await _interrupt_export(url, table, tmp_path / "big.csv", lambda: running(url, table), signum)


def test_importing_rowstream_leaves_signals_alone() -> None:
    probe = (
        "import signal, rowstream, rowstream.sync, rowstream._cli; "
        "print([signal.getsignal(s) is signal.SIG_DFL "
        "for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[True, True, False]", result.stderr  # Python ignores SIGPIPE


async def _read_a_line_and_close(
    url: str, query: str, running: Callable[[], Awaitable[list[Any]]], *extra: str
) -> None:
    """``rowstream export URL --query ... -o - | head -1`` through a real pipe: read one line,
    close the pipe, and check that the export ends quietly and its query is gone."""
    proc = _start_export(url, "--query", query, "-o", "-", *extra)
    try:
        assert proc.stdout is not None
        first = await asyncio.to_thread(proc.stdout.readline)
        assert first.strip()
        assert await running(), "the export's query should still be running"
        proc.stdout.close()
        assert proc.stderr is not None
        err = await asyncio.to_thread(proc.stderr.read)
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert err == ""
    assert code == 128 + signal.SIGPIPE  # what a shell reports for `seq 1e9 | head -1`'s seq
    await _assert_query_gone(running)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_closed_stdout_ends_quietly_on_postgresql(pg_url: str, fmt: str) -> None:
    marker = f"rs_pipe_{fmt}"
    query = f"SELECT i, md5(i::text) AS {marker} FROM generate_series(1, 3000000) i"
    await _read_a_line_and_close(
        pg_url, query, lambda: _backends_on(pg_url, marker), "--format", fmt
    )


async def test_closed_stdout_ends_quietly_on_mariadb(mysql_url: str) -> None:
    query = "SELECT seq, md5(seq) AS rs_pipe_my FROM seq_1_to_50000000"
    await _read_a_line_and_close(mysql_url, query, lambda: _my_queries_on(mysql_url, "rs_pipe_my"))


async def test_closed_stdout_through_a_shell_pipe(pg_url: str) -> None:
    script = (
        f"{sys.executable} -m rowstream export '{pg_url}' --query "
        "'SELECT i FROM generate_series(1, 3000000) i' -o - --compression gzip | head -c 10 "
        ">/dev/null; echo ${PIPESTATUS[0]}"
    )
    result = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.stderr == ""
    assert result.stdout.strip() == "141"


def test_the_environment_has_no_stray_signals() -> None:
    # SIGINT must reach Python's default handler in the child (asyncio.run cancels the task).
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    assert os.name == "posix"


def _run_on_a_terminal(*args: str) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; return its exit code and what it drew."""
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rowstream", "export", *args],
            stdout=subprocess.DEVNULL,
            stderr=follower,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=120)
    finally:
        os.close(leader)
    return code, b"".join(chunks).decode(errors="replace")


async def test_summary_line_on_a_terminal(small_table: str, tmp_path: Path) -> None:
    target = tmp_path / "tty.parquet"
    code, drawn = await asyncio.to_thread(
        _run_on_a_terminal, small_table, "--table", "exp_cli", "-o", str(target)
    )
    assert code == 0, drawn
    summary = [line for line in drawn.splitlines() if "exported" in line]
    assert len(summary) == 1
    assert "exported 100 rows to" in summary[0]
    assert "rows/s" in summary[0] and "peak memory" in summary[0]
    quiet_code, quiet = await asyncio.to_thread(
        _run_on_a_terminal, small_table, "--table", "exp_cli", "-o", str(target), "--quiet"
    )
    assert quiet_code == 0 and quiet.strip() == ""


MY_BIG = "exp_big_my"


async def _my_execute(url: str, sql: str) -> list[tuple[object, ...]]:
    import rowstream

    engine = rowstream.create_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.exec_driver_sql(sql)
            return [tuple(r) for r in result.fetchall()] if result.returns_rows else []
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def my_big_table(servers: Servers) -> Iterator[str]:
    # MariaDB's SEQUENCE engine fills a million rows in about a second.
    asyncio.run(
        _my_execute(
            servers.mysql_url,
            f"CREATE OR REPLACE TABLE {MY_BIG} (id int PRIMARY KEY, note varchar(64)) "
            "AS SELECT seq AS id, concat(md5(seq), md5(seq + 1)) AS note FROM seq_1_to_1500000",
        )
    )
    try:
        yield servers.mysql_url
    finally:
        asyncio.run(_my_execute(servers.mysql_url, f"DROP TABLE IF EXISTS {MY_BIG}"))


async def _my_queries_on(url: str, table: str) -> list[tuple[object, ...]]:
    return await _my_execute(
        url,
        "SELECT id, command, info FROM information_schema.processlist "
        f"WHERE id <> connection_id() AND instr(info, '{table}') > 0",
    )


@pytest.mark.slow
async def test_ctrl_c_on_mariadb_leaves_nothing(my_big_table: str, tmp_path: Path) -> None:
    # The generic path (rowstream.stream's unbuffered cursor): an interrupt must kill the
    # server's query, not leave it streaming into a closed socket.
    await _interrupt_export(
        my_big_table, MY_BIG, tmp_path / "big.csv", lambda: _my_queries_on(my_big_table, MY_BIG)
    )
