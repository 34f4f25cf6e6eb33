"""The export plan: what to read, how (``method``), into which format; decided before any row.

source -> statement -> **plan** -> reader -> pipeline -> sink -> report

The choice between PostgreSQL's COPY and :func:`rowstream.stream` is :attr:`ExportPlan.method`,
made once by :func:`choose_method` (I/O-free); the reader is then picked from the plan alone
(:func:`rowstream._readers.pick_reader`). A partition of a partitioned export is one more
plan: its statement carries the key range, :attr:`ExportPlan.snapshot` says the borrowed
connection reads at a shared snapshot (so COPY may run on it, and a reader that opens a
connection of its own joins the same snapshot), and :attr:`ExportPlan.share` how many such
plans run at once (each reader's buffers get that share of one budget).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._exceptions import ConfigurationError
from ._sinks._options import Format, check_edge_values
from ._sizing import DEFAULT_BATCH_BYTES
from ._values import DEFAULT_ZERO_DATES, PlanColumn, ZeroDates, check_zero_dates
from ._watchdog import DEFAULT_READ_TIMEOUT, check_read_timeout

if TYPE_CHECKING:
    from ._arrow import ArrowColumn
    from ._snapshot import SnapshotInfo
    from ._source import ResolvedSource
    from ._statement import Statement, TableOrStatement

__all__ = [
    "METHODS",
    "ExportMethod",
    "ExportOptions",
    "ExportPlan",
    "Method",
    "check_method",
    "check_text_columns",
    "choose_method",
    "plan_export",
]

#: What a caller asks for: ``auto`` lets :func:`choose_method` decide.
ExportMethod = Literal["auto", "copy", "stream"]
#: What a plan holds: the server renders the rows (``COPY``), or rowstream streams them.
Method = Literal["copy", "stream"]
METHODS: tuple[ExportMethod, ...] = ("auto", "copy", "stream")
InfinityChoice = Literal["error", "null", "clamp", "text"]
NanChoice = Literal["error", "null", "text"]


@dataclass(frozen=True)
class ExportOptions:
    """How rows are read and which values may be changed on the way; validated once."""

    batch_rows: int | None = None
    batch_bytes: int | None = DEFAULT_BATCH_BYTES
    read_timeout: float | None = DEFAULT_READ_TIMEOUT
    infinity: str = "error"
    nan: str = "error"
    zero_dates: ZeroDates = DEFAULT_ZERO_DATES
    text_columns: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.batch_rows is not None and self.batch_rows < 1:
            raise ConfigurationError(f"batch_rows must be at least 1, not {self.batch_rows}")
        if self.batch_bytes is not None and self.batch_bytes < 1:
            raise ConfigurationError(f"batch_bytes must be positive, not {self.batch_bytes}")
        check_edge_values(self.infinity, self.nan)
        object.__setattr__(self, "zero_dates", check_zero_dates(self.zero_dates))
        object.__setattr__(self, "read_timeout", check_read_timeout(self.read_timeout))


def check_text_columns(options: ExportOptions, dialect: str) -> None:
    """text_columns fix SQLite's (and MariaDB's) mixed columns; PostgreSQL casts in SQL."""
    if options.text_columns and dialect == "postgresql":
        raise ConfigurationError(
            "text_columns (--text-columns) is for MariaDB and SQLite: on PostgreSQL, cast "
            "the column to text in the query (col::text)"
        )


def check_method(requested: str) -> None:
    """Refuse an unknown method before anything connects."""
    if requested not in METHODS:
        raise ConfigurationError(
            f"unknown export method {requested!r}: choose one of {', '.join(METHODS)}"
        )


def choose_method(requested: str, dialect: str, borrowed: bool) -> Method:
    """COPY on PostgreSQL when rowstream opens the connection, else the stream.

    >>> choose_method("auto", "postgresql", borrowed=False)
    'copy'
    >>> choose_method("auto", "sqlite", borrowed=False)
    'stream'
    """
    check_method(requested)
    can_copy = dialect == "postgresql" and not borrowed
    if requested == "copy" and not can_copy:
        raise ConfigurationError(
            "method='copy' needs PostgreSQL and a URL or engine (not a connection)"
        )
    return "copy" if can_copy and requested != "stream" else "stream"


@dataclass(frozen=True)
class ExportPlan:
    """Everything a reader needs to know, and nothing about the output but its format."""

    statement: Statement
    format: Format
    method: Method
    dialect: str
    options: ExportOptions
    #: The Parquet type of each column, when the statement's types give them (MariaDB, SQLite).
    arrow: list[ArrowColumn] | None = None
    #: What each column's values need to be exact (rowstream._values); None: nothing known.
    kinds: list[PlanColumn] | None = None
    #: PostgreSQL: the statement as its readers send it (checked to be one read), else "".
    sql: str = ""
    #: A partition's plan: the snapshot the borrowed connection reads at (None: any other
    #: export). COPY runs on that connection; ADBC's connection joins the snapshot.
    snapshot: SnapshotInfo | None = None
    #: Plans read at once (a partitioned export's jobs): each reader's buffers take 1/share.
    share: int = 1


async def plan_export(
    resolved: ResolvedSource,
    table_or_statement: TableOrStatement,
    *,
    format: Format,
    method: str,
    where: str | None,
    columns: Sequence[str] | None,
    options: ExportOptions,
    snapshot: SnapshotInfo | None = None,
    share: int = 1,
) -> ExportPlan:
    """The plan for exporting ``table_or_statement`` from ``resolved`` (reflects a MariaDB or
    SQLite table, or probes a text query's types, for Parquet).

    ``snapshot``: ``resolved`` borrows a connection in a read-only transaction at this
    PostgreSQL snapshot (a partition's reader); ``method="auto"`` then reads with COPY on it,
    as a single export does, when the connection is asyncpg's. ``share``: see
    :attr:`ExportPlan.share`.
    """
    from sqlalchemy.sql.elements import TextClause
    from sqlalchemy.sql.selectable import TextualSelect

    from ._coltypes import query_kinds, typed_arrow
    from ._statement import build_statement, render_sql

    if share < 1:
        raise ConfigurationError(f"share must be at least 1, not {share}")
    # COPY needs asyncpg's copy_from_query; a snapshot reader on another driver streams.
    copies_on_borrowed = (
        snapshot is not None
        and snapshot.id is not None
        and resolved.dialect == "postgresql"
        and resolved.engine.dialect.driver == "asyncpg"
    )
    borrowed = resolved.borrowed is not None and not copies_on_borrowed
    chosen = choose_method(method, resolved.dialect, borrowed)
    check_text_columns(options, resolved.dialect)
    statement, arrow, kinds = await build_statement(
        resolved, table_or_statement, where, columns, format
    )
    if resolved.dialect == "postgresql":
        # The sync side: the dialect is all rendering needs, and a COPY export then never
        # wraps it in an AsyncEngine (see rowstream._source.ResolvedSource).
        sql = render_sql(resolved.sync_engine, statement)
        return ExportPlan(
            statement,
            format,
            chosen,
            resolved.dialect,
            options,
            sql=sql,
            snapshot=snapshot if resolved.borrowed is not None else None,
            share=share,
        )
    if kinds is None and isinstance(statement, (TextClause, TextualSelect)):
        statement, kinds = await query_kinds(resolved, statement)
    arrow = typed_arrow(
        arrow, kinds, resolved.dialect, format, options.zero_dates, options.text_columns
    )
    return ExportPlan(
        statement, format, chosen, resolved.dialect, options, arrow, kinds, share=share
    )
