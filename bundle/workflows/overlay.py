"""Overlay pictures: a mask's outline and tint over an ultrasound image, as RGB uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

__all__ = ["overlay", "side_by_side", "save_png"]

# One colour per foreground class; class c uses PALETTE[(c - 1) % len].
PALETTE = np.array([(255, 64, 64), (64, 200, 255), (255, 220, 0), (140, 255, 90), (230, 90, 255)], dtype=np.float32)


def _gray_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) or (H, W) floats in [0, 1] -> (H, W, 3) float32 RGB."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[:3].transpose(1, 2, 0) if image.shape[0] in (1, 3, 4) else image
        image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
    else:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.clip(image, 0.0, 1.0) * 255.0


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """Tint each class region of ``mask`` (H, W) class indices over ``image`` and draw its outline.

    Returns:
        (H, W, 3) uint8.
    """
    rgb = _gray_rgb(image)
    mask = np.asarray(mask)
    for c in np.unique(mask):
        if c == 0:
            continue
        colour = PALETTE[(int(c) - 1) % len(PALETTE)]
        region = mask == c
        rgb[region] = (1 - alpha) * rgb[region] + alpha * colour
        rgb[find_boundaries(region, mode="inner")] = colour
    return rgb.round().astype(np.uint8)


def side_by_side(image: np.ndarray, label: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Ground truth overlay | prediction overlay, (H, 2W + 4, 3) uint8 with a white gap."""
    left, right = overlay(image, label), overlay(image, pred)
    gap = np.full((left.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array as PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path
