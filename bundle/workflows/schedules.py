"""Learning-rate schedules stepped per iteration."""

from __future__ import annotations

import logging

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, LRScheduler, PolynomialLR, SequentialLR

__all__ = ["warmup_poly_lr"]

logger = logging.getLogger(__name__)


def warmup_poly_lr(
    optimizer: Optimizer, total_iters: int, warmup_iters: int = 0, power: float = 0.9, warmup_start: float = 0.04
) -> LRScheduler:
    """Polynomial decay to zero over ``total_iters`` (official, power 0.9), after an optional linear warm-up.

    The warm-up ramps from ``warmup_start`` × lr to lr over ``warmup_iters``; without it a small
    Swin-Unet trained from scratch on little data stays at all-background for many epochs
    (docs/results.md). ``warmup_iters=0`` is the official schedule. A warm-up as long as the
    whole run (a short fine-tuning with the CPU setting's warm-up) is cut to half the run.
    """
    if warmup_iters < 0 or total_iters < 1:
        raise ValueError(f"need warmup_iters >= 0 and total_iters >= 1, got {warmup_iters} and {total_iters}")
    if warmup_iters >= total_iters:
        logger.warning("a %d-iteration warm-up does not fit a %d-iteration run; warming up over half of it", warmup_iters, total_iters)
        warmup_iters = total_iters // 2
    if warmup_iters == 0:
        return PolynomialLR(optimizer, total_iters=total_iters, power=power)
    warmup = LinearLR(optimizer, start_factor=warmup_start, end_factor=1.0, total_iters=warmup_iters)
    decay = PolynomialLR(optimizer, total_iters=total_iters - warmup_iters, power=power)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_iters])
