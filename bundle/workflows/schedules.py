"""Learning-rate schedules stepped per iteration."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, LRScheduler, PolynomialLR, SequentialLR

__all__ = ["warmup_poly_lr"]


def warmup_poly_lr(
    optimizer: Optimizer, total_iters: int, warmup_iters: int = 0, power: float = 0.9, warmup_start: float = 0.04
) -> LRScheduler:
    """Polynomial decay to zero over ``total_iters`` (official, power 0.9), after an optional linear warm-up.

    The warm-up ramps from ``warmup_start`` × lr to lr over ``warmup_iters``; without it a small
    Swin-Unet trained from scratch on little data stays at all-background for many epochs
    (docs/results.md). ``warmup_iters=0`` is the official schedule.
    """
    if not 0 <= warmup_iters < total_iters:
        raise ValueError(f"warmup_iters must be in [0, total_iters={total_iters}), got {warmup_iters}")
    if warmup_iters == 0:
        return PolynomialLR(optimizer, total_iters=total_iters, power=power)
    warmup = LinearLR(optimizer, start_factor=warmup_start, end_factor=1.0, total_iters=warmup_iters)
    decay = PolynomialLR(optimizer, total_iters=total_iters - warmup_iters, power=power)
    return SequentialLR(optimizer, [warmup, decay], milestones=[warmup_iters])
