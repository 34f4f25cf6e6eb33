"""Fixtures live in small plugins under tests/plugins (loaded from pyproject's addopts)."""
