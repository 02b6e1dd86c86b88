"""The real-time figure of docs/performance.md: network latency per backend, and cine-loop frames per second.

Reads the JSON of one ``benchmarks.runtime_latency`` run (teacher and student, every backend) and of
one ``benchmarks.cine_fps`` run, and draws two panels: milliseconds per call at each batch size,
and end-to-end frames per second of the bare inference command with the 30 frames/s line.

Usage::

    python -m benchmarks.realtime_figure --latency latency.json --cine cine.json --out docs/realtime.png
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path


def plot(latency: Mapping, cine: Mapping, path: Path) -> Path:
    """Write the two-panel figure to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(latency["ms"])
    batches = sorted(int(b) for b in next(iter(latency["ms"].values())))
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(batches)
    for offset, batch in enumerate(batches):
        values = [latency["ms"][name].get(str(batch), latency["ms"][name].get(batch)) for name in names]
        left.bar([i + offset * width for i in range(len(names))], values, width, label=f"batch {batch}")
    left.set_xticks([i + width * (len(batches) - 1) / 2 for i in range(len(names))], names, rotation=30, ha="right")
    left.set_ylabel("ms per call")
    left.set_title(f"network latency, {latency['threads']} threads")
    left.legend()
    settings = list(cine["settings"])
    right.bar(settings, [cine["settings"][name]["frames_per_second"] for name in settings], color="tab:green")
    right.axhline(30, linestyle="--", color="gray", label="30 frames/s")
    right.set_xticks(range(len(settings)), settings, rotation=30, ha="right")
    right.set_ylabel("frames per second")
    right.set_title(f"bare inference on a {cine['frames']}-frame loop")
    right.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=Path, required=True, help="JSON of benchmarks.runtime_latency")
    parser.add_argument("--cine", type=Path, required=True, help="JSON of benchmarks.cine_fps")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    return plot(json.loads(args.latency.read_text()), json.loads(args.cine.read_text()), args.out)


if __name__ == "__main__":
    main()
