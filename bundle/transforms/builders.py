"""Transform chains for training, validation and inference (what configs call).

Each returns a MONAI ``Compose`` over the sample dicts of ``bundle.data``. Train / val samples
come out with exactly ``SAMPLE_KEYS``::

    image (3, S, S) float32 in [0, 1]      label (1, S, S) int64 class indices (zeros: cls sample)
    cls_label () int64 (0: seg sample)     task_id () int64 (0 segmentation, 1 classification)
    labelled () int64 (0: an unlabelled image of consistency training)
    position_prompt / task_prompt / mode_prompt / type_prompt: float32 one-hot
    dataset: str

Inference samples carry ``INFERENCE_KEYS`` (no targets, no dataset). Loading, mask mapping and
checks come first and are deterministic, so a ``CacheDataset`` caches the decoded images.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from monai.transforms import Compose, EnsureTyped, Lambdad, SelectItemsd

from bundle.data.registry import DatasetRegistry, as_registry
from bundle.flags import as_flag, as_mapping
from bundle.prompts import DEFAULT_VOCABULARY, PromptVocabulary
from bundle.transforms.cascade import RandOfficialCascaded
from bundle.transforms.geometry import RandLetterboxInterpolated, ShortSideInterpolated, resize_to_square
from bundle.transforms.intensity import gain_contrast_augmentation
from bundle.transforms.io import LoadUltrasoundd, channels_to_rgb
from bundle.transforms.masks import MaskToIndicesd
from bundle.transforms.prompt_mode import WHOLE, PromptModed, RandPromptModed
from bundle.transforms.targets import INFERENCE_KEYS, SAMPLE_KEYS, EncodePromptsd, TaskTargetsd

SPATIAL_KEYS = ("image", "label")


def load_transforms(registry: DatasetRegistry | str | Path) -> list:
    """The deterministic head of every labelled chain: load, map masks to class indices, check sizes."""
    return [LoadUltrasoundd(("image", "label", "mask")), MaskToIndicesd(as_registry(registry))]


def train_transforms(
    image_size: int,
    registry: DatasetRegistry | str | Path,
    mode_probabilities: Mapping[str, Mapping[str, float]] | None = None,
    gain_contrast: bool | str = False,
    augmentation: Mapping[str, object] | None = None,
    letterbox_prob: float = 0.0,
) -> Compose:
    """Training chain (official recipe).

    load -> plain tensors -> random input mode (local crop / location mark, official
    probabilities) -> shorter side to ``image_size`` -> one of flip / rotate +-20 deg / zoom
    0.8-1.2 (official cascade) with the centre crop -> targets and one-hot prompts.

    The decoded images leave MONAI's metadata tracking before the first random transform, and
    every random step is a plain-tensor one (``RandPromptModed``'s slice,
    ``ShortSideInterpolated``, ``RandOfficialCascaded``): nothing inverts a training sample, and
    MONAI's traced crop, anti-aliased resize and ``OneOf`` of flip / rotate / zoom took ~2/3 of
    the data time of a demo epoch (``docs/results.md``). Errors that name the file come before
    that point (loading, mask checks), and training prompt names come from the registry,
    checked when it loads, so no later step needs the file name.

    Args:
        image_size: output side S.
        registry: dataset declarations (mask values, prompt vocabulary).
        mode_probabilities: task -> {input mode: probability}; None (or ``"null"``, see
            ``bundle.flags.as_mapping``) for the official ``MODE_PROBABILITIES``.
        gain_contrast: add random gamma and gain after the geometry
            (``gain_contrast_augmentation``); False is the official recipe. Command-line
            strings (``--gain_contrast false``) are read by ``bundle.flags.as_flag``.
        augmentation: keyword arguments of ``RandOfficialCascaded`` (``weights`` of the
            flip / rotate / zoom / none branches, ``zoom`` range, ``max_angle_deg``); None, empty
            or ``"null"`` (what ``--augmentation null`` passes, ``bundle.flags.as_mapping``) is
            the official cascade.
    """
    registry = as_registry(registry)
    mode_probabilities = as_mapping(mode_probabilities, "mode_probabilities")
    augmentation = as_mapping(augmentation, "augmentation")
    intensity = [gain_contrast_augmentation("image")] if as_flag(gain_contrast, "gain_contrast") else []
    return Compose(
        load_transforms(registry)
        + [
            EnsureTyped(("image", "label", "mask"), track_meta=False, allow_missing_keys=True),
            RandPromptModed(mode_probabilities),
            ShortSideInterpolated(SPATIAL_KEYS, image_size)
            if float(letterbox_prob) == 0
            else RandLetterboxInterpolated(SPATIAL_KEYS, image_size, float(letterbox_prob)),
            RandOfficialCascaded(SPATIAL_KEYS, image_size, **(augmentation or {})),
        ]
        + intensity
        + [
            Lambdad("image", channels_to_rgb),
            TaskTargetsd(),
            EncodePromptsd(registry.vocabulary),
            SelectItemsd(SAMPLE_KEYS),
            EnsureTyped(SAMPLE_KEYS[:-1], track_meta=False),
        ]
    )


def val_transforms(
    image_size: int, registry: DatasetRegistry | str | Path, mode: str = WHOLE, geometry: str = "crop"
) -> Compose:
    """Deterministic validation / evaluation chain, invertible with ``monai.transforms.Invertd``.

    ``image`` stays a MetaTensor whose trace maps predictions back to the original size
    (``Invertd(keys="pred", transform=<this>, orig_keys="image")``).

    Args:
        image_size: output side S.
        registry: dataset declarations.
        mode: input mode for every sample where it applies (see ``PromptModed``), else whole.
        geometry: ``"crop"`` (official), ``"letterbox"`` or ``"squash"`` (see ``resize_to_square``).
    """
    registry = as_registry(registry)
    return Compose(
        load_transforms(registry)
        + [PromptModed(mode)]
        + resize_to_square(SPATIAL_KEYS, image_size, geometry)
        + [
            Lambdad("image", channels_to_rgb),
            TaskTargetsd(),
            EncodePromptsd(registry.vocabulary),
            SelectItemsd(SAMPLE_KEYS),
        ]
    )


def inference_transforms(
    image_size: int,
    organ: str,
    object_type: str,
    mode: str = WHOLE,
    task: str = "segmentation",
    vocabulary: PromptVocabulary | None = None,
    geometry: str = "crop",
) -> Compose:
    """Chain for a user's images (``{"image": path}``, optionally with per-image prompt names).

    Prompt names given here are the defaults; a sample's own ``organ`` / ``object_type`` /
    ``mode`` / ``task`` win. Unknown names fail here, before any image is read. ``image`` keeps
    its trace for ``Invertd`` back to the original size.

    Args:
        image_size: network input side S.
        organ, object_type, mode, task: default prompt names.
        vocabulary: the trained model's vocabulary (``registry.vocabulary``); default official.
        geometry: ``"crop"``, ``"letterbox"`` or ``"squash"`` (``"crop"`` leaves the border
            outside the centre square unpredicted).
    """
    defaults = {"organ": organ, "object_type": object_type, "mode": mode, "task": task}
    encode = EncodePromptsd(vocabulary or DEFAULT_VOCABULARY, defaults)
    return Compose(
        [LoadUltrasoundd(("image",)), PromptModed(mode, keep_without_mask=True)]
        + resize_to_square(("image",), image_size, geometry)
        + [Lambdad("image", channels_to_rgb), encode, SelectItemsd(INFERENCE_KEYS)]
    )
