"""Partition plans: one table split into many more pieces than readers, for ``jobs=N``.

Three kinds of plan, chosen from what the catalog says:

- ``ctid`` (PostgreSQL >= 14, a plain heap table): block ranges ``ctid >= '(a,0)' AND
  ctid < '(b,0)'``, which the server reads with TID range scans. They are sized from the real
  size of the heap and of its TOAST (``pg_relation_size``), not from ``relpages``, so a table
  that was never analyzed is split like any other, and one whose rows live mostly in TOAST gets
  as many partitions as its bytes call for. The last range is open-ended: whatever lies past
  the size read at planning is still read once.
- ``key`` (MariaDB, and PostgreSQL where ctid does not apply: views, partitioned tables, older
  servers, ``partition_by=``): ranges of one column, the primary key by default. Boundaries
  come from PostgreSQL's histogram when the table was analyzed, otherwise from a sample read
  in the column's order *by the server* (so the boundaries are ordered as the server compares,
  whatever the collation). The first and last ranges are open-ended, and a nullable column
  gets one more partition for ``IS NULL``: every row falls in exactly one partition.
- ``single`` (SQLite, a statement, a table without a usable key): one partition, one reader;
  ``PartitionPlan.note`` says why.

Predicates are built from quoted identifiers and literals rendered by SQLAlchemy (or integers,
for ctid), never from pasted text, and pass rowstream's read-only check
(:func:`rowstream._guard.check_where`).

The arithmetic (how many partitions, where they start) is I/O-free; the functions that ask the
catalog are the small async ones at the end.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from ._exceptions import ConfigurationError, QueryError
from ._guard import check_statement, check_where

__all__ = [
    "DEFAULT_MIN_PARTITION_BYTES",
    "DEFAULT_PARTITIONS_PER_JOB",
    "Partition",
    "PartitionPlan",
    "block_ranges",
    "partition_count",
    "plan_partitions",
    "plan_statement",
    "quantile_bounds",
]

#: Partitions per reader: enough that one slow partition does not hold the others up.
DEFAULT_PARTITIONS_PER_JOB = 6
#: Below this a partition costs more in round trips and part files than it saves.
DEFAULT_MIN_PARTITION_BYTES = 16 * 1024 * 1024
#: Rows read to place key boundaries when there is no histogram.
SAMPLE_ROWS = 20_000
#: A ctid range holds whole blocks: with at least this many, ranges differ by at most 1/8.
MIN_BLOCKS_PER_PARTITION = 8
#: PostgreSQL's TID range scan came in 14.
_TID_RANGE_SCAN = 140_000

Kind = Literal["all", "ctid", "key", "null"]
Method = Literal["single", "ctid", "key"]


@dataclass(frozen=True)
class Partition:
    """One piece of a table: its stable ``id`` (its place in the plan) and its bounds.

    ``lower`` is inclusive, ``upper`` exclusive, ``None`` is open. For ``ctid`` they are block
    numbers; for ``key`` values of ``column``; ``null`` is the rows whose column is NULL.
    """

    id: int
    kind: Kind
    lower: Any = None
    upper: Any = None
    column: str | None = None

    def where(self, dialect: Dialect) -> str | None:
        """The predicate as SQL for ``dialect`` (``None``: the whole table).

        >>> from sqlalchemy.dialects import postgresql
        >>> Partition(3, "ctid", 128, 256).where(postgresql.dialect())
        "ctid >= '(128,0)'::tid AND ctid < '(256,0)'::tid"
        """
        if self.kind == "all":
            return None
        if self.kind == "ctid":
            parts = []
            if self.lower is not None:
                parts.append(f"ctid >= '({int(self.lower)},0)'::tid")
            if self.upper is not None:
                parts.append(f"ctid < '({int(self.upper)},0)'::tid")
            return " AND ".join(parts) or "true"
        assert self.column is not None
        clause = self.clause(sa.column(self.column))
        sql = str(clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        # Rendered from quoted names and SQLAlchemy's literals: still, it must read as one
        # condition to the same check a user's --where gets.
        check_where(sql, dialect.name)
        return sql

    def narrowed(self, where: str | None, dialect: Dialect) -> str | None:
        """A caller's condition ``where`` and this part's predicate, as one condition.

        >>> from sqlalchemy.dialects import postgresql
        >>> Partition(0, "ctid", None, 8).narrowed("paid", postgresql.dialect())
        "(paid) AND (ctid < '(8,0)'::tid)"
        """
        predicate = self.where(dialect)
        if where is not None and predicate is not None:
            return f"({where}) AND ({predicate})"
        return predicate or where

    def clause(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """The predicate on ``column`` as a SQLAlchemy expression (key and null partitions)."""
        if self.kind == "null":
            return column.is_(None)
        if self.kind != "key":
            raise ConfigurationError(f"a {self.kind} partition has no key clause")
        conditions: list[sa.ColumnElement[bool]] = []
        if self.lower is not None:
            conditions.append(column >= sa.literal(self.lower))
        if self.upper is not None:
            conditions.append(column < sa.literal(self.upper))
        if not conditions:
            return column.is_not(None)
        return sa.and_(*conditions)

    def bounds(self) -> dict[str, Any]:
        """The bounds as JSON values, for the manifest."""
        return {
            "kind": self.kind,
            "column": self.column,
            "lower": _jsonable(self.lower),
            "upper": _jsonable(self.upper),
        }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass(frozen=True)
class PartitionPlan:
    """How a table is split. ``note`` says why a plan has the method it has."""

    method: Method
    partitions: tuple[Partition, ...]
    note: str = ""
    column: str | None = None
    #: Heap + TOAST (PostgreSQL) or data length (MariaDB), when the catalog knows it.
    relation_bytes: int | None = None
    #: The catalog's estimate of rows, for progress; None when unknown.
    estimated_rows: int | None = field(default=None)
    #: ctid plans: the heap's file node. A rewrite (VACUUM FULL, CLUSTER, some ALTER TABLEs)
    #: changes it and moves every row to another ctid: ranges of the old plan mean nothing.
    filenode: int | None = None

    def __len__(self) -> int:
        return len(self.partitions)


# ---------------------------------------------------------------- arithmetic (no I/O)


def partition_count(
    total_bytes: int | None,
    jobs: int,
    *,
    per_job: int = DEFAULT_PARTITIONS_PER_JOB,
    min_bytes: int = DEFAULT_MIN_PARTITION_BYTES,
) -> int:
    """How many partitions: ``per_job`` per reader, but none smaller than ``min_bytes``.

    An unknown size gets the full count; a small table gets fewer (one below ``min_bytes``).

    >>> partition_count(10 * 2**30, 4)
    24
    >>> partition_count(40 * 2**20, 4)
    2
    """
    if jobs < 1:
        raise ConfigurationError(f"jobs must be at least 1, not {jobs}")
    if per_job < 1 or min_bytes < 1:
        raise ConfigurationError("partitions per job and the minimum partition size must be > 0")
    wanted = jobs * per_job
    if total_bytes is None:
        return wanted
    return max(1, min(wanted, total_bytes // min_bytes))


def block_ranges(blocks: int, count: int) -> list[tuple[int, int | None]]:
    """``count`` block ranges over ``blocks`` heap blocks, as even as whole blocks allow.

    Each is ``[lower, upper)``; the first starts at 0 and the last is open (``None``), so rows
    in blocks added after the size was read are not lost. Never more ranges than blocks.

    >>> block_ranges(10, 3)
    [(0, 4), (4, 7), (7, None)]
    """
    count = max(1, min(count, blocks))
    # Rounded up: the larger pieces come first, and the open last one is not the largest.
    starts = [-(-i * blocks // count) for i in range(count)]
    uppers: list[int | None] = [*starts[1:], None]
    return list(zip(starts, uppers, strict=True))


def quantile_bounds(ordered: Sequence[Any], count: int) -> list[Any]:
    """At most ``count - 1`` boundaries cutting ``ordered`` (a sample sorted by the server)
    into ``count`` pieces of about equal size; repeated values give one boundary.

    >>> quantile_bounds(list(range(100)), 4)
    [25, 50, 75]
    >>> quantile_bounds([1, 1, 1, 1, 2, 3, 4, 5], 4)
    [1, 2, 4]
    """
    if count <= 1 or not ordered:
        return []
    bounds: list[Any] = []
    n = len(ordered)
    for i in range(1, count):
        value = ordered[(i * n) // count]
        if isinstance(value, str) and ("\\" in value or "\x00" in value):
            # A backslash reads differently with standard_conforming_strings off (the read-only
            # check refuses such a literal); a boundary fewer only merges two pieces.
            continue
        # The sample is in the server's order: equal neighbours are the only repeats to drop
        # (comparing with Python's < could disagree with the server's collation).
        if not bounds or bounds[-1] != value:
            bounds.append(value)
    return bounds


def key_partitions(
    column: str, bounds: Sequence[Any], *, nullable: bool, first_id: int = 0
) -> list[Partition]:
    """Ranges between ``bounds`` (open at both ends), and ``IS NULL`` when ``nullable``."""
    edges: list[Any] = [None, *bounds, None]
    parts = [
        Partition(first_id + i, "key", edges[i], edges[i + 1], column)
        for i in range(len(edges) - 1)
    ]
    if nullable:
        parts.append(Partition(first_id + len(parts), "null", column=column))
    return parts


def ctid_partitions(blocks: int, count: int) -> list[Partition]:
    return [
        Partition(i, "ctid", lower, upper)
        for i, (lower, upper) in enumerate(block_ranges(blocks, count))
    ]


def single(note: str) -> PartitionPlan:
    return PartitionPlan("single", (Partition(0, "all"),), note=note)


# ---------------------------------------------------------------- the catalog


@dataclass(frozen=True)
class _PgRelation:
    oid: int
    relkind: str
    heap: bool
    heap_bytes: int
    toast_bytes: int
    block_size: int
    reltuples: float
    filenode: int | None


_PG_RELATION = sa.text(
    "SELECT c.oid, c.relkind::text, coalesce(am.amname = 'heap', false), "
    "CASE WHEN c.relkind IN ('r', 'm') THEN pg_relation_size(c.oid) ELSE 0 END, "
    "CASE WHEN c.reltoastrelid <> 0 THEN pg_relation_size(c.reltoastrelid) ELSE 0 END, "
    "current_setting('block_size')::int, c.reltuples, pg_relation_filenode(c.oid) "
    "FROM pg_class c LEFT JOIN pg_am am ON am.oid = c.relam "
    "WHERE c.oid = to_regclass(:name)"
)


async def plan_partitions(
    conn: AsyncConnection,
    table: str,
    *,
    jobs: int,
    partition_by: str | None = None,
    per_job: int = DEFAULT_PARTITIONS_PER_JOB,
    min_bytes: int = DEFAULT_MIN_PARTITION_BYTES,
) -> PartitionPlan:
    """Split ``table`` (``name`` or ``schema.name``) for ``jobs`` readers.

    Reads the catalog only (and, for key ranges without a histogram, a sample of one column).

    Example::

        async with engine.connect() as conn:
            plan = await plan_partitions(conn, "orders", jobs=4)
        print(plan.method, len(plan))  # ctid 24
    """
    count = partition_count(None, jobs, per_job=per_job, min_bytes=min_bytes)
    dialect = conn.dialect.name
    schema, name = split_name(table)
    if dialect == "sqlite":
        return single("SQLite is read by one reader: it serves one file from one process")
    if jobs == 1 and partition_by is None:
        return single("one job: one reader")
    if dialect == "postgresql":
        rel = await _pg_relation(conn, schema, name)
        total = rel.heap_bytes + rel.toast_bytes if rel.relkind in ("r", "m") else None
        count = partition_count(total, jobs, per_job=per_job, min_bytes=min_bytes)
        version = int(await conn.scalar(sa.text("SHOW server_version_num")) or 0)
        if (
            partition_by is None
            and rel.relkind in ("r", "m")
            and rel.heap
            and version >= _TID_RANGE_SCAN
        ):
            blocks = max(1, math.ceil(rel.heap_bytes / rel.block_size))
            # A mostly-TOAST table has few heap blocks for many bytes: keep ranges of several
            # blocks, or one block more or less would unbalance them.
            count = min(count, max(1, blocks // MIN_BLOCKS_PER_PARTITION))
            note = "ctid block ranges sized from pg_relation_size (heap + TOAST)"
            rows = int(rel.reltuples) if rel.reltuples >= 0 else None
            return PartitionPlan(
                "ctid", tuple(ctid_partitions(blocks, count)), note, None, total, rows, rel.filenode
            )
        if count == 1:
            return single("too small to split")
        column, nullable = await _key_column(conn, schema, name, partition_by)
        if column is None:
            return single(f"no primary key on {table!r}: pass partition_by=COLUMN to split it")
        sample = await _pg_histogram(conn, schema, name, column)
        if not sample:
            sample = await _sample(conn, schema, name, column, rel.reltuples)
        bounds = quantile_bounds(sample, count)
        parts = key_partitions(column, bounds, nullable=nullable)
        return PartitionPlan("key", tuple(parts), "key ranges", column, total)
    # MariaDB / MySQL
    total, rows = await _mysql_size(conn, schema, name)
    count = partition_count(total, jobs, per_job=per_job, min_bytes=min_bytes)
    if count == 1:
        return single("too small to split")
    column, nullable = await _key_column(conn, schema, name, partition_by)
    if column is None:
        return single(f"no primary key on {table!r}: pass partition_by=COLUMN to split it")
    sample = await _sample(conn, schema, name, column, rows)
    bounds = quantile_bounds(sample, count)
    parts = key_partitions(column, bounds, nullable=nullable)
    return PartitionPlan("key", tuple(parts), "key ranges from a sample", column, total, rows)


#: A statement's partitions each get at least this many rows of the sample.
MIN_SAMPLE_ROWS_PER_PARTITION = 100


async def plan_statement(
    conn: AsyncConnection,
    statement: Any,
    *,
    jobs: int,
    partition_by: str | None = None,
    per_job: int = DEFAULT_PARTITIONS_PER_JOB,
) -> PartitionPlan:
    """Split a ``select()`` by ranges of one of its columns (``partition_by``).

    A statement has no ctid and no size in the catalog: the boundaries come from its column,
    read in the server's order (a random sample of it when PostgreSQL's planner expects many
    rows), and there is always an ``IS NULL`` partition (the column's nullability is unknown
    here; an empty part costs little). ``text()`` statements are read by one reader.

    Example::

        plan = await plan_statement(conn, select(orders).where(orders.c.paid), jobs=4,
                                    partition_by="id")
    """
    count = partition_count(None, jobs, per_job=per_job)
    # Nothing is sent (not even EXPLAIN) for a statement that is not a single read.
    check_statement(statement, conn.dialect)
    if conn.dialect.name == "sqlite":
        return single("SQLite is read by one reader: it serves one file from one process")
    if not isinstance(statement, sa.Select):
        return single("a text() statement is read by one reader: pass a select() or a table")
    if partition_by is None:
        return single("a statement is split only by partition_by=COLUMN (--partition-by)")
    if jobs == 1:
        return single("one job: one reader")
    sub = statement.subquery("rowstream_part")
    if partition_by not in sub.c:
        raise ConfigurationError(
            f"partition_by {partition_by!r} is not a column of the statement: it selects "
            + ", ".join(c.name for c in sub.c)
        )
    col = sub.c[partition_by]
    query = sa.select(col).where(col.is_not(None))
    rows = await _estimate_rows(conn, statement)
    if rows is not None and rows > SAMPLE_ROWS * 2:
        rand = sa.func.random() if conn.dialect.name == "postgresql" else sa.func.rand()
        query = query.where(rand < SAMPLE_ROWS / rows)
    sample = list((await conn.execute(query.order_by(col))).scalars())
    count = max(1, min(count, len(sample) // MIN_SAMPLE_ROWS_PER_PARTITION))
    parts = key_partitions(partition_by, quantile_bounds(sample, count), nullable=True)
    return PartitionPlan(
        "key", tuple(parts), "key ranges of the statement", partition_by, None, rows
    )


async def _estimate_rows(conn: AsyncConnection, statement: Any) -> int | None:
    """PostgreSQL's planner estimate of the statement's rows; None elsewhere."""
    if conn.dialect.name != "postgresql":
        return None
    sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    plan = await conn.scalar(sa.text(f"EXPLAIN (FORMAT JSON) {sql}"))
    data = json.loads(plan) if isinstance(plan, str) else plan
    return int(data[0]["Plan"]["Plan Rows"])


def split_name(name: str) -> tuple[str | None, str]:
    """``schema.table`` into its parts (a name with more dots is refused)."""
    if not name or any(not part for part in name.split(".")) or name.count(".") > 1:
        raise ConfigurationError(f"bad table name {name!r}: write table or schema.table")
    schema, _, table = name.rpartition(".")
    return schema or None, table


def _table(conn: AsyncConnection, schema: str | None, name: str) -> str:
    prep = conn.dialect.identifier_preparer
    quoted = prep.quote(name)
    return f"{prep.quote_schema(schema)}.{quoted}" if schema else quoted


async def _pg_relation(conn: AsyncConnection, schema: str | None, name: str) -> _PgRelation:
    row = (await conn.execute(_PG_RELATION, {"name": _table(conn, schema, name)})).first()
    if row is None:
        label = f"{schema}.{name}" if schema else name
        raise QueryError(f"unknown table {label!r}: check the name (schema.table)")
    return _PgRelation(
        int(row[0]),
        str(row[1]),
        bool(row[2]),
        int(row[3]),
        int(row[4]),
        int(row[5]),
        float(row[6]),
        int(row[7]) if row[7] is not None else None,
    )


async def pg_filenode(conn: AsyncConnection, table: str) -> int | None:
    """The heap's current file node (see :attr:`PartitionPlan.filenode`)."""
    schema, name = split_name(table)
    return (await _pg_relation(conn, schema, name)).filenode


async def _key_column(
    conn: AsyncConnection, schema: str | None, name: str, partition_by: str | None
) -> tuple[str | None, bool]:
    """The column to split on (the named one, or a one-column primary key) and whether it may
    hold NULL."""

    def inspect(sync: sa.Connection) -> tuple[list[dict[str, Any]], list[str]]:
        insp = sa.inspect(sync)
        columns = list(insp.get_columns(name, schema=schema))
        try:
            pk = list(insp.get_pk_constraint(name, schema=schema).get("constrained_columns") or [])
        except NotImplementedError:
            pk = []
        return [dict(c) for c in columns], pk

    try:
        columns, pk = await conn.run_sync(inspect)
    except sa.exc.NoSuchTableError:
        label = f"{schema}.{name}" if schema else name
        raise QueryError(f"unknown table {label!r}: check the name (schema.table)") from None
    by_name = {c["name"]: c for c in columns}
    if partition_by is not None:
        if partition_by not in by_name:
            raise ConfigurationError(
                f"unknown column {partition_by!r} in partition_by (--partition-by): the table "
                "has " + ", ".join(by_name)
            )
        return partition_by, bool(by_name[partition_by].get("nullable", True))
    if len(pk) != 1:
        return None, False
    return pk[0], bool(by_name[pk[0]].get("nullable", False))


async def _pg_histogram(
    conn: AsyncConnection, schema: str | None, name: str, column: str
) -> list[Any]:
    """The column's histogram bounds (sorted by the column's own ordering), if analyzed."""
    row = (
        await conn.execute(
            sa.text(
                "SELECT s.histogram_bounds::text, format_type(a.atttypid, a.atttypmod) "
                "FROM pg_stats s JOIN pg_attribute a ON a.attrelid = to_regclass(:rel) "
                "AND a.attname = s.attname "
                "WHERE s.schemaname = coalesce(:schema, current_schema()) "
                "AND s.tablename = :name AND s.attname = :column"
            ),
            {"rel": _table(conn, schema, name), "schema": schema, "name": name, "column": column},
        )
    ).first()
    if row is None or row[0] is None:
        return []
    # The bounds come back typed: the array text cast to the column's own array type.
    values = await conn.scalar(sa.text(f"SELECT CAST(:bounds AS {row[1]}[])"), {"bounds": row[0]})
    return list(values or [])


async def _sample(
    conn: AsyncConnection, schema: str | None, name: str, column: str, rows: float | None
) -> list[Any]:
    """About ``SAMPLE_ROWS`` values of the column, in the server's order, NULLs left out."""
    col: sa.ColumnClause[Any] = sa.column(column)
    source = sa.table(name, col, schema=schema)
    query = sa.select(col).select_from(source).where(col.is_not(None))
    if rows is not None and rows > SAMPLE_ROWS * 2:
        fraction = SAMPLE_ROWS / rows
        rand = sa.func.random() if conn.dialect.name == "postgresql" else sa.func.rand()
        query = query.where(rand < fraction)
    query = query.order_by(col)
    return list((await conn.execute(query)).scalars())


async def _mysql_size(
    conn: AsyncConnection, schema: str | None, name: str
) -> tuple[int | None, int | None]:
    """(bytes, rows) of a MariaDB table. DATA_LENGTH lags behind a table just loaded (48 KB
    for 17 MB, measured): the tablespace file's size, when the account may read it, is real."""
    row = (
        await conn.execute(
            sa.text(
                "SELECT DATA_LENGTH, TABLE_ROWS, COALESCE(:schema, DATABASE()) "
                "FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :name"
            ),
            {"schema": schema, "name": name},
        )
    ).first()
    if row is None:
        label = f"{schema}.{name}" if schema else name
        raise QueryError(f"unknown table {label!r}: check the name (schema.table)")
    size = int(row[0]) if row[0] is not None else None
    rows = int(row[1]) if row[1] is not None else None
    try:
        # A refusal (no PROCESS privilege) leaves the estimate; MariaDB's transaction goes on.
        on_disk = await conn.scalar(
            sa.text(
                "SELECT FILE_SIZE FROM information_schema.INNODB_SYS_TABLESPACES WHERE NAME = :name"
            ),
            {"name": f"{row[2]}/{name}"},
        )
    except sa.exc.DBAPIError:
        on_disk = None
    if on_disk is not None:
        size = max(size or 0, int(on_disk))
    return size, rows
