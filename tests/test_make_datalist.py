"""scripts/make_datalist.py (its command line is ``bundle.data.user_folder.main``) on real demo images laid out
as users have them (BUSI Kaggle naming, images/ + masks/)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle.data import load_registry, load_samples, m2us_samples
from bundle.data.user_folder import main as make_datalist_main
from bundle.transforms import verify_samples
from tests.conftest import REPO_ROOT

DEMO = REPO_ROOT / "data" / "demo"


@pytest.fixture(scope="module")
def demo_registry():
    return load_registry(DEMO / "datasets.yaml")


def _busi_like(tmp_path: Path, registry, per_class: int = 10) -> Path:
    """Kaggle layout: <class>/<class> (n).png with "<class> (n)_mask.png"; every 3rd mask split in _mask + _mask_1."""
    root = tmp_path / "Dataset_BUSI_with_GT"
    samples = [s for s in m2us_samples(registry, "train") if s["task"] == "classification"]
    for class_index, name in enumerate(("benign", "malignant")):
        (root / name).mkdir(parents=True)
        for n, sample in enumerate([s for s in samples if s["cls_label"] == class_index][:per_class]):
            stem = f"{name} ({n})"
            shutil.copyfile(sample["image"], root / name / f"{stem}.png")
            mask = np.asarray(Image.open(sample["mask"]))
            if n % 3 == 0:  # two lesion files whose union is the mask
                top, bottom = mask.copy(), mask.copy()
                top[mask.shape[0] // 2 :] = 0
                bottom[: mask.shape[0] // 2] = 0
                Image.fromarray(top).save(root / name / f"{stem}_mask.png")
                Image.fromarray(bottom).save(root / name / f"{stem}_mask_1.png")
            else:
                Image.fromarray(mask).save(root / name / f"{stem}_mask.png")
    (root / "normal").mkdir()
    shutil.copyfile(samples[0]["image"], root / "normal" / "normal (1).png")
    return root


def test_busi_kaggle_folder_becomes_a_stratified_datalist_for_both_tasks(tmp_path, demo_registry):
    root = _busi_like(tmp_path, demo_registry)
    out, registry_path = tmp_path / "lists" / "busi.json", tmp_path / "lists" / "datasets.yaml"
    counts = make_datalist_main([
        str(root), "--out", str(out), "--registry", str(registry_path), "--dataset", "MyBUSI",
        "--task", "segmentation", "classification", "--organ", "breast", "--object-type", "tumor",
        "--classes", "benign", "malignant", "--seed", "3",
    ])
    assert counts == {"train": 14, "val": 2, "test": 4}
    content = json.loads(out.read_text())
    assert set(content) == {"training", "validation", "test"}
    registry = load_registry(registry_path)
    assert registry.get("MyBUSI", "segmentation").value_to_index == {0: 0, 255: 1}
    assert registry.get("MyBUSI", "classification").classes == ("benign", "malignant")
    train = load_samples(registry, "train", datalist=out)
    assert Counter((s["task"], s["cls_label"]) for s in train) == {
        ("segmentation", 0): 14, ("classification", 0): 7, ("classification", 1): 7}
    assert not any("normal" in s["image"] for s in train)
    cls = [s for s in train if s["task"] == "classification"]
    assert all("mask" in s for s in cls)  # masks exist: local / location modes are available
    verify_samples(train, registry)


def test_several_masks_of_one_image_are_merged_by_union(tmp_path, demo_registry):
    root = _busi_like(tmp_path, demo_registry)
    out = tmp_path / "busi.json"
    make_datalist_main([str(root), "--out", str(out), "--dataset", "B", "--task", "segmentation",
                        "--organ", "breast", "--object-type", "tumor", "--classes", "benign", "malignant"])
    entries = sum(json.loads(out.read_text()).values(), [])
    merged = [e for e in entries if "merged_masks" in e["label"]]
    assert len(merged) == 8  # images 0, 3, 6, 9 of each class
    for entry in merged:
        stem = Path(entry["image"]).stem
        top = np.asarray(Image.open(root / Path(entry["image"]).parent.name / f"{stem}_mask.png"))
        bottom = np.asarray(Image.open(root / Path(entry["image"]).parent.name / f"{stem}_mask_1.png"))
        assert np.array_equal(np.asarray(Image.open(out.parent / entry["label"])), np.maximum(top, bottom))


def test_images_and_masks_folders_keep_groups_in_one_split(tmp_path, demo_registry):
    root = tmp_path / "heads"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    samples = m2us_samples(demo_registry, "train")
    heads = [s for s in samples if s["dataset"] == "Fetal_HC"][:12]
    for n, sample in enumerate(heads):  # patients p0..p3, three images each
        shutil.copyfile(sample["image"], root / "images" / f"p{n % 4}_{n}.png")
        shutil.copyfile(sample["label"], root / "masks" / f"p{n % 4}_{n}.png")
    out, registry_path = tmp_path / "heads.json", tmp_path / "datasets.yaml"
    make_datalist_main([str(root), "--out", str(out), "--registry", str(registry_path), "--dataset", "Heads",
                        "--task", "segmentation", "--organ", "head", "--object-type", "organ",
                        "--group-regex", r"^(p\d+)_", "--fractions", "0.5", "0.25", "0.25"])
    registry = load_registry(registry_path)
    patients = {split: {Path(s["image"]).stem.split("_")[0] for s in load_samples(registry, split, out)}
                for split in ("train", "val", "test")}
    assert [len(p) for p in patients.values()] == [2, 1, 1]
    assert set.union(*patients.values()) == {"p0", "p1", "p2", "p3"}


def _simple_folder(tmp_path: Path, demo_registry, mask_values=(0, 255), orphan=False, missing_mask=False) -> Path:
    root = tmp_path / "simple"
    root.mkdir()
    sample = next(s for s in m2us_samples(demo_registry, "val") if s["dataset"] == "TG3K")
    mask = (np.asarray(Image.open(sample["label"])) > 0).astype(np.uint8) * mask_values[1]
    if len(mask_values) > 2:
        mask[:5, :5] = mask_values[2]
    for n in range(4):
        shutil.copyfile(sample["image"], root / f"a{n}.png")
        if not (missing_mask and n == 0):
            Image.fromarray(mask).save(root / f"a{n}_mask.png")
    if orphan:
        Image.fromarray(mask).save(root / "zz_mask.png")
    return root


@pytest.mark.parametrize(
    "kwargs, extra, message",
    [
        ({"missing_mask": True}, [], "1 images have no mask for segmentation"),
        ({"orphan": True}, [], "mask files have no image beside them.*zz_mask.png"),
        ({"mask_values": (0, 255, 128)}, [], r"masks hold values \[0, 128, 255\]: not binary"),
        ({}, ["--organ", "brain"], "unknown position prompt 'brain'"),
        ({}, ["--task", "classification"], "classification needs >= 2 class folders"),
    ],
)
def test_bad_folders_stop_with_a_clear_message(tmp_path, demo_registry, kwargs, extra, message):
    root = _simple_folder(tmp_path, demo_registry, **kwargs)
    argv = [str(root), "--out", str(tmp_path / "d.json"), "--registry", str(tmp_path / "r.yaml"), "--dataset", "S",
            "--task", "segmentation", "--organ", "thyroid", "--object-type", "organ"]
    with pytest.raises(ValueError, match=message):
        make_datalist_main(argv + extra)
    assert not (tmp_path / "r.yaml").exists()


def test_explicit_segmentation_classes_accept_multi_value_masks(tmp_path, demo_registry):
    root = _simple_folder(tmp_path, demo_registry, mask_values=(0, 255, 128))
    make_datalist_main([str(root), "--out", str(tmp_path / "d.json"), "--registry", str(tmp_path / "r.yaml"),
                        "--dataset", "S", "--task", "segmentation", "--organ", "thyroid", "--object-type", "organ",
                        "--seg-classes", "background:0", "gland:255", "marker:128"])
    registry = load_registry(tmp_path / "r.yaml")
    assert registry.get("S", "segmentation").value_to_index == {0: 0, 255: 1, 128: 2}
    verify_samples(load_samples(registry, "train", tmp_path / "d.json"), registry)


def test_the_script_is_the_same_command_line(tmp_path, demo_registry):
    root = _simple_folder(tmp_path, demo_registry)
    out = tmp_path / "d.json"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "make_datalist.py"), str(root), "--out", str(out),
               "--dataset", "S", "--task", "segmentation", "--organ", "thyroid", "--object-type", "organ"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.startswith(f"wrote {out}\nimages per split: ")
    assert sum(len(entries) for entries in json.loads(out.read_text()).values()) == 4
