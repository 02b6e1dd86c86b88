"""Semi-supervised pretraining (after MGCC): unlabelled images in every batch, cross-consistency loss.

pretrain.yaml's ``unlabelled_dirs`` and ``consistency_weight`` switch it on; with no folder or a
zero weight every function here hands back what it was given, and training is the supervised one.

- :func:`unlabelled_pool`: the unlabelled training samples, each folder with its prompts.
- :func:`with_auxiliary_decoders`: the network the trainer runs (``ConsistencyNetwork``).
- :class:`ConsistencyLoss`: the supervised loss of every decoder on labelled samples plus
  ``λ(t)·MSE(softmax(main), softmax(aux))`` on unlabelled ones, λ ramped up by
  :class:`ConsistencyRampUp`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

from bundle.data.unlabelled import unlabelled_samples
from bundle.networks.consistency import ConsistencyNetwork
from bundle.prompts import SEGMENTATION, TASK_IDS
from bundle.workflows.losses import TaskMaskedLoss

__all__ = [
    "unlabelled_pool", "rows_where", "with_auxiliary_decoders", "with_consistency", "ConsistencyLoss", "ConsistencyRampUp", "sigmoid_rampup",
]

logger = logging.getLogger(__name__)
UNLABELLED = "unlabelled"


def _enabled(weight: float, pool: Sequence) -> bool:
    return float(weight) > 0 and len(pool) > 0


def unlabelled_pool(folders: Sequence[Mapping[str, str]] | None, weight: float, use: str = "consistency training") -> list[dict]:
    """Unlabelled training samples from ``folders``: ``[{dir: PATH, organ: NAME, object_type: NAME}, ...]``.

    Each folder's images (any depth) get the folder's prompts, the segmentation task and
    ``labelled = 0``; unreadable files are logged once each and left out. Empty when
    ``weight`` is 0 or there is no folder. ``use`` names what they are for in the log.

    Raises:
        ValueError: an entry without ``dir``, ``organ`` or ``object_type`` (consistency steers the
            decoders by prompt, so every image needs one), or a folder with no image.
    """
    if not folders or float(weight) <= 0:
        return []
    from bundle.workflows.inference import readable_samples

    samples = []
    for index, entry in enumerate(folders):
        if not isinstance(entry, Mapping) or not {"dir", "organ", "object_type"} <= set(entry):
            raise ValueError(
                f"unlabelled_dirs[{index}] must be {{dir: PATH, organ: NAME, object_type: NAME}} for {use} "
                f"(the decoders are steered by prompt), got {entry!r}"
            )
        prompts = {"organ": entry["organ"], "object_type": entry["object_type"], "mode": "whole"}
        for sample in readable_samples(unlabelled_samples(entry["dir"])):
            samples.append(
                {**sample, **prompts, "task": SEGMENTATION, "dataset": UNLABELLED, "cls_label": 0, "labelled": 0}
            )
    logger.info("%s: %d unlabelled images from %d folders", use, len(samples), len(folders))
    return samples


def with_auxiliary_decoders(network: nn.Module, weight: float, pool: Sequence, num_aux: int = 3) -> nn.Module:
    """The network the trainer runs: ``network`` with ``num_aux`` auxiliary decoders when consistency is on."""
    return ConsistencyNetwork(network, num_aux) if _enabled(weight, pool) else network


def sigmoid_rampup(progress: float) -> float:
    """exp(-5 (1 - t)²) for t = ``progress`` clipped to [0, 1] (the ramp of MGCC and mean teachers)."""
    t = min(max(progress, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def rows_where(target: Mapping[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """``target`` restricted to the samples where ``keep`` (B,) is true."""
    rows = {}
    for key, value in target.items():
        if isinstance(value, torch.Tensor):
            rows[key] = value[keep]
        else:
            rows[key] = [item for item, kept in zip(value, keep.tolist()) if kept]
    return rows


class ConsistencyLoss(nn.Module):
    """Supervised loss of the main and auxiliary decoders, plus the ramped consistency term.

    Args:
        supervised: the task-masked loss of labelled samples (its ``seg_loss`` also trains the
            auxiliary decoders).
        weight: λ at the end of the ramp-up (``consistency_weight``).
    """

    def __init__(self, supervised: TaskMaskedLoss, weight: float) -> None:
        super().__init__()
        self.supervised = supervised
        self.weight = float(weight)
        self.ramp = 0.0  # set per iteration by ConsistencyRampUp

    def forward(self, pred: tuple, target: Mapping[str, Any]) -> torch.Tensor:
        """
        Args:
            pred: ``(seg (B, K, H, W), cls (B, M), [aux seg (B, K, H, W), ...])``.
            target: the supervised targets plus ``labelled`` (B,): 0 for unlabelled images.

        Returns:
            scalar loss.
        """
        seg, cls, aux = pred
        labelled = target["labelled"].view(-1).bool()
        loss = seg.new_zeros(())
        if labelled.any():
            rows = rows_where(target, labelled)
            loss = loss + self.supervised((seg[labelled], cls[labelled]), rows)
            segmentation = rows["task_id"].view(-1) == TASK_IDS[SEGMENTATION]
            if segmentation.any():
                label = rows["label"][segmentation]
                for extra in aux:
                    loss = loss + self.supervised.seg_loss(extra[labelled][segmentation], label)
        unlabelled = ~labelled
        if unlabelled.any() and self.ramp > 0:
            reference = torch.softmax(seg[unlabelled].detach(), 1)
            terms = [F.mse_loss(torch.softmax(extra[unlabelled], 1), reference) for extra in aux]
            loss = loss + self.weight * self.ramp * torch.stack(terms).mean()
        return loss


def with_consistency(supervised: TaskMaskedLoss, weight: float, pool: Sequence) -> nn.Module:
    """The trainer's loss: ``supervised`` itself, or a :class:`ConsistencyLoss` around it when consistency is on."""
    return ConsistencyLoss(supervised, weight) if _enabled(weight, pool) else supervised


class ConsistencyRampUp:
    """Sets the consistency loss's ramp ``λ(t)/λ`` from the trainer's iteration (resumes where it stopped).

    Args:
        loss: the trainer's loss; anything but a :class:`ConsistencyLoss` is left alone.
        rampup_iters: iterations to reach the full weight.
    """

    def __init__(self, loss: nn.Module, rampup_iters: int) -> None:
        self.loss = loss
        self.rampup_iters = max(int(rampup_iters), 1)

    def attach(self, engine: Engine) -> None:
        if isinstance(self.loss, ConsistencyLoss):
            engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.loss.ramp = sigmoid_rampup(engine.state.iteration / self.rampup_iters)
