"""``torch.compile`` as an option that can never break a run: compiled if it works, eager otherwise."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["compile_or_eager"]

logger = logging.getLogger(__name__)


def compile_or_eager(module: nn.Module, *example_args, **compile_kwargs) -> Callable:
    """``torch.compile(module)`` checked on ``example_args``, or ``module`` itself if that fails.

    Compilation happens at the first call, so the example call is what can fail (no C++
    toolchain, an operator the backend lacks); the failure is logged and the eager module is
    returned. The compiled module shares ``module``'s parameters; save ``module``'s state dict.
    Inductor compiles once per input shape and grad mode, which takes minutes on a small CPU.

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
