"""rowstream doctor URL: explain a database setup and say whether streaming will work through it.

Given a Celery broker's URL (amqp://, redis://), it reports the broker's timeouts that bound
how long one partition of a distributed job may run.

It connects the way a stream does, and reports: server and driver versions, whether a pooler
sits in between and how it pools, the server's timeouts, whether a server-side cursor and a
named prepared statement survive, and the settings to use. It exits non-zero when a stream
would fail.
"""

# This docstring is the command's --help description: plain text, no markup. The diagnosis
# itself lives in rowstream._doctor, imported by run() only: registering the parser must not
# load SQLAlchemy (see rowstream._cli).

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._cli import loading


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="explain a database setup and whether streaming will work through it",
        description=__doc__,
    )
    parser.add_argument(
        "url",
        help="database URL, e.g. postgresql://user@host:6432/db, or a Celery broker's "
        "(amqp://..., redis://...)",
    )
    parser.set_defaults(run=run)


async def run(args: argparse.Namespace) -> int:
    with loading():
        from ._broker_doctor import diagnose_broker, is_broker_url
        from ._doctor import doctor

    if is_broker_url(args.url):
        diagnosis = diagnose_broker(args.url)
    else:
        diagnosis = await doctor(args.url)
    width = max(len(name) for name, _ in diagnosis.facts)
    for name, value in diagnosis.facts:
        print(f"{name:<{width}}  {value}")
    for line in diagnosis.advice:
        print(f"advice: {line}")
    for line in diagnosis.problems:
        print(f"problem: {line}", file=sys.stderr)
    what = "partitions" if is_broker_url(args.url) else "streaming"
    print(f"{what}: " + ("ok" if diagnosis.ok else "WILL FAIL, see the problems above"))
    return 0 if diagnosis.ok else 1
