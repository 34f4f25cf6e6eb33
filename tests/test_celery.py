"""rowstream.celery on real brokers (RabbitMQ and Redis) with real ``celery`` worker processes.

Every row of the invoices table must be handled at least once, whatever is killed: a worker's
pool process in the middle of a partition, a whole worker (then restarted), the coordinator
(then resumed). A kill repeats at most the batches of the partition it hit.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rowstream
import rowstream.celery
from rowstream.celery import JobError
from tests import celery_handlers

ROOT = Path(__file__).resolve().parent.parent
ROWS = 20_000
PARTITIONS = 8
WORKER_START = 90.0
JOB_TIMEOUT = 240.0
# The kill tests' handler sleeps this long per batch (10 batches a partition), so a partition
# lasts about a second however fast the machine is: the test must find one in the middle.
KILL_TEST_SLEEP = 0.1

pytestmark = pytest.mark.timeout(600)


def _fill(url: str, rows: int) -> None:
    engine = rowstream.sync.create_engine(url)
    try:
        with engine.begin() as conn:
            celery_handlers.metadata.drop_all(conn)
            celery_handlers.metadata.create_all(conn)
            conn.execute(
                celery_handlers.invoices.insert(),
                [{"id": i, "amount_cents": i * 7} for i in range(1, rows + 1)],
            )
    finally:
        engine.dispose()


@pytest.fixture
def invoices_url(pg_url: str) -> str:
    _fill(pg_url, ROWS)
    return pg_url


class Workers:
    """Real ``celery -A rowstream.celery worker`` processes on one private queue (or workers of
    another app, ``app``, importable from ``path``, on the queues that app consumes)."""

    def __init__(self, broker: str, tmp: Path, *, pool: str, sleep: float) -> None:
        self.broker = broker
        self.queue = f"rowstream-test-{uuid.uuid4().hex[:8]}"
        self.app = "rowstream.celery"
        self.queues: list[str] | None = None
        self.path: list[Path] = []
        self.concurrency = 1
        self.records = tmp / "records"
        self.records.mkdir()
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.pool = pool
        self.sleep = sleep
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        n = len(self.procs)
        log = self.logs / f"worker{n}.log"
        env = dict(
            os.environ,
            ROWSTREAM_BROKER_URL=self.broker,
            ROWSTREAM_TEST_RECORD_DIR=str(self.records),
            ROWSTREAM_TEST_HANDLER_SLEEP=str(self.sleep),
            PYTHONPATH=os.pathsep.join([*map(str, self.path), str(ROOT / "src"), str(ROOT)]),
        )
        argv = [sys.executable, "-m", "celery", "-A", self.app, "worker"]
        argv += ["-Q", ",".join(self.queues or [self.queue])]
        argv += ["--pool", self.pool, "--concurrency", str(self.concurrency)]
        argv += ["-n", f"w{n}-{self.queue}@localhost", "--loglevel", "INFO"]
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        deadline = time.monotonic() + WORKER_START
        while b" ready." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start: {log.read_text()[-3000:]}")
            time.sleep(0.2)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the whole worker: its main process and its pool processes."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)

    def handled(self) -> collections.Counter[int]:
        counts: collections.Counter[int] = collections.Counter()
        for path in self.records.glob("*.ids"):
            counts.update(int(line) for line in path.read_text().split())
        return counts


@pytest.fixture(params=["rabbitmq", "redis"])
def workers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Workers]:
    broker: str = request.getfixturevalue(
        "amqp_url" if request.param == "rabbitmq" else "redis_url"
    )
    crew = Workers(broker, tmp_path, pool="prefork", sleep=0.0)
    try:
        yield crew
    finally:
        crew.stop()


def _run(
    url: str, crew: Workers, folder: Path, **options: Any
) -> rowstream.celery.DistributedReport:
    defaults: dict[str, Any] = {
        "folder": folder,
        "partitions": PARTITIONS,
        "batch_rows": 250,
        "broker": crew.broker,
        "queue": crew.queue,
        "lease": 3.0,
        "unclaimed": 30.0,
    }
    defaults.update(options)
    statement = defaults.pop("statement", "tests.celery_handlers:INVOICES")
    handler = defaults.pop("handler", "tests.celery_handlers:record")
    return rowstream.celery.process(url, statement, handler, **defaults)


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["report"] = fn()
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait(what: str, condition: Callable[[], bool], timeout: float = JOB_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _part_of(folder: Path, row_id: int) -> str:
    job = rowstream._ledger.read_json(folder / "job.json")
    assert job is not None
    for part, (low, high) in job["partitions"].items():
        if (low is None or row_id >= low) and (high is None or row_id < high):
            return str(part)
    raise AssertionError(f"id {row_id} is in no partition")


def test_every_row_is_handled_once_by_two_workers(
    invoices_url: str, workers: Workers, tmp_path: Path
) -> None:
    workers.start()
    workers.start()
    report = _run(invoices_url, workers, tmp_path / "job")
    assert report.rows == ROWS and report.partitions == PARTITIONS
    handled = workers.handled()
    assert set(handled) == set(range(1, ROWS + 1))
    assert max(handled.values()) == 1
    # Both workers took part: the partitions were spread, not run by one.
    assert len({p.name.split("-")[0] for p in workers.records.glob("*.ids")}) == 2


def _busy_lease(folder: Path) -> tuple[str, int] | None:
    """A partition in the middle (claimed, a batch checkpointed, not done) and the pid of its
    pool process."""
    for lease in sorted((folder / "parts").glob("*.lease")):
        part = lease.name.split(".")[0]
        if (folder / "parts" / f"{part}.done.json").exists():
            continue
        doc = rowstream._ledger.read_json(lease)
        if doc and (folder / "parts" / f"{part}.checkpoint.json").exists():
            return part, int(doc["pid"])
    return None


def test_a_pool_process_killed_mid_partition_repeats_only_that_partition(
    invoices_url: str, workers: Workers, tmp_path: Path
) -> None:
    workers.sleep = KILL_TEST_SLEEP
    workers.start()
    workers.start()
    folder = tmp_path / "job"
    thread, out = _in_thread(lambda: _run(invoices_url, workers, folder))
    _wait("a partition in the middle", lambda: _busy_lease(folder) is not None)
    busy = _busy_lease(folder)
    assert busy is not None
    part, pid = busy
    os.kill(pid, signal.SIGKILL)
    thread.join(JOB_TIMEOUT)
    assert not thread.is_alive()
    assert "error" not in out, out.get("error")
    handled = workers.handled()
    assert set(handled) == set(range(1, ROWS + 1))
    repeated = {row_id for row_id, n in handled.items() if n > 1}
    assert {_part_of(folder, row_id) for row_id in repeated} <= {part}
    assert out["report"].attempts >= PARTITIONS + 1


def test_a_killed_worker_is_replaced_and_the_job_completes(
    invoices_url: str, workers: Workers, tmp_path: Path
) -> None:
    workers.sleep = KILL_TEST_SLEEP
    first = workers.start()
    folder = tmp_path / "job"
    thread, out = _in_thread(lambda: _run(invoices_url, workers, folder))
    _wait("a partition in the middle", lambda: _busy_lease(folder) is not None)
    workers.kill(first)
    workers.start()
    thread.join(JOB_TIMEOUT)
    assert not thread.is_alive()
    assert "error" not in out, out.get("error")
    assert set(workers.handled()) == set(range(1, ROWS + 1))


def test_the_coordinator_killed_then_resumed_skips_finished_partitions(
    invoices_url: str, workers: Workers, tmp_path: Path
) -> None:
    workers.sleep = 0.01
    workers.start()
    workers.start()
    folder = tmp_path / "job"
    code = (
        "import rowstream.celery, sys; rowstream.celery.process("
        f"{invoices_url!r}, 'tests.celery_handlers:INVOICES', 'tests.celery_handlers:record', "
        f"folder={str(folder)!r}, partitions={PARTITIONS}, batch_rows=250, "
        f"broker={workers.broker!r}, queue={workers.queue!r}, lease=3.0)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    coordinator = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
    try:
        _wait("two partitions done", lambda: len(list(folder.glob("parts/*.done.json"))) >= 2)
    finally:
        coordinator.kill()
        coordinator.wait(timeout=30)
    done_before = {p.name.split(".")[0] for p in (folder / "parts").glob("*.done.json")}
    handled_before = workers.handled()
    report = _run(invoices_url, workers, folder, resume=True)
    assert report.resumed and report.rows == ROWS
    handled = workers.handled()
    assert set(handled) == set(range(1, ROWS + 1))
    for row_id, n in handled.items():
        if _part_of(folder, row_id) in done_before:
            assert n == handled_before[row_id]  # not handled again after the resume


def test_the_threads_pool_runs_partitions_too(
    invoices_url: str, workers: Workers, tmp_path: Path
) -> None:
    workers.pool = "threads"
    workers.start()
    workers.start()
    report = _run(invoices_url, workers, tmp_path / "job")
    assert report.rows == ROWS
    assert set(workers.handled()) == set(range(1, ROWS + 1))


def test_a_handler_error_fails_the_job_naming_the_partition(
    invoices_url: str, workers: Workers, tmp_path: Path
) -> None:
    workers.start()
    folder = tmp_path / "job"
    with pytest.raises(
        JobError, match=r"partition p\d+ failed: attempt 1 failed: ValueError: invoice 4242"
    ) as caught:
        rowstream.celery.process(
            invoices_url,
            "tests.celery_handlers:INVOICES",
            "tests.celery_handlers:fail_on_4242",
            folder=folder,
            partitions=PARTITIONS,
            broker=workers.broker,
            queue=workers.queue,
            lease=3.0,
        )
    error = caught.value
    assert error.context["partition"] == _part_of(folder, 4242)
    assert "\n" not in str(error)
    # Not one of rowstream's exceptions: its type and text are all that crossed.
    assert error.__cause__ is None


def test_a_worker_s_rowstream_error_reaches_the_coordinator_as_itself(
    invoices_url: str, workers: Workers, tmp_path: Path
) -> None:
    workers.start()
    folder = tmp_path / "job"
    with pytest.raises(JobError) as caught:
        _run(invoices_url, workers, folder, statement="tests.celery_handlers:RECIPROCALS")
    error = caught.value
    part = _part_of(folder, 4242)
    assert error.context == {"partition": part, "folder": str(folder)}
    assert str(error).startswith(
        f"partition {part} failed: attempt 1 failed: QueryError: the server rejected the "
        "query: division by zero"
    )
    cause = error.__cause__
    assert type(cause) is rowstream.QueryError
    assert cause.message == "the server rejected the query: division by zero"
    assert cause.context == {}
    # The worker's note on how far its partition got came along.
    assert cause.__notes__ and "rows) were handled before this error" in cause.__notes__[0]


def test_a_hung_handler_fails_its_partition_in_bounded_time(
    invoices_url: str, workers: Workers, tmp_path: Path
) -> None:
    """A hung handler's worker goes on beating: handler_timeout is what bounds the partition,
    and its HandlerTimeoutError reaches the coordinator with the batch's keys."""
    workers.start()
    folder = tmp_path / "job"
    started = time.monotonic()
    with pytest.raises(JobError, match="HandlerTimeoutError: the handler ran longer") as caught:
        _run(
            invoices_url,
            workers,
            folder,
            handler="tests.celery_handlers:hang_on_4242",
            handler_timeout=1.0,
        )
    assert time.monotonic() - started < 18  # the handler's 20 s sleep was not waited for
    error = caught.value
    assert error.context["partition"] == _part_of(folder, 4242)
    cause = error.__cause__
    assert type(cause) is rowstream.HandlerTimeoutError and isinstance(cause, TimeoutError)
    assert set(cause.context) == {"batch", "first_key", "last_key"}
    assert cause.context["first_key"][0] <= 4242 <= cause.context["last_key"][0]


def test_without_workers_the_job_fails_in_bounded_time(
    invoices_url: str, workers: Workers, tmp_path: Path
) -> None:
    started = time.monotonic()
    with pytest.raises(JobError, match="no Celery worker took rowstream's tasks within 2 s"):
        _run(invoices_url, workers, tmp_path / "job", unclaimed=2.0)
    assert time.monotonic() - started < 30


def test_bad_arguments_fail_before_anything_is_sent(invoices_url: str, tmp_path: Path) -> None:
    with pytest.raises(rowstream.ConfigurationError, match="cannot import the handler"):
        rowstream.celery.process(
            invoices_url,
            "tests.celery_handlers:INVOICES",
            "tests.celery_handlers:nope",
            folder=tmp_path / "job",
            broker="amqp://guest:guest@127.0.0.1:1//",
        )
    assert not (tmp_path / "job" / "parts").exists() or not any(
        (tmp_path / "job" / "parts").iterdir()
    )


def test_no_part_of_the_password_reaches_logs_or_the_ledger(
    pg_tls_url: str, workers: Workers, tmp_path: Path
) -> None:
    from tests.plugins.servers import TLS_PASSWORD

    url = pg_tls_url  # asyncpg's ?ssl=require: the sync face (psycopg) takes it too
    _fill(url, 5_000)
    workers.start()
    report = _run(url, workers, tmp_path / "job", partitions=2)
    assert report.rows == 5_000
    # A failed partition too: its error is written into the ledger, text and pickle.
    with pytest.raises(JobError) as caught:
        _run(url, workers, tmp_path / "failed", statement="tests.celery_handlers:RECIPROCALS")
    assert isinstance(caught.value.__cause__, rowstream.QueryError)
    assert any((tmp_path / "failed" / "parts").glob("*.failed.json"))
    written = [*workers.logs.iterdir(), *tmp_path.rglob("*")]
    texts = [path.read_text(errors="replace") for path in written if path.is_file()]
    texts += [str(caught.value), repr(caught.value.__cause__)]
    for failed in (tmp_path / "failed" / "parts").glob("*.failed.json"):  # inside the pickle
        pickled = base64.b64decode(json.loads(failed.read_text())["pickled"])
        assert b"division by zero" in pickled
        texts.append(pickled.decode("latin-1"))
    assert texts and "run_partition" in "".join(texts)
    for secret in (TLS_PASSWORD, "s3cret", "quoted"):
        assert not any(secret in text for text in texts)


# -- partitioned exports over workers ----------------------------------------------------------

EXPORT_ROWS = 2_000_000


@pytest.fixture(scope="module")
def orders_url(servers: Any) -> str:
    """2M orders with a nullable text column and timestamps, made by the server itself."""
    url: str = servers.pg_url
    engine = rowstream.sync.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS celery_orders")
            conn.exec_driver_sql(
                "CREATE TABLE celery_orders (id bigint PRIMARY KEY, total numeric(12,2) NOT NULL,"
                " note text, created timestamptz NOT NULL)"
            )
            conn.exec_driver_sql(
                "INSERT INTO celery_orders SELECT i, i * 0.01, CASE WHEN mod(i, 7) = 0 THEN NULL "
                "ELSE 'order ' || i END, timestamptz '2026-01-01 00:00:00+00' + i * interval '1 s'"
                f" FROM generate_series(1, {EXPORT_ROWS}) AS i"
            )
    finally:
        engine.dispose()
    return url


def _export(url: str, crew: Workers, folder: Path, **options: Any) -> Any:
    defaults: dict[str, Any] = {
        "jobs": 2,
        "broker": crew.broker,
        "queue": crew.queue,
        "lease": 3.0,
        "unclaimed": 60.0,
    }
    defaults.update(options)
    return rowstream.celery.export(url, "celery_orders", folder, **defaults)


def _same_as_table(url: str, folder: Path) -> None:
    """The dataset holds exactly the table's rows (DuckDB reads the folder as one table)."""
    import duckdb

    files = f"{folder}/part-*.parquet"
    [got] = duckdb.sql(
        f"SELECT count(*), count(DISTINCT id), sum(id), sum(total), count(note), "
        f"min(created), max(created) FROM read_parquet('{files}')"
    ).fetchall()
    engine = rowstream.sync.create_engine(url)
    try:
        with engine.connect() as conn:
            want = conn.exec_driver_sql(
                "SELECT count(*), count(DISTINCT id), sum(id), sum(total), count(note), "
                "min(created), max(created) FROM celery_orders"
            ).one()
    finally:
        engine.dispose()
    assert got is not None and tuple(got) == tuple(want)


def _part_files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("part-*")}


def test_a_celery_export_writes_the_dataset_of_a_local_one(
    orders_url: str, workers: Workers, tmp_path: Path
) -> None:
    workers.start()
    workers.start()
    folder = tmp_path / "orders"
    report = _export(orders_url, workers, folder)
    assert report.rows == EXPORT_ROWS and report.exact and report.warning is None
    _same_as_table(orders_url, folder)
    manifest = json.loads((folder / "_rowstream_manifest.json").read_text())
    assert manifest["state"] == "complete"
    assert all(p["state"] == "done" and p["sha256"] for p in manifest["parts"])
    assert len(manifest["snapshots"]) == 1 and manifest["snapshots"][0]["consistent"]


def test_a_worker_killed_mid_part_is_replaced_and_the_export_is_exact(
    orders_url: str, workers: Workers, tmp_path: Path
) -> None:
    first = workers.start()
    folder = tmp_path / "orders"
    thread, out = _in_thread(lambda: _export(orders_url, workers, folder))
    ledger = folder / "_rowstream_ledger" / "s0" / "parts"

    def in_the_middle() -> bool:
        return any(
            not (ledger / f"{lease.name.split('.')[0]}.done.json").exists()
            for lease in ledger.glob("*.lease")
        )

    _wait("a part being written", in_the_middle)
    workers.kill(first)
    workers.start()
    thread.join(JOB_TIMEOUT)
    assert not thread.is_alive()
    assert "error" not in out, out.get("error")
    assert out["report"].rows == EXPORT_ROWS
    assert any(ledger.glob("*.2.lease")), "the killed worker's part was not sent again"
    _same_as_table(orders_url, folder)


def test_the_coordinator_killed_then_resumed_keeps_finished_parts(
    orders_url: str, workers: Workers, tmp_path: Path
) -> None:
    workers.start()
    workers.start()
    folder = tmp_path / "orders"
    code = (
        "import rowstream.celery; rowstream.celery.export("
        f"{orders_url!r}, 'celery_orders', {str(folder)!r}, jobs=2, "
        f"broker={workers.broker!r}, queue={workers.queue!r}, lease=3.0)"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    coordinator = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)
    try:
        _wait("two parts in place", lambda: len(list(folder.glob("part-*"))) >= 2)
    finally:
        coordinator.kill()
        coordinator.wait(timeout=30)
    before = _part_files(folder)
    report = _export(orders_url, workers, folder, resume=True)
    assert report.rows == EXPORT_ROWS
    after = _part_files(folder)
    assert all(after[name] == stamp for name, stamp in before.items())  # not rewritten
    assert any(p.skipped for p in report.parts)
    _same_as_table(orders_url, folder)
    # Nothing wrote in between, so the two points in time hold the same rows; the manifest
    # still says the dataset comes from two snapshots.
    assert report.warning is not None and not report.exact


def test_a_worker_that_cannot_join_the_snapshot_fails_its_part_at_once(
    orders_url: str, workers: Workers, tmp_path: Path
) -> None:
    workers.start()
    ledger = rowstream._ledger.Ledger(tmp_path / "job", lease=3.0)
    gone = {
        "dialect": "postgresql",
        "method": "pg_export_snapshot",
        "consistent": True,
        "id": "00000003-000001A2-1",
        "point": "1:1:",
        "taken_at": "",
        "note": "",
    }
    ledger.create(
        {
            "kind": "export",
            "table": "celery_orders",
            "where": None,
            "columns": None,
            "format": "parquet",
            "compression": None,
            "read_timeout": 30.0,
            "lease": 3.0,
            "snapshot": gone,
            "partitions": {
                "p00000": {
                    "id": 0,
                    "file": "part-00000.parquet",
                    "bounds": {"kind": "all"},
                    "plan": {
                        "sql": "SELECT * FROM celery_orders",
                        "columns": [],
                        "format": "parquet",
                        "compression": None,
                        "snapshot": gone,
                    },
                }
            },
        },
        resume=False,
    )
    app = rowstream.celery.make_app(workers.broker)
    ledger.sent("p00000", 1)
    app.send_task(
        rowstream.celery.TASK_NAME,
        args=[str(ledger.root), "p00000", 1, orders_url],
        queue=workers.queue,
    )
    failed = ledger.parts / "p00000.1.failed.json"
    _wait("the part to fail", failed.exists, timeout=60)
    message = json.loads(failed.read_text())["message"]
    assert "cannot join snapshot 00000003-000001A2-1" in message
    # What the coordinator would raise as the JobError's cause: the worker's SnapshotError.
    error = ledger.error("p00000")
    assert type(error) is rowstream._exceptions.SnapshotError
    assert error.message.startswith("cannot join snapshot 00000003-000001A2-1")
    assert not (ledger.root / "part-00000.parquet").exists()


def test_a_celery_export_refuses_mariadb_in_one_line(mysql_url: str, tmp_path: Path) -> None:
    with pytest.raises(rowstream.ConfigurationError, match="PostgreSQL exports and mysql cannot"):
        rowstream.celery.export(
            mysql_url, "celery_orders", tmp_path / "x", broker="redis://127.0.0.1:1/0"
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_a_gevent_pool_exports_parts_concurrently(
    orders_url: str, redis_url: str, tmp_path: Path, fmt: str
) -> None:
    """Parts are written on the sync face (psycopg, ADBC): greenlets of one gevent worker
    write several at once, where an event loop per task would fail."""
    crew = Workers(redis_url, tmp_path, pool="gevent", sleep=0.0)
    crew.concurrency = 4
    try:
        crew.start()
        folder = tmp_path / "orders"
        report = _export(orders_url, crew, folder, jobs=4, format=fmt)
    finally:
        crew.stop()
    assert report.rows == EXPORT_ROWS and report.exact and len(report.parts) >= 4
    if fmt == "parquet":
        _same_as_table(orders_url, folder)
    else:
        reference = tmp_path / "reference.csv"
        rowstream.sync.export(orders_url, "celery_orders", reference)
        lines = [
            line
            for part in sorted(folder.glob("part-*.csv"))
            for line in part.read_bytes().splitlines()[1:]
        ]
        want = reference.read_bytes().splitlines()[1:]
        assert sorted(lines) == sorted(want)


def test_the_threads_pool_writes_an_exact_export(
    orders_url: str, amqp_url: str, tmp_path: Path
) -> None:
    crew = Workers(amqp_url, tmp_path, pool="threads", sleep=0.0)
    crew.concurrency = 2  # two parts at once in one worker process, each in its own thread
    try:
        crew.start()
        folder = tmp_path / "orders"
        report = _export(orders_url, crew, folder)
    finally:
        crew.stop()
    assert report.rows == EXPORT_ROWS and report.exact and report.warning is None
    _same_as_table(orders_url, folder)


# -- rowstream's task in a user's own app --------------------------------------------------------

USER_APP = '''\
"""A user's own Celery app: its own task and settings, and rowstream's task included."""

import json

from celery import Celery, current_app

app = Celery("userapp", broker={broker!r}, include=["rowstream.celery"])
app.conf.update(
    task_default_queue={queue!r},
    task_routes={{"rowstream.run_partition": {{"queue": {queue!r} + "-rowstream"}}}},
    task_acks_late=False,
    worker_prefetch_multiplier=4,
    broker_transport_options={{"visibility_timeout": 7200}},
)


@app.task(name="userapp.note")
def note(path):
    """What this worker runs with: the user's settings, and rowstream's task options."""
    theirs = app.tasks["rowstream.run_partition"]
    facts = {{
        "current_app": current_app.main,
        "rowstream_task_app": theirs.app.main,
        "rowstream_task": [theirs.acks_late, theirs.reject_on_worker_lost, theirs.ignore_result],
        "own_task": [note.acks_late, note.reject_on_worker_lost, note.ignore_result],
        "task_acks_late": app.conf.task_acks_late,
        "worker_prefetch_multiplier": app.conf.worker_prefetch_multiplier,
        "broker_transport_options": app.conf.broker_transport_options,
        "task_ignore_result": app.conf.task_ignore_result,
    }}
    with open(path, "w") as f:
        json.dump(facts, f)
'''


@contextlib.contextmanager
def _user_app(folder: Path, broker: str, queue: str) -> Iterator[Any]:
    """The user's app module, written to ``folder`` and imported here as the user's own code
    would; Celery's current app is given back afterwards."""
    import importlib.util

    from celery import _state

    path = folder / "userapp.py"
    path.write_text(USER_APP.format(broker=broker, queue=queue))
    previous = _state.get_current_app()
    spec = importlib.util.spec_from_file_location("userapp", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        module.app.close()
        previous.set_current()


def test_a_user_app_that_includes_rowstream_runs_its_jobs_and_its_own_tasks(
    invoices_url: str, orders_url: str, redis_url: str, tmp_path: Path
) -> None:
    # rowstream's own app would send to RabbitMQ (no ROWSTREAM_BROKER_URL here): only the
    # user's app, on Redis, reaches these workers.
    crew = Workers(redis_url, tmp_path, pool="prefork", sleep=0.0)
    crew.app, crew.path, crew.concurrency = "userapp", [tmp_path], 2
    # As the README says: rowstream's task routed to a queue of its own (here served by the
    # same worker as the user's queue, to show both run side by side).
    crew.queues = [crew.queue, f"{crew.queue}-rowstream"]
    with _user_app(tmp_path, redis_url, crew.queue) as userapp:
        try:
            crew.start()
            report = rowstream.celery.process(
                invoices_url,
                "tests.celery_handlers:INVOICES",
                "tests.celery_handlers:record",
                folder=tmp_path / "job",
                partitions=PARTITIONS,
                batch_rows=250,
                celery_app=userapp.app,
                lease=3.0,
                unclaimed=30.0,
            )
            folder = tmp_path / "orders"
            exported = rowstream.celery.export(
                orders_url, "celery_orders", folder, jobs=2, celery_app=userapp.app, lease=3.0
            )
            facts_path = tmp_path / "facts.json"
            userapp.note.delay(str(facts_path))
            _wait("the user's own task", facts_path.exists, timeout=60)
        finally:
            crew.stop()
    assert report.rows == ROWS and report.partitions == PARTITIONS
    handled = crew.handled()
    assert set(handled) == set(range(1, ROWS + 1)) and max(handled.values()) == 1
    assert exported.rows == EXPORT_ROWS and exported.exact
    _same_as_table(orders_url, folder)
    # rowstream's task options are its own (acknowledged late, given back when its worker is
    # lost, no result); the user's app-wide settings and the user's task are as the user set
    # them: rowstream changed nothing of the app it was included in.
    assert json.loads(facts_path.read_text()) == {
        "current_app": "userapp",
        "rowstream_task_app": "userapp",
        "rowstream_task": [True, True, True],
        "own_task": [False, None, False],  # None: the app-wide setting (off) holds
        "task_acks_late": False,
        "worker_prefetch_multiplier": 4,
        "broker_transport_options": {"visibility_timeout": 7200},
        "task_ignore_result": False,
    }


# -- a broker that is gone or silent -------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_a_silent_broker_fails_the_job_in_bounded_time(
    invoices_url: str, tmp_path: Path, scheme: str
) -> None:
    """A broker that accepts the connection and never answers (a hung server, a half-open
    connection): Redis's client would wait for ever on the send."""
    import socket

    held: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(0.2)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    held.append(server.accept()[0])

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        port = server.getsockname()[1]
        broker = f"{scheme}://guest:s3cret@127.0.0.1:{port}/" + ("0" if scheme == "redis" else "/")
        started = time.monotonic()
        try:
            with pytest.raises(JobError, match="cannot send rowstream's task to the broker") as c:
                _run(invoices_url, Workers(broker, tmp_path, pool="solo", sleep=0), tmp_path / "j")
        finally:
            stop.set()
            acceptor.join(5)
            for conn in held:
                conn.close()
    assert time.monotonic() - started < 90
    assert "s3cret" not in str(c.value) and "\n" not in str(c.value)
