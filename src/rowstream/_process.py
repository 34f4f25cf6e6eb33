"""``rowstream.process``: hand every batch of a stream to a handler, N at a time.

The stream is read ahead into a bounded queue while at most ``concurrency`` handlers run
(:mod:`rowstream._pipeline`); each finished batch moves the report and, with a key, the
checkpoint's watermark (:mod:`rowstream._checkpoint`). The bookkeeping here is shared with
the thread-pool twin, :func:`rowstream.sync.process`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ._checkpoint import Checkpoint, CheckpointStore, Key, Watermark, orders_like_the_database
from ._exceptions import ConfigurationError
from ._keys import resolve_key
from ._pipeline import BUFFER_BATCHES, Handler, Item, Pipeline, PipelineStats
from ._plan import Statement, make_plan
from ._sizing import DEFAULT_BATCH_BYTES
from ._source import Source, resolve_source
from ._strategy import shielded
from ._stream import stream
from ._translate import is_sqlite_locked, sqlite_locked_error
from ._watchdog import DEFAULT_READ_TIMEOUT, check_read_timeout

DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 1024
OnError = Literal["raise", "collect"]
ON_ERROR = ("raise", "collect")


@dataclass
class BatchFailure:
    """A batch whose handler raised, in ``on_error="collect"`` mode.

    ``index`` is the batch's place in this run's stream (from 0); ``first_key`` and
    ``last_key`` bound its rows when the stream has a key (None otherwise), so the batch can
    be selected again: ``WHERE key BETWEEN first_key AND last_key``.
    """

    index: int
    rows: int
    first_key: Key | None
    last_key: Key | None
    error: BaseException


@dataclass
class ProcessReport:
    """What a run of :func:`process` did.

    ``rows`` and ``batches`` count what handlers finished without error, ``failures`` the
    batches whose handler raised (collect mode), ``skipped_rows`` the rows a checkpoint showed
    done by an earlier run. ``peak_batches`` is the most batches held at once (read and not yet
    finished), at most ``concurrency + BUFFER_BATCHES + 1``; ``checkpoint`` is the last one
    saved, when a store was given.
    """

    rows: int = 0
    batches: int = 0
    failures: list[BatchFailure] = field(default_factory=list)
    elapsed: float = 0.0
    skipped_rows: int = 0
    concurrency: int = DEFAULT_CONCURRENCY
    peak_batches: int = 0
    peak_queue: int = 0
    peak_running: int = 0
    started_after_failure: int = 0
    checkpoint: Checkpoint | None = None

    @property
    def failed_rows(self) -> int:
        """Rows in the failed batches."""
        return sum(f.rows for f in self.failures)

    @property
    def max_batches_held(self) -> int:
        """The bound ``peak_batches`` never exceeds."""
        return self.concurrency + BUFFER_BATCHES + 1

    def take_stats(self, stats: PipelineStats) -> None:
        self.peak_batches = stats.peak_batches
        self.peak_queue = stats.peak_queue
        self.peak_running = stats.peak_running
        self.started_after_failure = stats.started_after_failure


def check_options(
    handler: Any,
    *,
    concurrency: int,
    on_error: str,
    checkpoint: Any,
    progress: Any,
) -> None:
    """Validate ``process()`` arguments early, before anything is read."""
    if not callable(handler):
        raise ConfigurationError(
            f"handler must be a function that takes a list of rows, not {type(handler).__name__}"
        )
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise ConfigurationError(f"concurrency must be an integer, not {concurrency!r}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigurationError(
            f"concurrency must be between 1 and {MAX_CONCURRENCY}, not {concurrency}"
        )
    if on_error not in ON_ERROR:
        raise ConfigurationError(
            f"unknown on_error {on_error!r}: choose 'raise' (stop at the first error) or "
            "'collect' (go on and report failed batches)"
        )
    if checkpoint is not None and not isinstance(checkpoint, CheckpointStore):
        raise ConfigurationError(
            "checkpoint must be a store such as rowstream.FileCheckpoint(path) or "
            f"rowstream.TableCheckpoint(engine, name), not {type(checkpoint).__name__}"
        )
    if progress is not None and not callable(progress):
        raise ConfigurationError("progress must be a function that takes the report")


class Bookkeeper:
    """The run's state, shared by the async and thread-pool pipelines: which batches are read,
    which are done, what the report says and what the checkpoint should be."""

    def __init__(
        self,
        *,
        concurrency: int,
        on_error: OnError,
        store: CheckpointStore | None,
        progress: Callable[[ProcessReport], Any] | None,
    ) -> None:
        self.report = ProcessReport(concurrency=concurrency)
        self.collect = on_error == "collect"
        self.store = store
        self.progress = progress
        self.loaded: Checkpoint | None = None
        self.watermark: Watermark | None = None
        self._key_of: Callable[[Any], Key] | None = None
        self._next_seq = 0
        self._last_seen: Key | None = None
        self._started = time.perf_counter()
        #: Called after every settled batch (the checkpoint saver's wake-up).
        self.changed: Callable[[], None] | None = None
        #: The stream reads SQLite: a handler's "database is locked" gets explained.
        self.sqlite = False

    @property
    def start_after(self) -> Key | None:
        return self.loaded.after if self.loaded is not None else None

    def bind(self, key_columns: Iterable[str] | None, key_of: Callable[[Any], Key]) -> None:
        """Called once the stream is open and its key is known."""
        columns = tuple(key_columns) if key_columns is not None else None
        if self.store is None:
            self._key_of = key_of if columns is not None else None
            return
        if columns is None:
            raise ConfigurationError(
                "checkpoint= needs a stream key: select from one table with a primary key, or "
                "pass key= with unique non-null columns"
            )
        if self.loaded is not None:
            Watermark.check(self.loaded, columns, repr(self.store))
        self._key_of = key_of
        self.watermark = Watermark(columns, self.loaded)

    def items(self, batches: Iterable[list[Any]]) -> Iterator[Item[Any]]:
        for batch in batches:
            item = self.item(batch)
            if item is not None:
                yield item

    async def aitems(self, batches: AsyncIterator[list[Any]]) -> AsyncIterator[Item[Any]]:
        async for batch in batches:
            item = self.item(batch)
            if item is not None:
                yield item

    def item(self, batch: list[Any]) -> Item[Any] | None:
        """Number ``batch``, note its keys and drop rows a checkpoint shows done."""
        key_of = self._key_of
        watermark = self.watermark
        if key_of is None:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
            return Item(seq, batch)
        if watermark is not None:
            kept = [row for row in batch if not watermark.skips(key_of(row))]
            self.report.skipped_rows += len(batch) - len(kept)
            batch = kept
            if not batch:
                return None
        first, last = key_of(batch[0]), key_of(batch[-1])
        if watermark is not None:
            self._check_key_order(first, last)
            seq = watermark.read(first, last, len(batch))
        else:
            seq, self._next_seq = self._next_seq, self._next_seq + 1
        return Item(seq, batch, first, last)

    def _check_key_order(self, first: Key, last: Key) -> None:
        # A watermark means "every key up to here": it needs rows in key order. A statement
        # ordered by something else is caught at its first step back (where Python can
        # compare the keys the way the database does).
        previous = self._last_seen
        self._last_seen = last
        if previous is None or not orders_like_the_database(first):
            return
        try:
            backwards = not previous < first <= last
        except TypeError:
            return
        if backwards:
            raise ConfigurationError(
                "checkpoint= needs the rows in key order: drop order_by() (rowstream then "
                "reads in key order) or order by the key"
            )

    def explain(self, error: BaseException) -> BaseException:
        """A handler's error, or a clearer one in its place (raised ``from`` it).

        SQLite's raw "database is locked" from a handler that writes to the file being read
        says nothing of the cause (the stream's own read holds the lock) nor of the fix.
        """
        if self.sqlite and isinstance(error, Exception) and is_sqlite_locked(error):
            clearer = sqlite_locked_error(error)
            clearer.__cause__ = error
            return clearer
        return error

    def settle(self, item: Item[Any], error: BaseException | None) -> None:
        """Account for a finished batch (its handler's error in collect mode)."""
        if error is not None:
            error = self.explain(error)
        report = self.report
        rows = item.rows
        if error is None:
            report.rows += rows
            report.batches += 1
        else:
            report.failures.append(
                BatchFailure(item.seq, rows, item.first_key, item.last_key, error)
            )
        if self.watermark is not None:
            self.watermark.done(item.seq)
        report.elapsed = time.perf_counter() - self._started
        if self.changed is not None:
            self.changed()
        if self.progress is not None:
            self.progress(report)

    def finish(self) -> None:
        """The stream ended and every batch settled."""
        if self.watermark is not None:
            self.watermark.finish()

    def snapshot(self) -> Checkpoint | None:
        """The checkpoint to save, or None when nothing changed since the last save."""
        if self.watermark is None or not self.watermark.dirty:
            return None
        checkpoint = self.watermark.snapshot()
        self.report.checkpoint = checkpoint
        return checkpoint

    def close(self, error: BaseException | None) -> ProcessReport:
        report = self.report
        report.elapsed = time.perf_counter() - self._started
        if error is not None and not isinstance(error, asyncio.CancelledError):
            where = ""
            if report.checkpoint is not None and report.checkpoint.after is not None:
                where = f"; the checkpoint is after key {report.checkpoint.after!r}"
            error.add_note(
                f"rowstream.process stopped: {report.batches} batches ({report.rows} rows) "
                f"were handled before this error{where}"
            )
        return report


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
    books = Bookkeeper(
        concurrency=concurrency, on_error=on_error, store=checkpoint, progress=progress
    )
    if checkpoint is not None:
        books.loaded = await asyncio.to_thread(checkpoint.load)
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
        ) as rows:
            books.bind(rows.key_columns, rows.key_of)
            books.sqlite = rows.dialect == "sqlite"
            pipeline = Pipeline(
                books.aitems(rows.batches()),
                handler,
                concurrency=concurrency,
                ordered=ordered,
                stop_on_error=not books.collect,
                settle=books.settle,
                handler_timeout=handler_timeout,
            )
            saver = _Saver(books, on_failure=pipeline.fail) if checkpoint is not None else None
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


class _Saver:
    """Saves the checkpoint in a worker thread whenever it changed, one save at a time.

    Saves coalesce: while one is being written, later batches only mark the watermark dirty,
    so a slow store never slows the handlers; the last state is saved when the run stops.
    A save is never cancelled half-way: two saves in flight could land out of order.
    """

    def __init__(self, books: Bookkeeper, *, on_failure: Callable[[BaseException], None]) -> None:
        assert books.store is not None
        self._books = books
        self._store = books.store
        self._on_failure = on_failure
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        books.changed = self._wake.set

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="rowstream-checkpoint")

    async def _loop(self) -> None:
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                checkpoint = self._books.snapshot()
                if checkpoint is not None:
                    await asyncio.to_thread(self._store.save, checkpoint)
        except Exception as exc:
            # The run cannot promise anything without its checkpoint: stop it.
            self._on_failure(exc)
            raise

    async def stop(self) -> BaseException | None:
        """Let a save in progress end, then save the final state; return a save's error."""
        task = self._task
        if task is not None:
            self._stopping = True
            self._wake.set()
            await asyncio.wait([task])
            error = task.exception()
            if error is not None:
                return error
        checkpoint = self._books.snapshot()
        if checkpoint is not None:
            try:
                await asyncio.to_thread(self._store.save, checkpoint)
            except Exception as exc:
                return exc
        return None
