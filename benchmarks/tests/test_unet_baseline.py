"""benchmarks/unet_baseline.py: the issue's U-Net, its whole-image training chain, the time budget, the table."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from PIL import Image

from benchmarks import DEMO_DATA, unet_baseline
from bundle.networks import load_model, read_checkpoint
from bundle.prompts import MODES
from bundle.transforms import RandLetterboxInterpolated
from tests.bundle_runner import write_small_datalist


@pytest.mark.parametrize("classes, expected", [(2, 1_625_737), (3, 1_626_072)])
def test_unet_has_the_issues_size_and_maps_rgb_to_class_logits(classes: int, expected: int) -> None:
    net = unet_baseline.build_unet(classes)
    assert sum(p.numel() for p in net.parameters()) == expected
    assert net(torch.rand(2, 3, 32, 48)).shape == (2, classes, 32, 48)


def test_a_datalist_gives_its_segmentation_lists_instead_of_the_registry_folders(tmp_path) -> None:
    registry = unet_baseline.load_registry(DEMO_DATA / "datasets.yaml")
    datalist = write_small_datalist(tmp_path / "datalist.json", {"training": 2, "test": 1})
    train = unet_baseline.segmentation_samples(registry, "train", datalist)
    assert sorted(s["dataset"] for s in train) == ["BUSI", "BUSI", "Fetal_HC", "Fetal_HC", "TG3K", "TG3K"]
    assert len(unet_baseline.segmentation_samples(registry, "test", datalist)) == 3
    assert len(unet_baseline.segmentation_samples(registry, "train")) > len(train)


def test_fewer_images_than_a_batch_train_and_saved_weights_start_the_next_run(tmp_path) -> None:
    datalist = write_small_datalist(tmp_path / "datalist.json", {"training": 2, "test": 1})
    common = ["--datalist", str(datalist), "--batch_size", "16", "--image_size", "32", "--threads", "1"]
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    unet_baseline.main([*common, "--minutes", "0.05", "--save", str(tmp_path / "unet.pt"), "--json", str(first)])
    trained = json.loads(first.read_text())
    assert trained["iterations"] >= 1  # 6 images, a batch of 16: an epoch still draws one batch
    unet_baseline.main([*common, "--minutes", "0.01", "--init", str(tmp_path / "unet.pt"), "--json", str(second)])
    assert json.loads(second.read_text())["untrained"] == trained["trained"]  # it starts where the first ended


def test_per_image_dice_leaves_out_an_image_whose_ground_truth_is_empty_as_the_mean_does(tmp_path) -> None:
    datalist = write_small_datalist(tmp_path / "datalist.json", {"training": 2, "test": 2})
    lists = json.loads(datalist.read_text())
    lists["test"] = [s for s in lists["test"] if (s["dataset"], s["task"]) == ("BUSI", "segmentation")]
    empty = tmp_path / "empty_mask.png"
    Image.fromarray(np.zeros_like(np.asarray(Image.open(lists["test"][1]["label"])))).save(empty)
    lists["test"][1]["label"] = str(empty)
    datalist.write_text(json.dumps(lists))
    out = tmp_path / "result.json"
    unet_baseline.main(["--datalist", str(datalist), "--steps", "1", "--image_size", "32", "--threads", "1", "--json", str(out)])
    busi = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))["trained"]["BUSI"]
    assert busi["seg_n"] == 1 and list(busi["per_image"]) == [Path(lists["test"][0]["image"]).stem]


@pytest.mark.parametrize("input_mode, modes", [("whole", {"whole"}), ("official", {"whole", "local"})])
def test_training_chain_draws_only_the_requested_input_modes(input_mode: str, modes: set[str]) -> None:
    registry = unet_baseline.load_registry(DEMO_DATA / "datasets.yaml")
    sample = unet_baseline.segmentation_samples(registry, "val")[0]
    chain = unet_baseline.unet_train_transforms(32, registry, input_mode)
    chain.set_random_state(seed=0)
    drawn = set()
    for _ in range(12):
        out = chain(dict(sample))
        assert out["image"].shape == (3, 32, 32) and out["label"].shape == (1, 32, 32)
        drawn.add(MODES[int(out["mode_prompt"].argmax())])
    assert drawn == modes


def test_unknown_input_mode_is_refused_by_name() -> None:
    registry = unet_baseline.load_registry(DEMO_DATA / "datasets.yaml")
    with pytest.raises(ValueError, match="input_mode.*'crop'"):
        unet_baseline.unet_train_transforms(32, registry, "crop")


@pytest.mark.parametrize("clock", ["wall", "process"])
def test_time_budget_decays_the_learning_rate_then_stops_the_engine(clock: str) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    lrs: list[float] = []

    def busy(engine: Engine, batch: int) -> None:
        end = time.process_time() + 0.01  # burns CPU, so the process clock advances too
        while time.process_time() < end:
            pass
        lrs.append(optimizer.param_groups[0]["lr"])

    engine = Engine(busy)
    unet_baseline.attach_budget(engine, optimizer, lr=1.0, seconds=0.5, clock=clock)
    engine.run(range(10), max_epochs=1000)
    assert 4 <= engine.state.iteration < 1000  # stopped by the budget, not by max_epochs
    assert lrs[0] == 1.0 and all(b < a for a, b in zip(lrs[1:], lrs[2:]))
    assert 0.0 < lrs[-1] < 0.5


def test_a_step_budget_stops_at_that_iteration_with_the_rate_decayed_by_steps() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs: list[float] = []
    engine = Engine(lambda engine, batch: lrs.append(optimizer.param_groups[0]["lr"]))
    unet_baseline.attach_budget(engine, optimizer, lr=1.0, seconds=1e-9, steps=8)  # the steps win over the clock
    engine.run(range(3), max_epochs=100)
    assert engine.state.iteration == 8
    assert lrs[:2] == [1.0, pytest.approx((1 - 1 / 8) ** 0.9)]


def test_table_has_a_row_per_model_and_the_mean_of_datasets() -> None:
    result = {
        "args": {"minutes": 12.0},
        "untrained": {"A": {"seg_n": 3, "dice": 0.1}, "B": {"seg_n": 2, "dice": 0.3}},
        "trained": {"A": {"seg_n": 3, "dice": 0.9}, "B": {"seg_n": 2, "dice": 0.5}},
    }
    lines = unet_baseline.table(result).splitlines()
    assert lines[0] == "| model | A Dice (n=3) | B Dice (n=2) | mean |"
    assert lines[2] == "| U-Net untrained | 0.100 | 0.300 | 0.200 |"
    assert lines[3] == "| U-Net 12 min | 0.900 | 0.500 | 0.700 |"
    assert not math.isnan(float(lines[3].split("|")[-2]))
    by_steps = unet_baseline.table({**result, "args": {"minutes": 12.0, "steps": 800}}).splitlines()
    assert by_steps[3].startswith("| U-Net 800 steps |")
    fit = {"A": {"seg_n": 9, "dice": 0.8}, "B": {"seg_n": 7, "dice": 0.6}}
    more = {**result, "args": {"minutes": 12.0, "network": "perceptguide"}, "trained_other_splits": {"train": fit}}
    assert unet_baseline.table(more).splitlines()[2:] == [
        "| PerceptGuide untrained | 0.100 | 0.300 | 0.200 |",
        "| PerceptGuide 12 min | 0.900 | 0.500 | 0.700 |",
        "| PerceptGuide 12 min, train split (n=9/7) | 0.800 | 0.600 | 0.700 |",
    ]


def test_the_bundle_network_trains_by_this_recipe_scores_every_split_and_saves_a_bundle_checkpoint(tmp_path) -> None:
    datalist = write_small_datalist(tmp_path / "datalist.json", {"training": 2, "test": 1})
    common = ["--datalist", str(datalist), "--network", "perceptguide", "--image_size", "64", "--threads", "1"]
    first, second, saved = tmp_path / "first.json", tmp_path / "second.json", tmp_path / "pg.pt"
    unet_baseline.main([*common, "--steps", "2", "--split", "test", "train", "--json", str(first), "--save", str(saved)])
    result = json.loads(first.read_text())
    assert result["iterations"] == 2 and result["parameters"] > 2_000_000  # cpu.yaml's network, not the U-Net
    assert {d: f["seg_n"] for d, f in result["trained"].items()} == {"BUSI": 1, "Fetal_HC": 1, "TG3K": 1}
    assert {d: f["seg_n"] for d, f in result["trained_other_splits"]["train"].items()} == {
        "BUSI": 2, "Fetal_HC": 2, "TG3K": 2,
    }
    test_stems = {
        d: {Path(s["image"]).stem for s in json.loads(datalist.read_text())["test"] if (s["dataset"], s["task"]) == (d, "segmentation")}
        for d in result["trained"]
    }
    for dataset, figures in result["trained"].items():  # per image, named by file stem, averaging to the figure
        assert set(figures["per_image"]) == test_stems[dataset]
        assert figures["dice"] == pytest.approx(sum(figures["per_image"].values()) / figures["seg_n"], abs=1e-4)
    model = load_model(saved)  # what evaluate.yaml and the inference command read
    assert model.img_size == 64 and read_checkpoint(saved).description.image_size == 64
    unet_baseline.main([*common, "--steps", "1", "--init", str(saved), "--json", str(second)])
    assert json.loads(second.read_text())["untrained"] == result["trained"]  # it starts where the first ended


def test_a_split_named_twice_is_refused() -> None:
    with pytest.raises(SystemExit):
        unet_baseline.main(["--split", "test", "test"])


def test_the_wrapped_network_answers_to_its_prompts() -> None:
    registry = unet_baseline.load_registry(DEMO_DATA / "datasets.yaml")
    torch.manual_seed(0)
    network = unet_baseline.build_perceptguide(list(unet_baseline.PERCEPTGUIDE_CONFIGS), registry, 96).eval()
    sample = unet_baseline.val_transforms(96, registry)(dict(unet_baseline.segmentation_samples(registry, "val")[0]))
    batch = {key: value[None] if isinstance(value, torch.Tensor) else [value] for key, value in sample.items()}
    image, label, (prompts,), _ = unet_baseline.prepare_prompted(batch)
    assert image.shape == (1, 3, 96, 96) and label.shape == (1, 1, 96, 96)
    other = {**prompts, "position": prompts["position"].roll(1, dims=1)}
    with torch.no_grad():
        logits = network(image, prompts)
        assert logits.shape == (1, 2, 96, 96)
        assert not torch.equal(logits, network(image, other))  # the organ prompt steers the decoder


@pytest.mark.parametrize("letterbox_prob", [0.0, 0.5])
def test_letterbox_share_reaches_the_training_chain(letterbox_prob: float) -> None:
    registry = unet_baseline.load_registry(DEMO_DATA / "datasets.yaml")
    chain = unet_baseline.unet_train_transforms(32, registry, "whole", letterbox_prob)
    letterboxes = [t for t in chain.transforms if isinstance(t, RandLetterboxInterpolated)]
    assert [t.prob for t in letterboxes] == ([letterbox_prob] if letterbox_prob else [])
