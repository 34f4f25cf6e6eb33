"""A private MariaDB with a binary log (the shared one runs without): ``mariadb_binlog_url``.

Started on first use, once per test session, on a free loopback port; it stops with the session.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import _bringup


class _BinlogStack(_bringup.Stack):
    """The harness's private MariaDB, started with a binary log instead of without."""

    def _spawn(
        self, argv: list[str], log: Path, *, user: str | None, stop: signal.Signals
    ) -> subprocess.Popen[bytes]:
        if "--skip-log-bin" in argv:
            argv = [a for a in argv if a != "--skip-log-bin"]
            argv += ["--log-bin=mariadb-bin", "--server-id=1", "--binlog-format=ROW"]
        return super()._spawn(argv, log, user=user, stop=stop)


@pytest.fixture(scope="session")
def mariadb_binlog_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _BinlogStack(tmp_path_factory.mktemp("binlog"), private=True) as stack:
        yield stack.mariadb()
