"""PerceptGuide networks, self-describing checkpoints, official-checkpoint converters and single-input wrappers."""

from bundle.networks.checkpoints import convert_official_state_dict, load_swin_imagenet, to_official_state_dict
from bundle.networks.model_file import (
    BundleCheckpoint,
    ModelDescription,
    default_model_path,
    describe,
    describe_encoder,
    initialise_from,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from bundle.networks.perceptguide import PerceptGuide
from bundle.networks.wrappers import PromptedSegmenter

__all__ = [
    "BundleCheckpoint",
    "ModelDescription",
    "PerceptGuide",
    "PromptedSegmenter",
    "convert_official_state_dict",
    "default_model_path",
    "describe",
    "describe_encoder",
    "initialise_from",
    "load_model",
    "load_swin_imagenet",
    "read_checkpoint",
    "save_checkpoint",
    "to_official_state_dict",
]
