"""PerceptGuide networks, checkpoint converters and single-input wrappers."""

from bundle.networks.checkpoints import convert_official_state_dict, load_swin_imagenet
from bundle.networks.perceptguide import PerceptGuide

__all__ = ["PerceptGuide", "convert_official_state_dict", "load_swin_imagenet"]
