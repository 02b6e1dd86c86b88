"""benchmarks/runtime_latency.py: every backend timed on one checkpoint, ratios against eager torch."""

from __future__ import annotations

import json

import pytest

from benchmarks import runtime_latency
from tests.conftest import write_checkpoint

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_backend_gets_a_median_per_batch_and_its_ratio_to_torch(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "model.pt")
    out = tmp_path / "latency.json"
    result = runtime_latency.main(["--ckpt_path", str(checkpoint), "--threads", "1", "--rounds", "2", "--batches", "1", "2", "--json", str(out)])
    assert set(result["ms"]) == {"torch", "onnxruntime", "onnxruntime-int8"}
    assert all(set(row) == {1, 2} and all(ms > 0 for ms in row.values()) for row in result["ms"].values())
    assert result["speed_up_vs_torch"]["torch"] == {1: 1.0, 2: 1.0}
    assert json.loads(out.read_text())["image_size"] == result["image_size"]
    assert "| onnxruntime-int8 |" in capsys.readouterr().out
