"""CPU execution options for PerceptGuide: bf16 autocast where the CPU has bf16 units, torch.compile.

bf16 pays only on CPUs with native bf16 instructions (AVX512-BF16 or AMX-BF16): there oneDNN runs
bf16 GEMMs several times faster than fp32. Elsewhere the same GEMMs are emulated and run far
slower than fp32, so ``"auto"`` falls back to fp32 and says so in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

__all__ = ["PRECISIONS", "compile_or_eager", "cpu_flags", "native_bf16_cpu", "resolve_precision"]

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16", "auto")
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@lru_cache(maxsize=1)
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """Instruction-set flags of the first CPU in ``cpuinfo``; empty where the file does not exist."""
    if not cpuinfo.exists():
        return frozenset()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def native_bf16_cpu(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU (``flags``, default this machine's) runs bf16 GEMMs in hardware."""
    return bool(NATIVE_BF16_FLAGS & set(cpu_flags() if flags is None else flags))


def resolve_precision(precision: str, flags: Iterable[str] | None = None) -> torch.dtype:
    """Compute dtype for ``precision``: ``"float32"``, ``"bfloat16"`` or ``"auto"``.

    ``"auto"`` is bf16 on a CPU with native bf16 (``flags``, default this machine's) and fp32
    elsewhere; the choice is logged either way.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'.")
    if precision != "auto":
        return torch.bfloat16 if precision == "bfloat16" else torch.float32
    flags = set(cpu_flags() if flags is None else flags)
    if native_bf16_cpu(flags):
        logger.info("precision auto: bf16 autocast (CPU has %s).", ", ".join(sorted(NATIVE_BF16_FLAGS & flags)))
        return torch.bfloat16
    logger.info(
        "precision auto: float32, this CPU lacks native bf16 (%s); bf16 would be emulated and slower.",
        " / ".join(sorted(NATIVE_BF16_FLAGS)),
    )
    return torch.float32


def compile_or_eager(module: nn.Module, *example_args, **compile_kwargs) -> Callable:
    """``torch.compile(module)`` checked on ``example_args``, or ``module`` itself if that fails.

    Compilation happens at the first call, so the example call is what can fail (no C++
    toolchain, an operator the backend lacks); the failure is logged and the eager module is
    returned. The compiled module shares ``module``'s parameters; save ``module``'s state dict.

    Args:
        module: the network.
        example_args: inputs of one forward, run under the caller's grad mode.
        compile_kwargs: passed to ``torch.compile`` (``backend``, ``mode``, ``dynamic``...).
    """
    try:
        compiled = torch.compile(module, **compile_kwargs)
        compiled(*example_args)
    except Exception as error:  # compilers fail in many ways; any of them means "run eager"
        logger.warning("torch.compile failed, running eager: %s: %s", type(error).__name__, error)
        return module
    return compiled
