"""benchmarks/realtime_figure.py: the latency and frames-per-second panels from the two benchmarks' JSON."""

from __future__ import annotations

import json

from PIL import Image

from benchmarks import realtime_figure

LATENCY = {"threads": 2, "ms": {"teacher torch": {"1": 80.0, "8": 240.0}, "student onnxruntime": {"1": 15.0, "8": 90.0}}}
CINE = {"frames": 100, "settings": {"teacher torch": {"frames_per_second": 28.0}, "student default": {"frames_per_second": 33.0}}}


def test_the_figure_is_drawn_from_the_benchmarks_json(tmp_path):
    (tmp_path / "latency.json").write_text(json.dumps(LATENCY))
    (tmp_path / "cine.json").write_text(json.dumps(CINE))
    out = realtime_figure.main(["--latency", str(tmp_path / "latency.json"), "--cine", str(tmp_path / "cine.json"),
                                "--out", str(tmp_path / "figure.png")])  # fmt: skip
    with Image.open(out) as picture:
        assert picture.size[0] > picture.size[1] > 300
