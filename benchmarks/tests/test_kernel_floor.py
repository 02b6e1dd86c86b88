"""benchmarks/kernel_floor.py: which kernels it counts as unavoidable, and its table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks import kernel_floor
from benchmarks.tests.conftest import SMALL

pytestmark = pytest.mark.usefixtures("one_thread")


def test_counts_gemms_and_fused_attention_and_nothing_else():
    x, w = torch.randn(512, 256), torch.randn(256, 256)
    q = k = v = torch.randn(4, 2, 49, 16)
    with torch.inference_mode():
        assert kernel_floor.kernel_seconds(lambda: torch.relu(x).sum()) == (0.0, 0.0)
        gemm, attention = kernel_floor.kernel_seconds(lambda: F.gelu(F.linear(x, w)) @ w)
        assert gemm > 0 and attention == 0
        gemm, attention = kernel_floor.kernel_seconds(lambda: F.scaled_dot_product_attention(q, k, v))
        assert gemm == 0 and attention > 0


def test_floor_is_the_kernel_time_and_ceiling_the_baseline_over_it():
    result = kernel_floor.Floor(baseline=2.0, fast=1.6, gemm=0.9, attention=0.1)
    assert result.floor == pytest.approx(1.0)
    assert result.speedup == pytest.approx(1.25)
    assert result.ceiling == pytest.approx(2.0)


@pytest.mark.parametrize("train", [False, True])
def test_prints_a_row_per_batch_with_its_gemm_and_attention_times(capsys: pytest.CaptureFixture, train: bool) -> None:
    argv = ["--batches", "1", "--repeats", "1", "--warmup", "1", "--threads", "1", *SMALL.argv()]
    argv += ["--train"] if train else []
    floors = kernel_floor.main(argv)
    out = capsys.readouterr().out
    assert ("training step" if train else "inference forward") in out
    assert [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| 1 |")] == ["1"]
    result = floors[1]
    # the GEMM time and the call time come from separate calls: which is larger is not asserted
    assert result.gemm > 0 and result.fast > 0
    assert result.attention == 0 if train else result.attention > 0
