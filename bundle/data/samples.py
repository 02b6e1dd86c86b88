"""The sample dict both readers produce.

A sample names its files and its prompts; the transforms (``bundle.transforms``) load it::

    {"image": "/abs/segmentation/BUSI/imgs/a.png", "label": "/abs/segmentation/BUSI/masks/a.png",
     "cls_label": 0, "task": "segmentation", "dataset": "BUSI", "organ": "breast",
     "object_type": "tumor"}
    {"image": "/abs/classification/BUSI/1/a.png", "mask": "/abs/segmentation/BUSI/masks/a.png",
     "cls_label": 1, "task": "classification", "dataset": "BUSI", "organ": "breast",
     "object_type": "tumor"}

``label`` (segmentation mask) is present for segmentation samples only, ``mask`` for
classification samples whose dataset has masks (it enables the local / location modes).
"""

from __future__ import annotations

import os
from pathlib import Path

from bundle.data.registry import SEGMENTATION, DatasetSpec

SPLITS: tuple[str, ...] = ("train", "val", "test")


def make_sample(spec: DatasetSpec, image: Path, target: Path | int, mask: Path | None, where: str) -> dict:
    """The sample dict of one image of dataset ``spec``, after checking its files exist.

    Args:
        spec: the image's dataset.
        image: image file.
        target: segmentation: the mask file; classification: the class index.
        mask: classification: the mask file, or None.
        where: the list file / datalist entry the image comes from, named in errors.
    """
    files = {"image": image}
    if spec.task == SEGMENTATION:
        files["label"] = Path(target)
        cls_label = 0
    else:
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(spec.classes):
            raise ValueError(
                f"{where}: class index {target!r} is not one of the {len(spec.classes)} classes "
                f"{list(spec.classes)} of dataset '{spec.name}'"
            )
        cls_label = target
        if mask is not None:
            files["mask"] = mask
    for key, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{where}: {key} file not found: {path}")
    # absolute and normalised, so every source gives the same strings for the same file
    sample: dict = {key: os.path.abspath(path) for key, path in files.items()}
    sample.update(
        cls_label=cls_label, task=spec.task, dataset=spec.name, organ=spec.organ, object_type=spec.object_type
    )
    return sample

