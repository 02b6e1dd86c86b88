"""Which weights of a pretrained network learn when it adapts to new data.

``trainable`` names a nested set of parts, from the paper's downstream synchronization to plain
fine-tuning:

- ``new_organs``: only the prompt columns of the organs a grown vocabulary appended
  (:meth:`bundle.networks.BundleCheckpoint.grown`): every old organ's output stays the
  checkpoint's, bit for bit, so nothing is forgotten;
- ``prompts``: the prompt projections only (the paper's sync; official ``*_prompt_proj_mlp``,
  here every decoder block's ``prompt_proj`` and the convolutional up-blocks' prompt gains);
- ``norms``: plus the decoders' normalisation weights and every decoder bias;
- ``decoders``: plus every weight of the decoders and of the convolutional skip path;
- ``all``: every weight (fine-tuning; the encoder learns too).
"""

from __future__ import annotations

import logging
import re

import torch
from monai.utils import look_up_option
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bundle.networks.vocabulary_growth import ORGAN_INPUT_WEIGHT

__all__ = ["PROMPT_PARAMETER_TAG", "TRAINABLE_PARTS", "prompt_parameters", "trainable_parameters"]

logger = logging.getLogger(__name__)
PROMPT_PARAMETER_TAG = ".prompt_proj."
TRAINABLE_PARTS = ("new_organs", "prompts", "norms", "decoders", "all")
# decoder-side modules: both decoders, the convolutional skip path and auxiliary (consistency) copies
_DECODER = re.compile(r"(^|\.)(seg_decoder|cls_decoder|conv_skips|aux_decoders|aux_conv_skips)\.")
_NORM_OR_BIAS = re.compile(r"(norm[^.]*\.(weight|bias)|\.bias)$")


def _learns(name: str, parts: str) -> bool:
    """Whether parameter ``name`` learns under ``parts`` (one of ``TRAINABLE_PARTS``)."""
    if parts == "new_organs":
        return bool(ORGAN_INPUT_WEIGHT.search(name))
    if parts == "all" or PROMPT_PARAMETER_TAG in name:
        return True
    if parts == "prompts" or not _DECODER.search(name):
        return False
    return parts == "decoders" or bool(_NORM_OR_BIAS.search(name))


def _keep_in_eval_mode(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: the engine's ``network.train()`` must not turn a frozen batch norm back on."""
    module.train(False)


def _new_organ_columns_only(network: nn.Module, new_organs: int) -> None:
    """Gradient hooks that zero every column of the organ-reading weights but the last ``new_organs``
    organ columns (with zero gradients from the first step, Adam leaves those weights unchanged)."""
    organs = getattr(network, "network", network).prompt_sizes["position"]
    for parameter in network.parameters():
        if parameter.requires_grad:
            keep = torch.zeros(parameter.shape[1], dtype=parameter.dtype)
            keep[organs - new_organs : organs] = 1
            parameter.register_hook(lambda grad, keep=keep: grad * keep.to(grad.device))


def trainable_parameters(network: nn.Module, parts: str = "all", new_organs: int = 0) -> list[nn.Parameter]:
    """Freeze every parameter outside ``parts`` and return the ones that learn, for the optimizer.

    Unless ``parts`` is ``all``, batch norms (the convolution stem of ``patch_embed="conv"``
    networks, in the frozen encoder) are frozen too: they normalise with their running
    statistics and stop updating them, so only the chosen parts differ from the checkpoint.

    Args:
        network: the network, or the consistency wrapper around it.
        parts: one of ``TRAINABLE_PARTS``.
        new_organs: ``new_organs`` only: how many organs the grown vocabulary appended.

    Raises:
        ValueError: an unknown ``parts``, no parameter to train (``prompts`` on a network built
            with ``prompt=False``), or ``new_organs`` without an appended organ.
    """
    parts = look_up_option(parts, TRAINABLE_PARTS)
    if parts == "new_organs" and new_organs < 1:
        raise ValueError("trainable 'new_organs' needs a registry organ the checkpoint lacks; there is none")
    trainable = []
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(_learns(name, parts))
        if parameter.requires_grad:
            trainable.append(parameter)
    if not trainable:
        raise ValueError(f"the network has no parameters in '{parts}' to train (was it built with prompt=False?)")
    if parts == "new_organs":
        _new_organ_columns_only(network, new_organs)
    if parts != "all":
        for module in network.modules():
            if isinstance(module, _BatchNorm):
                module.register_forward_pre_hook(_keep_in_eval_mode)
    total = sum(p.numel() for p in network.parameters())
    logger.info("training %d of %d parameters (trainable: %s)", sum(p.numel() for p in trainable), total, parts)
    return trainable


def prompt_parameters(network: nn.Module) -> list[nn.Parameter]:
    """Downstream synchronization: ``trainable_parameters(network, "prompts")``."""
    return trainable_parameters(network, "prompts")
