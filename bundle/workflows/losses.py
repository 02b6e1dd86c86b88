"""Task-masked multi-task loss of PerceptGuide pretraining."""

from __future__ import annotations

from typing import Any

import torch
from monai.losses import DiceCELoss
from torch import nn

from bundle.flags import as_flag
from bundle.prompts import CLASSIFICATION, SEGMENTATION, TASK_IDS

__all__ = ["TaskMaskedLoss"]


class TaskMaskedLoss(nn.Module):
    """Segmentation loss on segmentation samples plus classification CE on classification samples.

    The segmentation term is ``ce_weight · CE + dice_weight · Dice`` (official 0.4 / 0.6). The
    default Dice is the official one: softmax, squared denominators, background included, pooled
    over the batch, smoothing 1e-5. ``official_dice=False`` takes plain denominators and one Dice
    per image instead: trained from scratch on little data, the official form sat at
    all-background about twice as long (docs/results.md). A batch without samples of a task adds
    nothing for it.

    Args:
        ce_weight: weight of the segmentation cross-entropy.
        dice_weight: weight of the segmentation Dice loss.
        cls_weight: weight of the classification cross-entropy.
        official_dice: the official squared, batch-pooled Dice (else plain, per image). This and
            ``dice_background`` take command-line strings too (``bundle.flags.as_flag``).
        dice_background: include the background channel in the Dice (official). Where the
            object is small its background Dice stays near 1, so the object's Dice gets half of
            the Dice weight against the cross-entropy, which favours background on small objects.
    """

    def __init__(
        self,
        ce_weight: float = 0.4,
        dice_weight: float = 0.6,
        cls_weight: float = 1.0,
        official_dice: bool | str = True,
        dice_background: bool | str = True,
    ) -> None:
        super().__init__()
        official_dice = as_flag(official_dice, "official_dice")
        dice_background = as_flag(dice_background, "dice_background")
        self.seg_loss = DiceCELoss(
            include_background=dice_background,
            to_onehot_y=True,
            softmax=True,
            squared_pred=official_dice,
            batch=official_dice,
            smooth_nr=1e-5,
            smooth_dr=1e-5,
            lambda_dice=dice_weight,
            lambda_ce=ce_weight,
        )
        self.cls_loss = nn.CrossEntropyLoss()
        self.cls_weight = cls_weight

    def forward(self, pred: tuple[torch.Tensor, torch.Tensor], target: dict[str, Any]) -> torch.Tensor:
        """
        Args:
            pred: seg logits (B, K, H, W) and cls logits (B, M).
            target: ``"label"`` (B, 1, H, W) class indices, ``"cls_label"`` (B,), ``"task_id"`` (B,).

        Returns:
            scalar loss.
        """
        seg_logits, cls_logits = pred
        task = target["task_id"].view(-1)
        loss = seg_logits.new_zeros(())
        seg = task == TASK_IDS[SEGMENTATION]
        if seg.any():
            loss = loss + self.seg_loss(seg_logits[seg], target["label"][seg])
        cls = task == TASK_IDS[CLASSIFICATION]
        if cls.any():
            loss = loss + self.cls_weight * self.cls_loss(cls_logits[cls], target["cls_label"].view(-1)[cls])
        return loss
