"""Progress of an export: a live bar on a terminal, silence elsewhere, one summary line.

The bar shows rows, rows/s and bytes written; when the planner's row estimate is known
(PostgreSQL's EXPLAIN, MySQL's TABLE_ROWS; SQLite has none) also the percentage done and an
ETA. It goes to stderr, so ``-o -`` keeps stdout clean, and it is off when stderr is not a
terminal. rich is imported only when a bar is drawn: an export in a pipe or a cron job does
not pay for it.
"""

from __future__ import annotations

import resource
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from ._jobs import JobProgress

__all__ = ["ExportProgress", "JobProgressBar", "format_bytes", "peak_memory_mb"]

# Redrawing costs time: at most this many updates per second reach the terminal.
_REFRESH_PER_SECOND = 4


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


class ExportProgress:
    """Counts rows and bytes; draws a bar when ``enabled`` and the stream is a terminal.

    Example::

        with ExportProgress(enabled=True, estimate=5_000_000) as progress:
            progress.advance(rows=10_000, nbytes=1_200_000)
    """

    def __init__(
        self, *, enabled: bool, estimate: int | None = None, stream: TextIO | None = None
    ) -> None:
        out = stream if stream is not None else sys.stderr
        self.enabled = enabled and out.isatty()
        self.rows = 0
        self.bytes = 0
        self._estimate = estimate
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._out = out
        self._last = 0.0

    def __enter__(self) -> ExportProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]export[/]"),
                BarColumn(),
                # The percentage and the ETA are blank (ETA "-:--:--") while the total is
                # unknown: no estimate, or more rows than the planner guessed.
                TaskProgressColumn(),
                TextColumn("{task.completed:,.0f}{task.fields[of]} rows"),
                TextColumn("{task.fields[rate]} rows/s"),
                TextColumn("{task.fields[size]}"),
                TimeRemainingColumn(),
                console=Console(file=self._out),
                transient=True,
                auto_refresh=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "export", total=self._estimate, rate="-", size="0 B", of=_of(self._estimate)
            )
        return self

    def set_estimate(self, estimate: int | None) -> None:
        self._estimate = estimate
        if self._progress is not None and self._task is not None and estimate:
            total = max(estimate, self.rows)
            self._progress.update(self._task, total=total, of=_of(total))

    def advance(self, *, rows: int = 0, nbytes: int = 0) -> None:
        self.rows += rows
        self.bytes += nbytes
        if self._progress is None or self._task is None:
            return
        now = time.monotonic()
        if now - self._last < 1 / _REFRESH_PER_SECOND:
            return
        self._last = now
        task = self._progress.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = f"{self.rows / elapsed:,.0f}" if elapsed > 0 else "-"
        if task.total is not None and self.rows > task.total:
            # The planner guessed low: drop the total rather than show a bar past 100% (and
            # a finished ETA). update(total=None) means "unchanged" to rich, hence the field.
            task.total = None
        self._progress.update(
            self._task,
            completed=self.rows,
            of=_of(task.total),
            rate=rate,
            size=format_bytes(self.bytes),
        )
        self._progress.refresh()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class JobProgressBar:
    """The whole partitioned job's progress: parts done/total, rows, rows/s, bytes and ETA.

    A live bar when ``enabled`` and the stream is a terminal, silent otherwise (the CLI's
    ``--progress`` prints :meth:`rowstream._jobs.JobProgress.line` to a log instead). Given
    as ``live=``, it moves with the rows every running part reads: the bar fills by rows
    when the planner estimated them (by parts otherwise), redrawn at most 4 times a second
    and whenever a part finishes.

    Example::

        with JobProgressBar(enabled=True) as bar:
            await export_dataset(url, "orders", "orders/", jobs=4, live=bar.update)
    """

    def __init__(self, *, enabled: bool, stream: TextIO | None = None) -> None:
        out = stream if stream is not None else sys.stderr
        self._out = out
        self.live = enabled and out.isatty()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last = 0.0
        self._parts_shown = -1
        #: What the bar shows now: rows read (finished parts and running ones), parts done.
        self.rows = 0
        self.parts = 0

    def __enter__(self) -> JobProgressBar:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("[bold]export[/]"),
                BarColumn(),
                TextColumn("{task.fields[parts]} parts"),
                TextColumn("{task.fields[rows]} rows"),
                TextColumn("{task.fields[rate]} rows/s"),
                TextColumn("{task.fields[size]}"),
                TextColumn("ETA {task.fields[eta]}"),
                console=Console(file=self._out),
                transient=True,
                auto_refresh=False,
            )
            self._progress.start()
        return self

    def update(self, state: JobProgress) -> None:
        """Show ``state``: after every finished part, and as running parts read rows."""
        if self._progress is None:
            return
        now = time.monotonic()
        if state.parts_done == self._parts_shown and now - self._last < 1 / _REFRESH_PER_SECOND:
            return
        self._last, self._parts_shown = now, state.parts_done
        self.rows, self.parts = state.rows_seen, state.parts_done
        if state.estimated_rows and state.parts_done < state.parts_total:
            # By rows; a low estimate grows with the rows rather than show past 100%.
            total, completed = max(state.estimated_rows, self.rows), self.rows
        else:
            total, completed = state.parts_total, state.parts_done
        eta = state.eta
        parts, rows = f"{state.parts_done}/{state.parts_total}", f"{self.rows:,}"
        rate, size = f"{state.rows_per_second:,.0f}", format_bytes(state.bytes)
        left = "-" if eta is None else f"{eta:.0f} s"
        if self._task is None:
            self._task = self._progress.add_task(
                "export", total=total, parts=parts, rows=rows, rate=rate, size=size, eta=left
            )
        self._progress.update(
            self._task,
            total=total,
            completed=completed,
            parts=parts,
            rows=rows,
            rate=rate,
            size=size,
            eta=left,
        )
        self._progress.refresh()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _of(total: float | None) -> str:
    # "of ~N": the total is the planner's estimate, not a count.
    return f" of ~{total:,.0f}" if total else ""
