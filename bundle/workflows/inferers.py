"""Inferer that runs PerceptGuide with its prompts, optionally under CPU bf16 autocast."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Callable

import torch
from monai.inferers import Inferer

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
    """

    def __init__(self, autocast: str = "none") -> None:
        super().__init__()
        if autocast not in ("none", "bf16"):
            raise ValueError(f"autocast must be 'none' or 'bf16', got '{autocast}'.")
        self.autocast = autocast
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
        return _as_float(outputs)


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
