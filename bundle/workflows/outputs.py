"""Pick what MONAI's stats and TensorBoard handlers show from a PerceptGuide batch or engine output.

The engines run with ``decollate=False`` (mixed-task targets are a dict), so MONAI's
``from_engine`` (made for decollated lists) does not fit."""

from __future__ import annotations

import torch
from monai.utils import CommonKeys as Keys

__all__ = ["image_and_label", "loss_value", "seg_prediction"]


def image_and_label(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(image, label) of a batch, for MONAI's TensorBoardImageHandler ``batch_transform``."""
    return batch["image"], batch["label"]


def seg_prediction(output: dict) -> torch.Tensor:
    """Predicted class map (B, 1, H, W) from an engine output, for TensorBoardImageHandler."""
    seg_logits = output[Keys.PRED][0]
    return seg_logits.argmax(1, keepdim=True).float()


def loss_value(output: dict) -> float:
    """The iteration's loss as a float, for StatsHandler / TensorBoardStatsHandler."""
    return float(output[Keys.LOSS])
