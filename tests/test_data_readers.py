"""bundle.data readers: M²-US folders and MONAI datalist JSON on the shipped demo data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bundle.data import SPLITS, datalist_samples, load_registry, load_samples, m2us_samples
from tests.conftest import DEMO_DIR

EXPECTED_COUNTS = {  # (task, dataset) -> train / val / test sizes written by benchmarks/build_demo_data.py
    ("segmentation", "BUSI"): (70, 10, 20),
    ("segmentation", "Fetal_HC"): (42, 6, 12),
    ("segmentation", "TG3K"): (68, 15, 17),
    ("classification", "BUSI"): (70, 10, 20),
}


@pytest.fixture(scope="module")
def registry():
    return load_registry(DEMO_DIR / "datasets.yaml")


@pytest.mark.parametrize("split", SPLITS)
def test_m2us_and_datalist_give_identical_samples(registry, split):
    from_folders = m2us_samples(registry, split)
    from_json = datalist_samples(DEMO_DIR / "datalist.json", split, registry)
    assert from_folders == from_json
    assert load_samples(registry, split) == from_folders
    assert load_samples(DEMO_DIR / "datasets.yaml", split, DEMO_DIR / "datalist.json") == from_folders


@pytest.mark.parametrize("split_index, split", list(enumerate(SPLITS)))
def test_demo_split_sizes_per_dataset(registry, split_index, split):
    samples = m2us_samples(registry, split)
    for (task, name), sizes in EXPECTED_COUNTS.items():
        assert sum(s["task"] == task and s["dataset"] == name for s in samples) == sizes[split_index]


def test_splits_are_disjoint_and_busi_tasks_share_them(registry):
    stems = {split: {(s["task"], Path(s["image"]).stem) for s in m2us_samples(registry, split)} for split in SPLITS}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not {stem for _, stem in stems[a]} & {stem for _, stem in stems[b]}
    for split in SPLITS:
        seg = {stem for task, stem in stems[split] if task == "segmentation" and stem.startswith("busi")}
        cls = {stem for task, stem in stems[split] if task == "classification"}
        assert seg == cls


def test_sample_dicts_carry_paths_class_and_prompt_names(registry):
    samples = m2us_samples(registry, "val")
    seg = next(s for s in samples if s["dataset"] == "Fetal_HC")
    assert set(seg) == {"image", "label", "cls_label", "task", "dataset", "organ", "object_type"}
    assert (seg["task"], seg["organ"], seg["object_type"], seg["cls_label"]) == ("segmentation", "head", "organ", 0)
    assert Path(seg["image"]).is_file() and seg["label"].endswith(f"masks/{Path(seg['image']).name}")
    cls = [s for s in samples if s["task"] == "classification"]
    assert set(cls[0]) == {"image", "mask", "cls_label", "task", "dataset", "organ", "object_type"}
    assert {s["cls_label"] for s in cls} == {0, 1}
    for s in cls:  # class index is the class folder, the mask the segmentation mask of the same image
        assert Path(s["image"]).parent.name == str(s["cls_label"])
        assert Path(s["mask"]).name == Path(s["image"]).name and Path(s["mask"]).is_file()


def _copy_dataset(tmp_path: Path, name: str = "TG3K") -> Path:
    """A one-dataset M²-US copy (registry + folder) of the demo's ``name`` to break on purpose."""
    root = tmp_path / "segmentation" / name
    shutil.copytree(DEMO_DIR / "segmentation" / name, root)
    entry = f"- {{name: {name}, task: segmentation, organ: thyroid, object_type: organ, root: segmentation/{name}}}\n"
    (tmp_path / "datasets.yaml").write_text("datasets:\n" + entry)
    return root


def test_missing_dataset_folder_is_named(tmp_path):
    root = _copy_dataset(tmp_path)
    registry = load_registry(tmp_path / "datasets.yaml")
    shutil.move(root, tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="dataset folder of 'TG3K'.*segmentation/TG3K"):
        m2us_samples(registry, "train")
    with pytest.raises(FileNotFoundError, match="dataset folder of 'TG3K'.*segmentation/TG3K"):
        load_registry(tmp_path / "datasets.yaml")


def test_missing_list_file_is_named(tmp_path):
    root = _copy_dataset(tmp_path)
    (root / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"split 'val'.*TG3K/val\.txt"):
        m2us_samples(tmp_path / "datasets.yaml", "val")


@pytest.mark.parametrize("folder, key", [("imgs", "image"), ("masks", "label")])
def test_listed_file_that_is_absent_names_list_file_and_line(tmp_path, folder, key):
    root = _copy_dataset(tmp_path)
    lines = (root / "test.txt").read_text().splitlines()
    (root / folder / lines[2]).unlink()
    with pytest.raises(FileNotFoundError, match=rf"test\.txt, line 3: {key} file not found: .*{lines[2]}"):
        m2us_samples(tmp_path / "datasets.yaml", "test")


def test_dataset_without_root_needs_a_datalist(tmp_path):
    (tmp_path / "datasets.yaml").write_text(
        "datasets:\n- {name: X, task: segmentation, organ: liver, object_type: organ, classes: {bg: 0, fg: 1}}\n"
    )
    with pytest.raises(ValueError, match="dataset 'X'.*no 'root'"):
        m2us_samples(tmp_path / "datasets.yaml", "train")


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"image": "a.png", "dataset": "BUSI"}, r"training\[0\]: missing keys \['task'\]"),
        ({"image": "a.png", "dataset": "Nope", "task": "segmentation"}, "'Nope' .*not declared"),
        ({"image": "a.png", "dataset": "BUSI", "task": "segmentation"}, "needs 'label'"),
        ({"image": "a.png", "dataset": "BUSI", "task": "classification", "cls_label": "cyst"}, "unknown class 'cyst'"),
        ({"image": "a.png", "dataset": "BUSI", "task": "classification", "cls_label": 2}, "class index 2 is not one"),
        ({"image": "a.png", "dataset": "BUSI", "task": "segmentation", "lable": "b.png"}, r"unknown keys \['lable'\]"),
    ],
)
def test_bad_datalist_entries_are_named(registry, tmp_path, entry, message):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [entry]}))
    with pytest.raises(ValueError, match=message):
        datalist_samples(path, "train", registry)


def test_datalist_image_that_is_absent_is_named(registry, tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"validation": [{"image": "gone.png", "label": "gone.png", "dataset": "TG3K",
                                                "task": "segmentation"}]}))
    with pytest.raises(FileNotFoundError, match=r"validation\[0\]: image file not found: .*gone\.png"):
        datalist_samples(path, "val", registry)


def test_datalist_without_the_split_key_is_named(registry, tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match=r"no 'test' list for split 'test'"):
        datalist_samples(path, "test", registry)
    with pytest.raises(FileNotFoundError, match="datalist file not found"):
        datalist_samples(tmp_path / "missing.json", "train", registry)
