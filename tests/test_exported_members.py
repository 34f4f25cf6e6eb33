"""``rowstream.__all__`` lists every public name, sorted (as httpx checks its own)."""

from __future__ import annotations

import rowstream


def test_all_is_complete() -> None:
    exported = set(rowstream.__all__)
    # Every export exists; asking for each also loads the lazy ones into vars(rowstream).
    assert all(hasattr(rowstream, name) for name in exported)
    public = {
        name
        for name, value in vars(rowstream).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("rowstream")
    }
    # Every public object defined in rowstream is exported.
    assert public - exported == set()


def _isort_style(name: str) -> tuple[int, str]:
    # ruff's RUF022 order, which the project's lint enforces: CONSTANTS, then Classes, then
    # functions, each group alphabetical.
    group = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return group, name


def test_all_is_sorted() -> None:
    assert rowstream.__all__ == sorted(rowstream.__all__, key=_isort_style)


def test_exported_members_belong_to_rowstream() -> None:
    # Public names say ``rowstream.X`` in reprs and tracebacks, not a private module.
    for name in rowstream.__all__:
        value = getattr(rowstream, name)
        module = getattr(value, "__module__", None)
        if module is not None and module.startswith("rowstream."):
            assert module.split(".")[1].startswith("_"), name
