"""The shipped demo data: real images within budget, consistent masks and splits, rebuilt identically from ../shared."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import require_shared
from PIL import Image

from bundle.data import SPLITS, load_registry, m2us_samples
from tests.conftest import REPO_ROOT

DEMO = REPO_ROOT / "data" / "demo"


def test_demo_data_fits_the_size_budget():
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size < 30 * 2**20


@pytest.mark.parametrize("dataset", ["BUSI", "Fetal_HC", "TG3K"])
def test_images_are_small_gray_pngs_with_binary_masks_of_their_size(dataset):
    root = DEMO / "segmentation" / dataset
    images = sorted((root / "imgs").glob("*.png"))
    assert images and len(images) == len(list((root / "masks").glob("*.png")))
    for path in images:
        image, mask = Image.open(path), Image.open(root / "masks" / path.name)
        assert image.mode == "L" and mask.mode == "L" and image.size == mask.size
        assert min(image.size) <= 256
        values = np.unique(np.asarray(mask))
        assert values.tolist() == [0, 255], path


def test_every_image_has_provenance_and_busi_has_no_normal_class():
    with open(DEMO / "provenance.csv") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    ids = {p.stem for p in DEMO.glob("segmentation/*/imgs/*.png")}
    assert ids == set(rows) and len(ids) == 260
    assert {rows[i]["class"] for i in ids if i.startswith("busi")} == {"benign", "malignant"}


def test_related_images_never_straddle_splits():
    registry = load_registry(DEMO / "datasets.yaml")
    split_of: dict[str, set[str]] = {}
    for split in SPLITS:
        for sample in m2us_samples(registry, split):
            stem = Path(sample["image"]).stem
            if sample["dataset"] == "Fetal_HC":
                key = "hc:" + stem.split("_")[1]  # numeric id prefix: one pregnancy
            elif sample["dataset"] == "TG3K":  # letterbox padding rows: one video geometry
                key = "tg3k:" + str(int(np.argmax(np.asarray(Image.open(sample["image"])).max(axis=1) > 0)))
            else:
                key = stem
            split_of.setdefault(key, set()).add(split)
    assert all(len(splits) == 1 for splits in split_of.values())


def test_converter_rebuilds_the_shipped_demo_data_byte_for_byte(tmp_path):
    shared = require_shared("data")
    out = tmp_path / "demo"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.build_demo_data", "--shared", str(shared), "--out", str(out)],
        check=True, capture_output=True, cwd=REPO_ROOT,
    )
    built = {p.relative_to(out) for p in out.rglob("*") if p.is_file()}
    shipped = {p.relative_to(DEMO) for p in DEMO.rglob("*") if p.is_file()} - {Path("README.md")}
    assert built == shipped
    for relative in sorted(built):
        assert (out / relative).read_bytes() == (DEMO / relative).read_bytes(), relative
