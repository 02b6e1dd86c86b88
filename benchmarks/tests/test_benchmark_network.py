"""benchmarks/benchmark_network.py: its paths run the same weights to the same logits, and it prints one row per path."""

from __future__ import annotations

import pytest
import torch

from benchmarks import benchmark_network
from benchmarks.tests.conftest import SMALL
from bundle.networks import dense
from bundle.workflows.inferers import cpu_supports_bf16

ONE_CALL = ["--batches", "1", "--repeats", "1", "--warmup", "0", "--threads", "1", *SMALL.argv()]

pytestmark = pytest.mark.usefixtures("one_thread")


def _ran_onednn(call, args: tuple) -> bool:
    """Whether ``call(args)`` ran oneDNN's pointwise linear operator."""
    with torch.profiler.profile() as profile:
        call(args)
    return any(event.name == "mkldnn::_linear_pointwise" for event in profile.events())


def test_every_path_gives_the_reference_logits_and_only_the_fast_one_runs_onednn():
    args, _, _ = benchmark_network.inputs(1, True, SMALL)
    calls = benchmark_network.callers(None, SMALL)
    with torch.inference_mode():
        outputs = {name: call(args) for name, call in calls.items()}
        onednn = {name: _ran_onednn(call, args) for name, call in calls.items()}
    assert list(outputs) == [
        benchmark_network.REFERENCE,
        benchmark_network.ONE_BLOCK,
        benchmark_network.MKL_LINEAR,
        benchmark_network.FAST,
    ]
    assert onednn == {name: name == benchmark_network.FAST and dense.onednn_linear_available() for name in calls}
    for name, (seg, cls) in outputs.items():
        expected_seg, expected_cls = outputs[benchmark_network.REFERENCE]
        assert (seg - expected_seg).abs().max() <= 1e-4, name
        assert (cls - expected_cls).abs().max() <= 1e-4, name


def test_prints_one_row_per_path(capsys: pytest.CaptureFixture) -> None:
    benchmark_network.main(ONE_CALL)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f", fp32, {SMALL}, 1 threads, median of 1")
    assert lines[1] == "| batch | path | median s | speed vs reference |"
    rows = [line for line in lines if line.startswith("| 1 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["reference", "fast, one block", "fast, MKL linear", "fast"]


def test_training_mode_times_an_adam_step_of_each_path(capsys: pytest.CaptureFixture) -> None:
    benchmark_network.main([*ONE_CALL, "--train"])
    out = capsys.readouterr().out
    assert "training step" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["reference", "fast"]


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU lacks native bf16: bf16 autocast is emulated, far too slow")
def test_bf16_mode_runs_every_path_under_autocast(capsys: pytest.CaptureFixture) -> None:
    benchmark_network.main([*ONE_CALL, "--bf16"])
    out = capsys.readouterr().out
    assert "bf16 autocast" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |")]
    assert [row.split("|")[2].strip() for row in rows] == ["reference", "fast, one block", "fast, MKL linear", "fast"]
