"""Issue 9's acceptance check: streams whose connections are killed five times each.

For each path (PostgreSQL directly, through a PgBouncer in transaction mode, MariaDB) and each
strategy (cursor, keyset), ``--streams`` streams (20) read a numbered table of ``--rows`` rows
while :mod:`tests.faults` kills their connections five times at different points (mid-fetch,
as a statement starts, in a keyset page's rollback); a stream is exact when every row arrived
once, in order. Prints "N of 20 exact" per combination, and the first error of any other.

    python bench/faults_terminations.py                       # 300k rows, 20 streams each
    python bench/faults_terminations.py --pgbouncer URL       # an existing PgBouncer
    python bench/faults_terminations.py --rows 50000 --streams 3   # a quick check

Without ``--pgbouncer`` a private PgBouncer 1.18 is started with the test harness's bring-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import faults
from tests.plugins import _bringup

TABLE = "bench_faults"
# Narrower rows than the tests' (300k of them): MariaDB's kernel-buffered tail (a few MB)
# stays behind the last kill point.
PAD = 100


async def combination(
    stream_url: str, admin_url: str, strategy: str, rows: int, streams: int
) -> tuple[int, int, list[str]]:
    exact = kills = 0
    errors: list[str] = []
    for seed in range(streams):
        outcome = await faults.terminated_stream(
            stream_url, admin_url, strategy, rows, batch_rows=2_000, seed=seed, table=TABLE
        )
        exact += outcome.exact and outcome.kills == 5
        kills += outcome.kills
        if outcome.error is not None or outcome.kills != 5:
            errors.append(f"stream {seed}: kills={outcome.kills} {outcome.error}")
    return exact, kills, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--mysql", default="mysql://root@127.0.0.1:3306/test")
    parser.add_argument("--pgbouncer", help="a PgBouncer URL (default: start a private one)")
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--streams", type=int, default=20)
    args = parser.parse_args()

    for url in (args.pg, args.mysql):
        faults.make_table(url, args.rows, TABLE, pad=PAD)
    with contextlib.ExitStack() as stack:
        bouncer = args.pgbouncer
        if bouncer is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            bouncer = stack.enter_context(_bringup.Stack(workdir, private=True)).pgbouncer(args.pg)
        paths = {
            "postgresql": (args.pg, args.pg),
            "pgbouncer": (bouncer, args.pg),
            "mariadb": (args.mysql, args.mysql),
        }
        print(f"{args.streams} streams x 5 terminations, {args.rows:,} rows each")
        failed = False
        for path, (stream_url, admin_url) in paths.items():
            for strategy in ("cursor", "keyset"):
                started = time.perf_counter()
                exact, kills, errors = asyncio.run(
                    combination(stream_url, admin_url, strategy, args.rows, args.streams)
                )
                seconds = time.perf_counter() - started
                print(
                    f"{path:<11} {strategy:<7} {exact} of {args.streams} exact "
                    f"({kills} terminations, {seconds:.0f}s)"
                )
                for error in errors[:3]:
                    print(f"    {error}")
                failed = failed or exact != args.streams
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
