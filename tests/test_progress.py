"""The export progress bar as a terminal shows it: rendered by rich into a fixed-width screen."""

from __future__ import annotations

import io
import re
import time

import pytest

from rowstream._jobs import JobProgress, PartMeter
from rowstream._progress import _REFRESH_PER_SECOND, ExportProgress, JobProgressBar

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_ETA = re.compile(r"\b\d+:\d\d:\d\d\b")


class Terminal(io.StringIO):
    """A screen that says it is a terminal, so the bar draws (rich honours COLUMNS)."""

    def isatty(self) -> bool:
        return True


def last_frame(screen: Terminal) -> str:
    frames = [f for f in _ANSI.sub("", screen.getvalue()).split("\r") if "export" in f]
    return frames[-1]


def draw(estimate: int | None, steps: list[int], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "140")
    screen = Terminal()
    with ExportProgress(enabled=True, estimate=estimate, stream=screen) as progress:
        for rows in steps:
            progress.advance(rows=rows, nbytes=rows * 100)
            # Past the redraw throttle, and a second sample for rich's rate and ETA.
            time.sleep(1.2 / _REFRESH_PER_SECOND)
        return last_frame(screen)


def test_known_estimate_shows_percentage_total_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = draw(1000, [100, 150], monkeypatch)
    assert " 25% " in frame
    assert "250 of ~1,000 rows" in frame
    assert _ETA.search(frame), frame
    assert "-:--:--" not in frame


def test_unknown_estimate_shows_rows_only(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = draw(None, [100, 150], monkeypatch)
    assert "250 rows" in frame and " of ~" not in frame
    assert "%" not in frame and not _ETA.search(frame), frame


def test_rows_past_the_estimate_drop_the_total(monkeypatch: pytest.MonkeyPatch) -> None:
    # The planner guessed 200; 250 arrived: no "125%", no finished ETA.
    frame = draw(200, [100, 150], monkeypatch)
    assert "250 rows" in frame and " of ~" not in frame
    assert "%" not in frame and not _ETA.search(frame), frame


def test_not_a_terminal_draws_nothing() -> None:
    screen = io.StringIO()
    with ExportProgress(enabled=True, estimate=1000, stream=screen) as progress:
        progress.advance(rows=10, nbytes=10)
    assert not progress.enabled and screen.getvalue() == ""
    assert (progress.rows, progress.bytes) == (10, 10)


def test_the_job_bar_moves_with_the_rows_of_running_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two parts read at once, as export_dataset's workers do: the bar shows their rows
    before any part is done, then every row and every part."""
    monkeypatch.setenv("COLUMNS", "140")
    screen = Terminal()
    state = JobProgress(parts_total=2, estimated_rows=1000)
    with JobProgressBar(enabled=True, stream=screen) as bar:
        first, second = PartMeter(state, bar.update), PartMeter(state, bar.update)
        first.advance(200)
        time.sleep(1.2 / _REFRESH_PER_SECOND)  # past the redraw throttle
        second.advance(300)
        assert (bar.rows, bar.parts) == (500, 0)
        frame = last_frame(screen)
        assert "0/2 parts" in frame and "500 rows" in frame
        first.advance(300)  # within the throttle: counted now, drawn later
        assert state.rows_seen == 800 and bar.rows == 500
        # A finished part is always drawn; its rows move from "reading" to "rows".
        first.finish()
        state.parts_done, state.rows = 1, 500
        bar.update(state)
        assert (bar.rows, bar.parts, state.reading) == (800, 1, 300)
        second.advance(200)
        second.finish()
        state.parts_done, state.rows = 2, 1000
        bar.update(state)
        assert (bar.rows, bar.parts, state.reading) == (1000, 2, 0)
        frame = last_frame(screen)
        assert "2/2 parts" in frame and "1,000 rows" in frame


def test_the_job_bar_is_quiet_off_a_terminal() -> None:
    screen = io.StringIO()
    with JobProgressBar(enabled=True, stream=screen) as bar:
        bar.update(JobProgress(parts_total=1, parts_done=1, rows=10))
    assert not bar.live and screen.getvalue() == "" and bar.rows == 0
