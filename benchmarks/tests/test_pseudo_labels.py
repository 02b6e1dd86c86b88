"""benchmarks/pseudo_labels.py: a teacher's masks at each image's own size, listed as a training dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from benchmarks import pseudo_labels
from benchmarks.unet_baseline import build_unet
from bundle.data import load_registry, load_samples


class BrightIsForeground(torch.nn.Module):
    """A teacher whose foreground logit is the first channel's brightness above one half: (B, 3, S, S) -> (B, 2, S, S)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        foreground = (image[:, :1] - 0.5) * 20
        return torch.cat([torch.zeros_like(foreground), foreground], 1)


def disc_image(path: Path, height: int, width: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    """Write a grey PNG with one bright disc; returns the disc's boolean mask (H, W)."""
    rows, cols = np.mgrid[:height, :width]
    disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    Image.fromarray(np.where(disc, 220, 30).astype(np.uint8)).save(path)
    return disc


def test_flagged_ids_are_the_rows_marked_also_labelled(tmp_path) -> None:
    csv_path = tmp_path / "provenance.csv"
    csv_path.write_text("id,dataset,also_in_shared_labelled\na_1,A,no\na_2,A,yes\nb_1,B,Yes\n")
    assert pseudo_labels.flagged_ids(csv_path) == {"a_2", "b_1"}


def test_masks_come_back_at_each_images_size_and_skipped_stems_stay_out(tmp_path, caplog) -> None:
    source = tmp_path / "pool"
    source.mkdir()
    (source / "corrupt.png").write_bytes(b"not a png")
    discs = {
        "wide": disc_image(source / "wide.png", 60, 100, (30, 70), 18),
        "tall": disc_image(source / "tall.png", 90, 50, (30, 25), 15),
    }
    disc_image(source / "flagged.png", 40, 40, (20, 20), 8)
    out = tmp_path / "data" / "pool"
    count = pseudo_labels.label_folder(
        BrightIsForeground(), source, out, tmp_path / "overlays", 32, "breast", "tumor", skip={"flagged"}
    )
    assert count == 2
    assert "corrupt.png" in caplog.text  # named in the log, the other images labelled
    assert sorted(p.name for p in (out / "images").iterdir()) == ["tall.png", "wide.png"]
    assert (out / "images" / "wide.png").resolve() == (source / "wide.png").resolve()
    for stem, disc in discs.items():
        mask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert mask.shape == disc.shape and set(np.unique(mask)) <= {0, 255}
        predicted = mask > 0
        dice = 2 * (predicted & disc).sum() / (predicted.sum() + disc.sum())
        assert dice > 0.97, (stem, dice)  # letterboxed to 32², mapped back: the disc where it was (centre crop: 0.90)
    assert (tmp_path / "overlays" / "wide_overlay.png").is_file()


def test_the_command_writes_a_training_datalist_and_registry_the_bundle_loads(tmp_path) -> None:
    source = tmp_path / "pool"
    source.mkdir()
    for index in range(3):
        disc_image(source / f"img_{index}.png", 48, 64, (24, 30 + index), 10)
    teacher = tmp_path / "unet.pt"
    torch.manual_seed(0)
    torch.save(build_unet(2).state_dict(), teacher)
    out = tmp_path / "labelled"
    pseudo_labels.main(
        ["--teacher", str(teacher), "--image_size", "32", "--out", str(out), "--threads", "1",
         "--source", str(source), "pool_pseudo", "thyroid", "organ"]
    )
    declared = yaml.safe_load((out / "datasets.yaml").read_text())["datasets"]
    assert [(d["name"], d["organ"], d["object_type"], d["task"]) for d in declared] == [
        ("pool_pseudo", "thyroid", "organ", "segmentation")
    ]
    assert declared[0]["classes"] == {"background": 0, "organ": 255}
    listed = json.loads((out / "pool_pseudo.json").read_text())
    assert len(listed["training"]) == 3 and not listed.get("validation") and not listed.get("test")
    samples = load_samples(load_registry(out / "datasets.yaml"), "train", out / "pool_pseudo.json")
    assert sorted(Path(s["label"]).name for s in samples) == ["img_0.png", "img_1.png", "img_2.png"]
