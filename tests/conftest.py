"""Fixtures live in small plugins under tests/plugins.

``servers`` (database servers and URLs) is loaded from pyproject's addopts, so every test
tree in the repository gets it; ``shop`` (the seeds' tables, filled) is loaded here.
"""

pytest_plugins = ["tests.plugins.shop", "tests.plugins.web"]
