"""Linear layers of the fast path: oneDNN's inner product when no gradient is needed.

PyTorch runs an fp32 ``F.linear`` on the CPU as an MKL GEMM. oneDNN's inner-product primitive,
which inductor's CPU backend calls as ``torch.ops.mkldnn._linear_pointwise``, ran the network's
token-wise shapes 5-40 % faster on the benchmark machine (AMD EPYC Zen 4; docs/performance.md)
and applies GELU inside the same kernel, while the output is still in cache. The operator is
private and has no backward, so it serves only forward passes without autograd (evaluation,
inference) on fp32 CPU tensors outside autocast, ``torch.compile``, TorchScript tracing and ONNX
export (which need public operators); everything else, any PyTorch build without it, and a caller
that passes ``onednn=False`` (``PerceptGuide(onednn_linear=False)``) takes ``F.linear``. Same
numbers within float rounding (tested).
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["linear", "mlp", "onednn_linear_available"]


@cache
def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's pointwise linear operator (a fact of the build)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the runtime conditions of oneDNN's linear operator hold for ``x`` and ``weight``."""
    return (
        not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and onednn_linear_available()
    )


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    gelu: bool = False,
    onednn: bool = True,
) -> torch.Tensor:
    """``F.linear`` (then exact GELU with ``gelu``): (..., C_in) -> (..., C_out).

    ``onednn``: run oneDNN's inner product where :func:`_use_onednn` allows it; False always
    takes ``F.linear``.
    """
    if onednn and _use_onednn(x, weight):
        # post-op name and its algorithm: exact (erf) GELU, or none
        post_op, algorithm = ("gelu", "none") if gelu else ("none", "")
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)
    out = F.linear(x, weight, bias)
    return F.gelu(out) if gelu else out


def mlp(block: nn.Module, x: torch.Tensor, onednn: bool = True) -> torch.Tensor:
    """MONAI ``MLPBlock`` (GELU, dropout off in eval) of (..., C) tokens, through :func:`linear`."""
    if block.training or not isinstance(block.fn, nn.GELU) or block.fn.approximate != "none":
        return block(x)
    hidden = linear(x, block.linear1.weight, block.linear1.bias, gelu=True, onednn=onednn)
    return linear(hidden, block.linear2.weight, block.linear2.bias, onednn=onednn)
