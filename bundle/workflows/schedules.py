"""Learning-rate schedules stepped per iteration."""

from __future__ import annotations

import logging

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, PolynomialLR, SequentialLR

__all__ = ["DECAYS", "warmup_decay_lr"]

logger = logging.getLogger(__name__)

DECAYS: tuple[str, ...] = ("poly", "cosine")


def warmup_decay_lr(
    optimizer: Optimizer,
    total_iters: int,
    warmup_iters: int = 0,
    decay: str = "poly",
    power: float = 0.9,
    warmup_start: float = 0.04,
) -> LRScheduler:
    """Decay to zero over ``total_iters`` after an optional linear warm-up.

    ``decay="poly"`` is the official ``(1 - t)^power`` (power 0.9); ``"cosine"`` is half a cosine.
    The warm-up ramps from ``warmup_start`` × lr to lr over ``warmup_iters``. ``warmup_iters=0``
    with ``"poly"`` is the official schedule. A warm-up as long as the whole run (a short
    fine-tuning with the CPU setting's warm-up) is cut to half the run.
    """
    if decay not in DECAYS:
        raise ValueError(f"unknown learning-rate decay {decay!r}; expected one of {DECAYS}")
    if warmup_iters < 0 or total_iters < 1:
        raise ValueError(f"need warmup_iters >= 0 and total_iters >= 1, got {warmup_iters} and {total_iters}")
    if warmup_iters >= total_iters:
        logger.warning("a %d-iteration warm-up does not fit a %d-iteration run; warming up over half of it", warmup_iters, total_iters)
        warmup_iters = total_iters // 2
    decay_iters = total_iters - warmup_iters
    if decay == "poly":
        decayer: LRScheduler = PolynomialLR(optimizer, total_iters=decay_iters, power=power)
    else:
        decayer = CosineAnnealingLR(optimizer, T_max=decay_iters)
    if warmup_iters == 0:
        return decayer
    warmup = LinearLR(optimizer, start_factor=warmup_start, end_factor=1.0, total_iters=warmup_iters)
    return SequentialLR(optimizer, [warmup, decayer], milestones=[warmup_iters])
