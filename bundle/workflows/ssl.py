"""Self-supervised pretraining of PerceptGuide's encoder (after OpenUS): losses, EMA teacher, one step.

One training step (:class:`SelfSupervisedStep`, a MONAI trainer's ``iteration_update``):

1. the teacher, an exponential moving average of the student's encoder without gradients, reads
   the unmasked view (targets and saliency) and, for the global term, a second augmented view;
2. the masker (``bundle.workflows.masking``) picks ~60 % of the units of each image;
3. the student (``bundle.networks.masked_student.MaskedStudent``) reads the view with those
   units' patch tokens replaced by its mask token;
4. :class:`SelfSupervisedLoss` adds the switched-on terms, the optimizer steps, and the
   teacher moves towards the student with a momentum rising from 0.99 to 0.996 (cosine).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.utils import CommonKeys as Keys
from torch import nn

from bundle.networks.masked_student import (
    HEADS,
    MaskedStudent,
    PerceptGuideEncoder,
    image_to_units,
    units_to_image,
)
from bundle.workflows.masking import AdaptiveMasker, cosine_ramp, teacher_saliency

__all__ = [
    "SelfSupervisedLoss",
    "SelfSupervisedStep",
    "ema_update",
    "frozen_copy",
    "loss_terms",
    "masked_and_reconstructed",
    "normalised_units",
    "views",
]

_EPS = 1e-6


def _unit_statistics(image: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The units of ``image`` (B, h, w, C·stride²) with their pixel mean and standard deviation (B, h, w, 1)."""
    units = image_to_units(image, stride)
    return units, units.mean(dim=-1, keepdim=True), units.var(dim=-1, unbiased=False, keepdim=True).add(_EPS).sqrt()


def normalised_units(image: torch.Tensor, stride: int) -> torch.Tensor:
    """Reconstruction target: each unit's pixels less their mean, over their standard deviation
    (MAE's normalised pixels); (B, C, H, W) -> (B, H/stride, W/stride, C·stride²)."""
    units, mean, std = _unit_statistics(image, stride)
    return (units - mean) / std


class SelfSupervisedLoss(nn.Module):
    """Weighted sum of the self-supervised terms; a weight of 0 removes its term (and its head).

    - ``recon``: mean squared error between the student's pixels and :func:`normalised_units`
      over the masked units.
    - ``distill``: 1 − cosine similarity of the student's unit features and the teacher's
      features of the unmasked image, over the masked units.
    - ``global``: 1 − cosine similarity of the student's pooled embedding and the teacher's
      pooled features of the other view.

    The teacher's features are centred on their batch mean first (as DINO centres its teacher):
    the features of all tokens of an untrained Swin share one direction (mean cosine ~0.98), and
    the cosine to raw targets would mostly measure that.

    Args:
        recon_weight, distill_weight, global_weight: the terms' weights (>= 0, one above 0).
    """

    def __init__(self, recon_weight: float = 1.0, distill_weight: float = 1.0, global_weight: float = 1.0) -> None:
        super().__init__()
        weights = {"recon": recon_weight, "distill": distill_weight, "global": global_weight}
        for name, weight in weights.items():
            if float(weight) < 0:
                raise ValueError(f"{name}_weight must be >= 0, got {weight}.")
        self.weights = {name: float(weight) for name, weight in weights.items() if float(weight) > 0}
        if not self.weights:
            raise ValueError("recon_weight, distill_weight and global_weight are all 0: nothing to train.")

    @property
    def terms(self) -> tuple[str, ...]:
        """The switched-on terms, in ``HEADS`` order (the heads the student needs)."""
        return tuple(name for name in HEADS if name in self.weights)

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """
        Args:
            outputs: the student's ``recon`` (B, h, w, C·s²), ``distill`` (B, h, w, D), ``global`` (B, D).
            targets: ``image`` (B, C, H, W) the student's view before masking, ``mask`` (B, h, w)
                bool, ``teacher`` (B, h, w, D) teacher features of ``image`` (distill),
                ``teacher_global`` (B, D) pooled teacher features of the other view (global),
                both as the teacher gives them (centred here).

        Returns:
            ``loss`` (the weighted sum) and each switched-on term unweighted, all scalars; with
            recon, also ``recon_error`` (B, h, w), each unit's error, without gradient.
        """
        mask = targets["mask"]
        terms: dict[str, torch.Tensor] = {}
        extra: dict[str, torch.Tensor] = {}
        if "recon" in self.weights:
            stride = targets["image"].shape[2] // mask.shape[1]
            error = (outputs["recon"] - normalised_units(targets["image"], stride)).pow(2).mean(dim=-1)
            terms["recon"] = error[mask].mean()
            extra["recon_error"] = error.detach()
        if "distill" in self.weights:
            teacher = targets["teacher"] - targets["teacher"].mean(dim=(0, 1, 2), keepdim=True)
            terms["distill"] = (1 - F.cosine_similarity(outputs["distill"], teacher, dim=-1))[mask].mean()
        if "global" in self.weights:
            teacher = targets["teacher_global"] - targets["teacher_global"].mean(dim=0, keepdim=True)
            terms["global"] = (1 - F.cosine_similarity(outputs["global"], teacher, dim=-1)).mean()
        loss = sum(self.weights[name] * value for name, value in terms.items())
        return {"loss": loss, **terms, **extra}


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode without gradients: the teacher."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum · teacher + (1 − momentum) · student for every parameter; the student's
    persistent buffers (batch-norm statistics) are copied. Both modules have the same names."""
    own = dict(teacher.named_parameters())
    pairs = [(own[name], value.detach()) for name, value in student.named_parameters()]
    torch._foreach_lerp_([t for t, _ in pairs], [s for _, s in pairs], 1.0 - momentum)
    persistent = student.state_dict(keep_vars=True)
    for name, buffer in teacher.named_buffers():
        if name in persistent:
            buffer.copy_(persistent[name])


class SelfSupervisedStep:
    """The ``iteration_update`` of a MONAI ``SupervisedTrainer`` for self-supervised pretraining.

    The trainer's ``network`` is the student (or its DistributedDataParallel wrapper), its
    ``loss_function`` a :class:`SelfSupervisedLoss` and its ``inferer`` runs both networks
    (``PromptInferer``: optional bf16 autocast). Batches hold ``image`` and ``view`` (B, C, H, W),
    two augmentations of each picture. Schedules follow the progress through the whole run
    (iteration / total), so a resumed run continues them.

    Args:
        student: the unwrapped :class:`MaskedStudent` (its encoder feeds the teacher's average).
        teacher: the EMA copy of ``student.encoder`` (``frozen_copy``).
        masker: makes the masks and keeps the reconstruction error map.
        momentum: teacher momentum (start, end), cosine over training.
    """

    def __init__(
        self,
        student: MaskedStudent,
        teacher: PerceptGuideEncoder,
        masker: AdaptiveMasker,
        momentum: Sequence[float] = (0.99, 0.996),
    ) -> None:
        if len(momentum) != 2 or not all(0.0 <= float(m) <= 1.0 for m in momentum):
            raise ValueError(f"teacher_momentum must be [start, end] in [0, 1], got {list(momentum)}.")
        self.student = student
        self.teacher = teacher
        self.masker = masker
        self.momentum = (float(momentum[0]), float(momentum[1]))

    def _teacher_targets(self, engine: Engine, batch: Mapping, view: torch.Tensor, terms: Sequence[str]) -> dict:
        """Teacher features of ``view`` (distill, saliency) and of the other view (global)."""
        inputs = {}
        if "distill" in terms or self.masker.adaptive:
            inputs["teacher"] = view
        if "global" in terms:
            inputs["teacher_global"] = batch["view"].to(view.device, non_blocking=engine.non_blocking)
        if not inputs:
            return {}
        with torch.no_grad():
            features = engine.inferer(torch.cat(list(inputs.values())), self.teacher).split(view.shape[0])
        targets = dict(zip(inputs, features))
        if "teacher_global" in targets:
            targets["teacher_global"] = targets["teacher_global"].mean(dim=(1, 2))
        if self.masker.adaptive:
            targets["saliency"] = teacher_saliency(targets["teacher"])
        return targets

    def __call__(self, engine: Engine, batch: Mapping) -> dict:
        """One step on ``batch``; returns the engine output (image, loss, logged terms, mask, reconstruction)."""
        view = batch["image"].to(engine.state.device, non_blocking=engine.non_blocking)
        terms = engine.loss_function.terms
        total = engine.state.max_epochs * engine.state.epoch_length
        progress = (engine.state.iteration - 1) / max(total - 1, 1)
        stride = self.student.encoder.stride
        grid = (view.shape[2] // stride, view.shape[3] // stride)

        targets = {"image": view, **self._teacher_targets(engine, batch, view, terms)}
        mask = self.masker(view.shape[0], grid, progress, targets.get("saliency"), device=view.device)
        targets["mask"] = mask
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        outputs = engine.inferer(view, engine.network, mask)
        losses = engine.loss_function(outputs, targets)
        losses["loss"].backward()
        engine.optimizer.step()

        momentum = cosine_ramp(self.momentum, progress)
        ema_update(self.teacher, self.student.encoder, momentum)
        if "recon_error" in losses:
            self.masker.record(losses["recon_error"], mask)
        logged = {name: value.item() for name, value in losses.items() if value.dim() == 0}
        logged.update(teacher_momentum=momentum, **self.masker.schedule(progress))
        recon = outputs.get("recon")
        return {
            Keys.IMAGE: view,
            Keys.LOSS: losses["loss"].detach(),
            "terms": logged,
            "mask": mask,
            "recon": None if recon is None else recon.detach(),
        }


def loss_terms(output: Mapping) -> dict[str, float]:
    """The step's loss, its terms and schedule values, for StatsHandler / TensorBoardStatsHandler."""
    return output["terms"]


def views(batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of a batch, for TensorBoardImageHandler's ``batch_transform`` (``input_0``, ``input_1``)."""
    return batch["image"], batch["view"]


def masked_and_reconstructed(output: Mapping) -> torch.Tensor:
    """(B, C, H, 2W): the student's input with masked units grey, beside the visible units with
    the reconstruction (de-normalised with each unit's own statistics) in the masked ones;
    (B, C, H, W), the masked input alone, without the recon term. For TensorBoardImageHandler."""
    image, mask = output[Keys.IMAGE].detach(), output["mask"]
    stride = image.shape[2] // mask.shape[1]
    hidden = mask.repeat_interleave(stride, dim=1).repeat_interleave(stride, dim=2).unsqueeze(1)
    panels = [torch.where(hidden, torch.full_like(image, 0.5), image)]
    if output.get("recon") is not None:
        _, mean, std = _unit_statistics(image, stride)
        recon = units_to_image(output["recon"].float() * std + mean, image.shape[1]).clamp(0, 1)
        panels.append(torch.where(hidden, recon, image))
    return torch.cat(panels, dim=-1)
