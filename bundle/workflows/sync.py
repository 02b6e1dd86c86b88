"""Downstream synchronization: only the prompt projections of a pretrained model learn."""

from __future__ import annotations

import logging

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["prompt_parameters", "PROMPT_PARAMETER_TAG"]

logger = logging.getLogger(__name__)
# Official name: ``*_prompt_proj_mlp``; here every decoder block's ``prompt_proj`` module.
PROMPT_PARAMETER_TAG = ".prompt_proj."


def _keep_in_eval_mode(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: the engine's ``network.train()`` must not turn a frozen batch norm back on."""
    module.train(False)


def prompt_parameters(network: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter except the prompt projections and return those, for the optimizer.

    Batch norms (the convolution stem of ``patch_embed="conv"`` networks) are frozen too: they
    normalise with their running statistics and stop updating them, so after sync only the
    prompt projections differ from the pretrained checkpoint.

    Raises:
        ValueError: when the network has no prompt projections (built with ``prompt=False``).
    """
    trainable = []
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(PROMPT_PARAMETER_TAG in name)
        if parameter.requires_grad:
            trainable.append(parameter)
    if not trainable:
        raise ValueError("the network has no prompt projections to synchronize (was it built with prompt=False?)")
    for module in network.modules():
        if isinstance(module, _BatchNorm):
            module.register_forward_pre_hook(_keep_in_eval_mode)
    total = sum(p.numel() for p in network.parameters())
    logger.info("sync trains %d of %d parameters (prompt projections only)", sum(p.numel() for p in trainable), total)
    return trainable
