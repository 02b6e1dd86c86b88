"""benchmarks/onnx_profile.py: kernel time per operator type and module of a checkpoint's ONNX Runtime graph."""

from __future__ import annotations

import pytest

from benchmarks import onnx_profile
from tests.conftest import write_checkpoint

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_kernel_times_sum_node_events_per_operator_and_module_prefix():
    trace = [
        {"cat": "Node", "name": "/encoder.0/blocks.0/attn/MatMul_kernel_time", "dur": 5, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "/encoder.0/blocks.1/Add_kernel_time", "dur": 2, "args": {"op_name": "Add"}},
        {"cat": "Node", "name": "/encoder.0/blocks.0/attn/MatMul_fence_before", "dur": 9, "args": {"op_name": "MatMul"}},
        {"cat": "Session", "name": "model_run", "dur": 100},
    ]
    per_op, per_module, nodes = onnx_profile.kernel_times(trace, depth=3)
    assert per_op == {"MatMul": 5, "Add": 2} and nodes == 2
    assert per_module == {"/encoder.0/blocks.0": 5, "/encoder.0/blocks.1": 2}


def test_a_checkpoints_graph_is_profiled_per_call(tmp_path, capsys):
    checkpoint = write_checkpoint(tmp_path / "tiny.pt")
    result = onnx_profile.main(["--ckpt_path", str(checkpoint), "--threads", "1", "--calls", "2"])
    profile = result["profiles"][str(checkpoint)]
    assert profile["nodes_per_call"] > 50 and profile["kernel_us_per_call"] > 0
    assert sum(profile["per_op_us"].values()) == pytest.approx(profile["kernel_us_per_call"])
    assert sum(profile["per_module_us"].values()) == pytest.approx(profile["kernel_us_per_call"])
    assert any(module.startswith("/encoder") for module in profile["per_module_us"])
    assert "| operator | ms per call |" in capsys.readouterr().out
