"""Fixtures live in small plugins under tests/plugins.

``servers`` (database servers and URLs) is loaded from pyproject's addopts, so every test
tree in the repository gets it; ``brokers`` (Redis and RabbitMQ, started on first use) and
``shop`` (the seeds' tables, filled) are loaded here.
"""

pytest_plugins = [
    "tests.plugins.binlog",
    "tests.plugins.brokers",
    "tests.plugins.shop",
    "tests.plugins.web",
]
