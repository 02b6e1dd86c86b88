"""Local crop and location mark on hand-made masks with a known bounding box and known pixels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.data import load_registry
from bundle.transforms import (
    LOCATION_INTENSITY,
    MODE_PROBABILITIES,
    PromptModed,
    RandPromptModed,
    load_transforms,
    local_square,
    location_mark,
)

H, W = 60, 80


def _mask(rows: slice, cols: slice) -> torch.Tensor:
    mask = torch.zeros(H, W, dtype=torch.bool)
    mask[rows, cols] = True
    return mask


@pytest.mark.parametrize(
    "rows, cols, expected",
    [
        (slice(20, 30), slice(30, 50), (slice(15, 35), slice(30, 50))),  # wide box: square of side 20, centred
        (slice(10, 40), slice(40, 46), (slice(10, 40), slice(28, 58))),  # tall box: side 30
        (slice(0, 4), slice(0, 12), (slice(0, 12), slice(0, 12))),  # at the top-left corner: shifted inside
        (slice(56, 60), slice(70, 80), (slice(50, 60), slice(70, 80))),  # bottom-right corner
        (slice(5, 55), slice(0, 70), (slice(0, 60), slice(0, 70))),  # side 70 > height 60: full height
        (slice(33, 34), slice(44, 45), (slice(33, 34), slice(44, 45))),  # one pixel
    ],
)
def test_local_square_from_known_bounding_box(rows, cols, expected):
    assert local_square(_mask(rows, cols)) == expected


def test_local_square_of_two_objects_covers_both():
    mask = _mask(slice(10, 12), slice(10, 12)) | _mask(slice(20, 22), slice(30, 32))
    assert local_square(mask) == (slice(5, 27), slice(10, 32))


def test_location_mark_adds_intensity_on_mask_pixels_and_clips():
    image = torch.full((3, H, W), 0.5)
    image[:, 22, 35] = 0.95
    mask = _mask(slice(20, 30), slice(30, 50))
    marked = location_mark(image, mask)
    assert torch.allclose(marked[:, mask], torch.where(image[:, mask] > 0.9, 1.0, 0.5 + LOCATION_INTENSITY))
    assert float(marked[:, 22, 35].min()) == 1.0  # clipped, not wrapped around as the official uint8 sum
    assert torch.equal(marked[:, ~mask], image[:, ~mask])


@pytest.fixture()
def hand_made(tmp_path: Path):
    """An 8-bit gradient image with a rectangle mask (rows 20-29, cols 30-49) on disk, and its registry."""
    pixels = (np.arange(H * W).reshape(H, W) % 200 + 20).astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[20:30, 30:50] = 255
    Image.fromarray(pixels).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (tmp_path / "datasets.yaml").write_text(
        "datasets:\n"
        "- {name: S, task: segmentation, organ: breast, object_type: tumor, classes: {bg: 0, lesion: 255}}\n"
        "- {name: C, task: classification, organ: breast, object_type: tumor, classes: [a, b]}\n"
    )
    common = {"image": str(tmp_path / "img.png"), "organ": "breast", "object_type": "tumor"}
    seg = dict(common, label=str(tmp_path / "mask.png"), cls_label=0, task="segmentation", dataset="S")
    cls = dict(common, mask=str(tmp_path / "mask.png"), cls_label=1, task="classification", dataset="C")
    registry = load_registry(tmp_path / "datasets.yaml")
    load = load_transforms(registry)
    loaded = {}
    for name, sample in (("seg", seg), ("cls", cls)):
        for step in load:
            sample = step(sample)
        loaded[name] = sample
    return pixels, mask > 0, loaded


@pytest.mark.parametrize("task", ["seg", "cls"])
def test_local_mode_crops_the_known_square_from_the_file(hand_made, task):
    pixels, mask, loaded = hand_made
    out = PromptModed("local")(loaded[task])
    assert out["mode"] == "local" and "mask" not in out
    assert torch.allclose(out["image"][0], torch.from_numpy(pixels[15:35, 30:50]).float() / 255)
    if task == "seg":
        assert torch.equal(out["label"][0], torch.from_numpy(mask[15:35, 30:50]).float())


def test_location_mode_marks_the_known_pixels_from_the_file(hand_made):
    pixels, mask, loaded = hand_made
    out = PromptModed("location")(loaded["cls"])
    expected = np.clip(pixels / 255 + LOCATION_INTENSITY * mask, 0, 1)
    assert out["mode"] == "location" and out["image"].shape == (1, H, W)
    assert torch.allclose(out["image"][0], torch.from_numpy(expected).float())


def test_location_is_not_applied_to_segmentation_samples(hand_made):
    _, _, loaded = hand_made
    out = PromptModed("location")(loaded["seg"])
    assert out["mode"] == "whole" and torch.equal(out["image"], loaded["seg"]["image"])


@pytest.mark.parametrize("mode", ["local", "location"])
def test_empty_mask_falls_back_to_whole(hand_made, mode):
    _, _, loaded = hand_made
    sample = dict(loaded["cls"], mask=torch.zeros_like(loaded["cls"]["mask"]))
    out = PromptModed(mode)(sample)
    assert out["mode"] == "whole" and out["image"].shape == (1, H, W)
    assert torch.equal(out["image"], sample["image"])


@pytest.mark.parametrize("task", ["seg", "cls"])
def test_random_modes_follow_official_probabilities(hand_made, task):
    _, _, loaded = hand_made
    chooser = RandPromptModed()
    chooser.set_random_state(seed=0)
    draws, sample = 4000, loaded[task]
    foreground = (sample["label"] if task == "seg" else sample["mask"])[0] > 0
    counts = Counter(chooser.choose(sample, foreground) for _ in range(draws))
    table = MODE_PROBABILITIES["segmentation" if task == "seg" else "classification"]
    assert set(counts) == set(table)
    for mode, probability in table.items():
        assert abs(counts[mode] / draws - probability) < 0.03, (mode, counts)  # > 3.7 sigma


def test_partial_probabilities_keep_the_official_table_of_other_tasks(hand_made):
    _, _, loaded = hand_made
    chooser = RandPromptModed({"segmentation": {"whole": 1.0}})
    chooser.set_random_state(seed=0)
    seg, cls = loaded["seg"], loaded["cls"]
    assert {chooser.choose(seg, seg["label"][0] > 0) for _ in range(50)} == {"whole"}
    assert {chooser.choose(cls, cls["mask"][0] > 0) for _ in range(50)} == set(MODE_PROBABILITIES["classification"])


def test_random_mode_with_empty_or_missing_mask_is_always_whole(hand_made):
    _, _, loaded = hand_made
    chooser = RandPromptModed()
    chooser.set_random_state(seed=0)
    empty = dict(loaded["seg"], label=torch.zeros_like(loaded["seg"]["label"]))
    no_mask = {k: v for k, v in loaded["cls"].items() if k != "mask"}
    assert {chooser(empty)["mode"] for _ in range(50)} == {"whole"}
    assert {chooser(no_mask)["mode"] for _ in range(50)} == {"whole"}


def test_local_crop_is_inverted_back_to_the_full_image(hand_made):
    _, _, loaded = hand_made
    transform = PromptModed("local")
    out = transform(loaded["seg"])
    restored = transform.inverse({"label": out["label"]})["label"]
    assert restored.shape == (1, H, W)
    assert torch.equal(restored, loaded["seg"]["label"])  # the crop contains the whole object
