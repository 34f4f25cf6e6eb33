"""The sync face's pipeline: the stream read ahead in a thread, handlers in a thread pool.

Written by hand: threads, not tasks, are the mechanism here. Every decision is the async
pipeline's own (:mod:`rowstream._pipeline`): the same :class:`Item`, :class:`PipelineStats`,
:class:`Order` (which batch may start, in which order finished ones settle), bounds and
:func:`handler_timed_out`.

    reader thread --(at most BUFFER_BATCHES + 1 batches not yet started)--> calling thread
        --(at most ``concurrency``)--> handler threads --(results)--> calling thread:
        prepare, start, settle, in stream or completion order

The calling thread does all the bookkeeping (``prepare`` and ``settle``), so none of it
needs a lock; the reader thread only reads the stream, so the database, the row building and
the handlers all work at the same time.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .._checkpoint import Checkpoint
from .._pipeline import (
    BUFFER_BATCHES,
    CANCEL_GRACE,
    Handler,
    Item,
    PipelineBase,
    PipelineStats,
    SaverBase,
    handler_timed_out,
)

__all__ = ["BUFFER_BATCHES", "Handler", "Item", "Pipeline", "PipelineStats", "Saver"]

# What the calling thread hears about: a batch read, the end of the stream, a handler done,
# or a failure (of the reader, or reported by fail()).
_Event = tuple[str, Any, BaseException | None]


class Pipeline(PipelineBase[Iterator[list[Any]]]):
    """Feed the batches of ``source`` to ``handler`` in threads, ``concurrency`` at a time.

    The same contract as :class:`rowstream._pipeline.Pipeline`.
    """

    def _setup(self) -> None:
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        # A batch read but not started holds a slot: at most BUFFER_BATCHES + 1 of them.
        self._slots = threading.Semaphore(BUFFER_BATCHES + 1)
        self._stopping = threading.Event()
        self._ready: deque[Item[Any]] = deque()
        self._running: set[int] = set()
        #: When each running batch's handler must be done (with a handler_timeout).
        self._deadlines: dict[int, tuple[float, Item[Any]]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._exhausted = False

    def run(self) -> None:
        """Run to the end of the source, or to the first error; always stop every thread."""
        reader = threading.Thread(target=self._read, name="rowstream-reader", daemon=True)
        reader.start()
        try:
            self._loop()
        finally:
            self._stop(reader)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def fail(self, error: BaseException) -> None:
        """Stop the run with ``error`` (a checkpoint store that cannot save); any thread."""
        self._events.put(("fail", None, error))

    # -- the reader thread -------------------------------------------------------------

    def _read(self) -> None:
        events = self._events
        try:
            while True:
                self._slots.acquire()
                if self._stopping.is_set():
                    return
                batch = next(self._source, None)
                if batch is None or self._stopping.is_set():
                    break
                events.put(("batch", batch, None))
                del batch
        except BaseException as exc:
            events.put(("fail", None, exc))
            return
        events.put(("end", None, None))

    # -- the calling thread ------------------------------------------------------------

    def _loop(self) -> None:
        while self._error is None:
            ready = self._ready
            if ready and self._order.can_start(ready[0].seq, len(self._running)):
                self._start(ready.popleft())
                continue
            if self._exhausted and not ready and not self._running:
                return
            try:
                kind, payload, error = self._events.get(timeout=self._wait())
            except queue.Empty:
                self._time_out()
                continue
            if kind == "batch":
                self._take(payload)
            elif kind == "done":
                self._done(payload, error)
            elif kind == "end":
                self._exhausted = True
            else:
                self._error = error

    def _take(self, batch: list[Any]) -> None:
        item = self._prepare(batch)
        if item is None:  # every row done by an earlier run
            self._slots.release()
            return
        self._ready.append(item)
        stats = self.stats
        stats.peak_batches = max(stats.peak_batches, len(self._ready) + len(self._running))
        stats.peak_queue = max(stats.peak_queue, len(self._ready) - 1)

    def _start(self, item: Item[Any]) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._concurrency, thread_name_prefix="rowstream-handler"
            )
        events, handler = self._events, self._handler

        def work() -> None:
            error: BaseException | None = None
            try:
                handler(item.batch)
            except BaseException as exc:
                # Reported whatever it is (SystemExit too): the calling thread waits for it.
                error = exc
            events.put(("done", item, error))

        self._running.add(item.seq)
        self._slots.release()
        self._executor.submit(work)
        if self._handler_timeout is not None:
            self._deadlines[item.seq] = (time.monotonic() + self._handler_timeout, item)
        self.stats.peak_running = max(self.stats.peak_running, len(self._running))

    def _done(self, item: Item[Any], error: BaseException | None) -> None:
        if item.seq not in self._running:
            return  # finished after its batch had already timed out: dropped
        self._running.discard(item.seq)
        self._deadlines.pop(item.seq, None)
        # The batch is dropped before settling, so a handler that finished holds nothing.
        item.batch = []
        if error is not None and (self._stop_on_error or not isinstance(error, Exception)):
            self._error = error
            return
        self._order.finish(item, error)

    def _settle(self, item: Item[Any], error: BaseException | None) -> None:
        try:
            self._settle_cb(item, error)
        except Exception as exc:
            # A failing progress callback or checkpoint store stops the run like a handler.
            if self._error is None:
                self._error = exc

    def _wait(self) -> float | None:
        """How long a wait for news may last: until the next handler deadline."""
        if not self._deadlines:
            return None
        first = min(deadline for deadline, _item in self._deadlines.values())
        return max(0.0, first - time.monotonic())

    def _time_out(self) -> None:
        """Fail the batches whose handler is past its deadline; their threads run on."""
        assert self._handler_timeout is not None
        now = time.monotonic()
        late = [item for deadline, item in self._deadlines.values() if deadline <= now]
        if late and self._executor is not None:
            # A thread cannot be stopped: later batches get a fresh pool.
            self._executor.shutdown(wait=False)
            self._executor = None
        for item in late:
            self._done(item, handler_timed_out(item, self._handler_timeout, threads=True))

    def _stop(self, reader: threading.Thread) -> None:
        self._stopping.set()
        # Unblock a reader waiting for a slot; one in the middle of a fetch ends it (bounded
        # by the read timeout): the stream's connection is not to be closed under it.
        self._slots.release(BUFFER_BATCHES + 2)
        reader.join()
        # Handlers already running cannot be interrupted: give them a moment, keep what
        # finished (so the checkpoint counts it), and leave the rest to finish unseen.
        deadline = time.monotonic() + CANCEL_GRACE
        while self._running and time.monotonic() < deadline:
            try:
                kind, payload, error = self._events.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            if kind == "done" and payload.seq in self._running and error is None:
                self._done(payload, None)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        close: Callable[[], None] | None = getattr(self._source, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


class Saver(SaverBase):
    """Saves the checkpoint in a thread of its own whenever it changed, one save at a time.

    The checkpoint is taken on the calling thread (which owns the bookkeeping) and handed
    over; saves coalesce: while one is being written, only the newest waiting one is kept, so
    a slow store never slows the handlers. The last state is saved when the run stops.
    """

    def _setup(self) -> None:
        self._cond = threading.Condition()
        self._pending: Checkpoint | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rowstream-checkpoint")
        self._thread.start()

    def wake(self) -> None:
        """The watermark moved (called after each settled batch, on the calling thread)."""
        checkpoint = self._snapshot()
        if checkpoint is None:
            return
        with self._cond:
            self._pending = checkpoint
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                checkpoint, self._pending = self._pending, None
            if checkpoint is None:
                return
            try:
                self._store.save(checkpoint)
            except Exception as exc:
                # The run cannot promise anything without its checkpoint: stop it.
                self._error = exc
                self._on_failure(exc)
                return

    def stop(self) -> BaseException | None:
        """Let the saves waiting end, then save the final state; return a save's error."""
        thread = self._thread
        if thread is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify()
            thread.join()
            if self._error is not None:
                return self._error
        checkpoint = self._snapshot()
        if checkpoint is not None:
            try:
                self._store.save(checkpoint)
            except Exception as exc:
                return exc
        return None
