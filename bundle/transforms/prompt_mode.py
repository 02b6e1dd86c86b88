"""The input-mode prompt: whole image, local crop around the object, or location mark on it.

Official recipe (PerceptGuide ``datasets/omni_dataset.py``): a segmentation sample is a local
crop with p = 0.5, else whole; a classification sample whose dataset has masks is whole /
local / location with p = 0.3 / 0.3 / 0.4; otherwise whole; an empty mask falls back to whole.

Two deliberate differences from the official code: the local crop is the square of side
max(h, w) *centred* on the object's bounding box and shifted inside the image (the official
square starts at the box's top-left corner and is clipped at the border, so it can end up
non-square with the object off-centre); the location mark adds 0.1 to the [0, 1] intensities
under the mask and clips at 1 (the official adds 25 to uint8 pixels and wraps above 230).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.transforms import Crop, InvertibleTransform, MapTransform, RandomizableTransform

from bundle.data.registry import SEGMENTATION
from bundle.prompts import MODES
from bundle.transforms.io import file_of

WHOLE, LOCAL, LOCATION = MODES
LOCATION_INTENSITY = 0.1
MODE_PROBABILITIES: dict[str, dict[str, float]] = {
    "segmentation": {WHOLE: 0.5, LOCAL: 0.5},
    "classification": {WHOLE: 0.3, LOCAL: 0.3, LOCATION: 0.4},
}


def local_square(foreground: torch.Tensor) -> tuple[slice, slice]:
    """Row and column slices of the local crop around a non-empty (H, W) foreground.

    The square's side is max(box height, box width); it is centred on the bounding box,
    shifted to lie inside the image, and limited to the image where the side exceeds it.
    """
    if not bool(foreground.any()):
        raise ValueError("local_square needs a non-empty foreground")
    rows = torch.nonzero(foreground.any(dim=1)).flatten()
    cols = torch.nonzero(foreground.any(dim=0)).flatten()
    boxes = [(int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))]
    side = max(high - low + 1 for low, high in boxes)
    slices = []
    for (low, high), size in zip(boxes, foreground.shape):
        if side >= size:
            slices.append(slice(0, size))
            continue
        start = low - (side - (high - low + 1)) // 2
        start = min(max(start, 0), size - side)
        slices.append(slice(start, start + side))
    return slices[0], slices[1]


def location_mark(image: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
    """(C, H, W) image in [0, 1] plus ``LOCATION_INTENSITY`` on the (H, W) foreground, clipped at 1."""
    return torch.clamp(image + LOCATION_INTENSITY * foreground.to(image.dtype), max=1.0)


class PromptModed(MapTransform, InvertibleTransform):
    """Apply an input mode to a sample and record its name in ``d["mode"]``.

    The object comes from the segmentation ``label`` (> 0) or a classification sample's
    ``mask``. The mode is the sample's own ``"mode"`` if it has one, else ``mode``. It is
    applied only where it can be: local / location need a non-empty object, and location is
    for classification samples only (official); otherwise the sample becomes ``whole``. With
    ``keep_without_mask`` a sample without any mask (inference on a user's image) keeps the
    requested mode name and its image unchanged: the image is taken as already cropped or
    marked by the user.

    The crop is a MONAI ``Crop`` (a full-size one for whole / location), so ``Invertd`` maps
    predictions back through it. ``mask`` is dropped afterwards.

    Args:
        mode: the input mode name for samples without their own.
        keep_without_mask: keep the requested mode for samples without masks (else whole).
        image_key, label_key, mask_key: sample keys.
    """

    def __init__(
        self,
        mode: str = WHOLE,
        keep_without_mask: bool = False,
        image_key: str = "image",
        label_key: str = "label",
        mask_key: str = "mask",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}', expected one of {list(MODES)}")
        super().__init__((image_key, label_key), allow_missing_keys=True)
        self.mode = mode
        self.keep_without_mask = keep_without_mask
        self.image_key, self.label_key, self.mask_key = image_key, label_key, mask_key
        self.cropper = Crop()

    def choose(self, d: Mapping[Hashable, object], foreground: torch.Tensor | None) -> str:
        """The requested mode of this sample."""
        mode = d.get("mode", self.mode)
        if mode not in MODES:
            source = file_of(d.get(self.image_key))
            raise ValueError(f"sample {source}: unknown mode '{mode}', expected one of {list(MODES)}")
        return str(mode)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        foreground = self._foreground(d)
        mode = self.choose(d, foreground)
        if foreground is None:
            mode = mode if self.keep_without_mask else WHOLE
        elif not self._applicable(mode, d["task"], foreground):
            mode = WHOLE
        image = d[self.image_key]
        slices = (slice(0, image.shape[1]), slice(0, image.shape[2]))
        if foreground is not None and mode == LOCAL:
            slices = local_square(foreground)
        if foreground is not None and mode == LOCATION:
            d[self.image_key] = location_mark(image, foreground)
        for key in self.key_iterator(d):
            d[key] = self.crop(d[key], slices)
        d["mode"] = mode
        d.pop(self.mask_key, None)
        return d

    def crop(self, array: torch.Tensor, slices: tuple[slice, slice]) -> torch.Tensor:
        """(C, H, W) -> the (C, h, w) crop, traced for ``inverse``."""
        return self.cropper(array, slices)

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.cropper.inverse(d[key])
        return d

    def _foreground(self, d: Mapping[Hashable, object]) -> torch.Tensor | None:
        source = self.label_key if d.get("task") == SEGMENTATION else self.mask_key
        return d[source][0] > 0 if source in d else None

    @staticmethod
    def _applicable(mode: str, task: str, foreground: torch.Tensor) -> bool:
        return mode == WHOLE or (mode in MODE_PROBABILITIES[task] and bool(foreground.any()))


class RandPromptModed(PromptModed, RandomizableTransform):
    """``PromptModed`` with the mode drawn per sample with the official probabilities.

    A sample without a mask (a classification dataset without masks) is always ``whole``.
    Training samples are never inverted, so the crop is a plain slice with no trace (MONAI's
    traced ``Crop`` cost ~1.5 ms per demo sample even when it keeps the whole image).

    Args:
        probabilities: task -> {mode: probability}; a task left out keeps its official table
            from ``MODE_PROBABILITIES``.
    """

    def __init__(self, probabilities: Mapping[str, Mapping[str, float]] | None = None, **keys: str) -> None:
        PromptModed.__init__(self, WHOLE, keep_without_mask=False, **keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.probabilities = {task: dict(p) for task, p in {**MODE_PROBABILITIES, **(probabilities or {})}.items()}
        for task, table in self.probabilities.items():
            if set(table) - set(MODES) or abs(sum(table.values()) - 1.0) > 1e-6:
                raise ValueError(f"mode probabilities of '{task}' must be over {list(MODES)} and sum to 1: {table}")

    def choose(self, d: Mapping[Hashable, object], foreground: torch.Tensor | None) -> str:
        if foreground is None:
            return WHOLE
        table = self.probabilities[str(d["task"])]
        return str(self.R.choice(list(table), p=list(table.values())))

    def crop(self, array: torch.Tensor, slices: tuple[slice, slice]) -> torch.Tensor:
        """(C, H, W) -> the (C, h, w) crop, a view (of a plain tensor in the training chain)."""
        return array[:, slices[0], slices[1]]
