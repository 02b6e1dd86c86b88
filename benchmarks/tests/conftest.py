"""Fixtures of the benchmark tests: the bundle tests' own (tests/conftest.py), found by pytest here too."""

from tests.conftest import golden, one_thread  # noqa: F401 - fixtures, used by name
