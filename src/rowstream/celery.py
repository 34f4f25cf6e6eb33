"""Distributed runs on Celery: one ``process`` job spread over worker processes and machines.

Install the extra (``pip install 'rowstream[celery]'``). Workers come from rowstream's own app::

    ROWSTREAM_BROKER_URL=amqp://guest:guest@127.0.0.1:5672// celery -A rowstream.celery worker

or from your own, which then runs rowstream's task beside yours::

    # billing/celery.py
    app = Celery("billing", broker="amqp://...", include=["rowstream.celery"])
    app.conf.task_routes = {"rowstream.run_partition": {"queue": "rowstream"}}

    celery -A billing worker -Q rowstream --prefetch-multiplier 1    # rowstream's queue
    celery -A billing worker -Q celery                               # your tasks, as before

Then, from any process (a script, a web request, another task)::

    report = rowstream.celery.process(
        "postgresql://app@db/shop",
        "billing.queries:READY_INVOICES",     # a select() (or a function returning one)
        "billing.tasks:send_invoice_batch",   # called with each batch, in the workers
        folder="/shared/runs/invoices-2026-11",
        celery_app=app,                       # your app; or broker="amqp://...", or neither:
    )                                         # $ROWSTREAM_BROKER_URL, rowstream's app

What is set where. On rowstream's task itself, whichever app runs it: ``acks_late``,
``reject_on_worker_lost`` and ``ignore_result``. Nothing of your app: including rowstream's
module registers its task and changes no setting (rowstream's app is never made the current
one). The settings that only exist app- or worker-wide are yours to choose, and rowstream's own
app sets them for its workers: ``worker_prefetch_multiplier=1`` (a prefetched partition waits
behind a long one while another worker idles; give rowstream's task a queue of its own and
start its workers with ``--prefetch-multiplier 1``), JSON messages only, and on Redis a
``visibility_timeout`` of 6 h in ``broker_transport_options`` (Celery's default is 1 h: a
partition running longer is delivered again, which the ledger makes harmless, but the work is
repeated). The coordinator sends through ``celery_app`` as it routes and serializes, on a
connection of its own whose waits are bounded (``SEND_TIMEOUT``, ``SEND_RETRY_POLICY``).

The job is split into partitions of the key; each partition is one Celery task, which streams
its rows with :func:`rowstream.sync.process` (so it runs under the prefork, threads, gevent and
eventlet pools) with a checkpoint of its own. What is guaranteed:

- every row is handled at least once; a worker killed in the middle repeats at most the
  batches of its partition that were in flight (the partition's checkpoint skips the rest);
- the coordinator trusts the ledger in ``folder`` (:mod:`rowstream._ledger`), not broker
  acknowledgements: a partition whose worker stops beating is sent again after ``lease``
  seconds, at most ``max_attempts`` times, and then the job fails in one line naming it;
- the coordinator itself can be killed: ``resume=True`` with the same folder carries on,
  skipping finished partitions.

:func:`export` spreads the parts of a partitioned export the same way; the coordinator holds
the PostgreSQL snapshot and plans each part (its statement, checked, and its columns), and a
worker writes it on the sync face (:mod:`rowstream._sync._pgparts`: psycopg's COPY for CSV
and JSONL, ADBC's binary COPY for Parquet), so every pool runs export tasks as well.

A failed partition fails the job with a :class:`JobError` naming it; when the worker raised one
of rowstream's exceptions, that exception is the JobError's ``__cause__``, of the same class
with its ``message``, ``context`` and notes (the worker pickles it into the ledger, scrubbed of
the URL's password, and the coordinator unpickles nothing but rowstream's exceptions). The
JobError, not the worker's class, is raised: the job failed, in one partition, and a
``QueryError`` caught around a distributed job would otherwise look like the coordinator's own.

``folder`` must be reachable at the same path by the coordinator and every worker. Statements
and handlers cross to the workers as import paths (``"package.module:name"``), so messages stay
JSON. The source URL travels in the task's arguments (shown masked in Celery's logs and
monitors); keep passwords out of it (``~/.pgpass``, ``PGPASSWORD``) when the broker is shared.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import sqlalchemy as sa
from celery import Celery, shared_task
from sqlalchemy.sql.selectable import Select

from ._exceptions import ConfigurationError, RowstreamError
from ._ledger import (
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_UNCLAIMED,
    Fail,
    Ledger,
    Rules,
    Send,
    decide,
)
from ._remote_errors import one_line
from ._watchdog import DEFAULT_READ_TIMEOUT

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ._dataset import PartRecord
    from ._jobs import JobProgress, JobReport
    from ._pgcopy import PgColumn
    from ._snapshot import SnapshotInfo

__all__ = [
    "DistributedReport",
    "JobError",
    "app",
    "export",
    "export_async",
    "make_app",
    "process",
]

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_PARTITIONS = 16
TASK_NAME = "rowstream.run_partition"
POLL_INTERVAL = 0.25
# The coordinator's connection to the broker: a broker that accepts the connection and then
# says nothing (Redis with no socket timeout waits for ever) fails a send in this long...
SEND_TIMEOUT = 10.0
SEND_TRANSPORT_OPTIONS: dict[str, Any] = {
    "socket_timeout": SEND_TIMEOUT,  # Redis
    "socket_connect_timeout": SEND_TIMEOUT,  # Redis
    "read_timeout": SEND_TIMEOUT,  # RabbitMQ (py-amqp)
    "write_timeout": SEND_TIMEOUT,  # RabbitMQ (py-amqp)
}
# ... and a broker that is gone fails it after these few reconnections.
SEND_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 3,
    "interval_start": 0.0,
    "interval_step": 0.5,
    "interval_max": 1.0,
}

P = ParamSpec("P")
T = TypeVar("T")


def _configure(celery_app: Celery) -> None:
    celery_app.conf.update(
        # A task is acknowledged when it ends, and given back when its worker dies, so a
        # lost worker's partition is not lost with it (the ledger still decides).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One partition per worker process at a time: a prefetched message would wait
        # behind a long partition while another worker sits idle.
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Redis gives an unacknowledged message to another worker after this long. The
        # ledger's claims make such a second delivery harmless, but partitions are sized to
        # minutes, so it should not happen at all.
        broker_transport_options={"visibility_timeout": 6 * 3600},
    )


def make_app(broker: str) -> Celery:
    """A Celery app for rowstream's tasks on ``broker`` (not made the current app)."""
    celery_app = Celery("rowstream", broker=broker, set_as_current=False)
    _configure(celery_app)
    return celery_app


# ``celery -A rowstream.celery worker`` finds this app. It is not made the current app, so
# importing this module from your own Celery app (``include=``) changes nothing there.
app = make_app(os.environ.get("ROWSTREAM_BROKER_URL", DEFAULT_BROKER_URL))


class JobError(RowstreamError):
    """A distributed job failed: a partition failed, or could not be placed on a worker."""


@dataclass
class DistributedReport:
    """What a distributed job did."""

    rows: int = 0
    failed_rows: int = 0
    partitions: int = 0
    attempts: int = 0
    resumed: bool = False
    started: float = field(default_factory=time.perf_counter)
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    def __repr__(self) -> str:
        return (
            f"DistributedReport(rows={self.rows}, failed_rows={self.failed_rows}, "
            f"partitions={self.partitions}, attempts={self.attempts}, "
            f"elapsed={self.elapsed:.2f}s)"
        )


# -- what the workers run ------------------------------------------------------------------------


def load(reference: str, what: str) -> Any:
    """The object named by ``"package.module:name"``."""
    module_name, sep, name = reference.partition(":")
    if not sep or not module_name or not name:
        raise ConfigurationError(
            f"{what} {reference!r} must be an import path like 'package.module:name'"
        )
    try:
        obj: Any = importlib.import_module(module_name)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"cannot import the {what} {reference!r}: {exc}; it must be importable in every "
            "worker (check the workers' PYTHONPATH)"
        ) from None
    return obj


def _statement(reference: str) -> Select[Any]:
    obj = load(reference, "statement")
    statement = obj() if callable(obj) and not isinstance(obj, Select) else obj
    if not isinstance(statement, Select):
        raise ConfigurationError(
            f"the statement {reference!r} is a {type(statement).__name__}; it must be a "
            "select() (or a function returning one)"
        )
    return statement


def _key_column(statement: Select[Any], name: str | None) -> sa.ColumnElement[Any]:
    """The column partitions are cut on: ``name``, or the single-column primary key."""
    if name is not None:
        try:
            column: sa.ColumnElement[Any] = statement.selected_columns[name]
        except KeyError:
            raise ConfigurationError(
                f"key {name!r} is not a column of the statement; name a selected column"
            ) from None
        return column
    froms = statement.get_final_froms()
    table = froms[0] if len(froms) == 1 else None
    primary_key = list(getattr(table, "primary_key", ()))
    if len(primary_key) != 1:
        raise ConfigurationError(
            "a distributed job cuts partitions on a single-column key: select from one table "
            "with a one-column primary key, or pass key='column'"
        )
    return primary_key[0]  # type: ignore[no-any-return]


def _bounded(statement: Select[Any], column: Any, bounds: list[Any]) -> Select[Any]:
    low, high = bounds
    if low is not None:
        statement = statement.where(column >= low)
    if high is not None:
        statement = statement.where(column < high)
    return statement


@shared_task(  # type: ignore[untyped-decorator]
    name=TASK_NAME,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def run_partition(folder: str, part: str, attempt: int, url: str) -> str:
    """Run one attempt of one partition, unless it is done or another worker holds it."""
    ledger = Ledger(folder)
    job = ledger.job()
    ledger.lease = float(job["lease"])
    claim = ledger.claim(part, attempt)
    if claim is None:
        return "skipped"
    try:
        if job["kind"] == "export":
            result = _export_part(ledger, job, part, url)
        else:
            result = _run_process_part(ledger, job, part, url)
    except BaseException as exc:
        claim.failed(exc, url=url)
        raise
    claim.done(result)
    return "done"


def _run_process_part(ledger: Ledger, job: dict[str, Any], part: str, url: str) -> dict[str, Any]:
    from . import sync
    from ._checkpoint import FileCheckpoint

    statement = _statement(job["statement"])
    handler: Callable[[list[Any]], Any] = load(job["handler"], "handler")
    column = _key_column(statement, job["key"])
    bounds = job["partitions"][part]
    report = sync.process(
        url,
        _bounded(statement, column, bounds),
        handler,
        concurrency=job["concurrency"],
        batch_rows=job["batch_rows"],
        on_error=job["on_error"],
        checkpoint=FileCheckpoint(ledger.parts / f"{part}.checkpoint.json"),
        handler_timeout=job.get("handler_timeout"),
        read_timeout=job.get("read_timeout", DEFAULT_READ_TIMEOUT),
    )
    return {"rows": report.rows, "failed_rows": report.failed_rows}


# -- the coordinator -----------------------------------------------------------------------------


def _split(low: int, high: int, partitions: int) -> list[list[Any]]:
    """``partitions`` ranges covering every value: the first and last are open-ended, so rows
    inserted below the minimum or above the maximum while the job runs still belong to one."""
    if high < low:
        return [[None, None]]
    step = max(1, -(-(high - low + 1) // partitions))
    cuts = list(range(low + step, high + 1, step))
    edges: list[Any] = [None, *cuts, None]
    return [[edges[i], edges[i + 1]] for i in range(len(edges) - 1)]


def _plan(url: str, statement: Select[Any], key: str | None, partitions: int) -> list[list[Any]]:
    from . import sync

    column = _key_column(statement, key)
    if not isinstance(column.type, sa.Integer):
        raise ConfigurationError(
            f"the key {column.key!r} is not an integer column: distributed process jobs cut "
            "integer keys for now; pass key= naming an integer column"
        )
    engine = sync.create_engine(url)
    try:
        with engine.connect() as conn:
            bounds = statement.with_only_columns(sa.func.min(column), sa.func.max(column)).order_by(
                None
            )
            low, high = conn.execute(bounds).one()
            conn.rollback()
    finally:
        engine.dispose()
    if low is None:
        return [[None, None]]
    return _split(int(low), int(high), partitions)


def process(
    source: str,
    statement: str,
    handler: str,
    *,
    folder: str | os.PathLike[str],
    partitions: int = DEFAULT_PARTITIONS,
    key: str | None = None,
    concurrency: int = 1,
    batch_rows: int | None = None,
    on_error: str = "raise",
    handler_timeout: float | None = None,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    resume: bool = False,
    lease: float = DEFAULT_LEASE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    unclaimed: float = DEFAULT_UNCLAIMED,
    broker: str | None = None,
    queue: str | None = None,
    celery_app: Celery | None = None,
) -> DistributedReport:
    """Run ``handler`` over every row of ``statement``, partition by partition, on Celery workers.

    ``source`` is a database URL, ``statement`` and ``handler`` import paths
    (``"package.module:name"``) that every worker can import. The key (``key``, or the
    statement's single-column integer primary key) is cut into ``partitions`` ranges; each is
    one task running :func:`rowstream.sync.process` with ``concurrency``, ``batch_rows``,
    ``on_error``, ``handler_timeout`` and ``read_timeout``, and a checkpoint of its own in
    ``folder``. A worker beats while its partition runs, so a partition is bounded by these two
    timeouts (set ``handler_timeout`` when a handler could hang: a hung handler keeps beating).
    Returns when every partition is done; raises :class:`JobError` naming the partition that
    failed or was lost more than ``max_attempts`` times, or when no worker takes the tasks
    within ``unclaimed`` seconds, or when the broker cannot be reached (within seconds). When a
    worker raised one of rowstream's exceptions, the JobError's ``__cause__`` is that
    exception, of its class and with its ``context``; another exception (a handler's
    ``ValueError``) is named in the JobError's one-line message, type and text.
    Tasks go through ``celery_app`` when given (your own app, with
    ``include=["rowstream.celery"]``), else to ``broker`` (a RabbitMQ or Redis URL), else to
    ``ROWSTREAM_BROKER_URL``; on ``queue`` when given (start the workers with ``-Q`` naming
    it), else as the app routes ``rowstream.run_partition``.

    Example::

        report = rowstream.celery.process(
            url, "shop.queries:READY_INVOICES", "shop.billing:send_batch",
            folder="/shared/runs/invoices",
        )
    """
    if partitions < 1 or max_attempts < 1 or lease <= 0 or unclaimed <= 0:
        raise ConfigurationError(
            "partitions and max_attempts must be at least 1, lease and unclaimed positive"
        )
    from ._source import mask_url, resolve_url
    from ._watchdog import check_read_timeout

    # Wrong arguments fail here, in the caller, before anything is written or sent.
    handler_timeout = check_read_timeout(handler_timeout, "handler_timeout")
    read_timeout = check_read_timeout(read_timeout)
    resolve_url(source)
    load(handler, "handler")
    _statement(statement)
    ledger = Ledger(folder, lease=lease)
    report = DistributedReport(resumed=resume)
    job = ledger.create(
        {
            "kind": "process",
            "id": uuid.uuid4().hex,
            "source": mask_url(source),
            "statement": statement,
            "handler": handler,
            "key": key,
            "concurrency": concurrency,
            "batch_rows": batch_rows,
            "on_error": on_error,
            "handler_timeout": handler_timeout,
            "read_timeout": read_timeout,
            "lease": lease,
            "partitions": {},
        },
        resume=resume,
    )
    if not job["partitions"]:
        ranges = _plan(source, _statement(statement), key, partitions)
        job["partitions"] = {f"p{i:05d}": bounds for i, bounds in enumerate(ranges)}
        from ._ledger import write_json

        write_json(ledger.root / "job.json", job)
    if celery_app is None and broker is not None:
        celery_app = make_app(broker)
    rules = Rules(lease, max_attempts, unclaimed)
    _follow(ledger, job, source, rules, report, celery_app or app, queue)
    for part in job["partitions"]:
        result = ledger.result(part) or {}
        report.rows += int(result.get("rows", 0))
        report.failed_rows += int(result.get("failed_rows", 0))
    report.partitions = len(job["partitions"])
    report.finished = time.perf_counter()
    return report


def _follow(
    ledger: Ledger,
    job: dict[str, Any],
    url: str,
    rules: Rules,
    report: DistributedReport,
    sender: Celery,
    queue: str | None,
    on_done: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Send partitions and watch the ledger until every one is done (or the job fails);
    ``on_done(part)`` runs once for each partition as it is seen done. ``stop`` ends the watch
    early (the coordinator was cancelled: its thread must not outlive it)."""
    with sender.connection_for_write(transport_options=SEND_TRANSPORT_OPTIONS) as connection:
        _watch(ledger, job, url, rules, report, sender, connection, queue, on_done, stop)


def _watch(
    ledger: Ledger,
    job: dict[str, Any],
    url: str,
    rules: Rules,
    report: DistributedReport,
    sender: Celery,
    connection: Any,
    queue: str | None,
    on_done: Callable[[str], None] | None,
    stop: threading.Event | None,
) -> None:
    parts = list(job["partitions"])
    started = time.monotonic()
    claimed_any = False
    seen: set[str] = set()
    while stop is None or not stop.is_set():
        now = time.monotonic()
        views = [ledger.view(part, now) for part in parts]
        for view in views:
            if view.done and view.part not in seen:
                seen.add(view.part)
                if on_done is not None:
                    on_done(view.part)
        if all(view.done for view in views):
            return
        claimed_any = claimed_any or any(v.done or v.beat is not None for v in views)
        if not claimed_any and now - started > rules.unclaimed:
            raise JobError(
                f"no Celery worker took rowstream's tasks within {rules.unclaimed:g} s: start "
                "workers (celery -A rowstream.celery worker, or include=['rowstream.celery'] "
                "in your app) on the same broker",
                folder=str(ledger.root),
            )
        for action in decide(now, views, rules):
            if isinstance(action, Fail):
                # The worker's own rowstream exception, when it raised one, is the cause.
                raise JobError(
                    f"partition {action.part} failed: {action.why}",
                    partition=action.part,
                    folder=str(ledger.root),
                ) from ledger.error(action.part)
            assert isinstance(action, Send)
            ledger.sent(action.part, action.attempt)
            report.attempts += 1
            _send(sender, connection, queue, [str(ledger.root), action.part, action.attempt, url])
        time.sleep(POLL_INTERVAL)


def _send(sender: Celery, connection: Any, queue: str | None, args: list[Any]) -> None:
    """Send one partition's task on the coordinator's own connection, every wait bounded.

    The app's routing, serializer and exchange apply (a user's app is used as configured); its
    publish retry policy does not: ``task_publish_retry_policy`` may retry for ever, and the
    coordinator must fail in bounded time when the broker is gone.
    """
    from ._source import mask_url

    try:
        sender.send_task(
            TASK_NAME,
            args=args,
            argsrepr=repr([*args[:3], mask_url(args[3])]),
            queue=queue,
            connection=connection,
            ignore_result=True,
            retry=True,
            retry_policy=SEND_RETRY_POLICY,
        )
    except Exception as exc:
        broker = mask_url(connection.as_uri(include_password=True))
        raise JobError(
            f"cannot send rowstream's task to the broker {broker}: {type(exc).__name__}: "
            f"{one_line(str(exc))}; check the broker URL and that the broker runs "
            f"(rowstream doctor {broker} checks both)",
            folder=args[0],
        ) from None


# -- a partitioned export over workers ---------------------------------------------------------

LEDGER_DIR = "_rowstream_ledger"


def _export_part(ledger: Ledger, job: dict[str, Any], part: str, url: str) -> dict[str, Any]:
    """Write one part at the coordinator's snapshot into the ledger's folder (the coordinator
    moves it into the dataset once it accepts the result), on the sync face: no event loop,
    so any pool runs it (rowstream._sync._pgparts)."""
    from ._dataset import sha256_of
    from ._sync._pgparts import PgPart, write_part

    spec = job["partitions"][part]
    path = ledger.root / str(spec["file"])
    # Fails at once, saying so, when the coordinator no longer holds the snapshot.
    plan = PgPart.from_dict(spec.get("plan", {}))
    rows, size = write_part(url, plan, path, read_timeout=job.get("read_timeout"))
    return {"rows": rows, "bytes": size, "sha256": sha256_of(path)}


async def _part_plans(
    engine: AsyncEngine,
    table: str,
    where: str | None,
    columns: list[str] | None,
    fmt: str,
    compression: str | None,
    snapshot: SnapshotInfo,
    parts: dict[str, PartRecord],
    read_timeout: float | None,
) -> dict[str, dict[str, Any]]:
    """Each pending part's plan for the workers (:class:`rowstream._sync._pgparts.PgPart`):
    its statement rendered and checked here, as ``rowstream.export --jobs`` renders it, and
    the columns probed once (they do not depend on the part)."""
    from ._readers._pgsession import pg_columns
    from ._sinks._format import format_for_path
    from ._source import ResolvedSource
    from ._statement import build_statement, render_sql
    from ._sync._pgparts import PgPart

    fmt, compression = format_for_path(None, fmt, compression)
    resolved = ResolvedSource(engine)
    sqls: dict[str, str] = {}
    for key, record in parts.items():
        condition = record.partition().narrowed(where, engine.dialect)
        statement, _, _ = await build_statement(resolved, table, condition, columns, fmt)
        sqls[key] = render_sql(engine, statement)
    probed: tuple[PgColumn, ...] = ()
    if fmt != "csv" and sqls:
        found, _ = await pg_columns(engine, next(iter(sqls.values())), read_timeout, estimate=False)
        probed = tuple(found)
    share = 1  # one part at a time per pool process
    return {
        key: PgPart(sql, probed, fmt, compression, snapshot, share).as_dict()
        for key, sql in sqls.items()
    }


async def export_async(
    source: str,
    table: str,
    folder: str | os.PathLike[str],
    *,
    format: str = "parquet",
    compression: str | None = None,
    where: str | None = None,
    columns: list[str] | None = None,
    partition_by: str | None = None,
    min_partition_bytes: int | None = None,
    jobs: int = 4,
    resume: bool = False,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    lease: float = DEFAULT_LEASE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    unclaimed: float = DEFAULT_UNCLAIMED,
    broker: str | None = None,
    queue: str | None = None,
    celery_app: Celery | None = None,
    progress: Callable[[JobProgress], None] | None = None,
) -> JobReport:
    """:func:`export` for a caller inside an event loop (``rowstream export --celery``):
    cancelling it releases the snapshot and stops following the workers at once.

    Example::

        report = await rowstream.celery.export_async(url, "orders", "/shared/orders", jobs=8)
    """
    if lease <= 0 or max_attempts < 1 or unclaimed <= 0 or jobs < 1:
        raise ConfigurationError(
            "jobs and max_attempts must be at least 1, lease and unclaimed positive"
        )
    sender = celery_app or (make_app(broker) if broker is not None else app)
    rules = Rules(lease, max_attempts, unclaimed)
    return await _export(
        source,
        table,
        Path(folder),
        format=format,
        compression=compression,
        where=where,
        columns=columns,
        partition_by=partition_by,
        min_partition_bytes=min_partition_bytes,
        jobs=jobs,
        resume=resume,
        read_timeout=read_timeout,
        rules=rules,
        sender=sender,
        queue=queue,
        progress=progress,
    )


async def _export(
    source: str,
    table: str,
    folder: Path,
    *,
    format: str,
    compression: str | None,
    where: str | None,
    columns: list[str] | None,
    partition_by: str | None,
    min_partition_bytes: int | None,
    jobs: int,
    resume: bool,
    read_timeout: float | None,
    rules: Rules,
    sender: Celery,
    queue: str | None,
    progress: Callable[[JobProgress], None] | None,
) -> JobReport:
    from ._dataset import (
        Manifest,
        PartRecord,
        check_same_export,
        finished_parts,
        now,
        part_name,
        prepare_directory,
        write_manifest,
    )
    from ._guard import check_where
    from ._jobs import (
        JobProgress,
        PartReport,
        _check_not_rewritten,
        _plan,
        _statement_text,
        finish_job,
    )
    from ._partition import DEFAULT_MIN_PARTITION_BYTES, DEFAULT_PARTITIONS_PER_JOB
    from ._snapshot import Snapshot
    from ._source import create_engine, mask_url, split_url
    from ._strategy import shielded

    started = time.perf_counter()
    dialect = split_url(source)[1]
    if dialect != "postgresql":
        raise ConfigurationError(
            "a Celery export needs one snapshot that workers on other machines can join, which "
            f"PostgreSQL exports and {dialect} cannot: on {dialect}, use rowstream export "
            "--jobs N on one machine"
        )
    part_name(0, format, compression)  # an unknown format is refused before anything is made
    if where is not None:
        check_where(where, dialect)
    manifest = prepare_directory(folder, resume=resume)
    engine = create_engine(source, pool_size=2, max_overflow=2)
    try:
        database = mask_url(engine.url)
        statement = _statement_text(engine, table, where, columns)
        if manifest is None:
            plan = await _plan(
                engine,
                table,
                jobs,
                partition_by,
                DEFAULT_PARTITIONS_PER_JOB,
                min_partition_bytes or DEFAULT_MIN_PARTITION_BYTES,
            )
            manifest = Manifest(
                database=database,
                table=table,
                statement=statement,
                format=format,
                compression=compression,
                plan={
                    "method": plan.method,
                    "column": plan.column,
                    "note": plan.note,
                    "filenode": plan.filenode,
                },
                parts=[
                    PartRecord(p.id, part_name(p.id, format, compression), p.bounds())
                    for p in plan.partitions
                ],
            )
        else:
            check_same_export(manifest, database=database, statement=statement, fmt=format)
            await _check_not_rewritten(engine, table, manifest)
            compression = manifest.compression
            _adopt(folder, manifest)
        done = finished_parts(folder, manifest)
        for record in manifest.parts:
            if record.id not in done and record.state == "done":
                record.state = "pending"  # its file is gone or not whole: read it again
        kept = [
            PartReport(r.id, r.file, r.rows or 0, r.bytes or 0, 0.0, r.sha256 or "", True)
            for r in manifest.parts
            if r.id in done
        ]
        pending = {f"p{r.id:05d}": r for r in manifest.parts if r.id not in done}
        earlier = manifest.snapshots[-1].get("id") if manifest.snapshots else None
        written: list[PartReport] = []
        async with Snapshot(engine, sessions=1, existing=earlier) as snap:
            if not snap.reused:
                manifest.snapshots.append(snap.info.as_dict())
            index = len(manifest.snapshots) - 1
            write_manifest(folder, manifest)
            ledger = Ledger(folder / LEDGER_DIR / f"s{index}", lease=rules.lease)
            plans = await _part_plans(
                engine,
                table,
                where,
                columns,
                format,
                compression,
                snap.info,
                pending,
                read_timeout,
            )
            job = ledger.create(
                {
                    "kind": "export",
                    "table": table,
                    "where": where,
                    "columns": columns,
                    "format": format,
                    "compression": compression,
                    "read_timeout": read_timeout,
                    "lease": rules.lease,
                    "snapshot": snap.info.as_dict(),
                    "partitions": {
                        key: {"id": r.id, "file": r.file, "bounds": r.bounds, "plan": plans[key]}
                        for key, r in pending.items()
                    },
                },
                resume=(folder / LEDGER_DIR / f"s{index}" / "job.json").exists(),
            )

            def accept(part: str) -> None:
                # This process alone moves parts into the dataset and writes the manifest.
                record = pending[part]
                result = ledger.result(part) or {}
                os.replace(ledger.root / record.file, folder / record.file)
                record.state, record.snapshot = "done", index
                record.rows, record.bytes = int(result["rows"]), int(result["bytes"])
                record.sha256, record.finished_at = str(result["sha256"]), now()
                write_manifest(folder, manifest)
                written.append(
                    PartReport(
                        record.id,
                        record.file,
                        record.rows,
                        record.bytes,
                        0.0,
                        record.sha256,
                        False,
                        int(result.get("attempt", 1)) - 1,
                    )
                )
                state.parts_done += 1
                state.rows += record.rows
                state.bytes += record.bytes
                if progress is not None:
                    progress(state)

            state = JobProgress(len(manifest.parts), len(kept), sum(p.rows for p in kept))
            report = DistributedReport()
            stop = threading.Event()
            try:
                await asyncio.to_thread(
                    _follow, ledger, job, source, rules, report, sender, queue, accept, stop
                )
            finally:
                # Cancelled (Ctrl-C on rowstream export --celery): the thread stops too.
                stop.set()
            info = snap.info
        return finish_job(folder, manifest, [*kept, *written], started, jobs, info)
    finally:
        await shielded(engine.dispose())


def _blocking(function: Callable[P, Coroutine[Any, Any, T]], name: str, doc: str) -> Callable[P, T]:
    """``function`` run to its end in a private event loop, for synchronous callers."""

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return asyncio.run(function(*args, **kwargs))

    run.__name__ = run.__qualname__ = name
    run.__doc__ = doc
    return run


export = _blocking(
    export_async,
    "export",
    """Export ``table`` into the dataset ``folder`` with its partitions written by Celery workers.

    The same dataset and manifest as ``rowstream export --jobs N -o DIR/``: the partitions are
    planned for ``jobs`` workers (several partitions each, none smaller than
    ``min_partition_bytes``, 16 MiB by default), this process holds one PostgreSQL
    snapshot (``pg_export_snapshot()``) until every part is written, and each task joins it
    and verifies the point in time before reading, so the parts are one consistent copy. A
    task that can no longer join (this process died) fails at once, saying so. Workers write
    each part into the ledger's folder and this process moves it into the dataset, so a late
    worker of an earlier run can never overwrite a part. ``resume=True`` after this process
    died keeps the finished parts (and adopts those written since the last manifest) and reads
    the others at a new snapshot; the manifest and the report then say the dataset comes from
    two points in time. Returns the local export's report (``rowstream._jobs.JobReport``);
    ``progress`` gets the whole job's ``JobProgress`` after every part, as the local one does.

    Example::

        report = rowstream.celery.export(
            "postgresql://app@db/shop", "orders", "/shared/exports/orders", jobs=8
        )
        print(report.summary())
    """,
)


def _adopt(folder: Path, manifest: Any) -> None:
    """On resume: parts that workers finished after the last manifest write (the coordinator
    died in between) are moved into place and recorded, at the snapshot they were read at."""
    from ._ledger import read_json

    by_id = {r.id: r for r in manifest.parts}
    for done in sorted((folder / LEDGER_DIR).glob("s*/parts/p*.done.json")):
        index = int(done.parent.parent.name[1:])
        record = by_id.get(int(done.name[1:].split(".")[0]))
        result = read_json(done)
        if record is None or result is None or record.state == "done":
            continue
        staged = done.parent.parent / record.file
        placed = folder / record.file
        try:
            size = staged.stat().st_size
        except FileNotFoundError:
            # Moved into place before the coordinator died, but not yet in the manifest.
            try:
                size = placed.stat().st_size
            except FileNotFoundError:
                continue
            staged = placed
        if size != int(result["bytes"]):
            continue
        if staged != placed:
            os.replace(staged, placed)
        record.state, record.snapshot = "done", index
        record.rows, record.bytes, record.sha256 = int(result["rows"]), size, result["sha256"]
