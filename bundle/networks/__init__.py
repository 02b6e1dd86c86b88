"""PerceptGuide networks, checkpoint converters and single-input wrappers."""

from bundle.networks.checkpoints import (
    convert_official_state_dict,
    load_swin_imagenet,
    load_weights,
    to_official_state_dict,
)
from bundle.networks.perceptguide import PerceptGuide
from bundle.networks.wrappers import PromptedSegmenter

__all__ = [
    "PerceptGuide",
    "PromptedSegmenter",
    "convert_official_state_dict",
    "load_swin_imagenet",
    "load_weights",
    "to_official_state_dict",
]
