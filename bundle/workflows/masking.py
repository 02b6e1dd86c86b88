"""Self-adaptive masking of self-supervised pretraining (after OpenUS), and the schedules it follows.

A unit (one bottleneck token's square of the image, ``bundle.networks.masked_student``) is
scored by ``α · teacher saliency + (1 − α) · student reconstruction error``; the top-scored
units make up a share of the masked ones and the rest are drawn at random. Over training α
and the score-chosen share rise (0.1 -> 0.9 by default): masking starts mostly random and ends
on what the teacher attends to and the student still reconstructs badly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from bundle.flags import as_flag

__all__ = ["AdaptiveMasker", "choose_mask", "cosine_ramp", "linear_ramp", "masked_count", "teacher_saliency"]


def linear_ramp(span: Sequence[float], progress: float) -> float:
    """``span[0]`` at progress 0 to ``span[1]`` at progress 1, linearly (progress clipped to [0, 1])."""
    progress = min(max(progress, 0.0), 1.0)
    return span[0] + (span[1] - span[0]) * progress


def cosine_ramp(span: Sequence[float], progress: float) -> float:
    """``span[0]`` to ``span[1]`` along half a cosine: flat at both ends (teacher momentum)."""
    progress = min(max(progress, 0.0), 1.0)
    return span[1] - (span[1] - span[0]) * (1 + math.cos(math.pi * progress)) / 2


def _span(value: Sequence[float], key: str) -> tuple[float, float]:
    """A (start, end) pair in [0, 1], or a ValueError naming the config key."""
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not all(0.0 <= v <= 1.0 for v in pair):
        raise ValueError(f"{key} must be [start, end] with values in [0, 1], got {list(value)}.")
    return pair


def masked_count(units: int, ratio: float) -> int:
    """Units masked per image: ``round(ratio · units)``, at least one and (with 2+ units) one left visible."""
    return max(1, min(units - 1, round(ratio * units))) if units > 1 else 1


def choose_mask(
    batch: int, grid: Sequence[int], ratio: float, scores: torch.Tensor | None = None, share: float = 0.0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:  # fmt: skip
    """A (B, h, w) bool mask with :func:`masked_count` units masked in each image.

    ``round(share · count)`` of them are the top-``scores`` units, the others uniformly random
    among the rest.

    Args:
        batch: B.
        grid: (h, w), the unit grid.
        ratio: masked share of the units.
        scores: (B, h, w) per-unit scores; None: all masked units random.
        share: share of the masked units chosen by score.
        device: where the mask is made (with ``scores``: theirs).
    """
    height, width = grid
    count = masked_count(height * width, ratio)
    guided = round(share * count) if scores is not None else 0
    device = scores.device if scores is not None else device
    keys = torch.rand(batch, height * width, device=device)
    if guided:
        top = scores.reshape(batch, -1).topk(guided, dim=1).indices
        keys.scatter_(1, top, 2.0)  # above any random key: always masked
    mask = torch.zeros(batch, height * width, dtype=torch.bool, device=device)
    mask.scatter_(1, keys.topk(count, dim=1).indices, True)
    return mask.reshape(batch, height, width)


def teacher_saliency(features: torch.Tensor) -> torch.Tensor:
    """Attention of the mean token to every token: softmax over units of (mean · token) / √D.

    Args:
        features: teacher bottleneck features (B, h, w, D).

    Returns:
        (B, h, w), each image's map summing to 1.
    """
    batch, height, width, dim = features.shape
    tokens = features.reshape(batch, -1, dim)
    logits = torch.einsum("bnd,bd->bn", tokens, tokens.mean(dim=1)) / math.sqrt(dim)
    return logits.softmax(dim=1).reshape(batch, height, width)


def _unit_range(scores: torch.Tensor) -> torch.Tensor:
    """Each image's (h, w) scores rescaled to [0, 1] (a flat map becomes zeros)."""
    flat = scores.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).reshape(scores.shape)


class AdaptiveMasker:
    """Makes each step's masks and keeps the student's recent reconstruction error per unit.

    The error map is, per unit position, the mean reconstruction error of the images of the last
    batch in which that unit was masked (a position in no mask keeps its earlier value, or at the
    first record takes the mean of the others): the previous batch's images are other images, so
    what carries over is where reconstruction is hard, as OpenUS carries the previous step's
    error. It is saved with the training state.

    Args:
        ratio: masked share of the units (0.6).
        adaptive: score-guided masking; False: every masked unit random.
        saliency_weight: α (start, end), linear over training.
        guided_share: share of score-chosen masked units (start, end), linear over training.
    """

    def __init__(
        self,
        ratio: float = 0.6,
        adaptive: bool | str = True,
        saliency_weight: Sequence[float] = (0.1, 0.9),
        guided_share: Sequence[float] = (0.1, 0.9),
    ) -> None:
        if not 0.0 < float(ratio) < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {ratio}.")
        self.ratio = float(ratio)
        self.adaptive = as_flag(adaptive, "adaptive_masking")
        self.saliency_weight = _span(saliency_weight, "saliency_weight")
        self.guided_share = _span(guided_share, "guided_share")
        self.error: torch.Tensor | None = None

    def schedule(self, progress: float) -> dict[str, float]:
        """α and the guided share at ``progress`` (0 start, 1 end of training); zeros when not adaptive."""
        if not self.adaptive:
            return {"saliency_weight": 0.0, "guided_share": 0.0}
        return {
            "saliency_weight": linear_ramp(self.saliency_weight, progress),
            "guided_share": linear_ramp(self.guided_share, progress),
        }

    def scores(self, saliency: torch.Tensor, progress: float) -> torch.Tensor:
        """α · saliency + (1 − α) · error map, each rescaled to [0, 1] per image; (B, h, w).

        Before any error is recorded (or after the unit grid changed) the saliency alone.
        """
        alpha = self.schedule(progress)["saliency_weight"]
        saliency = _unit_range(saliency)
        if self.error is None or self.error.shape != saliency.shape[1:]:
            return saliency
        error = _unit_range(self.error.to(saliency.device).expand_as(saliency))
        return alpha * saliency + (1 - alpha) * error

    def __call__(
        self, batch: int, grid: Sequence[int], progress: float, saliency: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:  # fmt: skip
        """The (B, h, w) bool mask of a step; ``saliency`` (B, h, w) is needed when adaptive."""
        if not self.adaptive:
            return choose_mask(batch, grid, self.ratio, device=device)
        if saliency is None:
            raise ValueError("adaptive masking needs the teacher's saliency")
        share = self.schedule(progress)["guided_share"]
        return choose_mask(batch, grid, self.ratio, self.scores(saliency, progress), share)

    @torch.no_grad()
    def record(self, error: torch.Tensor, mask: torch.Tensor) -> None:
        """Keep the per-unit reconstruction ``error`` (B, h, w) of the masked units ``mask`` (B, h, w)."""
        weight = mask.float()
        count = weight.sum(dim=0)
        mean = (error.float() * weight).sum(dim=0) / count.clamp_min(1)
        previous = self.error if self.error is not None and self.error.shape == mean.shape else None
        fill = previous.to(mean.device) if previous is not None else mean[count > 0].mean().expand_as(mean)
        self.error = torch.where(count > 0, mean, fill)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.error is None else {"error": self.error}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.error = state.get("error")
