"""The app's train task."""

from .perceptguide import PerceptGuideTrain

__all__ = ["PerceptGuideTrain"]
