"""MONAI dict transforms for PerceptGuide samples, and the chains configs call.

Config one-liners::

    train#preprocessing: "$bundle.transforms.train_transforms(@image_size, @registry)"
    validate#preprocessing: "$bundle.transforms.val_transforms(@image_size, @registry)"
    preprocessing: "$bundle.transforms.inference_transforms(@image_size, @organ, @object_type)"
"""

from bundle.transforms.builders import inference_transforms, load_transforms, train_transforms, val_transforms
from bundle.transforms.cascade import CASCADE_BRANCHES, RandOfficialCascaded
from bundle.transforms.geometry import (
    GEOMETRIES,
    RandLetterboxInterpolated,
    ShortSideInterpolated,
    ShortSideResize,
    ShortSideResized,
    resize_to_square,
)
from bundle.transforms.intensity import gain_contrast_augmentation
from bundle.transforms.io import LoadImage2D, LoadUltrasoundd, channels_to_rgb, reader_for, to_unit_range
from bundle.transforms.masks import MaskToIndicesd
from bundle.transforms.prompt_mode import (
    LOCATION_INTENSITY,
    MODE_PROBABILITIES,
    PromptModed,
    RandPromptModed,
    local_square,
    location_mark,
)
from bundle.transforms.targets import INFERENCE_KEYS, SAMPLE_KEYS, EncodePromptsd, TaskTargetsd
from bundle.transforms.verify import verify_samples

__all__ = [
    "CASCADE_BRANCHES",
    "GEOMETRIES",
    "INFERENCE_KEYS",
    "LOCATION_INTENSITY",
    "MODE_PROBABILITIES",
    "SAMPLE_KEYS",
    "EncodePromptsd",
    "LoadImage2D",
    "LoadUltrasoundd",
    "MaskToIndicesd",
    "PromptModed",
    "RandLetterboxInterpolated",
    "RandOfficialCascaded",
    "RandPromptModed",
    "ShortSideInterpolated",
    "ShortSideResize",
    "ShortSideResized",
    "TaskTargetsd",
    "channels_to_rgb",
    "gain_contrast_augmentation",
    "inference_transforms",
    "load_transforms",
    "local_square",
    "location_mark",
    "reader_for",
    "resize_to_square",
    "to_unit_range",
    "train_transforms",
    "val_transforms",
    "verify_samples",
]
