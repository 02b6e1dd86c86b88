"""Fixtures of the benchmark tests: the bundle tests' own (tests/conftest.py), found by pytest here too,
and the small network size the tools are tested at (the paper's is 66 M parameters, 224²)."""

from benchmarks.benchmark import NetworkSize
from tests.conftest import golden, one_thread  # noqa: F401 - fixtures, used by name

SMALL = NetworkSize(image_size=64, embed_dim=12, window_size=2)  # 1.07 M parameters, no padding
