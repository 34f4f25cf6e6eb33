"""Sinks: encoders (CSV, JSON Lines, Parquet) over a destination; they know nothing of databases.

source -> plan -> reader -> pipeline -> **sink** (encoder -> destination) -> report

Every encoder takes ``begin(columns)``, then ``write_rows(rows)`` for rows from
:func:`rowstream.stream`, then ``finish()`` (``abort()`` on a failure). A reader whose data
is already encoded or columnar hands it over as is: ``write_bytes`` (CSV, JSONL: what
PostgreSQL's COPY wrote) or ``write_batch`` (Parquet: Arrow record batches).

Destinations (:mod:`rowstream._sinks._output`): an atomic file, standard output, or any
writable binary stream; an encoder writes to a binary file-like object and never seeks,
opens or renames (:mod:`rowstream._atomic` does). :class:`Sinks` is the one place an encoder
is picked for an export. The Parquet encoder lives in :mod:`rowstream._sinks._parquet`,
imported only when used: pyarrow adds about 40 MB to every process that loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from .._exceptions import ConfigurationError
from ._csv import CsvSink
from ._jsonl import JsonlSink, RenderedJsonlSink
from ._options import COMPRESSIONS, DEFAULT_COMPRESSION, Format, check_compression

if TYPE_CHECKING:
    import pyarrow as pa

    from .._arrow import ArrowColumn

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "BatchSink",
    "CsvSink",
    "EncodedSink",
    "JsonlSink",
    "RenderedJsonlSink",
    "Sink",
    "Sinks",
    "check_compression",
]


class Sink(Protocol):
    """Rows in, encoded bytes out."""

    def begin(self, columns: Sequence[str]) -> None: ...

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None: ...

    def finish(self) -> None: ...


class EncodedSink(Protocol):
    """Takes bytes already in the output's format (COPY's CSV, the server's JSON lines)."""

    def write_bytes(self, data: bytes) -> None: ...

    def finish(self) -> None: ...


class BatchSink(Protocol):
    """Takes Arrow record batches of the columns it was made with."""

    def write_batch(self, batch: pa.RecordBatch) -> None: ...

    def finish(self) -> None: ...


class Sinks:
    """The encoder for one export, made when the reader knows its columns.

    A reader calls the one method that matches what it delivers: :meth:`rows` (values, or the
    server's text of them with ``rendered=True``), :meth:`encoded` (bytes in the format) or
    :meth:`batches` (Arrow). The pipeline then finishes or aborts what was opened.

    >>> import io
    >>> out = io.BytesIO()
    >>> sinks = Sinks("csv", out)
    >>> sinks.rows(["id", "name"]).write_rows([(1, "a"), (2, None)])
    >>> sinks.finish()
    >>> out.getvalue()
    b'id,name\\n1,a\\n2,\\n'
    """

    def __init__(
        self,
        format: Format,
        out: BinaryIO,
        compression: str | None = None,
        *,
        row_group_bytes: int | None = None,
    ) -> None:
        self.format = format
        self._out = out
        self._compression = compression
        #: Parquet: the Arrow data gathered per row group (None: the encoder's default); an
        #: export that is one of several at once takes its share of the budget.
        self._row_group_bytes = row_group_bytes
        self._opened: Any = None

    def rows(
        self,
        names: Sequence[str],
        arrow: Sequence[ArrowColumn] | None = None,
        *,
        rendered: bool = False,
    ) -> Sink:
        """An encoder for rows of ``names``, begun. ``arrow``: the Parquet type of each column
        (a column typed None, or no list, takes the type Arrow infers from the first rows);
        ``rendered``: the values are the server's text in the export's format."""
        sink: Sink
        if self.format == "csv":
            sink = CsvSink(self._out)
        elif self.format == "jsonl":
            sink = RenderedJsonlSink(self._out) if rendered else JsonlSink(self._out)
        else:
            from .._arrow import ArrowColumn

            columns = list(arrow) if arrow is not None else [ArrowColumn(n, None) for n in names]
            sink = self._parquet(columns)
        self._opened = sink
        sink.begin(names)
        return sink

    def encoded(self, names: Sequence[str]) -> EncodedSink:
        """A sink for bytes the server encoded in the export's format (CSV with its header)."""
        if self.format == "parquet":
            raise ConfigurationError("Parquet cannot take encoded text: read it as Arrow")
        sink = CsvSink(self._out) if self.format == "csv" else JsonlSink(self._out)
        self._opened = sink
        return sink

    def batches(self, columns: Sequence[ArrowColumn]) -> BatchSink:
        """A sink for Arrow record batches of ``columns`` (Parquet only)."""
        if self.format != "parquet":
            raise ConfigurationError(f"{self.format} takes rows, not Arrow batches")
        sink: BatchSink = self._parquet(list(columns))
        self._opened = sink
        return sink

    def _parquet(self, columns: list[ArrowColumn]) -> Any:
        from ._parquet import ROW_GROUP_BYTES, ParquetSink

        return ParquetSink(
            self._out,
            columns,
            compression=self._compression or DEFAULT_COMPRESSION,
            row_group_bytes=self._row_group_bytes or ROW_GROUP_BYTES,
        )

    def finish(self) -> None:
        """Finish what was opened (a Parquet file with no rows still gets its schema)."""
        if self._opened is not None:
            self._opened.finish()

    def abort(self) -> None:
        """Drop what was opened: no half-written footer; the destination discards the rest."""
        if self._opened is not None:
            self._opened.abort()
            self._opened = None
