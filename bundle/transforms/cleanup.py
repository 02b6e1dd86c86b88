"""Filling a class-index mask's enclosed holes by labelling its components, in one pass.

MONAI's ``FillHoles`` grows the background from the border by binary dilation repeated until
nothing changes: one pass over the image per pixel of path length, ~6 ms per 256² frame here, a
sixth of a 30 frames/s budget. Labelling the connected components of everything that is not the
class finds the same holes in one pass (~0.3 ms); the result is the same (tested against
``FillHoles``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import Transform
from scipy import ndimage

__all__ = ["FillEnclosedHoles"]


class FillEnclosedHoles(Transform):
    """MONAI's ``FillHoles`` for a class-index mask (1, H, W): each region of pixels outside class c that
    no path of such pixels joins to the image border becomes c.

    Args:
        applied_labels: the classes whose holes are filled, in this order; None: every class > 0
            present in the mask, ascending.
        connectivity: 1 (edges) or 2 (edges and corners, MONAI's default) for the paths.
    """

    def __init__(self, applied_labels: Sequence[int] | None = None, connectivity: int | None = None) -> None:
        self.applied_labels = None if applied_labels is None else [int(label) for label in applied_labels]
        self.structure = ndimage.generate_binary_structure(2, connectivity or 2)

    def __call__(self, mask: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """(1, H, W) class indices -> the same type and shape, holes filled."""
        array = np.array(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
        plane = array[0]
        labels = self.applied_labels if self.applied_labels is not None else [int(v) for v in np.unique(plane) if v > 0]
        for label in labels:
            outside = plane != label
            components, _ = ndimage.label(outside, self.structure)
            border = np.unique(np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]]))
            plane[outside & ~np.isin(components, border)] = label
        return torch.as_tensor(array) if isinstance(mask, torch.Tensor) else array
