"""benchmarks/benchmark_data.py: the MONAI-transform reference chain it times the bundle's chain against."""

from __future__ import annotations

import pytest
import torch
from monai.transforms import CenterSpatialCropd, OneOf

from benchmarks import benchmark_data
from bundle.data import load_registry, load_samples
from bundle.transforms import SAMPLE_KEYS, RandOfficialCascaded, ShortSideInterpolated, train_transforms

SIZE = 32

pytestmark = pytest.mark.usefixtures("one_thread")


def test_reference_chain_swaps_every_plain_tensor_step_for_monai_ones() -> None:
    registry = load_registry(benchmark_data.DEMO_REGISTRY)
    chain = train_transforms(SIZE, registry, benchmark_data.CPU_MODES)
    reference = benchmark_data.monai_chain(chain, SIZE)
    kinds = [type(step) for step in reference.transforms]
    assert ShortSideInterpolated not in kinds and RandOfficialCascaded not in kinds
    assert {OneOf, CenterSpatialCropd, benchmark_data.TracedRandPromptModed} <= set(kinds)
    reference.set_random_state(seed=0)
    for sample in load_samples(registry, "val", None)[:8]:
        ours, theirs = chain(dict(sample)), reference(dict(sample))
        assert set(theirs) == set(ours) == set(SAMPLE_KEYS)
        for key in ("image", "label"):
            assert theirs[key].shape == ours[key].shape and theirs[key].dtype == ours[key].dtype
        assert torch.equal(theirs["position_prompt"], ours["position_prompt"])


def test_prints_both_chains_and_their_ratio(capsys: pytest.CaptureFixture) -> None:
    benchmark_data.main(["--image_size", str(SIZE), "--threads", "1", "--rounds", "1"])
    printed = capsys.readouterr().out
    assert "| bundle |" in printed and "| monai |" in printed and "monai / bundle:" in printed
