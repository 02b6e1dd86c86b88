"""benchmarks/student_sizes.py: candidate students timed beside their teacher, per backend."""

from __future__ import annotations

import pytest

from benchmarks import student_sizes
from tests.conftest import tiny_network, write_checkpoint

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_each_candidate_is_timed_at_its_own_size_against_the_teacher(tmp_path):
    teacher = write_checkpoint(tmp_path / "teacher.pt", tiny_network(conv_skips=4))
    candidates = {"teacher": {}, "narrow": {"embed_dim": 8, "num_heads": [2, 2, 4, 4]}, "larger input": {"img_size": 128}}
    result = student_sizes.measure(teacher, threads=1, rounds=2, candidates=candidates)
    rows = result["candidates"]
    assert rows["teacher"]["torch speed-up"] == rows["teacher"]["onnxruntime speed-up"] == 1.0
    assert rows["narrow"]["parameters"] < rows["teacher"]["parameters"]
    assert [row["image_size"] for row in rows.values()] == [64, 64, 128]
    assert all(row[backend] > 0 for row in rows.values() for backend in student_sizes.BACKENDS)
    assert "| narrow | 64² |" in student_sizes.table(result)
