"""Encoders into memory, no database: what each sink writes for the rows it is given, and
:class:`rowstream._sinks.Sinks` picking the encoder for what a reader delivers."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rowstream import ConfigurationError
from rowstream._arrow import ArrowColumn
from rowstream._sinks import CsvSink, JsonlSink, RenderedJsonlSink, Sinks

ROWS = [
    (1, "a,b", None, Decimal("1.50"), datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), b"\x00\xff"),
    (2, "", "x", Decimal("-0.01"), None, None),
]
NAMES = ["id", "text", "maybe", "amount", "at", "raw"]


def test_csv_renders_as_copy() -> None:
    out = io.BytesIO()
    sink = CsvSink(out)
    sink.begin(NAMES)
    sink.write_rows(ROWS)
    sink.write_rows(ROWS[:1])  # a row alone is written a field at a time: the same bytes
    sink.finish()
    assert out.getvalue().decode().splitlines() == [
        "id,text,maybe,amount,at,raw",
        '1,"a,b",,1.50,2024-01-02 03:04:05+00,\\x00ff',
        '2,"",x,-0.01,,',
        '1,"a,b",,1.50,2024-01-02 03:04:05+00,\\x00ff',
    ]


def test_jsonl_renders_as_to_jsonb() -> None:
    out = io.BytesIO()
    sink = JsonlSink(out)
    sink.begin(NAMES)
    sink.write_rows(ROWS[1:])
    assert out.getvalue() == (
        b'{"id": 2, "text": "", "maybe": "x", "amount": -0.01, "at": null, "raw": null}\n'
    )


def test_rendered_jsonl_writes_the_servers_text_as_is() -> None:
    out = io.BytesIO()
    sinks = Sinks("jsonl", out)
    sink = sinks.rows(["a", "b"], rendered=True)
    sink.write_rows([("1.50", None), ('"x"', "[1, 2]")])
    sink.write_rows([('{"k": 1}', "true")])
    sinks.finish()
    assert out.getvalue().decode().splitlines() == [
        '{"a": 1.50, "b": null}',
        '{"a": "x", "b": [1, 2]}',
        '{"a": {"k": 1}, "b": true}',
    ]
    assert isinstance(sink, RenderedJsonlSink)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_encoded_bytes_pass_through(fmt: str) -> None:
    out = io.BytesIO()
    sinks = Sinks(fmt, out)  # type: ignore[arg-type]
    sinks.encoded(["x"]).write_bytes(b"already encoded\n")
    sinks.finish()
    assert out.getvalue() == b"already encoded\n"  # no header: COPY wrote its own


def test_parquet_rows_with_types_and_inferred() -> None:
    out = io.BytesIO()
    sinks = Sinks("parquet", out, "zstd")
    columns = [ArrowColumn("id", pa.int32()), ArrowColumn("text", None)]
    sinks.rows(["id", "text"], columns).write_rows([(1, "a"), (2, None)])
    sinks.finish()
    table = pq.read_table(pa.BufferReader(out.getvalue()))
    assert table.schema.field("id").type == pa.int32()
    assert table.schema.field("text").type == pa.string()
    assert table.to_pylist() == [{"id": 1, "text": "a"}, {"id": 2, "text": None}]


def test_parquet_batches_and_an_empty_file_keeps_its_schema() -> None:
    out = io.BytesIO()
    sinks = Sinks("parquet", out)
    columns = [ArrowColumn("n", pa.decimal128(10, 2))]
    sink = sinks.batches(columns)
    batch = pa.RecordBatch.from_pydict({"n": pa.array([Decimal("1.25")], pa.decimal128(10, 2))})
    sink.write_batch(batch)
    sinks.finish()
    assert pq.read_table(pa.BufferReader(out.getvalue())).column("n").to_pylist() == [
        Decimal("1.25")
    ]
    empty = io.BytesIO()
    nothing = Sinks("parquet", empty)
    nothing.batches(columns)
    nothing.finish()
    assert pq.read_schema(pa.BufferReader(empty.getvalue())).field("n").type == pa.decimal128(10, 2)


def test_parquet_value_that_does_not_fit_is_a_sink_error() -> None:
    from rowstream import SinkError

    sinks = Sinks("parquet", io.BytesIO())
    sink = sinks.rows(["n"], [ArrowColumn("n", pa.int8())])
    with pytest.raises(SinkError, match="cannot write these values to Parquet"):
        sink.write_rows([(1000,)])
    sinks.abort()


def test_each_format_takes_only_what_it_can_encode() -> None:
    with pytest.raises(ConfigurationError, match="Parquet cannot take encoded text"):
        Sinks("parquet", io.BytesIO()).encoded(["x"])
    with pytest.raises(ConfigurationError, match="csv takes rows, not Arrow batches"):
        Sinks("csv", io.BytesIO()).batches([ArrowColumn("x", pa.int64())])


def test_abort_drops_what_is_pending() -> None:
    # Rows wait for a full row group: an abort drops them, nothing reaches the destination.
    out = io.BytesIO()
    sinks = Sinks("parquet", out)
    sinks.rows(["x"]).write_rows([(1,)])
    sinks.abort()
    sinks.finish()  # nothing left open: a no-op
    assert out.getvalue() == b""
