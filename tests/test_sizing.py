"""Batch sizing by bytes: parse_size, deep_size and BatchSizer."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from rowstream import DEFAULT_BATCH_BYTES, ConfigurationError
from rowstream._sizing import (
    FIRST_BATCH_ROWS,
    GROWTH,
    MAX_BATCH_ROWS,
    MIN_BATCH_ROWS,
    BatchSizer,
    deep_size,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100", 100),
        ("100b", 100),
        ("512k", 512 * 1024),
        ("512KiB", 512 * 1024),
        ("4MB", 4 * 1024**2),
        ("4 MB", 4 * 1024**2),
        ("1.5m", int(1.5 * 1024**2)),
        ("1GiB", 1024**3),
        (" 2g ", 2 * 1024**3),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "4XB", "kb", "MB4"])
def test_parse_size_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ConfigurationError, match="like 4MB"):
        parse_size(text)


@pytest.mark.parametrize("text", ["0", "-1", "-4MB", "0.0001"])
def test_parse_size_refuses_sizes_that_are_not_positive(text: str) -> None:
    with pytest.raises(ConfigurationError, match="positive"):
        parse_size(text)


class _Entity:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def test_deep_size_follows_containers_rows_and_objects() -> None:
    text = "x" * 10_000
    assert deep_size(text) >= 10_000
    assert deep_size([text, text]) >= 20_000
    assert deep_size({"a": {"b": [text]}}) >= 10_000
    assert deep_size(_Entity(id=1, doc=text)) >= 10_000
    # SQLAlchemy's instance state is not the row's data: counted as a fixed amount.
    assert deep_size(_Entity(_sa_instance_state=text)) < 10_000


def test_deep_size_stops_at_a_depth_limit() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert deep_size(loop) < 10_000


def narrow_rows(n: int) -> list[tuple[int, int, str]]:
    return [(i, i * 7, "paid") for i in range(n)]


def wide_rows(n: int, width: int) -> list[tuple[int, str]]:
    return [(i, "x" * width) for i in range(n)]


def grow(sizer: BatchSizer, width: int, batches: int) -> list[int]:
    """The sizes ``sizer`` asks for over ``batches`` batches of rows ``width`` characters wide."""
    sizes = []
    for _ in range(batches):
        size = sizer.next_rows()
        sizes.append(size)
        sizer.observe(wide_rows(size, width))
    return sizes


def test_first_batch_is_one_row_then_grows_geometrically_to_batch_bytes() -> None:
    sizer = BatchSizer(batch_rows=None, batch_bytes=None)
    assert sizer.batch_bytes == DEFAULT_BATCH_BYTES
    assert FIRST_BATCH_ROWS == 1
    sizes = grow(sizer, 1_000, 7)
    assert sizes[:4] == [1, GROWTH, GROWTH**2, GROWTH**3]
    # ~1 KB rows and 4 MiB batches: a few thousand rows, the seeds' "medium" rule, reached
    # and then held.
    assert 2_000 <= sizes[-1] <= 4_200
    assert sizes[-1] == sizes[-2]


def test_narrow_rows_reach_the_ceiling_in_a_few_batches() -> None:
    sizer = BatchSizer(batch_rows=None, batch_bytes=None)
    sizes = [sizer.next_rows()]
    for _ in range(10):
        sizer.observe(narrow_rows(sizes[-1]))
        sizes.append(sizer.next_rows())
    assert sizes[:6] == [1, 8, 64, 512, 4096, MAX_BATCH_ROWS]
    assert sizes[-1] == MAX_BATCH_ROWS


@pytest.mark.parametrize("width", [5_000_000, 50_000_000])
def test_rows_wider_than_batch_bytes_come_one_at_a_time(width: int) -> None:
    sizer = BatchSizer(batch_rows=None, batch_bytes=None)
    assert grow(sizer, width, 5) == [MIN_BATCH_ROWS] * 5


def test_growth_never_passes_what_the_measured_width_allows() -> None:
    # 1 MiB rows: four fit in 4 MiB, however many batches came before.
    sizer = BatchSizer(batch_rows=None, batch_bytes=None)
    assert grow(sizer, 1024 * 1024, 6) == [1, 3, 3, 3, 3, 3]  # 3 of ~1 MiB + overhead each
    sizer = BatchSizer(batch_rows=None, batch_bytes=1024)
    sizer.observe(wide_rows(3, 100_000))
    assert sizer.next_rows() == MIN_BATCH_ROWS


def test_after_a_stretch_of_wide_rows_batches_grow_again_step_by_step() -> None:
    sizer = BatchSizer(batch_rows=None, batch_bytes=None)
    grow(sizer, 100, 8)
    assert sizer.next_rows() == MAX_BATCH_ROWS
    sizer.observe(wide_rows(1, 10_000_000))
    assert sizer.next_rows() == 1
    sizes = grow(sizer, 100, 60)
    # Narrow again: never more than GROWTH times the batch before (not back to the old
    # ceiling at once), and the ceiling comes back.
    assert sizes[0] == 1
    assert all(b <= a * GROWTH for a, b in itertools.pairwise(sizes))
    assert sizes[-1] == MAX_BATCH_ROWS


def test_wider_rows_shrink_batches_at_once_narrower_rows_grow_them_gradually() -> None:
    sizer = BatchSizer(batch_rows=None, batch_bytes=1024 * 1024)
    grow(sizer, 100, 8)  # past the growth: at the size batch_bytes allows
    before = sizer.next_rows()
    sizer.observe(wide_rows(100, 10_000))
    wide = sizer.next_rows()
    # Rows 40x wider, followed at once (not averaged): memory must not spike on a stretch
    # of wide rows.
    assert wide < before / 20
    sizer.observe(wide_rows(100, 100))
    assert wide < sizer.next_rows() < before


def test_observe_estimates_the_batch_size() -> None:
    sizer = BatchSizer(batch_rows=None, batch_bytes=None)
    rows = wide_rows(1_000, 1_000)
    estimate = sizer.observe(rows)
    assert 1_000 * 1_000 <= estimate <= 1_000 * 1_300
    assert sizer.observe([]) == 0


def test_batch_rows_fixes_the_size() -> None:
    sizer = BatchSizer(batch_rows=250, batch_bytes=None)
    assert sizer.next_rows() == 250
    sizer.observe(wide_rows(250, 100_000))
    assert sizer.next_rows() == 250


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"batch_rows": 0, "batch_bytes": None}, "batch_rows"),
        ({"batch_rows": None, "batch_bytes": 0}, "batch_bytes"),
    ],
)
def test_bad_sizes_are_refused(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BatchSizer(**arguments)
