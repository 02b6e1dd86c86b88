"""bundle.transforms.cleanup: enclosed holes filled by labelling, as MONAI's FillHoles fills them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import FillHoles
from scipy import ndimage

from bundle.transforms.cleanup import FillEnclosedHoles


def random_mask(seed: int, classes: int) -> np.ndarray:
    """(1, 48, 40) class indices: smoothed noise cut into blobs, with holes and border contacts."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).random((48, 40)), 2.0)
    edges = np.quantile(noise, np.linspace(0, 1, classes + 1)[1:-1])
    return np.digitize(noise, edges).astype(np.uint8)[None]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("connectivity", [1, 2])
def test_enclosed_holes_are_filled_as_monai_fills_them(seed, classes, connectivity):
    mask = random_mask(seed, classes)
    labels = list(range(1, classes))
    expected = FillHoles(applied_labels=labels, connectivity=connectivity)(torch.as_tensor(mask.copy()))
    filled = FillEnclosedHoles(labels, connectivity)(torch.as_tensor(mask.copy()))
    assert torch.equal(torch.as_tensor(filled), torch.as_tensor(expected))
    assert np.array_equal(FillEnclosedHoles(None, connectivity)(mask.copy()), np.asarray(expected))


def test_a_ring_is_filled_and_an_open_bay_is_not():
    mask = np.zeros((1, 9, 9), np.uint8)
    mask[0, 1:6, 1:6] = 1
    mask[0, 3, 3] = 0  # enclosed
    mask[0, 3, 5] = 0  # on the ring's edge, open to the outside
    filled = FillEnclosedHoles([1])(mask.copy())
    assert filled[0, 3, 3] == 1 and filled[0, 3, 5] == 0 and filled.dtype == mask.dtype
