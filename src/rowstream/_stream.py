"""``rowstream.stream``: the one context-managed way to stream a SELECT.

Data path: source (URL, engine, session) -> plan -> strategy (cursor or keyset) -> batches
sized by bytes -> the caller, one item at a time or one batch at a time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from ._cursor import CursorStrategy
from ._exceptions import ConfigurationError, RowstreamError
from ._plan import Plan, Statement, make_plan
from ._sizing import DEFAULT_BATCH_BYTES, BatchSizer
from ._source import ResolvedSource, Source, resolve_source
from ._strategy import Strategy, shielded

StrategyName = Literal["auto", "cursor"]
STRATEGIES = ("auto", "cursor")


@dataclass
class Stats:
    """What a stream has read so far. ``bytes`` is an estimate of the Python size of the rows."""

    rows: int = 0
    batches: int = 0
    bytes: int = 0
    reconnects: int = 0
    strategy: str = ""
    started: float = field(default=0.0, repr=False)
    finished: float | None = field(default=None, repr=False)

    @property
    def elapsed(self) -> float:
        """Seconds since the stream opened (until it closed, once closed)."""
        if not self.started:
            return 0.0
        return (self.finished or time.perf_counter()) - self.started

    @property
    def rows_per_second(self) -> float:
        elapsed = self.elapsed
        return self.rows / elapsed if elapsed > 0 else 0.0


class RowStream:
    """An open stream; use it as ``async with rowstream.stream(...) as rows``.

    ``async for item in rows`` gives one item at a time (an ORM instance for a single-entity
    select, a Row otherwise) with one await per batch, not per row; ``rows.batches()`` gives
    lists; ``rows.stats`` tells how much was read.
    """

    def __init__(
        self,
        source: Source,
        statement: Statement,
        *,
        batch_rows: int | None = None,
        batch_bytes: int | None = DEFAULT_BATCH_BYTES,
        strategy: StrategyName = "auto",
        key: Any = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ConfigurationError(
                f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}"
            )
        self._plan: Plan = make_plan(statement)
        self._sizer = BatchSizer(batch_rows=batch_rows, batch_bytes=batch_bytes)
        self._source_arg = source
        self._strategy_name = strategy
        self._key = key
        self._source: ResolvedSource | None = None
        self._strategy: Strategy | None = None
        self._state: Literal["new", "open", "closed"] = "new"
        self._done = False
        self.stats = Stats()

    @property
    def orm(self) -> bool:
        """True when items are ORM instances."""
        return self._plan.scalars

    def keys(self) -> list[str]:
        """The names of the result's columns."""
        self._check_open()
        assert self._strategy is not None
        return self._strategy.keys()

    async def __aenter__(self) -> RowStream:
        if self._state != "new":
            raise RowstreamError("a stream can be opened once: call rowstream.stream() again")
        self._state = "open"
        self.stats.started = time.perf_counter()
        try:
            self._source = resolve_source(self._source_arg)
            self._strategy = self._choose_strategy(self._source)
            self.stats.strategy = self._strategy.name
            await self._strategy.open()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the cursor, roll back, return the connection; safe to call twice."""
        if self._state == "closed":
            return
        self._state = "closed"
        self.stats.finished = time.perf_counter()
        if self._strategy is not None:
            await shielded(self._strategy.aclose())
        if self._source is not None:
            await shielded(self._source.aclose())

    def _choose_strategy(self, source: ResolvedSource) -> Strategy:
        return CursorStrategy(source, self._plan)

    def _check_open(self) -> None:
        if self._state == "new":
            raise RowstreamError(
                "the stream is not open: use it as `async with rowstream.stream(...) as rows:`"
            )
        if self._state == "closed":
            raise RowstreamError(
                "the stream is closed: read it inside its `async with rowstream.stream(...)` block"
            )

    async def _next_batch(self) -> list[Any]:
        self._check_open()
        if self._done:
            return []
        assert self._strategy is not None
        batch = await self._strategy.fetch(self._sizer.next_rows())
        if not batch:
            self._done = True
            return batch
        stats = self.stats
        stats.rows += len(batch)
        stats.batches += 1
        stats.bytes += self._sizer.observe(batch)
        return batch

    async def batches(self) -> AsyncIterator[list[Any]]:
        """Yield the rows in lists, each about ``batch_bytes`` large (or ``batch_rows`` long)."""
        while batch := await self._next_batch():
            yield batch

    async def _items(self) -> AsyncIterator[Any]:
        while batch := await self._next_batch():
            for item in batch:
                yield item

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items()


def stream(
    source: Source,
    statement: Statement,
    *,
    batch_rows: int | None = None,
    batch_bytes: int | None = DEFAULT_BATCH_BYTES,
    strategy: StrategyName = "auto",
    key: Any = None,
) -> RowStream:
    """Stream the rows of ``statement`` from ``source`` with flat memory.

    ``source`` is a URL string (``postgresql://``, ``mysql://``, ``mariadb://``,
    ``sqlite:///path``), an AsyncEngine, an AsyncConnection or an AsyncSession (whose engine
    lends a connection; the session itself stays usable). The stream runs in a transaction on a
    connection of its own, which is rolled back and returned on every exit path.

    Example::

        async with rowstream.stream(engine, select(Order).where(Order.status == "paid")) as rows:
            async for order in rows:
                total += order.total_cents
        print(rows.stats.rows, rows.stats.rows_per_second)
    """
    return RowStream(
        source,
        statement,
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        strategy=strategy,
        key=key,
    )
