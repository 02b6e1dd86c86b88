"""Two augmented views of one unlabelled image, for self-supervised pretraining."""

from __future__ import annotations

from collections.abc import Mapping

from monai.transforms import Compose, CopyItemsd, EnsureTyped, Lambdad, SelectItemsd

from bundle.flags import as_flag, as_mapping
from bundle.transforms.cascade import RandOfficialCascaded
from bundle.transforms.geometry import ShortSideInterpolated
from bundle.transforms.intensity import gain_contrast_augmentation
from bundle.transforms.io import LoadUltrasoundd, channels_to_rgb

__all__ = ["VIEW_KEYS", "two_view_transforms"]

# the student's view (also the teacher's, unmasked) and the teacher's second view
VIEW_KEYS: tuple[str, str] = ("image", "view")


def two_view_transforms(
    image_size: int, gain_contrast: bool | str = True, augmentation: Mapping[str, object] | None = None
) -> Compose:
    """``{"image": path}`` -> ``{"image", "view"}``, two float32 (3, S, S) views in [0, 1].

    load -> shorter side to ``image_size`` (cached by a ``CacheDataset``: nothing random yet) ->
    a copy -> for each view its own draw of the flip / rotate / zoom cascade with the centre crop
    and, with ``gain_contrast``, of random gamma and gain.

    Args:
        image_size: output side S.
        gain_contrast: random gamma and gain on each view (``gain_contrast_augmentation``).
        augmentation: ``RandOfficialCascaded`` keyword arguments; None (or ``"null"``) the official cascade.
    """
    augmentation = as_mapping(augmentation, "augmentation") or {}
    steps = [
        LoadUltrasoundd(("image",)),
        EnsureTyped("image", track_meta=False),
        ShortSideInterpolated("image", image_size),
        CopyItemsd("image", names="view"),
    ]
    for key in VIEW_KEYS:
        steps.append(RandOfficialCascaded(key, image_size, **augmentation))
        if as_flag(gain_contrast, "gain_contrast"):
            steps.append(gain_contrast_augmentation(key))
    # plain tensors at the end too: MONAI's intensity transforms make MetaTensors again
    steps += [Lambdad(VIEW_KEYS, channels_to_rgb), SelectItemsd(VIEW_KEYS), EnsureTyped(VIEW_KEYS, track_meta=False)]
    return Compose(steps)
