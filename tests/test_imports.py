"""What each entry point imports, in a fresh interpreter: only what its path needs.

Start-up time is what a user of the CLI waits for on every call (SQLAlchemy alone takes about
0.3 s to import, pyarrow more), so ``import rowstream``, ``rowstream --help`` and a CSV export
must not load what they do not use. The times themselves are measured, not asserted: see
docs/benchmarks.md.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rowstream

HEAVY = ("sqlalchemy", "pyarrow", "rich", "asyncio", "asyncpg", "asyncmy", "aiosqlite", "psycopg")
_SRC = str(Path(rowstream.__file__).resolve().parents[1])


def loaded_after(code: str) -> set[str]:
    """Which of HEAVY a fresh interpreter has loaded after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": _SRC, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_import_rowstream_loads_nothing_heavy() -> None:
    assert loaded_after("import rowstream") == set()


def test_public_names_load_on_first_use() -> None:
    assert loaded_after("import rowstream; rowstream.RowstreamError; rowstream.Stats") >= {
        "sqlalchemy"
    }
    # The sync face is reachable as an attribute, as README's rowstream.sync.stream(...).
    assert "pyarrow" not in loaded_after("import rowstream; rowstream.sync.stream")


def test_lazy_names_are_the_modules_own() -> None:
    from rowstream import _stream, sync

    assert rowstream.stream is _stream.stream
    assert rowstream.sync is sync
    assert {"sync", *rowstream.__all__} <= set(dir(rowstream))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rowstream.nope  # noqa: B018


def test_help_and_the_parser_load_nothing_heavy() -> None:
    code = (
        "import contextlib, io\n"
        "from rowstream._cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['export', '--help'])"
    )
    assert loaded_after(code) == set()


def test_csv_export_loads_no_pyarrow_and_no_rich(tmp_path: Path) -> None:
    database = tmp_path / "one.db"
    code = (
        "import sqlite3\n"
        f"db = sqlite3.connect({str(database)!r})\n"
        "db.execute('CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)')\n"
        "db.execute(\"INSERT INTO t VALUES (1, 'a')\")\n"
        "db.commit()\n"
        "from rowstream._cli import main\n"
        f"assert main(['export', 'sqlite:///{database}', '--table', 't', "
        f"'-o', {str(tmp_path / 'one.csv')!r}]) == 0"
    )
    loaded = loaded_after(code)
    assert {"sqlalchemy", "aiosqlite"} <= loaded
    assert not loaded & {"pyarrow", "rich", "asyncpg", "asyncmy", "psycopg"}
    assert (tmp_path / "one.csv").read_text() == "id,name\n1,a\n"


def _imports_of(path: Path, package: str) -> set[str]:
    """The rowstream modules ``path`` imports, at any depth of the file (a function's lazy
    import is a cycle at call time), outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    skipped = {
        id(node)
        for guard in ast.walk(tree)
        if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test)
        for node in ast.walk(guard)
    }
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("rowstream"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("rowstream"))
    return found


def test_no_module_of_rowstream_imports_itself_in_a_cycle() -> None:
    root = Path(_SRC) / "rowstream"
    modules: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        # The package's lazy __getattr__ loads submodules on attribute access only.
        graph[name] = {m for m in _imports_of(path, package) if m in modules and m != name}
        if path.name != "__init__.py":
            graph[name] -= {"rowstream", "rowstream._sync"}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_a_postgresql_csv_export_loads_no_orm(pg_url: str, tmp_path: Path) -> None:
    # A URL's COPY runs on a bare asyncpg connection: sqlalchemy.ext.asyncio, which loads
    # the ORM (a seventh of a 1-row export's start-up), is never imported (issue 11).
    target = tmp_path / "one.csv"
    code = (
        "import sys\n"
        "from rowstream._cli import main\n"
        f"assert main(['export', {pg_url!r}, '--query', 'SELECT 1 AS x', "
        f"'-o', {str(target)!r}, '-q']) == 0\n"
        "print(sorted(m for m in sys.modules if m.startswith(('sqlalchemy.orm', "
        "'sqlalchemy.ext'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": _SRC, "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert target.read_text() == "x\n1\n"
