"""The keyset strategy: pages by key, each page a complete query in its own short transaction.

``WHERE (a, b) > (:a, :b) ORDER BY a, b LIMIT n`` holds no cursor, no long transaction and no
old snapshot, so it is the strategy of choice behind a transaction-pooling pooler, and on
MySQL/MariaDB it lets selectinload() send its queries on the same connection.

The sync twin, rowstream._sync._keyset, is generated from this module (tools/unasync.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.selectable import Select

from ._acompat import Watchdog, abandon, exact_temporals, release, shielded
from ._convert import conversion_error, first_failure, raw_window, unlocated
from ._exceptions import ConnectionLostError, QueryError, RowstreamError, StreamKeyError
from ._keys import Key, pageable
from ._plan import Plan
from ._readonly import ReadOnlyTransaction
from ._source import ResolvedSource
from ._temporal import DEFAULT_INFINITY, Infinity, refusal, refused_by_driver, window
from ._translate import is_conversion_error, raise_translated, translate
from ._zerodates import DEFAULT_ZERO_DATES, ZeroDates


class KeysetStrategy:
    """Read ``plan`` page by page in the order of ``key``, starting after ``after``."""

    name = "keyset"

    def __init__(
        self,
        source: ResolvedSource,
        plan: Plan,
        key: Key,
        *,
        after: tuple[Any, ...] | None = None,
        setup: tuple[str, ...] = (),
        watchdog: Watchdog | None = None,
        infinity: Infinity = DEFAULT_INFINITY,
        zero_dates: ZeroDates = DEFAULT_ZERO_DATES,
    ) -> None:
        statement = plan.statement
        if not isinstance(statement, Select):
            raise StreamKeyError("keyset pages need a select(); use strategy='cursor' for text()")
        refusal = pageable(statement, key)
        if refusal:
            raise StreamKeyError(f"cannot page this statement by key: {refusal}")
        self._source = source
        self._plan = plan
        self._base = statement.order_by(None).order_by(*key.columns)
        self._key = key
        self._last = after
        self._setup = setup
        self._watchdog = watchdog or Watchdog(source.engine, None)
        self._infinity = infinity
        self._zero_dates = zero_dates
        self._keys = list(statement.selected_columns.keys())
        self.exhausted = False

    async def open(self) -> None:
        """Nothing to open: every page connects, reads and lets go on its own."""

    def keys(self) -> list[str]:
        return self._keys

    async def fetch(self, size: int) -> list[Any]:
        if self.exhausted:
            return []
        statement = self._base
        if self._last is not None:
            statement = statement.where(self._key.after(self._last, dialect=self._source.dialect))
        # One row past the page: it tells whether another page follows, and whether the key
        # repeats across the boundary, where the next page (key > last) would skip rows.
        statement = statement.limit(size + 1)
        source = self._source
        if source.borrowed is not None:
            borrowed = source.borrowed
            async with self._watchdog.watch(lambda: borrowed, owned=False):
                rows = await self._page(borrowed, statement)
        else:
            rows = await self._owned_page(statement)
        if len(rows) > size:
            self._check_boundary(rows[size - 1], rows[size])
            del rows[size:]
        else:
            self.exhausted = True
        if rows:
            self._last = self._key.of(rows[-1])
        return rows

    def _check_boundary(self, last: Any, beyond: Any) -> None:
        value = self._key.of(last)
        self._key.check_known(value)
        if self._key.of(beyond) == value:
            names = ", ".join(self._key.names)
            shown = value[0] if len(value) == 1 else value
            raise StreamKeyError(
                f"the key ({names}) is not unique: {shown!r} appears more than once, and "
                "keyset pages would skip rows at a page boundary; declare the real primary "
                "key (or a unique constraint), pass key= with unique columns, or use "
                "strategy='cursor'",
                key=names,
                value=shown,
            )

    async def _owned_page(self, statement: Select[Any]) -> list[Any]:
        """One page on a connection of its own: connect, begin, read, roll back, let go.

        Every step is bounded by the read timeout and translated: a drop anywhere (even in
        the rollback after the rows arrived) is a ConnectionLostError the stream resumes from.
        """
        source = self._source
        url = source.engine.url
        conn: AsyncConnection | None = None
        try:
            async with self._watchdog.watch(lambda: conn):
                try:
                    conn = await source.engine.connect()
                except Exception as exc:
                    # Before the first page the server was never reached: a plain connect
                    # error. Later, the stream was running: a drop it can resume from.
                    raise_translated(exc, url=url, connecting=self._last is None)
                async with ReadOnlyTransaction(conn) as transaction:
                    rows = await self._page(conn, statement)
                    # Read-only: nothing to keep, and a rollback is the cheapest end.
                    await transaction.rollback()
        except Exception as exc:
            error = translate(exc, url=url)
            if conn is not None:
                if isinstance(error, ConnectionLostError):
                    await abandon(conn)
                else:
                    await release(conn)
            if error is exc:
                raise
            raise error from exc
        except BaseException:
            # Cancelled: the connection may be half-way through a page; do not pool it.
            if conn is not None:
                await shielded(abandon(conn))
            raise
        await release(conn)
        return rows

    async def _page(self, conn: AsyncConnection, statement: Select[Any]) -> list[Any]:
        try:
            for sql in self._setup:
                await conn.exec_driver_sql(sql)
            async with exact_temporals(conn, self._infinity, self._zero_dates):
                if self._plan.orm:
                    session = AsyncSession(bind=conn, autoflush=False, expire_on_commit=False)
                    try:
                        result = await session.execute(statement)
                        rows = list(result.scalars().all() if self._plan.scalars else result.all())
                    finally:
                        await session.close()
                    return rows
                return list((await conn.execute(statement)).all())
        except Exception as exc:
            if refused_by_driver(exc):
                raise await _temporal_error(conn, statement, exc, self._source) from exc
            if is_conversion_error(exc):
                raise await _conversion_error(conn, statement, exc, self._source) from exc
            raise_translated(exc, url=self._source.engine.url)

    async def aclose(self) -> None:
        """Each page already let go of its connection."""


async def _conversion_error(
    conn: AsyncConnection, page: Select[Any], exc: Exception, source: ResolvedSource
) -> QueryError:
    """Name the column and value a row of ``page`` failed to convert on: the page is read
    again, whole, with result processing off (see rowstream._convert)."""
    fallback = unlocated(exc, source.engine.url)
    window = raw_window(page, source.engine.dialect, skip=0, limit=page._limit or 0)
    if window is None:
        return fallback
    try:
        rows = (await conn.execute(window.statement)).all()
    except Exception:
        return fallback  # the diagnosis is a bonus: the error stands without it
    return conversion_error(first_failure(rows, window), fallback)


async def _temporal_error(
    conn: AsyncConnection, page: Select[Any], exc: Exception, source: ResolvedSource
) -> RowstreamError:
    """psycopg refused a date or timestamp Python cannot hold, naming no column: the page is
    read again with loaders that mark such values (see rowstream._temporal)."""
    fallback = translate(exc, url=source.engine.url)
    found = window(page, skip=0, limit=page._limit or 0)
    if found is None:
        return fallback
    statement, names = found
    try:
        async with exact_temporals(conn, "error", "refuse", diagnose=True):
            rows = (await conn.execute(statement)).all()
    except Exception:
        return fallback  # the diagnosis is a bonus: the error stands without it
    return refusal(rows, names) or fallback
