"""The pipeline between a stream and its handlers: a bounded queue and at most N handlers.

    stream --(producer task)--> queue (BUFFER_BATCHES) --(dispatcher)--> N handler tasks
                                                                             |
                                      settle(item, error) in completion or stream order <-'

The producer reads the next batch while handlers run, so the database and the handlers work
at the same time (the seeds' gather-in-waves loop waits for the slowest task of each wave
instead, ERRATA 8). The dispatcher takes a slot before it takes a batch off the queue, so a
batch is held in exactly one place: by the producer (at most one, waiting to be queued), in
the queue (at most ``BUFFER_BATCHES``) or by a handler (at most ``concurrency``).
``peak_batches`` counts what is held at once and can never exceed
``concurrency + BUFFER_BATCHES + 1``, whichever side is faster.

Nothing here knows about databases: :mod:`rowstream._process` feeds it batches of a stream
and keeps the checkpoint. The sync face's thread pipeline (rowstream._sync._pipeline) shares
everything but the mechanism: :class:`Item`, :class:`PipelineStats`, :class:`Order` (which
batch may start, in which order finished ones settle) and :func:`handler_timed_out`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._checkpoint import Checkpoint, CheckpointStore
from ._exceptions import HandlerTimeoutError

#: Batches read ahead of the handlers, beyond the ``concurrency`` batches being handled.
BUFFER_BATCHES = 2
#: How long cancelled handlers get to unwind before the pipeline stops waiting for them.
CANCEL_GRACE = 0.5

T = TypeVar("T")


@dataclass
class Item(Generic[T]):
    """One batch on its way through the pipeline, numbered in stream order from 0."""

    seq: int
    batch: list[T]
    first_key: tuple[Any, ...] | None = None
    last_key: tuple[Any, ...] | None = None
    #: How many rows the batch had; kept after the batch itself is dropped.
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = len(self.batch)


@dataclass
class PipelineStats:
    """High-water marks, so that tests and benchmarks can check that memory stayed bounded."""

    #: Most batches held at once: read from the stream and not yet finished by a handler.
    peak_batches: int = 0
    #: Most batches waiting in the queue at once (at most ``BUFFER_BATCHES``).
    peak_queue: int = 0
    #: Most handlers running at once (at most ``concurrency``).
    peak_running: int = 0
    #: Batches started after the first failure was seen (``on_error="raise"``); a few at most.
    started_after_failure: int = 0


Handler = Callable[[list[Any]], Any]
Settle = Callable[[Item[Any], BaseException | None], None]
#: Turns a batch read from the stream into an item (None: nothing left in it to handle).
Prepare = Callable[[list[Any]], Item[Any] | None]


class Order:
    """Which batch may start, and in which order finished batches settle (both faces).

    Unordered, a batch settles as soon as it finishes. Ordered, batch ``n`` settles once
    batches ``0..n`` have all finished, and starts only when it is fewer than ``concurrency``
    places after the oldest unsettled one, so a slow batch holds back at most that many.
    """

    def __init__(self, *, concurrency: int, ordered: bool, settle: Settle) -> None:
        self._concurrency = concurrency
        self._ordered = ordered
        self._settle = settle
        self._next_to_settle = 0
        self._finished: dict[int, tuple[Item[Any], BaseException | None]] = {}

    def can_start(self, seq: int, running: int) -> bool:
        if running >= self._concurrency:
            return False
        return not self._ordered or seq < self._next_to_settle + self._concurrency

    def finish(self, item: Item[Any], error: BaseException | None) -> None:
        """``item``'s handler is done: settle it, and what it was holding back."""
        if not self._ordered:
            self._next_to_settle += 1
            self._settle(item, error)
            return
        self._finished[item.seq] = (item, error)
        while self._next_to_settle in self._finished:
            done, done_error = self._finished.pop(self._next_to_settle)
            self._next_to_settle += 1
            self._settle(done, done_error)


def is_async_handler(handler: Handler) -> bool:
    """True for ``async def`` functions, partials of them and objects with an async ``__call__``."""
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - an async __call__ is what we look for
    return call is not None and inspect.iscoroutinefunction(call)


class _End:
    """The producer's last word: the stream is exhausted."""


_END = _End()


S = TypeVar("S")


class PipelineBase(Generic[S]):
    """What both faces' pipelines take and keep; each adds its mechanism in ``_setup()``."""

    def __init__(
        self,
        source: S,
        handler: Handler,
        *,
        prepare: Prepare,
        concurrency: int,
        ordered: bool,
        stop_on_error: bool,
        settle: Settle,
        handler_timeout: float | None = None,
    ) -> None:
        self._source = source
        self._handler = handler
        self._prepare = prepare
        self._concurrency = concurrency
        self._ordered = ordered
        self._stop_on_error = stop_on_error
        self._settle_cb = settle
        self._handler_timeout = handler_timeout
        self._order = Order(concurrency=concurrency, ordered=ordered, settle=self._settle)
        self._error: BaseException | None = None
        self.stats = PipelineStats()
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError

    def _settle(self, item: Item[Any], error: BaseException | None) -> None:
        raise NotImplementedError


class Pipeline(PipelineBase[AsyncIterator[list[Any]]]):
    """Feed the batches of ``source`` to ``handler`` with at most ``concurrency`` at a time.

    ``prepare(batch)`` numbers each batch as it is read (the bookkeeping's, see
    rowstream._process_base), or drops it by returning None.

    ``settle(item, error)`` is called on the event loop for every finished item: with
    ``error=None`` on success, with the handler's exception when ``stop_on_error`` is false.
    When ``stop_on_error`` is true the first handler exception stops everything instead and
    :meth:`run` re-raises it. With ``ordered`` true, ``settle`` sees items in stream order and
    an item starts only when it is fewer than ``concurrency`` places after the oldest
    unfinished one.
    """

    def _setup(self) -> None:
        self._call = self._async_call if is_async_handler(self._handler) else self._thread_call
        self._executor: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[Item[Any] | _End] = asyncio.Queue(maxsize=BUFFER_BATCHES)
        self._held = 0
        self._running: dict[int, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._failed_seen = False
        self._fetching = False
        self._stopping = False

    async def run(self) -> None:
        """Run to the end of the source, or to the first error; always stop every task."""
        producer = asyncio.create_task(self._produce(), name="rowstream-producer")
        dispatcher = asyncio.create_task(self._dispatch(), name="rowstream-dispatcher")
        for task in (producer, dispatcher):
            task.add_done_callback(self._on_helper_done)
        try:
            await self._stopped.wait()
        finally:
            await self._stop_all(producer, dispatcher)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # -- the three kinds of task -------------------------------------------------------

    async def _produce(self) -> None:
        source = self._source
        while True:
            self._fetching = True
            try:
                batch = await anext(source)
            except StopAsyncIteration:
                break
            finally:
                self._fetching = False
            if self._stopping:
                return
            item = self._prepare(batch)
            del batch
            if item is None:
                continue
            self._held += 1
            self.stats.peak_batches = max(self.stats.peak_batches, self._held)
            await self._queue.put(item)
            self.stats.peak_queue = max(self.stats.peak_queue, self._queue.qsize())
        await self._queue.put(_END)

    async def _dispatch(self) -> None:
        seq = 0
        while True:
            while not self._can_start(seq):
                self._changed.clear()
                await self._changed.wait()
            item = await self._queue.get()
            if isinstance(item, _End):
                break
            seq = item.seq + 1
            if self._failed_seen:
                self.stats.started_after_failure += 1
            task = asyncio.create_task(self._handle(item), name=f"rowstream-batch-{item.seq}")
            # Only what escapes _handle lands here (KeyboardInterrupt, SystemExit, ...).
            task.add_done_callback(self._on_helper_done)
            self._running[item.seq] = task
            self.stats.peak_running = max(self.stats.peak_running, len(self._running))
        while self._running:
            self._changed.clear()
            await self._changed.wait()
        self._stopped.set()

    async def _handle(self, item: Item[Any]) -> None:
        error: BaseException | None = None
        try:
            await self._bounded_call(item)
        except Exception as exc:
            error = exc
        finally:
            # Runs on cancellation too: the slot and the batch are given back either way.
            self._running.pop(item.seq, None)
            self._held -= 1
            self._changed.set()
        # The batch is dropped here, before settling, so a handler that finished holds nothing.
        item.batch = []
        if error is not None and self._stop_on_error:
            self._fail(error)
            return
        self._finish(item, error)

    # -- calling the handler -----------------------------------------------------------

    async def _bounded_call(self, item: Item[Any]) -> None:
        limit = self._handler_timeout
        if limit is None:
            await self._call(item.batch)
            return
        threads = self._call == self._thread_call
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                await self._call(item.batch)
        except TimeoutError:
            if not deadline.expired():
                raise  # the handler's own TimeoutError
            if threads:
                # The thread cannot be stopped: later batches get fresh threads.
                self._retire_executor()
            raise handler_timed_out(item, limit, threads=threads) from None

    def _retire_executor(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def _async_call(self, batch: list[Any]) -> None:
        await self._handler(batch)

    async def _thread_call(self, batch: list[Any]) -> None:
        if self._executor is None:
            # A pool of our own with one thread per slot: the loop's default executor has
            # min(32, cores + 4) threads, too few for a large ``concurrency``.
            self._executor = ThreadPoolExecutor(
                max_workers=self._concurrency, thread_name_prefix="rowstream-handler"
            )
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        call = functools.partial(context.run, self._handler, batch)
        result = await loop.run_in_executor(self._executor, call)
        if inspect.isawaitable(result):
            await result

    # -- bookkeeping ---------------------------------------------------------------------

    def _can_start(self, seq: int) -> bool:
        return self._order.can_start(seq, len(self._running))

    def _finish(self, item: Item[Any], error: BaseException | None) -> None:
        self._order.finish(item, error)
        self._changed.set()

    def _settle(self, item: Item[Any], error: BaseException | None) -> None:
        try:
            self._settle_cb(item, error)
        except Exception as exc:
            # A failing progress callback or checkpoint store stops the run like a handler.
            self._fail(exc)

    def fail(self, error: BaseException) -> None:
        """Stop the run with ``error`` (a checkpoint store that cannot save, for instance)."""
        self._fail(error)

    def _fail(self, error: BaseException) -> None:
        self._failed_seen = True
        if self._error is None:
            self._error = error
        self._stopped.set()

    def _on_helper_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._fail(error)

    async def _stop_all(self, producer: asyncio.Task[None], dispatcher: asyncio.Task[None]) -> None:
        self._stopping = True
        dispatcher.cancel()
        handlers = list(self._running.values())
        threads = self._call == self._thread_call
        waits = [t for t in handlers if threads and not t.done()]
        if self._fetching and not producer.done():
            # A fetch cancelled half-way leaves the driver mid-protocol (aiosqlite even logs
            # errors when the connection closes under it): let the current fetch end, briefly.
            waits.append(producer)
        if waits:
            # Threads cannot be interrupted either: a handler that finishes within the grace
            # period still counts (and reaches the checkpoint) instead of running unrecorded.
            await asyncio.wait(waits, timeout=CANCEL_GRACE)
        tasks = [producer, dispatcher, *handlers]
        for task in tasks:
            task.cancel()
        pending = [task for task in tasks if not task.done()]
        if pending:
            # Handlers that swallow cancellation are not waited for beyond the grace period;
            # the run still stops and reports its error on time.
            await asyncio.wait(pending, timeout=CANCEL_GRACE)
        for task in tasks:
            if task.done() and not task.cancelled():
                # Retrieved so that asyncio does not log "exception was never retrieved".
                task.exception()
        if self._executor is not None:
            # A handler already running in a thread cannot be interrupted: it finishes in the
            # background and its result is dropped; batches not yet started never start.
            self._executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(Exception):
            await aclose_iterator(self._source)


def handler_timed_out(item: Item[Any], limit: float, *, threads: bool) -> HandlerTimeoutError:
    """The error a batch fails with when its handler runs longer than ``handler_timeout``."""
    what = (
        "a handler in a thread cannot be interrupted: it runs on in the background and its "
        "result is dropped"
        if threads
        else "the handler was cancelled"
    )
    return HandlerTimeoutError(
        f"the handler ran longer than handler_timeout={limit:g}s on batch {item.seq} "
        f"({item.rows} rows); {what}; raise handler_timeout if the work is that slow",
        batch=item.seq,
        first_key=item.first_key,
        last_key=item.last_key,
    )


async def aclose_iterator(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator (a no-op for other iterators)."""
    aclose: Callable[[], Awaitable[None]] | None = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


class SaverBase:
    """What both faces' checkpoint savers take; each adds its mechanism in ``_setup()``."""

    def __init__(
        self,
        store: CheckpointStore,
        snapshot: Callable[[], Checkpoint | None],
        *,
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._on_failure = on_failure
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError


class Saver(SaverBase):
    """Saves the checkpoint in a worker thread whenever it changed, one save at a time.

    Saves coalesce: while one is being written, later batches only mark the watermark dirty,
    so a slow store never slows the handlers; the last state is saved when the run stops.
    A save is never cancelled half-way: two saves in flight could land out of order.
    """

    def _setup(self) -> None:
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        """The watermark moved (called after each settled batch)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="rowstream-checkpoint")

    async def _loop(self) -> None:
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                checkpoint = self._snapshot()
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
        checkpoint = self._snapshot()
        if checkpoint is not None:
            try:
                await asyncio.to_thread(self._store.save, checkpoint)
            except Exception as exc:
                return exc
        return None
