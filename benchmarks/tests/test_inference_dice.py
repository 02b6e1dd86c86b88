"""benchmarks/inference_dice.py: the bare inference command scored at the images' original size."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import inference_dice
from bundle.data import load_registry, load_samples
from tests.conftest import DEMO_DIR, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_dice_of_masks():
    truth = np.zeros((4, 6), bool)
    truth[1:3, 1:5] = True  # 8 pixels
    half = np.zeros_like(truth)
    half[1:3, 1:3] = True  # 4 of them
    assert inference_dice.dice(truth, truth) == pytest.approx(1.0)
    assert inference_dice.dice(half, truth) == pytest.approx(2 * 4 / 12)
    assert inference_dice.dice(np.zeros_like(truth), truth) == 0.0
    with pytest.raises(ValueError, match="differ in size"):
        inference_dice.dice(truth[:, :5], truth)


def test_a_checkpoint_is_scored_per_dataset_through_the_inference_command(tmp_path):
    """Every test image with an object is scored once, from a mask the command wrote at its source size."""
    checkpoint = write_checkpoint(tmp_path / "tiny.pt")
    results = inference_dice.score_split(checkpoint, DEMO_DIR, "test", tmp_path / "work")
    samples = [s for s in load_samples(load_registry(DEMO_DIR / "datasets.yaml"), "test") if s["task"] == "segmentation"]
    assert set(results) == {s["dataset"] for s in samples}
    for dataset, row in results.items():
        assert row["images"] == sum(s["dataset"] == dataset for s in samples)
        assert 0.0 <= row["dice"] <= 1.0
        written = sorted(p.name for p in (tmp_path / "work" / "outputs" / dataset).glob("*.png") if "_overlay" not in p.name)
        assert len(written) == row["images"]


def test_unknown_options_reach_the_inference_command_unchanged(tmp_path):
    command = inference_dice.inference_command(
        tmp_path / "in", tmp_path / "out", "thyroid", "organ", tmp_path / "m.pt", ["--fill_holes", "false"]
    )
    assert command[command.index("--config_file") + 1] == "configs/inference.yaml"
    assert command[command.index("--organ") + 1] == "thyroid" and command[-2:] == ["--fill_holes", "false"]
