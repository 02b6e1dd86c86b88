"""Distillation (after TransKD): a compact student learns from a frozen teacher and from the labels.

configs/distill.yaml switches it on over pretraining. The student's loss
(:class:`DistillationLoss`) is the task loss on labelled samples, plus, on every sample (the
unlabelled images of ``unlabelled_dirs`` too):

- pixel-wise KL divergence of the seg logits, and KL of the cls logits, at temperature T
  (scaled by T² so that the gradients keep their size as T changes);
- feature distillation: the weighted mean over stages of the MSE between the student's stage
  tokens, mapped linearly to the teacher's width, and the teacher's
  (:class:`~bundle.networks.distillation.DistillationNetwork`).

Each term has its own weight; 0 switches it off. ``distill_mirrored_teacher`` makes the teacher's
logits the mean over the image and its mirror (what ``test_time_flip`` would infer).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bundle.flags import as_flag
from bundle.networks.distillation import DistillationNetwork, TeacherSignals
from bundle.networks.model_file import BundleCheckpoint
from bundle.workflows.consistency import rows_where, unlabelled_pool
from bundle.workflows.losses import TaskMaskedLoss

__all__ = ["DistillationLoss", "distillation_network", "distillation_pool", "kl_divergence"]

logger = logging.getLogger(__name__)


def kl_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), classes on dim 1, averaged over everything else.

    Args:
        student, teacher: logits (B, K) or (B, K, H, W), the same shape.
        temperature: T > 0.
    """
    log_student = F.log_softmax(student / temperature, 1)
    log_teacher = F.log_softmax(teacher / temperature, 1)
    pointwise = (log_teacher.exp() * (log_teacher - log_student)).sum(1)
    return temperature**2 * pointwise.mean()


class DistillationLoss(nn.Module):
    """Task loss on labelled samples + weighted distillation terms on every sample.

    Args:
        supervised: the task-masked loss of pretraining (labelled samples only).
        temperature: softening of both KL terms.
        seg_weight: weight of the pixel-wise KL of the seg logits.
        cls_weight: weight of the KL of the cls logits.
        feature_weight: weight of the stage-feature term.
        task_weight: weight of the supervised loss.
    """

    def __init__(
        self,
        supervised: TaskMaskedLoss,
        temperature: float = 1.0,
        seg_weight: float = 1.0,
        cls_weight: float = 1.0,
        feature_weight: float = 1.0,
        task_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        weights = {"seg_weight": seg_weight, "cls_weight": cls_weight, "feature_weight": feature_weight, "task_weight": task_weight}
        negative = {name: value for name, value in weights.items() if float(value) < 0}
        if negative:
            raise ValueError(f"distillation weights must be >= 0, got {negative}")
        self.supervised = supervised
        self.temperature = float(temperature)
        self.seg_weight, self.cls_weight = float(seg_weight), float(cls_weight)
        self.feature_weight, self.task_weight = float(feature_weight), float(task_weight)

    @staticmethod
    def feature_term(signals: TeacherSignals) -> torch.Tensor:
        """Σ_s w_s · MSE(mapped student tokens_s, teacher tokens_s) / Σ_s w_s."""
        terms = [
            weight * F.mse_loss(student, teacher)
            for student, teacher, weight in zip(signals.student_features, signals.teacher_features, signals.weights)
        ]
        return torch.stack(terms).sum() / sum(signals.weights)

    def forward(self, pred: tuple, target: Mapping[str, Any]) -> torch.Tensor:
        """
        Args:
            pred: ``(seg (B, K, H, W), cls (B, M), TeacherSignals)``.
            target: the supervised targets, with ``labelled`` (B,) (0 for unlabelled images) when
                the batch holds unlabelled images.

        Returns:
            scalar loss.
        """
        seg, cls, signals = pred
        loss = seg.new_zeros(())
        labelled = target["labelled"].view(-1).bool() if "labelled" in target else torch.ones(len(seg), dtype=torch.bool)
        labelled = labelled.to(seg.device)
        if self.task_weight and labelled.any():
            loss = loss + self.task_weight * self.supervised((seg[labelled], cls[labelled]), rows_where(target, labelled))
        if self.seg_weight:
            loss = loss + self.seg_weight * kl_divergence(seg, signals.seg, self.temperature)
        if self.cls_weight:
            loss = loss + self.cls_weight * kl_divergence(cls, signals.cls, self.temperature)
        if self.feature_weight:
            loss = loss + self.feature_weight * self.feature_term(signals)
        return loss


def distillation_network(
    student: nn.Module, teacher: BundleCheckpoint, device: torch.device | str, mirrored_teacher: bool | str = False
) -> DistillationNetwork:
    """The trainer's network: ``student`` beside the frozen teacher built from the ``teacher`` checkpoint
    (the one distill.yaml has read for its vocabulary and input size); ``mirrored_teacher``
    (``distill_mirrored_teacher``) makes the teacher's logits those of its mirrored-view mean."""
    teacher_network = teacher.build().to(device)
    network = DistillationNetwork(student, teacher_network, mirrored_teacher=as_flag(mirrored_teacher, "distill_mirrored_teacher"))
    logger.info(
        "distilling %s (%.2f M parameters) into a student of %.2f M, %d stages aligned",
        teacher.source,
        sum(p.numel() for p in teacher_network.parameters()) / 1e6,
        sum(p.numel() for p in student.parameters()) / 1e6,
        len(network.maps),
    )
    return network.to(device)


def distillation_pool(folders: Sequence[Mapping[str, str]] | None) -> list[dict]:
    """The unlabelled samples of ``folders`` (``[{dir, organ, object_type}]``, as consistency takes them):
    they feed the distillation terms only."""
    return unlabelled_pool(folders, weight=1.0, use="distillation")
