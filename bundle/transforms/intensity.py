"""Ultrasound gain and contrast augmentation (not in the official recipe).

Videos of one organ differ in gain and dynamic range: the TG3K test videos of the demo data are
darker than its training videos (mean grey level 30 against 47), and a Swin-Unet trained from
scratch on a few videos learnt their brightness along with the anatomy (docs/results.md).
"""

from __future__ import annotations

from monai.config import KeysCollection
from monai.transforms import Compose, RandAdjustContrastd, RandScaleIntensityd, ScaleIntensityRanged

__all__ = ["gain_contrast_augmentation"]


def gain_contrast_augmentation(
    keys: KeysCollection = "image", gamma: tuple[float, float] = (0.7, 1.5), gain: float = 0.3, prob: float = 0.5
) -> Compose:
    """Random gamma, then random gain, on [0, 1] images, clipped back to [0, 1].

    Args:
        keys: image keys (never labels).
        gamma: range of the contrast exponent (MONAI ``RandAdjustContrastd``).
        gain: the intensity factor is drawn in ``1 ± gain`` (MONAI ``RandScaleIntensityd``).
        prob: probability of each of the two draws.
    """
    return Compose(
        [
            RandAdjustContrastd(keys, prob=prob, gamma=gamma),
            RandScaleIntensityd(keys, factors=gain, prob=prob),
            # an identity range with clip=True: a clamp to [0, 1] that loader workers can pickle
            ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
