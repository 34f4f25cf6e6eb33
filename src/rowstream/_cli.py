"""The ``rowstream`` command: a thin layer that turns arguments into API calls.

Each subcommand lives in its own module with ``register(subparsers)``, which adds its parser and
sets ``run`` (an ``async`` function taking the parsed arguments and returning an exit code).
rowstream's errors become one line on stderr and a non-zero exit, never a traceback.

Signals: SIGINT (Ctrl-C), SIGTERM (systemd, Kubernetes, Celery) and SIGHUP (a closed terminal)
all cancel the running command, so its query is cancelled on the server and its temporary file
removed; one line says so and the exit status is 128 + the signal's number (130, 143, 129), as
a shell reports a process the signal ended. Only this entry point installs handlers: importing
rowstream leaves a process's signals alone.

A closed standard output (``rowstream export ... -o - | head -1``) ends the command quietly,
as ``cat`` or ``seq`` end when their reader goes: the query is cancelled, nothing is printed,
and the exit status is 141 (128 + SIGPIPE), what a shell reports for them.

Start-up time is part of the interface (``rowstream --help`` should answer at once, and a small
export should not wait for modules it does not use): registering a subcommand imports nothing
heavy, each ``run`` imports what its own path needs, and asyncio loads only once a command runs.
Command modules' docstrings are their ``--help`` descriptions, so they are plain text.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from ._atomic import StdoutClosed
from ._exceptions import ConfigurationError, RowstreamError

COMMANDS = ("rowstream._demo", "rowstream._cli_export", "rowstream._cli_doctor")

# The process is ours: Arrow's C++ allocations (the Parquet encoder's buffers among them) go
# to jemalloc, which returns freed pages sooner than the default mimalloc. It must be chosen
# before pyarrow loads; measured on the 5M-row orders export to Parquet: 15 MB less peak RSS.
# A partitioned export picks its own (rowstream._allocators), unless the user named one.
USER_ARROW_POOL = os.environ.get("ARROW_DEFAULT_MEMORY_POOL")
if sys.platform.startswith("linux"):
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_STDOUT_CLOSED = 128 + signal.SIGPIPE
# The signals that stop a command the way Ctrl-C does, and the line each prints.
STOP_SIGNALS = {signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Import a command's modules with the cyclic collector paused, then freeze what loaded.

    SQLAlchemy's import allocates enough to trigger full collections, each walking every
    module object loaded so far; frozen, those objects are never walked again during the
    command. Measured on a 1-row PostgreSQL export: 0.40 s less CPU time, about a third
    (docs/benchmarks.md). The process is ours, so the collector is ours to tune; the little
    cyclic garbage the imports leave stays for the command's lifetime.
    """
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, not argparse's usage block: say what is wrong and where help is.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rowstream",
        description="Stream very large SQL result sets with flat memory.",
    )
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def _version() -> str:
    from . import __version__

    return f"rowstream {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import asyncio  # here, not at the top: --help and usage errors never need it

    received: list[signal.Signals] = []
    try:
        code: int = asyncio.run(_run(args, received))
    except KeyboardInterrupt:
        print("rowstream: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except asyncio.CancelledError:
        if not received:
            raise
        print(f"rowstream: {STOP_SIGNALS[received[0]]}", file=sys.stderr)
        return 128 + received[0]
    except StdoutClosed:
        _silence_stdout()
        return EXIT_STDOUT_CLOSED
    except ConfigurationError as exc:
        print(f"rowstream: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RowstreamError as exc:
        print(f"rowstream: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return code


async def _run(args: argparse.Namespace, received: list[signal.Signals]) -> int:
    """Run the command; SIGTERM and SIGHUP cancel it as asyncio.run() does on SIGINT."""
    import asyncio

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def stop(signum: signal.Signals) -> None:
        received.append(signum)
        task.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    try:
        result: Any = await args.run(args)
        return int(result)
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def _silence_stdout() -> None:
    # Python flushes sys.stdout at exit: into a closed pipe that prints "Exception ignored
    # ... BrokenPipeError". Point the descriptor at /dev/null first (Python's documented way).
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
