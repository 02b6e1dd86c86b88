"""Learning-rate schedules stepped per iteration."""

from __future__ import annotations

from monai.utils import look_up_option
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, PolynomialLR

__all__ = ["DECAYS", "decay_lr"]

DECAYS: tuple[str, ...] = ("poly", "cosine")


def decay_lr(optimizer: Optimizer, total_iters: int, decay: str = "poly", power: float = 0.9) -> LRScheduler:
    """Decay the learning rate to zero over ``total_iters``.

    ``decay="poly"`` is the official ``(1 - t)^power`` (power 0.9); ``"cosine"`` is half a cosine.
    """
    if total_iters < 1:
        raise ValueError(f"need total_iters >= 1, got {total_iters}")
    if look_up_option(decay, DECAYS) == "poly":
        return PolynomialLR(optimizer, total_iters=total_iters, power=power)
    return CosineAnnealingLR(optimizer, T_max=total_iters)
