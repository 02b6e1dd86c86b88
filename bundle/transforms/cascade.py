"""The official training augmentation cascade and centre crop, as one resampling in torch."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["CASCADE_BRANCHES", "RandOfficialCascaded"]

# the official draws: flip if r1 > 0.5, elif r2 > 0.5 rotate, elif r3 > 0.5 zoom, else nothing
CASCADE_BRANCHES: dict[str, float] = {"flip": 0.5, "rotate": 0.25, "zoom": 0.125, "none": 0.125}


class RandOfficialCascaded(RandomizableTransform, MapTransform):
    """One of h-flip / rotate / zoom (official probabilities), then the centre (S, S) crop.

    Rotation (uniform in +-``max_angle_deg``) and zoom (factor uniform in ``zoom``; size kept,
    zero padding below 1) are about the image centre, as in the official code and MONAI's
    ``Rotate`` / ``Zoom`` with ``keep_size``. Each is a single ``grid_sample`` straight onto the
    cropped grid (image bilinear, labels nearest, zeros outside), and flip and no change are
    slices: MONAI's ``OneOf`` of ``Flipd`` / ``RandRotated`` / ``RandZoomd`` and a
    ``CenterSpatialCropd`` took ~6 ms per 96² demo sample (1 thread), most of it metadata
    bookkeeping a training sample never uses; this takes well under 1 ms. Inputs are plain
    (C, H, W) tensors with H, W >= S (after ``ShortSideInterpolated``); no trace is kept.

    Args:
        keys: image key first (bilinear), then label keys (nearest); missing keys are skipped.
        spatial_size: the crop side S.
        max_angle_deg: largest rotation in degrees.
        zoom: (smallest, largest) zoom factor.
        weights: branch -> probability over ``CASCADE_BRANCHES``' names (missing ones 0); None
            for the official ``CASCADE_BRANCHES``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int,
        max_angle_deg: float = 20.0,
        zoom: Sequence[float] = (0.8, 1.2),
        weights: Mapping[str, float] | None = None,
    ) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        weights = dict(CASCADE_BRANCHES if weights is None else weights)
        if set(weights) - set(CASCADE_BRANCHES) or abs(sum(weights.values()) - 1.0) > 1e-6 or min(weights.values()) < 0:
            raise ValueError(
                f"augmentation weights must be over {list(CASCADE_BRANCHES)}, non-negative and sum to 1: {weights}"
            )
        if len(zoom) != 2 or not 0 < zoom[0] <= zoom[1]:
            raise ValueError(f"augmentation zoom must be [smallest, largest] with 0 < smallest <= largest, got {list(zoom)}")
        self.spatial_size = spatial_size
        self.max_angle = math.radians(max_angle_deg)
        self.zoom = (float(zoom[0]), float(zoom[1]))
        self.weights = {branch: float(weights.get(branch, 0.0)) for branch in CASCADE_BRANCHES}
        self.branch, self.amount = "none", 0.0

    def randomize(self, data: object = None) -> None:
        """Draw the branch and its amount (angle in radians or zoom factor)."""
        self.branch = str(self.R.choice(list(self.weights), p=list(self.weights.values())))
        if self.branch == "rotate":
            self.amount = float(self.R.uniform(-self.max_angle, self.max_angle))
        elif self.branch == "zoom":
            self.amount = float(self.R.uniform(*self.zoom))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        self.randomize()
        return self.apply(data, self.branch, self.amount)

    def apply(self, data: Mapping[Hashable, torch.Tensor], branch: str, amount: float = 0.0) -> dict:
        """The cascade with a given draw: ``branch`` in ``CASCADE_BRANCHES``, ``amount`` its angle / factor."""
        if branch not in CASCADE_BRANCHES:
            raise ValueError(f"unknown branch '{branch}', expected one of {list(CASCADE_BRANCHES)}")
        out = dict(data)
        grid = None  # image and labels share their size, hence one sampling grid
        for key in self.key_iterator(out):
            array = torch.as_tensor(out[key])
            if branch == "flip":
                array = torch.flip(array, dims=(-1,))
            if branch in ("flip", "none"):
                out[key] = self._centre_crop(array)
                continue
            if grid is None:
                grid = self._sampling_grid(array.shape[-2:], branch, amount)
            mode = "bilinear" if key == self.keys[0] else "nearest"
            sampled = F.grid_sample(array[None].float(), grid, mode=mode, padding_mode="zeros", align_corners=True)
            out[key] = sampled[0].to(array.dtype)
        return out

    def _centre_crop(self, array: torch.Tensor) -> torch.Tensor:
        top, left = self._crop_origin(array.shape[-2:])
        return array[..., top : top + self.spatial_size, left : left + self.spatial_size].contiguous()

    def _crop_origin(self, shape: torch.Size) -> tuple[int, int]:
        return shape[0] // 2 - self.spatial_size // 2, shape[1] // 2 - self.spatial_size // 2

    def _sampling_grid(self, shape: torch.Size, branch: str, amount: float) -> torch.Tensor:
        """(1, S, S, 2) ``grid_sample`` grid: each crop pixel's source in the rotated or zoomed (H, W) image."""
        height, width = shape
        top, left = self._crop_origin((height, width))
        centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
        steps = torch.arange(self.spatial_size, dtype=torch.float32)
        y, x = torch.meshgrid(steps + top - centre_y, steps + left - centre_x, indexing="ij")
        if branch == "rotate":
            cos, sin = math.cos(amount), math.sin(amount)
            y, x = cos * y - sin * x, sin * y + cos * x
        else:
            y, x = y / amount, x / amount
        # grid_sample wants (x, y) in [-1, 1] with the corner pixels' centres at -1 and 1
        return torch.stack((2 * (x + centre_x) / (width - 1) - 1, 2 * (y + centre_y) / (height - 1) - 1), dim=-1)[None]
