"""The ``rowstream`` command's own behaviour: help that reads as plain text in a terminal."""

from __future__ import annotations

import argparse
import subprocess
import sys

from rowstream._cli import build_parser


def subcommands() -> list[str]:
    parser = build_parser()
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


def help_text(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "rowstream", *argv, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_is_plain_text() -> None:
    names = subcommands()
    assert names == ["demo", "doctor", "export"]
    for argv in ([], *([name] for name in names)):
        text = help_text(*argv)
        assert "usage: rowstream" in text
        # Module docstrings are the descriptions: no reStructuredText or Markdown markup.
        for markup in ("`", ":mod:", ":func:", "**"):
            assert markup not in text, f"rowstream {' '.join(argv)} --help shows {markup!r}"


def test_each_subcommand_describes_itself() -> None:
    def words(*argv: str) -> str:
        return " ".join(help_text(*argv).split())  # argparse may wrap the description

    assert "rowstream export: a table or query into CSV" in words("export")
    assert "rowstream doctor URL: explain a database setup" in words("doctor")
    assert "rowstream demo: build a 1M-row SQLite orders table" in words("demo")
