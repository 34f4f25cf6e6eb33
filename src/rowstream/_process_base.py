"""What ``process()`` decides, on both faces: options, the report, and the bookkeeping of
batches read and settled (the checkpoint's watermark with it).

Free of I/O and of any event loop or thread: :mod:`rowstream._process` (async) and its
generated sync twin feed it the same way, from their own pipelines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ._checkpoint import (
    Checkpoint,
    CheckpointStore,
    KeyValues,
    Watermark,
    orders_like_the_database,
)
from ._exceptions import ConfigurationError
from ._pipeline import BUFFER_BATCHES, Item, PipelineStats
from ._translate import is_sqlite_locked, sqlite_locked_error

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
    first_key: KeyValues | None
    last_key: KeyValues | None
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
        self._key_of: Callable[[Any], KeyValues] | None = None
        self._next_seq = 0
        self._last_seen: KeyValues | None = None
        self._started = time.perf_counter()
        #: Called after every settled batch (the checkpoint saver's wake-up).
        self.changed: Callable[[], None] | None = None
        #: The stream reads SQLite: a handler's "database is locked" gets explained.
        self.sqlite = False

    @property
    def start_after(self) -> KeyValues | None:
        return self.loaded.after if self.loaded is not None else None

    def bind(self, key_columns: Iterable[str] | None, key_of: Callable[[Any], KeyValues]) -> None:
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

    def _check_key_order(self, first: KeyValues, last: KeyValues) -> None:
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
