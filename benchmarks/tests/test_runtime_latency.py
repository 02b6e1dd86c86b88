"""benchmarks/runtime_latency.py: every backend timed on each checkpoint, ratios against eager torch and the first checkpoint."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import runtime_latency
from tests.conftest import tiny_network, write_checkpoint

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_checkpoint_and_backend_gets_a_median_per_batch_and_its_ratios(tmp_path, capsys):
    teacher = write_checkpoint(tmp_path / "teacher.pt")
    student = write_checkpoint(tmp_path / "student.pt", tiny_network(embed_dim=8, num_heads=(2, 2, 4, 4)))
    out = tmp_path / "latency.json"
    result = runtime_latency.main(
        ["--ckpt_path", str(teacher), str(student), "--threads", "1", "--rounds", "2", "--batches", "1", "2", "--json", str(out)]
    )
    backends = ("torch", "onnxruntime", "onnxruntime-int8") + (("torch-bf16",) if runtime_latency.cpu_supports_bf16() else ())
    names = {f"{stem} {backend}" for stem in ("teacher", "student") for backend in backends}
    assert set(result["ms"]) == names
    assert all(set(row) == {1, 2} and all(ms > 0 for ms in row.values()) for row in result["ms"].values())
    assert result["speed_up_vs_torch"]["student torch"] == {1: 1.0, 2: 1.0}
    assert result["speed_up_vs_first"]["teacher onnxruntime"] == {1: 1.0, 2: 1.0}
    ratio = result["ms"]["teacher onnxruntime"][1] / result["ms"]["student onnxruntime"][1]
    assert result["speed_up_vs_first"]["student onnxruntime"][1] == pytest.approx(ratio)
    assert json.loads(out.read_text())["image_sizes"] == {"teacher": 64, "student": 64}
    assert "| student onnxruntime-int8 |" in capsys.readouterr().out


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_bf16_row_is_timed_only_on_a_cpu_with_native_bf16(tmp_path, monkeypatch, native_bf16):
    teacher = write_checkpoint(tmp_path / "teacher.pt")
    monkeypatch.setattr(runtime_latency, "cpu_supports_bf16", lambda: native_bf16)
    result = runtime_latency.main(["--ckpt_path", str(teacher), "--threads", "1", "--rounds", "1", "--batches", "1"])
    assert ("teacher torch-bf16" in result["ms"]) is native_bf16


def test_a_reference_network_is_timed_on_both_backends_at_the_first_checkpoints_size(tmp_path):
    teacher = write_checkpoint(tmp_path / "teacher.pt")
    result = runtime_latency.main(
        ["--ckpt_path", str(teacher), "--threads", "1", "--rounds", "1", "--batches", "1", "--references", "SwinUNETR-24"]
    )
    assert {"SwinUNETR-24 torch", "SwinUNETR-24 onnxruntime"} <= set(result["ms"])
    assert result["image_sizes"]["SwinUNETR-24"] == 64
    ratio = result["ms"]["teacher onnxruntime"][1] / result["ms"]["SwinUNETR-24 onnxruntime"][1]
    assert result["speed_up_vs_first"]["SwinUNETR-24 onnxruntime"][1] == pytest.approx(ratio)


@pytest.mark.skipif(not os.environ.get("PERCEPTGUIDE_OFFICIAL_REPO"), reason="needs PERCEPTGUIDE_OFFICIAL_REPO")
def test_the_official_code_is_timed_with_the_checkpoints_swin_sizes(tmp_path):
    teacher = write_checkpoint(tmp_path / "teacher.pt")
    result = runtime_latency.main(
        ["--ckpt_path", str(teacher), "--threads", "1", "--rounds", "1", "--batches", "1", "--references", "official",
         "--official_repo", os.environ["PERCEPTGUIDE_OFFICIAL_REPO"]]
    )  # fmt: skip
    assert {"official torch", "official onnxruntime"} <= set(result["ms"])


def test_an_official_reference_without_the_official_code_is_a_clear_error(tmp_path):
    teacher = write_checkpoint(tmp_path / "teacher.pt")
    with pytest.raises(ValueError, match="--official_repo"):
        runtime_latency.main(["--ckpt_path", str(teacher), "--rounds", "1", "--batches", "1", "--references", "official"])


def test_the_dynamic_batch_row_times_the_same_graph_in_one_session_with_its_batch_axis_left_dynamic(tmp_path):
    teacher = write_checkpoint(tmp_path / "teacher.pt")
    result = runtime_latency.main(
        ["--ckpt_path", str(teacher), "--threads", "1", "--rounds", "1", "--batches", "1", "3", "--dynamic_batch"]
    )
    assert set(result["ms"]["teacher onnxruntime-dynamic"]) == {1, 3}
    assert result["speed_up_vs_torch"]["teacher onnxruntime-dynamic"][3] > 0


def test_with_processes_each_row_is_timed_alone_in_fresh_processes_and_gets_the_same_ratios(tmp_path, capsys):
    teacher = write_checkpoint(tmp_path / "teacher.pt")
    student = write_checkpoint(tmp_path / "student.pt", tiny_network(embed_dim=8, num_heads=(2, 2, 4, 4)))
    result = runtime_latency.main(
        ["--ckpt_path", str(teacher), str(student), "--threads", "1", "--rounds", "2", "--batches", "1", "--processes", "1"]
    )
    assert set(result["ms"]) == set(runtime_latency.planned_names([teacher, student], [], False))
    assert result["processes"] == 1 and result["image_sizes"] == {"teacher": 64, "student": 64}
    assert result["ms_per_process"]["student onnxruntime"][1] == [result["ms"]["student onnxruntime"][1]]
    ratio = result["ms"]["teacher onnxruntime"][1] / result["ms"]["student onnxruntime"][1]
    assert result["speed_up_vs_first"]["student onnxruntime"][1] == pytest.approx(ratio)
    assert "each row alone" in capsys.readouterr().out


def test_a_row_timed_alone_builds_only_its_own_runner(tmp_path):
    teacher = write_checkpoint(tmp_path / "teacher.pt")
    runners, images, _ = runtime_latency.build_runners([teacher], 1, [], None, True, tmp_path, only={"teacher onnxruntime-dynamic"})
    assert list(runners) == ["teacher onnxruntime-dynamic"] and images == {"teacher": 64}
    medians = runtime_latency.time_alone(([teacher], 1, [], None, True), "teacher onnxruntime-dynamic", [1, 2], 2)
    assert set(medians) == {1, 2} and all(ms > 0 for ms in medians.values())
