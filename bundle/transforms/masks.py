"""Masks to class indices through their dataset's declared mask values."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.transforms import MapTransform

from bundle.data.registry import DatasetRegistry
from bundle.transforms.io import file_of


class MaskToIndicesd(MapTransform):
    """Turn loaded masks into float32 (1, H, W) class indices and check them against their image.

    The segmentation ``label`` maps each declared mask value to its class index (registry
    ``classes`` / official ``index:name:value`` lines); a value the dataset does not declare is
    an error naming the file. A classification ``mask`` only marks the object, so any
    non-zero value becomes 1. Either must have the image's height and width.

    Args:
        registry: the dataset declarations, looked up by the sample's ``dataset`` and ``task``.
        image_key: key of the loaded image.
        label_key: key of a segmentation mask.
        mask_key: key of a classification sample's object mask.
    """

    def __init__(
        self, registry: DatasetRegistry, image_key: str = "image", label_key: str = "label", mask_key: str = "mask"
    ) -> None:
        super().__init__((label_key, mask_key), allow_missing_keys=True)
        self.registry = registry
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d[self.image_key]
        for key in self.key_iterator(d):
            mask = d[key]
            if mask.shape[1:] != image.shape[1:]:
                raise ValueError(
                    f"{key} file {file_of(mask)} is {tuple(mask.shape[1:])} (H, W) but its image "
                    f"{file_of(image)} is {tuple(image.shape[1:])}"
                )
            if key == self.label_key:
                d[key] = self._indices(mask, d)
            else:
                d[key] = (mask > 0).float()
        return d

    def _indices(self, mask: torch.Tensor, d: Mapping[Hashable, object]) -> torch.Tensor:
        spec = self.registry.get(d["dataset"], d["task"])
        values = torch.unique(mask.as_tensor() if hasattr(mask, "as_tensor") else mask).tolist()
        undeclared = sorted(set(int(v) for v in values) - set(spec.mask_values))
        if undeclared:
            raise ValueError(
                f"label file {file_of(mask)} has mask values {undeclared} that dataset '{spec.name}' does not "
                f"declare (declared {dict(zip(spec.classes, spec.mask_values))})"
            )
        indices = torch.zeros_like(mask, dtype=torch.float32)
        for value, index in spec.value_to_index.items():
            indices[mask == value] = float(index)
        return indices
