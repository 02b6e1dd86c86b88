"""bundle.data.registry: dataset declarations, official config.yaml lines, vocabulary extension, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundle.data import load_registry, read_official_config
from bundle.prompts import ORGANS
from tests.conftest import DEMO_DIR



def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    return path


def test_demo_registry_reads_classes_from_official_config_lines():
    registry = load_registry(DEMO_DIR / "datasets.yaml")
    busi_seg = registry.get("BUSI", "segmentation")
    assert busi_seg.classes == ("background", "tumor") and busi_seg.value_to_index == {0: 0, 255: 1}
    assert busi_seg.root == DEMO_DIR / "segmentation" / "BUSI"
    busi_cls = registry.get("BUSI", "classification")
    assert busi_cls.classes == ("benign", "malignant") and busi_cls.mask_dir == DEMO_DIR / "segmentation/BUSI/masks"
    assert registry.get("Fetal_HC", "segmentation").organ == "head"
    assert (registry.num_seg_classes, registry.num_cls_classes) == (2, 2)
    assert registry.vocabulary.sizes == {"position": 11, "task": 2, "mode": 3, "type": 2}


@pytest.mark.parametrize(
    "lines, task, names, values",
    [
        ("0:background:0\n1:tumor:255\n", "segmentation", ("background", "tumor"), (0, 255)),
        ("1:nodule:255\n", "segmentation", ("background", "nodule"), (0, 255)),  # background implied
        ("0:bg:0\n2:b:2\n1:a:1\n", "segmentation", ("bg", "a", "b"), (0, 1, 2)),
        ("0:benign\n1:malignant\n2:normal\n", "classification", ("benign", "malignant", "normal"), ()),
    ],
)
def test_official_config_lines(tmp_path, lines, task, names, values):
    (tmp_path / "config.yaml").write_text(lines)
    assert read_official_config(tmp_path / "config.yaml", task) == (names, values)


@pytest.mark.parametrize("lines", ["0:bg\n1:fg\n", "0:bg:0\n1:fg:x\n", "0:bg:0\n2:fg:255\n", "0:bg:0\n0:fg:255\n"])
def test_malformed_official_config_names_file(tmp_path, lines):
    (tmp_path / "config.yaml").write_text(lines)
    with pytest.raises(ValueError, match="config.yaml"):
        read_official_config(tmp_path / "config.yaml", "segmentation")


def test_inline_classes_and_extra_organs_extend_the_vocabulary(tmp_path):
    path = _write(tmp_path, (
        "extra_organs: [uterus]\n"
        "datasets:\n"
        "- {name: U, task: segmentation, organ: uterus, object_type: organ, classes: {bg: 0, wall: 1, lumen: 2}}\n"
        "- {name: C, task: classification, organ: liver, object_type: organ, classes: [a, b, c, d]}\n"
    ))
    registry = load_registry(path)
    assert registry.vocabulary.organs == ORGANS + ("uterus",)
    assert registry.vocabulary.sizes["position"] == len(ORGANS) + 1
    assert registry.get("U", "segmentation").mask_values == (0, 1, 2)
    assert (registry.num_seg_classes, registry.num_cls_classes) == (3, 4)


def test_data_root_overrides_the_registry_folder(tmp_path):
    registry = load_registry(DEMO_DIR / "datasets.yaml", data_root=DEMO_DIR)
    assert registry.get("TG3K", "segmentation").root == DEMO_DIR / "segmentation" / "TG3K"


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{name: A, task: detection, organ: breast, object_type: tumor}", "dataset 'A'.*unknown task 'detection'"),
        ("{name: A, task: segmentation, organ: brain, object_type: tumor}", "'A'.*unknown organ 'brain'.*extra_organs"),
        ("{name: A, task: segmentation, organ: breast, object_type: lesion}", "'A'.*unknown object_type 'lesion'"),
        ("{name: A, task: segmentation, organ: breast}", r"datasets\[0\]: missing keys \['object_type'\]"),
        ("{name: A, task: segmentation, organ: breast, object_type: tumor, colour: red}", r"unknown keys \['colour'\]"),
        ("{name: A, task: segmentation, organ: breast, object_type: tumor}", "dataset 'A'.*declare 'classes'"),
        ("{name: A, task: segmentation, organ: breast, object_type: tumor, classes: [a, b]}", "must map"),
        ("{name: A, task: classification, organ: breast, object_type: tumor, classes: [a]}", "list of >= 2"),
        ("{name: A, task: segmentation, organ: breast, object_type: tumor, classes: {a: 0, b: 1}, mask_dir: m}",
         "'mask_dir' applies to classification"),
    ],
)
def test_bad_declarations_name_file_dataset_and_key(tmp_path, entry, message):
    path = _write(tmp_path, f"datasets:\n- {entry}\n")
    with pytest.raises(ValueError, match=message) as info:
        load_registry(path)
    assert str(path) in str(info.value)


def test_missing_registry_and_class_config_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="registry file not found"):
        load_registry(tmp_path / "nope.yaml")
    path = _write(tmp_path, "datasets:\n- {name: A, task: segmentation, organ: breast, object_type: tumor, root: A}\n")
    with pytest.raises(FileNotFoundError, match="dataset folder of 'A'"):
        load_registry(path)
    (tmp_path / "A").mkdir()
    with pytest.raises(FileNotFoundError, match="A/config.yaml"):
        load_registry(path)


def test_same_dataset_twice_for_one_task_is_refused(tmp_path):
    entry = "- {name: A, task: classification, organ: breast, object_type: tumor, classes: [a, b]}\n"
    with pytest.raises(ValueError, match=r"declared twice.*A \(classification\)"):
        load_registry(_write(tmp_path, "datasets:\n" + entry + entry))
