"""One part of a distributed export, written on the sync face (no event loop).

A Celery worker runs :func:`write_part` under any pool: prefork, threads, gevent, eventlet
(an event loop per task would collide with another greenlet's under gevent: "asyncio.run()
cannot be called from a running event loop").

coordinator's plan (:class:`PgPart`: the part's SQL, its columns, the snapshot) -> a
connection joined to the snapshot, verified -> COPY -> :mod:`rowstream._sinks` -> atomic file

- CSV and JSONL: COPY text on psycopg 3, the statements of the async readers
  (:mod:`rowstream._readers._pgcopy`), so the same bytes;
- Parquet: ADBC's binary COPY (:func:`rowstream._pgarrow.copy_to_arrow_blocking`), as on the
  async face.

Every wait is bounded. Connecting and starting the transaction: libpq's connect timeout, TCP
keepalive and user timeout (:data:`rowstream._watchdog.LIBPQ_KEEPALIVE`). Reading: the read
deadline of the sync face (:class:`rowstream._watchdog.SyncWatchdog`, ``read_timeout``): when
no data came for that long and the server is not working on the query, the connection is given
up and the part fails with a ConnectionLostError (a network gone silent behind a proxy or a
pooler, which keepalive cannot see); the ledger then sends the part again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigurationError
from .._pgcopy import SETTINGS, PgColumn, Unescape, jsonl_query
from .._snapshot import POINT_QUERY, SnapshotInfo, cannot_join, check_point, join_statement
from .._watchdog import DEFAULT_READ_TIMEOUT

if TYPE_CHECKING:
    import psycopg
    from sqlalchemy.engine import URL

    from .._sinks import Sinks
    from .._sinks._options import Format
    from .._watchdog import SyncWatchdog

__all__ = ["PgPart", "write_part"]

#: Bytes of COPY data gathered before they go to the sink: psycopg hands over one row at a time.
GATHER_BYTES = 128 * 1024


@dataclass(frozen=True)
class PgPart:
    """What a worker needs to write one part, planned by the coordinator (JSON in the ledger)."""

    #: The part's statement, rendered and checked by the coordinator (checked again here).
    sql: str
    #: Its columns as the catalog describes them (JSONL and Parquet; none for CSV).
    columns: tuple[PgColumn, ...]
    format: Format
    compression: str | None
    snapshot: SnapshotInfo
    #: Parts written at once by one worker: each gets that share of the memory budget.
    share: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "sql": self.sql,
            "columns": [asdict(c) for c in self.columns],
            "format": self.format,
            "compression": self.compression,
            "snapshot": self.snapshot.as_dict(),
            "share": self.share,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PgPart:
        from .._sinks._format import format_for_path

        try:
            fmt, compression = format_for_path(None, data["format"], data["compression"])
            return cls(
                str(data["sql"]),
                tuple(PgColumn(**c) for c in data["columns"]),
                fmt,
                compression,
                SnapshotInfo(**data["snapshot"]),
                int(data.get("share", 1)),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"the job's part plan lacks {exc}: it was planned by another version of "
                "rowstream; run the export again without resume, with one version everywhere"
            ) from None


def write_part(
    url: str | URL,
    part: PgPart,
    path: Path,
    *,
    read_timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> tuple[int, int]:
    """Write ``part`` from the database at ``url`` to ``path`` (atomically); return (rows,
    bytes). Nothing is written when the snapshot cannot be joined (the coordinator is gone)
    or the read deadline expires."""
    from sqlalchemy.pool import NullPool

    from .._guard import check_read_only
    from .._source import mask_url
    from .._watchdog import SyncWatchdog, check_read_timeout, sync_dispose
    from ._source import create_engine

    # The ledger's folder is shared: what it says to run is checked again before it is sent.
    sql = check_read_only(part.sql, "postgresql")
    read_timeout = check_read_timeout(read_timeout)
    # The read deadline's liveness check connects through this engine (and only it).
    engine = create_engine(url, poolclass=NullPool)
    watchdog = SyncWatchdog(engine, read_timeout, where=mask_url(engine.url), resumable=False)
    try:
        return _write(engine.url, sql, part, path, watchdog)
    finally:
        sync_dispose(engine)


def _write(url: URL, sql: str, part: PgPart, path: Path, watchdog: SyncWatchdog) -> tuple[int, int]:
    from .._jobs import MIN_ROW_GROUP_BYTES
    from .._sinks import Sinks
    from .._sinks._output import open_output

    whole_file = part.compression if part.format != "parquet" else None
    row_group = None
    if part.format == "parquet":
        from .._sinks._parquet import ROW_GROUP_BYTES

        row_group = max(MIN_ROW_GROUP_BYTES, ROW_GROUP_BYTES // max(1, part.share))
    with open_output(path, whole_file) as out:
        sinks = Sinks(part.format, out.out, part.compression, row_group_bytes=row_group)
        try:
            if part.format == "parquet":
                rows = _parquet(url, sql, part, sinks, watchdog)
            else:
                rows = _copy_text(url, sql, part, sinks, watchdog)
            sinks.finish()
        except BaseException:
            sinks.abort()
            raise
    return rows, out.size


def _parquet(url: URL, sql: str, part: PgPart, sinks: Sinks, watchdog: SyncWatchdog) -> int:
    from .._pgarrow import copy_to_arrow_blocking
    from .._pgtypes import PgRead

    read = PgRead(list(part.columns))
    sink = sinks.batches(read.columns)
    return copy_to_arrow_blocking(
        url, sql, read, sink.write_batch, watchdog, snapshot=part.snapshot, share=part.share
    )


def _copy_text(url: URL, sql: str, part: PgPart, sinks: Sinks, watchdog: SyncWatchdog) -> int:
    import psycopg

    from .._translate import translate

    if part.format == "csv":
        # CSV's header comes from COPY, as in rowstream._pgcopy.copy_csv.
        statement = f"COPY ({sql}) TO STDOUT (FORMAT csv, HEADER true)"
        sink = sinks.encoded([])
        lines = None
    else:
        statement = f"COPY ({jsonl_query(sql, part.columns)}) TO STDOUT"
        sink = sinks.encoded([c.name for c in part.columns])
        lines = Unescape()
    try:
        with _session(url, part.snapshot) as conn, conn.cursor() as cursor:
            with watchdog.watch(lambda: conn) as watch, cursor.copy(statement) as copy:
                for chunk in _gathered(copy, watch.kick):
                    if lines is None:
                        sink.write_bytes(chunk)
                    else:
                        for piece in lines.feed(chunk):
                            sink.write_bytes(piece)
            rows = max(0, cursor.rowcount)
    except psycopg.Error as exc:
        raise translate(exc, url=url, resumable=False) from None
    if lines is not None:
        for piece in lines.end():
            sink.write_bytes(piece)
    return rows


def _gathered(copy: psycopg.Copy, arrived: Callable[[], None]) -> Iterator[bytes]:
    """COPY's data in pieces of about :data:`GATHER_BYTES` (psycopg yields a row at a time);
    ``arrived`` is told each time some came."""
    held: list[bytes | bytearray | memoryview] = []
    size = 0
    for data in copy:
        arrived()
        held.append(data)
        size += len(data)
        if size >= GATHER_BYTES:
            yield b"".join(held)
            held.clear()
            size = 0
    if held:
        yield b"".join(held)


@contextlib.contextmanager
def _session(url: URL, snapshot: SnapshotInfo) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection in a read-only REPEATABLE READ transaction at ``snapshot``
    (verified), with the output settings COPY's text depends on."""
    import psycopg

    from .._pgarrow import libpq_conninfo
    from .._source import mask_url
    from .._translate import translate

    if snapshot.id is None:
        raise ConfigurationError("the part's snapshot has no id: only PostgreSQL's can be joined")
    try:
        conn = psycopg.connect(libpq_conninfo(url), autocommit=True)
    except psycopg.Error as exc:
        raise translate(exc, url=url, connecting=True, resumable=False) from None
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            conn.execute(join_statement(snapshot.id))
        except psycopg.Error as exc:
            raise cannot_join(snapshot.id, mask_url(url), exc) from None
        point = conn.execute(POINT_QUERY).fetchone()
        check_point(str(point[0]) if point else "", snapshot.point)
        for setting in SETTINGS:
            conn.execute(setting)
        yield conn
    finally:
        # Read-only: closing ends the transaction, nothing to commit.
        with contextlib.suppress(Exception):
            conn.close()
