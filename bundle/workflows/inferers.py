"""Inferer that runs PerceptGuide with its prompts, optionally under CPU bf16 autocast and with a flipped view."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Callable

import torch
from monai.inferers import Inferer

from bundle.flags import as_flag

__all__ = ["PromptInferer", "cpu_supports_bf16"]

logger = logging.getLogger(__name__)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix units (AVX-512 BF16 or AMX), where bf16 pays."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class PromptInferer(Inferer):
    """``network(image, prompts)`` with float32 outputs, optionally in bf16 autocast.

    Args:
        autocast: ``"bf16"`` to run under ``torch.autocast(dtype=bfloat16)`` (on CPU only where
            the CPU supports bf16 natively, else fp32 with a log line), ``"none"`` for fp32.
        flip: (``test_time_flip`` in the configs; a bool or true / false) test-time augmentation: also run the left-right mirrored image and average the two
            views' logits (segmentation logits mirrored back first); twice the network's cost.
    """

    def __init__(self, autocast: str = "none", flip: bool | str = False) -> None:
        super().__init__()
        if autocast not in ("none", "bf16"):
            raise ValueError(f"autocast must be 'none' or 'bf16', got '{autocast}'.")
        self.autocast = autocast
        self.flip = as_flag(flip, "test_time_flip")
        self._warned = False

    def _use_bf16(self, device: torch.device) -> bool:
        if self.autocast != "bf16":
            return False
        if device.type == "cpu" and not cpu_supports_bf16():
            if not self._warned:
                logger.warning("bf16 autocast requested but this CPU lacks native bf16; running in fp32.")
                self._warned = True
            return False
        return True

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Returns the network's outputs (a tensor, a tuple or a dict of tensors), cast to float32."""
        device = inputs.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self._use_bf16(device)):
            outputs = network(inputs, *args, **kwargs)
            if self.flip:
                mirrored = network(torch.flip(inputs, dims=(-1,)), *args, **kwargs)
        if not self.flip:
            return _as_float(outputs)
        return _mean_of_views(_as_float(outputs), _as_float(mirrored))


def _mean_of_views(plain: Any, mirrored: Any) -> Any:
    """The mean of the outputs of an image and of its left-right mirror: image-shaped tensors
    (B, C, H, W) mirrored back first, per-image ones (B, K) as they are; tuples element-wise."""
    if isinstance(plain, tuple):
        return tuple(_mean_of_views(p, m) for p, m in zip(plain, mirrored))
    if not isinstance(plain, torch.Tensor):
        raise TypeError(f"flip test-time augmentation averages tensors, got {type(plain).__name__}")
    if plain.ndim == 4:
        mirrored = torch.flip(mirrored, dims=(-1,))
    return (plain + mirrored) / 2


def _as_float(outputs: Any) -> Any:
    """Every tensor of ``outputs`` (a tensor, or tuples, lists and dicts of them) as float32; other objects
    (a distillation network's teacher signals) as they are."""
    if isinstance(outputs, Mapping):
        return {key: _as_float(o) for key, o in outputs.items()}
    if isinstance(outputs, tuple):
        return tuple(_as_float(o) for o in outputs)
    if isinstance(outputs, list):
        return [_as_float(o) for o in outputs]
    return outputs.float() if isinstance(outputs, torch.Tensor) else outputs
