"""The lab beside the bundle: benchmarks, baselines and experiment tools (not packed, not installed).

Each tool runs from the bundle root as ``python -m benchmarks.<tool>`` (see README.md here).
"""

from pathlib import Path

BUNDLE_ROOT = Path(__file__).resolve().parents[1]  # the bundle root, the default of the tools' paths
DEMO_DATA = BUNDLE_ROOT / "data" / "demo"  # the demo datasets (registry datasets.yaml)
