"""Every ``python`` and ``sh`` block of README.md runs as written against the test servers.

A newcomer copies the README's examples first; this test does the same, so they cannot rot.

- Fenced blocks are read in order. The info string's first word is the language: ``python`` and
  ``sh`` blocks run; ``text`` blocks and blocks without an info string are prose. A block that
  cannot run here (``pip install``) says so with ``no-run`` after its language
  (```` ```sh no-run````).
- The README's example URLs (:data:`URLS`) are replaced by the test servers', pointing at a
  database of the README's own on each server, filled with the seeds' shop
  (:func:`tests.models.seed`); the README's models map onto those tables.
- Python blocks share one namespace and run in order as in ``python -m asyncio``: top-level
  ``await`` is allowed and awaited on the test's event loop.
- Shell blocks run under ``bash -e -o pipefail``, with ``rowstream`` on PATH running this
  checkout's CLI.
- Everything runs in a temporary directory, since the examples write files.

The test says how many blocks it ran and fails if it ran none.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import sys
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

import rowstream
from tests import models
from tests.plugins import _bringup
from tests.plugins.servers import Servers

README = Path(__file__).resolve().parents[1] / "README.md"
RUNNABLE = ("python", "sh")
PROSE = ("", "text")
SKIP = "no-run"
SHELL_TIMEOUT = 120

# The README's example URLs and which test server each one means.
URLS = {
    "postgresql://app@pgbouncer:6432/shop": "pgbouncer",
    "postgresql://app@db/shop": "postgresql",
    "mysql://app@db/shop": "mariadb",
}
_URL = re.compile(r"\b(?:postgresql|mysql|mariadb|sqlite)(?:\+\w+)?://[^\s\"')]+")
_FENCE = re.compile(r"^```(.*)$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    runs: bool
    source: str


def read_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        words = fence.group(1).split()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start + 1}: the block is never closed")
        i += 1
        language = words[0] if words else ""
        runs = language in RUNNABLE and SKIP not in words[1:]
        blocks.append(Block(start + 1, language, runs, "\n".join(body) + "\n"))
    return blocks


def test_read_blocks_honours_languages_and_no_run() -> None:
    text = "x\n```python\na = 1\n```\n```sh no-run\npip install .\n```\n```\ntree\n```\n"
    blocks = read_blocks(text)
    assert [(b.line, b.language, b.runs, b.source) for b in blocks] == [
        (2, "python", True, "a = 1\n"),
        (5, "sh", False, "pip install .\n"),
        (8, "", False, "tree\n"),
    ]


@pytest.fixture
async def readme_urls(servers: Servers) -> AsyncIterator[dict[str, str]]:
    """A database of the README's own on PostgreSQL and MariaDB, filled with the seeds' shop.

    Its own, because the process example marks invoices as sent: the session's shared shop
    must stay as the other tests expect it.
    """
    made: list[sa.URL] = []
    urls: dict[str, str] = {}
    try:
        for dialect, server in (("postgresql", servers.pg_url), ("mariadb", servers.mysql_url)):
            parsed = make_url(server)
            database = parsed.set(database=f"{parsed.database}_readme")
            with warnings.catch_warnings():
                # asyncmy reports DROP DATABASE IF EXISTS's note as a warning.
                warnings.simplefilter("ignore")
                await _bringup._create_run_database(parsed, str(database.database))
            made.append(database)
            urls[dialect] = database.render_as_string(hide_password=False)
            engine = rowstream.create_engine(urls[dialect])
            try:
                await models.seed(engine)
            finally:
                await engine.dispose()
        bouncer = make_url(servers.pgbouncer_url).set(database=made[0].database)
        urls["pgbouncer"] = bouncer.render_as_string(hide_password=False)
        yield {example: urls[server] for example, server in URLS.items()}
    finally:
        for database in made:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                await _bringup._drop_run_database(database)


def substitute(source: str, urls: dict[str, str]) -> str:
    for example, real in urls.items():
        source = source.replace(example, real)
    return source


def rowstream_on_path(directory: Path) -> dict[str, str]:
    """An environment whose ``rowstream`` is this checkout's CLI, whatever is installed."""
    directory.mkdir()
    shim = directory / "rowstream"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rowstream "$@"\n')
    shim.chmod(0o755)
    source_root = str(Path(rowstream.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PATH"] = f"{directory}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (source_root, env.get("PYTHONPATH"))))
    return env


async def run_python(block: Block, source: str, namespace: dict[str, Any]) -> None:
    # dont_inherit: the README's code must not run under this module's __future__ imports.
    code = compile(
        source,
        f"README.md:{block.line}",
        "exec",
        flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        dont_inherit=True,
    )
    result = eval(code, namespace)  # exec that hands back a coroutine for top-level await
    if inspect.iscoroutine(result):
        await result


async def run_shell(block: Block, source: str, env: dict[str, str], cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-e",
        "-o",
        "pipefail",
        "-c",
        source,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SHELL_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(
            f"README.md:{block.line}: still running after {SHELL_TIMEOUT} s"
        ) from None
    assert proc.returncode == 0, (
        f"README.md:{block.line} exited {proc.returncode}:\n{source}\n{err.decode()}"
    )
    return out.decode()


async def test_readme_blocks_run_as_written(
    readme_urls: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocks = read_blocks(README.read_text())
    unknown = [b for b in blocks if b.language not in (*RUNNABLE, *PROSE)]
    assert not unknown, f"blocks with a language this test does not know: {unknown}"
    for block in blocks:
        if block.runs:
            strange = set(_URL.findall(block.source)) - set(URLS)
            assert not strange, f"README.md:{block.line}: add {strange} to URLS"

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    env = rowstream_on_path(tmp_path / "bin")
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    shell_output: list[str] = []
    ran = {"python": 0, "sh": 0}
    try:
        for block in blocks:
            if not block.runs:
                continue
            source = substitute(block.source, readme_urls)
            if block.language == "python":
                await run_python(block, source, namespace)
            else:
                shell_output.append(await run_shell(block, source, env, work))
            ran[block.language] += 1
    finally:
        for value in namespace.values():
            if isinstance(value, AsyncEngine):
                await value.dispose()
    printed = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nREADME.md: ran {ran['python']} Python and {ran['sh']} shell blocks", end=" ")
    assert ran["python"] and ran["sh"], f"README.md: no block ran ({ran})"

    # What the examples promise, checked on what they printed and wrote.
    completed = sum(
        1 for i in range(1, models.ORDERS + 1) if models.order_row(i)["status"] == "completed"
    )
    assert re.search(
        rf"Stats\(rows={completed}, batches=\d+, bytes=\d+, elapsed=\d+\.\d{{3}}, "
        r"rows_per_second=\d+, reconnects=0, strategy='\w+'\)",
        printed,
    ), printed
    assert f"Stats(rows={models.ORDERS}, " in printed  # the rowstream.sync example
    ready = sum(
        1 for i in range(1, models.INVOICES + 1) if models.invoice_row(i)["status"] != "sent"
    )
    assert f"\n{ready} " in f"\n{printed}", printed  # print(report.rows, report.batches, ...)
    engine = rowstream.create_engine(readme_urls["postgresql://app@db/shop"])
    try:
        async with engine.connect() as conn:
            left = await conn.scalar(
                sa.text("SELECT count(*) FROM invoices WHERE status = 'ready_to_send'")
            )
    finally:
        await engine.dispose()
    assert left == 0  # the process example sent every ready invoice
    assert pq.read_metadata(work / "orders.parquet").num_rows == completed
    # Partitioned exports: one file, a dataset, and the sync face's file.
    assert pq.read_metadata(work / "all-orders.parquet").num_rows == models.ORDERS
    assert pq.read_table(work / "all-orders").num_rows == models.ORDERS
    assert len((work / "all-orders.csv").read_text().splitlines()) == models.ORDERS + 1
    csv_lines = (work / "orders.csv").read_text().splitlines()
    assert csv_lines[0] == "id,total_cents" and len(csv_lines) == models.ORDERS + 1
    assert any("streaming: ok" in out for out in shell_output)  # rowstream doctor
