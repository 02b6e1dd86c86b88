"""Overlay pictures: a mask's outline and tint over an ultrasound image, as RGB uint8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.utils import optional_import
from PIL import Image
from scipy import ndimage

__all__ = ["inner_outline", "overlay", "paletted_overlay", "save_gif", "save_overlay_video", "side_by_side", "save_png"]

# One colour per foreground class; class c uses PALETTE[(c - 1) % len].
PALETTE = np.array([(255, 64, 64), (64, 200, 255), (255, 220, 0), (140, 255, 90), (230, 90, 255)], dtype=np.float32)


_EDGE_NEIGHBOURS = ndimage.generate_binary_structure(2, 1)


def inner_outline(region: np.ndarray) -> np.ndarray:
    """The pixels of ``region`` (H, W) bool with an edge neighbour outside it: skimage's
    ``find_boundaries(region, mode="inner")``, by one erosion (a quarter of its time)."""
    return region & ~ndimage.binary_erosion(region, _EDGE_NEIGHBOURS, border_value=1)


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
        rgb[inner_outline(region)] = colour
    return rgb.round().astype(np.uint8)


def _overlay_palette(classes: int, levels: int, alpha: float) -> np.ndarray:
    """(256, 3) uint8: for class c < ``classes`` and gray level l < ``levels``, entry c·levels + l is the
    gray tinted as :func:`overlay` tints class c; entry classes·levels + c - 1 is class c's outline."""
    gray = np.linspace(0.0, 255.0, levels, dtype=np.float32)[:, None].repeat(3, 1)
    entries = [gray]
    for c in range(1, classes):
        entries.append((1 - alpha) * gray + alpha * PALETTE[(c - 1) % len(PALETTE)])
    entries.append(np.stack([PALETTE[(c - 1) % len(PALETTE)] for c in range(1, classes)]))
    palette = np.concatenate(entries)
    return np.pad(palette, ((0, 256 - len(palette)), (0, 0))).round().astype(np.uint8)


def paletted_overlay(image: np.ndarray, mask: np.ndarray, classes: int, alpha: float = 0.35) -> Image.Image:
    """:func:`overlay` of a gray image as a palette ("P") picture, the form a GIF frame takes.

    Computed by indexing instead of quantising an RGB overlay (which took most of a cine loop's
    writing time): each class has ``(256 - classes + 1) // classes`` gray levels tinted by its
    colour, and its outline its own entry.

    Args:
        image: (1, H, W) or (H, W) floats in [0, 1].
        mask: (H, W) class indices < ``classes``.
        classes: segmentation classes, background included.
    """
    levels = (256 - (classes - 1)) // classes
    gray = np.clip(np.asarray(image, dtype=np.float32).reshape(mask.shape), 0.0, 1.0)
    index = (gray * (levels - 1)).round().astype(np.int32) + mask.astype(np.int32) * levels
    for c in range(1, classes):
        index[inner_outline(mask == c)] = classes * levels + c - 1
    picture = Image.fromarray(index.astype(np.uint8), mode="P")
    picture.putpalette(_overlay_palette(classes, levels, alpha).tobytes())
    return picture


def save_gif(frames: list[Image.Image], path: str | Path, milliseconds_per_frame: int = 40) -> Path:
    """An animated GIF of ``frames`` (palette or RGB pictures) that loops, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=milliseconds_per_frame, loop=0)
    return path


def save_overlay_video(frames: list[Image.Image], stem_path: str | Path, frames_per_second: int = 25) -> Path:
    """``<stem>_overlay.mp4`` (MPEG-4 part 2, OpenCV) of ``frames``, or ``<stem>_overlay.gif`` where
    OpenCV or its encoder is missing; returns the file written.

    Args:
        frames: the loop's overlay pictures (palette or RGB), in order, one size.
        stem_path: the output folder and the input's stem.
    """
    stem_path = Path(stem_path)
    stem_path.parent.mkdir(parents=True, exist_ok=True)
    cv2, found = optional_import("cv2")
    if found:
        path = stem_path.with_name(f"{stem_path.name}_overlay.mp4")
        width, height = frames[0].size
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), frames_per_second, (width, height))
        if writer.isOpened():
            for frame in frames:
                writer.write(np.ascontiguousarray(np.asarray(frame.convert("RGB"))[..., ::-1]))  # OpenCV takes BGR
            writer.release()
            return path
    return save_gif(frames, stem_path.with_name(f"{stem_path.name}_overlay.gif"), 1000 // frames_per_second)


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
