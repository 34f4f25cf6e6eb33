"""``rowstream demo`` as a user runs it: a real subprocess, a real file."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

ROWS = 20_000
SUMMARY = re.compile(
    r"^streamed (?P<rows>[\d,]+) rows to (?P<path>\S+) in [\d.]+ s "
    r"\((?P<rate>[\d,]+) rows/s, (?P<batches>\d+) batches\); "
    r"peak memory (?P<peak>\d+) MB \(before streaming (?P<before>\d+) MB\)$"
)


def test_demo_streams_the_orders_to_a_csv_file(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rowstream", "demo", "--rows", str(ROWS), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr

    output = tmp_path / "orders.csv"
    with output.open(newline="") as f:
        records = list(csv.reader(f))
    assert records[0] == ["id", "user_id", "total_cents", "status", "created_at", "note"]
    assert len(records) == ROWS + 1
    assert [int(r[0]) for r in records[1:]] == list(range(1, ROWS + 1))
    # Every 10th order has no note: an empty CSV field.
    assert records[10][5] == "" and records[11][5] == "order note 11"

    summary = done.stdout.strip().splitlines()[-1]
    match = SUMMARY.match(summary)
    assert match, summary
    assert int(match["rows"].replace(",", "")) == ROWS
    assert Path(match["path"]) == output
    assert int(match["batches"]) >= 2
    assert int(match["rate"].replace(",", "")) > 0
    assert int(match["peak"]) >= int(match["before"]) > 0


def test_demo_refuses_bad_arguments_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rowstream", "demo", "--rows", "many"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "--rows" in done.stderr and "--help" in done.stderr
