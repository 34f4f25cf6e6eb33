"""``rowstream.process``: hand every batch of a stream to a handler, N at a time.

The stream is read ahead into a bounded queue while at most ``concurrency`` handlers run
(:mod:`rowstream._pipeline`); each finished batch moves the report and, with a key, the
checkpoint's watermark (:mod:`rowstream._process_base`, shared by both faces). The sync
face's ``process``, rowstream._sync._process, is generated from this module
(tools/unasync.py); its pipeline runs handlers in threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._acompat import shielded, to_thread
from ._checkpoint import CheckpointStore, Watermark
from ._keyfind import resolve_key
from ._pipeline import Handler, Pipeline, Saver
from ._plan import Statement, make_plan
from ._process_base import (
    DEFAULT_CONCURRENCY,
    BatchFailure,
    Bookkeeper,
    OnError,
    ProcessReport,
    check_options,
)
from ._sizing import DEFAULT_BATCH_BYTES
from ._source import Source, resolve_source
from ._stream import stream
from ._temporal import DEFAULT_INFINITY, Infinity, check_infinity
from ._watchdog import DEFAULT_READ_TIMEOUT, check_read_timeout
from ._zerodates import DEFAULT_ZERO_DATES, ZeroDates, check_zero_dates

__all__ = ["BatchFailure", "ProcessReport", "process"]


async def process(
    source: Source,
    statement: Statement,
    handler: Handler,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    batch_rows: int | None = None,
    batch_bytes: int | None = DEFAULT_BATCH_BYTES,
    ordered: bool = False,
    on_error: OnError = "raise",
    checkpoint: CheckpointStore | None = None,
    progress: Callable[[ProcessReport], Any] | None = None,
    key: Any = None,
    handler_timeout: float | None = None,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
    infinity: Infinity = DEFAULT_INFINITY,
    zero_dates: ZeroDates = DEFAULT_ZERO_DATES,
) -> ProcessReport:
    """Stream ``statement`` and call ``handler(batch)`` on every batch, ``concurrency`` at a time.

    The next batches are read while handlers run, into a queue of ``BUFFER_BATCHES``: at
    most ``concurrency + BUFFER_BATCHES + 1`` batches are in memory at once, whichever side is
    faster. An ``async def`` handler runs as a task; a plain function runs in a thread of a
    pool of ``concurrency`` threads. Handlers get lists of rows (ORM instances for a
    single-entity select, detached from any session), never the streaming connection: a
    handler that needs the database opens its own session.

    Errors:
        ``on_error="raise"`` (default): the first handler exception cancels the handlers in
        flight, stops reading, closes the stream (its connection goes back to the pool) and is
        re-raised as it is, with a note saying how far the run got. A handler running in a
        thread cannot be interrupted: it gets 0.5 s to finish, then runs on in the background
        and its result is dropped.
        ``on_error="collect"``: failed batches are listed in ``report.failures`` with their
        first and last keys, and the run goes on. Errors of the stream itself always raise.

    Order:
        Batches always start in stream order. ``ordered=False``: they finish in any order and
        ``progress`` sees each as it finishes. ``ordered=True``: ``progress`` and
        ``report.failures`` see batches in stream order (batch ``n`` is reported once batches
        ``0..n`` have all finished), and batch ``n`` starts only once every batch up to
        ``n - concurrency`` has finished: at most ``concurrency`` batches are ever unfinished,
        so the checkpoint's watermark is never more than ``concurrency`` batches behind the
        newest batch started, whatever one slow batch does.

    Checkpoints (``checkpoint=FileCheckpoint(path)`` or ``TableCheckpoint(engine, name)``):
        They need a stream key (the table's primary key, or ``key=``) and rows in key order
        (no ``order_by()`` other than the key). After every batch the store gets, in a worker
        thread and coalesced, the low watermark (every row up to that key is done) and the key
        ranges done beyond it. A run given the same store starts after the watermark and drops
        rows in those ranges before any handler sees them. What is guaranteed, per batch:

        - at most once across clean stops: when the run returns, raises or is cancelled, it
          saves its final checkpoint first, so a batch whose handler returned is never handed
          out again. A batch whose handler raised or was cancelled did not finish and is
          handed out again. A plain-function handler cannot be interrupted in its thread: the
          run gives those in flight ``CANCEL_GRACE`` (0.5 s) to finish and counts those that
          do; one still running after that finishes unrecorded and its batch is handed out
          again.
        - at least once across crashes (SIGKILL, power loss): a checkpoint names only batches
          whose handler had returned, so every other row is handled again; the rows handled
          twice are those of batches in flight at the crash or finished after the last save.

        With a text key the ranges beyond the watermark are not kept (Python orders text
        unlike the database's collation), so after a stop the batches that had finished out
        of order run again; ``ordered=True`` keeps those to fewer than ``concurrency``. In
        collect mode a failed batch counts as settled: the checkpoint moves past it and
        ``report.failures`` says which rows to retry. A finished run leaves a checkpoint with
        ``complete=True``: running again handles only rows added after its last key. Call
        ``store.clear()`` to start over.

    ``progress(report)`` is called on the event loop after every batch; keep it quick.

    Timeouts:
        ``handler_timeout`` (seconds, default None: no bound): a handler that runs longer
        fails its batch with :class:`HandlerTimeoutError`, which ``on_error`` treats like any
        handler error (the run stops, or the batch is listed in ``report.failures`` and the
        run goes on), so a stuck handler never holds the stream's connection (and its
        transaction) forever. An ``async def`` handler is cancelled; one in a thread cannot
        be, so it runs on in the background, its result dropped, and later batches get fresh
        threads. ``read_timeout`` bounds every wait for the database, as in
        :func:`rowstream.stream`.

    ``infinity``: what a PostgreSQL date or timestamp Python cannot hold becomes (``"error"``,
    ``"null"``, ``"clamp"``, ``"text"``), as in :func:`rowstream.stream`. ``zero_dates``:
    what a MariaDB/MySQL zero date (``0000-00-00``) becomes: ``"refuse"`` (the default: the
    run stops naming the column and the value), ``"null"`` (None) or ``"text"`` (the server's
    text, a ``str``), as in :func:`rowstream.stream`; no effect on PostgreSQL and SQLite.

    Example::

        async def send(invoices: list[Invoice]) -> None:
            await billing_api.send([i.id for i in invoices])
            async with Session() as session, session.begin():
                await session.execute(
                    update(Invoice).where(Invoice.id.in_([i.id for i in invoices]))
                    .values(status="sent")
                )

        report = await rowstream.process(
            engine, select(Invoice).where(Invoice.status == "ready_to_send"), send,
            concurrency=4, checkpoint=rowstream.FileCheckpoint("invoices.json"),
        )
        print(report.rows, report.elapsed)
    """
    check_options(
        handler,
        concurrency=concurrency,
        on_error=on_error,
        checkpoint=checkpoint,
        progress=progress,
    )
    handler_timeout = check_read_timeout(handler_timeout, "handler_timeout")
    check_infinity(infinity)
    check_zero_dates(zero_dates)
    books = Bookkeeper(
        concurrency=concurrency, on_error=on_error, store=checkpoint, progress=progress
    )
    if checkpoint is not None:
        books.loaded = await to_thread(checkpoint.load)
        if books.start_after is not None:
            # Checked before the stream starts after the saved key: a key of another kind
            # would otherwise reach the database as a comparison it cannot make.
            assert books.loaded is not None
            columns = await _key_columns(source, statement, key)
            Watermark.check(books.loaded, columns, repr(checkpoint))
    error: BaseException | None = None
    try:
        async with stream(
            source,
            statement,
            batch_rows=batch_rows,
            batch_bytes=batch_bytes,
            key=key,
            start_after=books.start_after,
            read_timeout=read_timeout,
            infinity=infinity,
            zero_dates=zero_dates,
        ) as rows:
            books.bind(rows.key_columns, rows.key_of)
            books.sqlite = rows.dialect == "sqlite"
            pipeline = Pipeline(
                rows.batches(),
                handler,
                prepare=books.item,
                concurrency=concurrency,
                ordered=ordered,
                stop_on_error=not books.collect,
                settle=books.settle,
                handler_timeout=handler_timeout,
            )
            saver = None
            if checkpoint is not None:
                saver = Saver(checkpoint, books.snapshot, on_failure=pipeline.fail)
                books.changed = saver.wake
            failure: BaseException | None = None
            try:
                if saver is not None:
                    saver.start()
                await pipeline.run()
                books.finish()
            except BaseException as exc:
                failure = books.explain(exc)
                if failure is exc:
                    raise
                raise failure from exc
            finally:
                books.report.take_stats(pipeline.stats)
                if saver is not None:
                    save_error = await shielded(saver.stop())
                    if save_error is not None and save_error is not failure:
                        if failure is None:
                            raise save_error
                        # The run's own error goes first; the stale checkpoint must not pass
                        # unnoticed.
                        failure.add_note(f"and the checkpoint could not be saved: {save_error}")
    except BaseException as exc:
        error = exc
        raise
    finally:
        books.close(error)
    return books.report


async def _key_columns(source: Source, statement: Statement, key: Any) -> tuple[str, ...] | None:
    """The names of the key the stream will have, decided as the stream decides it."""
    resolved = resolve_source(source)
    try:
        found, _why_none = await resolve_key(resolved, make_plan(statement), key)
    finally:
        await shielded(resolved.aclose())
    return found.names if found is not None else None
