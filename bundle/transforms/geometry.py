"""Resizing to the network input: invertible MONAI transforms (evaluation, inference), a torch one (training)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    CenterSpatialCropd,
    MapTransform,
    RandomizableTransform,
    Resize,
    Resized,
    SpatialPadd,
)
from monai.transforms.spatial.functional import resize
from monai.utils import ensure_tuple, get_equivalent_dtype

GEOMETRIES: tuple[str, ...] = ("crop", "letterbox", "squash")
IMAGE_MODE, LABEL_MODE = "bilinear", "nearest-exact"


def short_side_size(shape: Sequence[int], side: int) -> tuple[int, ...]:
    """Spatial size with the shorter side ``side`` and the aspect ratio kept (no side below ``side``)."""
    scale = side / min(shape)
    return tuple(max(side, int(round(s * scale))) for s in shape)


class ShortSideResize(Resize):
    """Resize so the shorter spatial side equals ``spatial_size`` (an int), keeping the aspect ratio.

    MONAI's ``Resize`` offers the longest side only; the trace it records is Resize's, so
    ``inverse`` (and ``Invertd``) restore the original size.
    """

    def __call__(  # type: ignore[override]
        self,
        img: torch.Tensor,
        mode: str | None = None,
        align_corners: bool | None = None,
        anti_aliasing: bool | None = None,
        anti_aliasing_sigma: Sequence[float] | float | None = None,
        dtype: torch.dtype | None = None,
        lazy: bool | None = None,
    ) -> torch.Tensor:
        if not isinstance(self.spatial_size, int):
            raise ValueError(f"ShortSideResize needs an int spatial_size, got {self.spatial_size}")
        shape = img.peek_pending_shape() if isinstance(img, MetaTensor) else img.shape[1:]
        return resize(
            img,
            short_side_size(shape, self.spatial_size),
            self.mode if mode is None else mode,
            self.align_corners if align_corners is None else align_corners,
            get_equivalent_dtype(dtype or self.dtype or img.dtype, torch.Tensor),
            len(shape),
            self.anti_aliasing if anti_aliasing is None else anti_aliasing,
            self.anti_aliasing_sigma if anti_aliasing_sigma is None else anti_aliasing_sigma,
            self.lazy if lazy is None else lazy,
            self.get_transform_info(),
        )


class ShortSideResized(Resized):
    """Dict version of ``ShortSideResize`` (image bilinear with anti-aliasing, label nearest by default)."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int,
        mode: Sequence[str] | str = (IMAGE_MODE, LABEL_MODE),
        anti_aliasing: Sequence[bool] | bool = (True, False),
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(
            keys, spatial_size, mode=mode, anti_aliasing=anti_aliasing, allow_missing_keys=allow_missing_keys
        )
        self.resizer = ShortSideResize(spatial_size=spatial_size)


def interpolate(array: torch.Tensor, size: Sequence[int], image: bool) -> torch.Tensor:
    """(C, H, W) -> (1, C, *size) float: an image bilinear with anti-aliasing, a label nearest-exact."""
    if image:
        return F.interpolate(array[None].float(), size, mode=IMAGE_MODE, align_corners=False, antialias=True)
    return F.interpolate(array[None].float(), size, mode=LABEL_MODE)


class ShortSideInterpolated(MapTransform):
    """Training-only ``ShortSideResized``: torch's anti-aliased interpolation, no trace kept.

    MONAI's anti-aliasing is a Gaussian blur before the interpolation, ~7.5 ms per demo image
    (up to 55 ms for a 3-channel 560×775 one, 1 thread); ``F.interpolate(antialias=True)`` filters
    while it resamples and takes 0.3–2 ms. Its output differs from MONAI's by ~0.005 on average
    (intensities in [0, 1]). It records no trace, so validation and inference, which invert their
    resize, keep ``ShortSideResized``. (The official code resizes with ``scipy.ndimage.zoom``,
    order 1, without anti-aliasing.)

    Args:
        keys: image key first (bilinear, anti-aliased), then label keys (nearest-exact); missing
            keys are skipped.
        spatial_size: the shorter side after resizing.
    """

    def __init__(self, keys: KeysCollection, spatial_size: int) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.spatial_size = spatial_size

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        out = dict(data)
        for key in self.key_iterator(out):
            array = torch.as_tensor(out[key])
            size = short_side_size(array.shape[1:], self.spatial_size)
            out[key] = interpolate(array, size, image=key == self.keys[0])[0].to(array.dtype)
        return out


def letterbox_size(shape: Sequence[int], side: int) -> tuple[int, ...]:
    """Spatial size with the longer side ``side`` and the aspect ratio kept, rounded as MONAI's ``Resized``."""
    scale = side / max(shape)
    return tuple(max(1, int(round(s * scale))) for s in shape)


class RandLetterboxInterpolated(RandomizableTransform, MapTransform):
    """Training-only geometry: with probability ``prob`` the inference letterbox, else ``ShortSideInterpolated``.

    Inference letterboxes every image (longer side to S, zero padding to S × S), so a wide image
    such as an 800 × 540 fetal-head scan reaches the network at ~2/3 of the scale that training's
    shorter-side resize and centre crop give it. Drawing the letterbox for a share of the training
    samples shows the network the scale and padding it meets in use. The letterboxed sample is
    (C, S, S), which the crop of ``RandOfficialCascaded`` that follows leaves whole.

    Args:
        keys: image key first (bilinear, anti-aliased), then label keys (nearest-exact); missing
            keys are skipped.
        spatial_size: the side S.
        prob: probability of the letterbox for a sample.
    """

    def __init__(self, keys: KeysCollection, spatial_size: int, prob: float) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"letterbox_prob (the share of letterboxed samples) must be in [0, 1], got {prob}")
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.spatial_size = spatial_size
        self.short_side = ShortSideInterpolated(keys, spatial_size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        self.randomize(None)
        if not self._do_transform:
            return self.short_side(data)
        out = dict(data)
        for key in self.key_iterator(out):
            array = torch.as_tensor(out[key])
            size = letterbox_size(array.shape[1:], self.spatial_size)
            resized = interpolate(array, size, image=key == self.keys[0])
            # MONAI's SpatialPad puts the smaller half of the padding first, as inference does
            rows, columns = self.spatial_size - size[0], self.spatial_size - size[1]
            padded = F.pad(resized, (columns // 2, columns - columns // 2, rows // 2, rows - rows // 2))
            out[key] = padded[0].to(array.dtype)
        return out


def resize_to_square(keys: KeysCollection, size: int, geometry: str = "crop") -> list[MapTransform]:
    """Deterministic (size, size) geometry, invertible with ``Invertd``.

    Args:
        keys: image key first, then label keys (missing keys are skipped).
        size: output side.
        geometry: ``"crop"`` shorter side to ``size`` then centre crop (official; the crop's
            border is lost), ``"letterbox"`` longer side to ``size`` then zero padding (aspect
            kept, whole image, smaller objects), ``"squash"`` both sides to ``size`` (whole
            image, aspect changed).
    """
    keys = ensure_tuple(keys)
    modes = (IMAGE_MODE,) + (LABEL_MODE,) * (len(keys) - 1)
    aliasing = (True,) + (False,) * (len(keys) - 1)
    if geometry == "crop":
        return [
            ShortSideResized(keys, size, modes, aliasing),
            CenterSpatialCropd(keys, (size, size), allow_missing_keys=True),
        ]
    if geometry == "letterbox":
        return [
            Resized(keys, size, size_mode="longest", mode=modes, anti_aliasing=aliasing, allow_missing_keys=True),
            SpatialPadd(keys, (size, size), allow_missing_keys=True),
        ]
    if geometry == "squash":
        return [Resized(keys, (size, size), mode=modes, anti_aliasing=aliasing, allow_missing_keys=True)]
    raise ValueError(f"unknown geometry '{geometry}', expected one of {list(GEOMETRIES)}")
