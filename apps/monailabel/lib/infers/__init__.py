"""The app's infer task."""

from .perceptguide import PerceptGuideInfer

__all__ = ["PerceptGuideInfer"]
