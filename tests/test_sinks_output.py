"""Destinations without a database: byte counting, gzip, atomic files, caller's streams."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest

from rowstream import SinkError
from rowstream._sinks._output import check_target, is_stream, open_output, target_name


def test_a_stream_is_written_flushed_and_left_open() -> None:
    class Flushing(io.BytesIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            super().flush()

    buffer = Flushing()
    with open_output(buffer) as destination:
        destination.out.write(b"abc")
        destination.out.write(memoryview(b"de"))
        assert destination.bytes == 5
    assert buffer.getvalue() == b"abcde" and destination.size == 5
    assert buffer.flushes >= 1 and not buffer.closed


def test_an_object_with_only_write_is_enough() -> None:
    chunks: list[bytes] = []

    class Sink:
        def write(self, data: bytes) -> None:
            chunks.append(bytes(data))

    target = Sink()
    assert is_stream(target) and target_name(target) == "<Sink>"
    with open_output(target) as destination:
        destination.out.write(b"x")
    assert chunks == [b"x"]


def test_gzip_counts_the_compressed_bytes() -> None:
    buffer = io.BytesIO()
    with open_output(buffer, "gzip") as destination:
        destination.out.write(b"row\n" * 1000)
    assert gzip.decompress(buffer.getvalue()) == b"row\n" * 1000
    assert destination.size == len(buffer.getvalue()) < 4000


def test_a_failing_stream_is_one_sink_error() -> None:
    class Broken:
        name = "response body"

        def write(self, data: bytes) -> int:
            raise RuntimeError("client went away")

    failure = "cannot write to response body: RuntimeError: client"
    with pytest.raises(SinkError, match=failure), open_output(Broken()) as destination:
        destination.out.write(b"x")


def test_a_file_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with open_output(target) as destination:
        destination.out.write(b"id\n1\n")
        assert not target.exists()
    assert target.read_bytes() == b"id\n1\n" and destination.size == 5
    with pytest.raises(ValueError, match="boom"), open_output(target) as destination:
        destination.out.write(b"half")
        raise ValueError("boom")
    assert target.read_bytes() == b"id\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_targets_are_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="does not exist"):
        check_target(tmp_path / "nope" / "out.csv")
    with pytest.raises(SinkError, match="cannot write to a int"):
        check_target(42)  # type: ignore[arg-type]
    check_target("-")
    check_target(io.BytesIO())
    assert target_name(tmp_path / "a.csv") == str(tmp_path / "a.csv")
